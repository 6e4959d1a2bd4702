"""Chat: rooms of --room-size members; every member publishes to its room at --publish-rate.

    locust -f loadgen/chat.py --headless -u 100 -r 50 -t 30s --room-size 10 \\
        --publish-rate 2 --transport sse --servers http://127.0.0.1:8001,http://127.0.0.1:8002

Member i of a process is in room i // room-size and on replica i mod #replicas,
so every room spans the replicas. Rooms are per load-generator process (names
carry host and pid): distributed runs never mix members of two processes.
"""

from __future__ import annotations

from loadgen import hooks
from loadgen.users import RtbenchUser

run = hooks.install("chat")


class Member(RtbenchUser):
    def on_start(self) -> None:
        p = self.rt.p
        room = f"chat-{self.rt.tag}-{self.index // p.room_size}"
        name = self.rt.user_name("m", self.index)
        client = self.connect(name)
        self.listen(client, room)
        self.start_publisher(client, name, room)
