/* delayd: a delay element between two network namespaces, for kernels without netem.
 *
 *   delayd serve [options]
 *
 * (nsexec.c runs a command inside one of the namespaces.) `serve` unshares a network namespace (the client side), opens a TUN device in it,
 * unshares a second one (the server side) and opens a TUN device there; the TUN fds and
 * a descriptor of each namespace stay open in this process, so the namespaces live
 * exactly as long as this process and what runs inside them. It then moves IP packets
 * from each TUN device to the other, holding every packet for the one-way delay:
 *
 *   rate:    the bottleneck link serialises packets: leaves = max(now, link free) + len/rate;
 *            a packet that would wait more than --queue-us for the link is dropped;
 *   delay:   due = leaves + delay + uniform(-jitter, +jitter), never before `leaves`;
 *   order:   due = max(due, previous due): jitter never reorders packets;
 *   early:   a packet is written once now >= due - --early-us: a timer wake-up comes some tens
 *            of us late, so waking that much early centres the error on the due time;
 *   loss:    each packet is dropped with probability --loss-ppm / 1e6 (xorshift64*, --seed);
 *   bounded: at most --limit packets per direction are held; past that a packet is dropped.
 *
 * The link's addresses are in 127.0.0.0/8 (default 127.18.0.1 and .2): inside the namespaces
 * lo is narrowed to 127.0.0.1/32 and route_localnet lets them cross the TUN link, while in
 * any other namespace they are local addresses, so a connection made from the wrong side
 * stays on that machine's loopback instead of leaving it.
 *
 * One thread, one epoll loop; a CLOCK_MONOTONIC timerfd armed at the next due packet
 * (timer slack 1 ns). On stdin: "stats" prints the counters as one JSON line, "quit" or
 * end of file ends the process (the parent's death closes the pipe); PR_SET_PDEATHSIG is
 * a second guard. The first line on stdout is "ready PID CLIENT_NS_FD SERVER_NS_FD".
 * With --no-tun only the namespaces are made (an anchor for the netem mechanism).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 64

#define COUNTERS(X) X(rx) X(tx) X(bytes) X(drop_loss) X(drop_queue) X(drop_full) X(tx_err) \
    X(held) X(max_held) X(late_ns_sum) X(late_ns_max) X(late_over_100us) X(late_over_1ms) \
    X(early_ns_sum)
#define FIELD(name) uint64_t name;

struct dir {
    int in_fd, out_fd;
    uint64_t *due;
    uint32_t *len;
    unsigned char *buf;
    uint32_t head;
    uint64_t link_free, last_due;
    COUNTERS(FIELD)
};

static struct {
    uint64_t delay, jitter, queue, rate_bps, loss_ppm, seed, early;
    uint32_t limit, mtu, slot;
    const char *addr[2];
    int no_tun;
} opt = {0, 0, 0, 0, 0, 1, 0, 16384, 1500, 0, {"127.18.0.1", "127.18.0.2"}, 0};

static uint64_t rng_state;

static void die(const char *what) {
    fprintf(stderr, "delayd: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static struct ifreq named(const char *name) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    return ifr;
}

static void set_flags(int sock, const char *name, short on) {
    struct ifreq ifr = named(name);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS");
    ifr.ifr_flags |= on;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS");
}

static void set_addr(int sock, const char *name, unsigned long req, const char *ip) {
    struct ifreq ifr = named(name);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, ip, &sin.sin_addr) != 1) {
        fprintf(stderr, "delayd: bad IPv4 address %s\n", ip);
        exit(2);
    }
    memcpy(&ifr.ifr_addr, &sin, sizeof sin);
    if (ioctl(sock, req, &ifr) < 0) die("address ioctl");
}

/* Write "1" to a sysctl of this namespace; `must`: fail if it cannot be written. */
static void sysctl_on(const char *path, int must) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    int ok = fd >= 0 && write(fd, "1", 1) == 1;
    if (fd >= 0) close(fd);
    if (!ok && must) die(path);
}

