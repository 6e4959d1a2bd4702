/* nsexec: run a command in a network namespace that delayd holds.
 *
 *   nsexec NSFILE [--die-with-parent] -- ARGV...
 *
 * NSFILE is /proc/PID/fd/N (a descriptor of the namespace that delayd PID holds open) or
 * any other namespace file. With --die-with-parent the command gets SIGKILL when the
 * thread that started it ends (PR_SET_PDEATHSIG survives the exec below). The command
 * and its children carry RTBENCH_NET_ELEMENT=PID in their environment, so that a later
 * start can end them once that element is gone (bench/network/namespaces.py: orphans).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int die_with_parent = 0, i = 2;
    if (argc < 2) goto usage;
    for (; i < argc && strcmp(argv[i], "--"); i++) {
        if (!strcmp(argv[i], "--die-with-parent")) die_with_parent = 1;
        else goto usage;
    }
    if (i + 1 >= argc) goto usage;
    if (die_with_parent) {
        pid_t parent = getppid();
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) {
            perror("nsexec: PR_SET_PDEATHSIG");
            return 126;
        }
        if (getppid() != parent) return 1; /* the parent is already gone */
    }
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "nsexec: %s: %s (has the network ended?)\n", argv[1], strerror(errno));
        return 126;
    }
    if (setns(fd, CLONE_NEWNET) < 0) {
        fprintf(stderr, "nsexec: setns %s: %s\n", argv[1], strerror(errno));
        return 126;
    }
    close(fd);
    int element;
    char mark[32];
    if (sscanf(argv[1], "/proc/%d/", &element) == 1) {
        snprintf(mark, sizeof mark, "%d", element);
        setenv("RTBENCH_NET_ELEMENT", mark, 1);
    }
    execvp(argv[i + 1], argv + i + 1);
    fprintf(stderr, "nsexec: %s: %s\n", argv[i + 1], strerror(errno));
    return 127;
usage:
    fprintf(stderr, "usage: nsexec NSFILE [--die-with-parent] -- ARGV...\n");
    return 2;
}
