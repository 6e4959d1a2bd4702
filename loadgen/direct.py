"""Direct: user-to-user messages across replicas; each user holds several connections.

    locust -f loadgen/direct.py --headless -u 20 -r 20 -t 30s --conns-per-user 2 \\
        --publish-rate 5 --servers http://127.0.0.1:8001,http://127.0.0.1:8002

User i of a process talks to user i xor 1 (its pair). It opens --conns-per-user
connections, on consecutive replicas, each of which must receive every direct
message to that user; the first one sends, open-loop, at --publish-rate. The
publisher id of a stream is `<sender>><recipient>`, so sequence numbers count
per recipient and loss is exact.
"""

from __future__ import annotations

from loadgen import hooks
from loadgen.users import RtbenchUser

run = hooks.install("direct")


class Pair(RtbenchUser):
    def on_start(self) -> None:
        p = self.rt.p
        name = self.rt.user_name("d", self.index)
        partner = self.rt.user_name("d", self.index ^ 1)
        clients = [self.connect(name, server_index=self.index + k)
                   for k in range(p.conns_per_user)]
        for client in clients:
            self.listen(client, None)
        self.start_publisher(clients[0], f"{name}>{partner}", None, to=partner)