/* A new network namespace with lo up and (unless --no-tun) a configured TUN device. */
static void make_side(int side, int *ns_fd, int *tun_fd) {
    if (unshare(CLONE_NEWNET) < 0) die("unshare(CLONE_NEWNET)");
    *ns_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (*ns_fd < 0) die("/proc/self/ns/net");
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) die("socket");
    set_flags(sock, "lo", IFF_UP);
    /* lo keeps 127.0.0.1 but no longer claims all of 127.0.0.0/8 as local, and loopback-range
     * addresses may cross the link (see the top of this file) */
    set_addr(sock, "lo", SIOCSIFNETMASK, "255.255.255.255");
    sysctl_on("/proc/sys/net/ipv4/conf/all/route_localnet", 1);
    *tun_fd = -1;
    if (!opt.no_tun) {
        const char *name = "rtb0";
        struct ifreq ifr = named(name);
        *tun_fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (*tun_fd < 0) die("/dev/net/tun");
        ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
        if (ioctl(*tun_fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
        /* no IPv6 on the link: its router solicitations would only blur the counters */
        sysctl_on("/proc/sys/net/ipv6/conf/rtb0/disable_ipv6", 0);
        set_addr(sock, name, SIOCSIFADDR, opt.addr[side]);
        set_addr(sock, name, SIOCSIFDSTADDR, opt.addr[1 - side]);
        set_addr(sock, name, SIOCSIFNETMASK, "255.255.255.255");
        ifr = named(name);
        ifr.ifr_mtu = (int)opt.mtu;
        if (ioctl(sock, SIOCSIFMTU, &ifr) < 0) die("SIOCSIFMTU");
        set_flags(sock, name, IFF_UP | IFF_RUNNING);
    }
    close(sock);
}

static void dir_init(struct dir *d, int in_fd, int out_fd) {
    memset(d, 0, sizeof *d);
    d->in_fd = in_fd;
    d->out_fd = out_fd;
    d->due = calloc(opt.limit, sizeof *d->due);
    d->len = calloc(opt.limit, sizeof *d->len);
    /* untouched pages of this block cost no memory (overcommit) */
    d->buf = malloc((size_t)opt.limit * opt.slot);
    if (!d->due || !d->len || !d->buf) die("malloc");
}

/* Read every waiting packet (at most MAX_BATCH) of one direction and schedule it. */
static void receive(struct dir *d) {
    static unsigned char scratch[65536];
    for (int i = 0; i < MAX_BATCH; i++) {
        uint32_t tail = (uint32_t)((d->head + d->held) % opt.limit);
        int full = d->held >= opt.limit;
        unsigned char *p = full ? scratch : d->buf + (size_t)tail * opt.slot;
        ssize_t n = read(d->in_fd, p, full ? sizeof scratch : opt.slot);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            die("read tun");
        }
        uint64_t now = now_ns();
        d->rx++;
        if (full) { d->drop_full++; continue; }
        if (opt.loss_ppm && rnd() % 1000000u < opt.loss_ppm) { d->drop_loss++; continue; }
        uint64_t leaves = now;
        if (opt.rate_bps) {
            uint64_t start = d->link_free > now ? d->link_free : now;
            if (start - now > opt.queue) { d->drop_queue++; continue; }
            leaves = start + (uint64_t)n * 8u * 1000000000u / opt.rate_bps;
            d->link_free = leaves;
        }
        int64_t due = (int64_t)(leaves + opt.delay);
        if (opt.jitter) due += (int64_t)(rnd() % (2 * opt.jitter + 1)) - (int64_t)opt.jitter;
        if (due < (int64_t)leaves) due = (int64_t)leaves;
        if ((uint64_t)due < d->last_due) due = (int64_t)d->last_due;
        d->last_due = (uint64_t)due;
        d->due[tail] = (uint64_t)due;
        d->len[tail] = (uint32_t)n;
        d->held++;
        if (d->held > d->max_held) d->max_held = d->held;
    }
}

/* Write every packet of one direction that is due; returns the next due time or 0. */
static uint64_t send_due(struct dir *d) {
    uint64_t now = now_ns();
    while (d->held) {
        uint64_t due = d->due[d->head];
        if (due > now + opt.early) {
            now = now_ns();
            if (due > now + opt.early) return due - opt.early; /* when to wake up */
        }
        uint64_t late = now > due ? now - due : 0;
        if (now < due) d->early_ns_sum += due - now;
        d->late_ns_sum += late;
        if (late > d->late_ns_max) d->late_ns_max = late;
        if (late > 100000) d->late_over_100us++;
        if (late > 1000000) d->late_over_1ms++;
        uint32_t n = d->len[d->head];
        if (write(d->out_fd, d->buf + (size_t)d->head * opt.slot, n) == (ssize_t)n) {
            d->tx++;
            d->bytes += n;
        } else {
            d->tx_err++;
        }
        d->head = (d->head + 1) % opt.limit;
        d->held--;
    }
    return 0;
}

static void print_stats(struct dir *dirs) {
    const char *names[2] = {"client_to_server", "server_to_client"};
    for (int i = 0; i < 2; i++) {
        const char *sep = "";
        printf("%s\"%s\": {", i ? "}, " : "{", names[i]);
#define PRINT(name) printf("%s\"" #name "\": %" PRIu64, sep, dirs[i].name), sep = ", ";
        COUNTERS(PRINT)
    }
    printf("}}\n");
    fflush(stdout);
}

static uint64_t num(const char *s, const char *flag) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || !*s || s[0] == '-') {
        fprintf(stderr, "delayd: %s wants a non-negative integer, got %s\n", flag, s);
        exit(2);
    }
    return v;
}

