"""User roles the scenarios share: a room's open-loop publisher and its subscriber."""

from __future__ import annotations

from typing import Any, ClassVar

from loadgen.users import RtbenchUser


class RoomPublisher(RtbenchUser):
    """Joins `room` and publishes to it at --publish-rate (receiving its own messages too)."""

    abstract = True
    room: ClassVar[str] = "broadcast"
    fixed_count = 1  # `fixed_from_option` sets it from --publishers

    def on_start(self) -> None:
        name = self.rt.user_name("pub", self.index)
        client = self.connect(name)
        self.listen(client, self.room)
        self.start_publisher(client, name, self.room)

    @classmethod
    def fixed_from_option(cls, environment: Any, **_: Any) -> None:
        """`init` listener: as many publishers as --publishers."""
        opts = environment.parsed_options
        if opts is not None:
            cls.fixed_count = max(1, int(opts.publishers))


class RoomSubscriber(RtbenchUser):
    abstract = True
    room: ClassVar[str] = "broadcast"

    def on_start(self) -> None:
        client = self.connect(self.rt.user_name("sub", self.index))
        self.listen(client, self.room)