static int serve(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-tun")) { opt.no_tun = 1; continue; }
        if (i + 1 >= argc) { fprintf(stderr, "delayd: %s wants a value\n", a); return 2; }
        const char *v = argv[++i];
        if (!strcmp(a, "--delay-us")) opt.delay = num(v, a) * 1000u;
        else if (!strcmp(a, "--jitter-us")) opt.jitter = num(v, a) * 1000u;
        else if (!strcmp(a, "--queue-us")) opt.queue = num(v, a) * 1000u;
        else if (!strcmp(a, "--rate-bps")) opt.rate_bps = num(v, a);
        else if (!strcmp(a, "--loss-ppm")) opt.loss_ppm = num(v, a);
        else if (!strcmp(a, "--seed")) opt.seed = num(v, a);
        else if (!strcmp(a, "--early-us")) opt.early = num(v, a) * 1000u;
        else if (!strcmp(a, "--limit")) opt.limit = (uint32_t)num(v, a);
        else if (!strcmp(a, "--mtu")) opt.mtu = (uint32_t)num(v, a);
        else if (!strcmp(a, "--client-addr")) opt.addr[0] = v;
        else if (!strcmp(a, "--server-addr")) opt.addr[1] = v;
        else { fprintf(stderr, "delayd: unknown option %s\n", a); return 2; }
    }
    if (opt.limit < 1 || opt.mtu < 576 || opt.mtu > 65535 || opt.loss_ppm > 1000000) {
        fprintf(stderr, "delayd: --limit >= 1, 576 <= --mtu <= 65535, --loss-ppm <= 1e6\n");
        return 2;
    }
    opt.slot = opt.mtu + 64;
    rng_state = opt.seed + 0x9E3779B97F4A7C15ULL; /* splitmix64: no weak start from a small seed */
    rng_state = (rng_state ^ (rng_state >> 30)) * 0xBF58476D1CE4E5B9ULL;
    rng_state = (rng_state ^ (rng_state >> 27)) * 0x94D049BB133111EBULL;
    rng_state ^= rng_state >> 31;
    if (!rng_state) rng_state = 1;

    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("PR_SET_PDEATHSIG");
    if (getppid() != parent) return 1; /* the parent is already gone */
    prctl(PR_SET_TIMERSLACK, 1UL);
    signal(SIGPIPE, SIG_IGN);

    int ns[2], tun[2];
    make_side(0, &ns[0], &tun[0]);
    make_side(1, &ns[1], &tun[1]);
    printf("ready %d %d %d\n", (int)getpid(), ns[0], ns[1]);
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u32 = 2;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0) die("epoll stdin");
    struct dir dirs[2];
    int tfd = -1;
    if (!opt.no_tun) {
        dir_init(&dirs[0], tun[0], tun[1]);
        dir_init(&dirs[1], tun[1], tun[0]);
        for (uint32_t i = 0; i < 2; i++) {
            ev.data.u32 = i;
            if (epoll_ctl(ep, EPOLL_CTL_ADD, tun[i], &ev) < 0) die("epoll tun");
        }
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (tfd < 0) die("timerfd_create");
        ev.data.u32 = 3;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev) < 0) die("epoll timerfd");
    } else {
        memset(dirs, 0, sizeof dirs);
    }

    char line[256];
    size_t used = 0;
    uint64_t armed = 0;
    for (;;) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            uint32_t id = evs[k].data.u32;
            if (id < 2) {
                receive(&dirs[id]);
            } else if (id == 3) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    die("read timerfd");
                armed = 0;
            } else {
                ssize_t r = read(0, line + used, sizeof line - 1 - used);
                if (r <= 0) return 0; /* the parent closed the pipe or died */
                used += (size_t)r;
                line[used] = 0;
                char *nl;
                while ((nl = strchr(line, '\n'))) {
                    *nl = 0;
                    if (!strcmp(line, "stats")) print_stats(dirs);
                    else if (!strcmp(line, "quit")) return 0;
                    size_t rest = used - (size_t)(nl + 1 - line);
                    memmove(line, nl + 1, rest);
                    used = rest;
                    line[used] = 0;
                }
                if (used >= sizeof line - 1) used = 0; /* a line too long: forget it */
            }
        }
        if (opt.no_tun) continue;
        uint64_t next = 0;
        for (int i = 0; i < 2; i++) {
            uint64_t due = send_due(&dirs[i]);
            if (due && (!next || due < next)) next = due;
        }
        if (next != armed) {
            struct itimerspec its = {.it_value = {.tv_sec = (time_t)(next / 1000000000u),
                                                  .tv_nsec = (long)(next % 1000000000u)}};
            if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
            armed = next;
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "serve")) return serve(argc - 2, argv + 2);
    fprintf(stderr, "usage: delayd serve [options]\n");
    return 2;
}
