from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientFrame(_message.Message):
    __slots__ = ("id", "join", "leave", "publish", "direct", "ping", "presence")
    ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    join: Join
    leave: Leave
    publish: Publish
    direct: Direct
    ping: Ping
    presence: PresenceQuery
    def __init__(self, id: _Optional[str] = ..., join: _Optional[_Union[Join, _Mapping]] = ..., leave: _Optional[_Union[Leave, _Mapping]] = ..., publish: _Optional[_Union[Publish, _Mapping]] = ..., direct: _Optional[_Union[Direct, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., presence: _Optional[_Union[PresenceQuery, _Mapping]] = ...) -> None: ...

class Join(_message.Message):
    __slots__ = ("room", "presence", "since")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    room: str
    presence: bool
    since: Position
    def __init__(self, room: _Optional[str] = ..., presence: _Optional[bool] = ..., since: _Optional[_Union[Position, _Mapping]] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("offset", "epoch")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    epoch: str
    def __init__(self, offset: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class Leave(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: str
    def __init__(self, room: _Optional[str] = ...) -> None: ...

class Publish(_message.Message):
    __slots__ = ("room", "data")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    room: str
    data: bytes
    def __init__(self, room: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Direct(_message.Message):
    __slots__ = ("to", "data")
    TO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    to: str
    data: bytes
    def __init__(self, to: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PresenceQuery(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, users: _Optional[_Iterable[str]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("conn", "frame")
    CONN_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    conn: str
    frame: ClientFrame
    def __init__(self, conn: _Optional[str] = ..., frame: _Optional[_Union[ClientFrame, _Mapping]] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("welcome", "ack", "message", "direct", "presence", "presence_state", "pong", "error", "gap")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_STATE_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    ack: Ack
    message: Message
    direct: DirectMessage
    presence: Presence
    presence_state: PresenceState
    pong: Pong
    error: Error
    gap: Gap
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., direct: _Optional[_Union[DirectMessage, _Mapping]] = ..., presence: _Optional[_Union[Presence, _Mapping]] = ..., presence_state: _Optional[_Union[PresenceState, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_frame_bytes", "max_rooms", "outbox_max_events", "outbox_max_bytes")
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ROOMS_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_frame_bytes: int
    max_rooms: int
    outbox_max_events: int
    outbox_max_bytes: int
    def __init__(self, max_frame_bytes: _Optional[int] = ..., max_rooms: _Optional[int] = ..., outbox_max_events: _Optional[int] = ..., outbox_max_bytes: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("conn", "user", "server", "limits", "inbox")
    CONN_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    INBOX_FIELD_NUMBER: _ClassVar[int]
    conn: str
    user: str
    server: str
    limits: Limits
    inbox: Position
    def __init__(self, conn: _Optional[str] = ..., user: _Optional[str] = ..., server: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., inbox: _Optional[_Union[Position, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("ref", "offset", "epoch")
    REF_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ref: str
    offset: int
    epoch: str
    def __init__(self, ref: _Optional[str] = ..., offset: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("room", "from_user", "data", "ts", "offset", "epoch")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    FROM_USER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    room: str
    from_user: str
    data: bytes
    ts: int
    offset: int
    epoch: str
    def __init__(self, room: _Optional[str] = ..., from_user: _Optional[str] = ..., data: _Optional[bytes] = ..., ts: _Optional[int] = ..., offset: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class DirectMessage(_message.Message):
    __slots__ = ("from_user", "to", "data", "ts", "offset", "epoch")
    FROM_USER_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    from_user: str
    to: str
    data: bytes
    ts: int
    offset: int
    epoch: str
    def __init__(self, from_user: _Optional[str] = ..., to: _Optional[str] = ..., data: _Optional[bytes] = ..., ts: _Optional[int] = ..., offset: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class Presence(_message.Message):
    __slots__ = ("room", "user", "status")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    room: str
    user: str
    status: str
    def __init__(self, room: _Optional[str] = ..., user: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class PresenceState(_message.Message):
    __slots__ = ("ref", "users")
    class UsersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    ref: str
    users: _containers.ScalarMap[str, bool]
    def __init__(self, ref: _Optional[str] = ..., users: _Optional[_Mapping[str, bool]] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("ref", "ts")
    REF_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    ref: str
    ts: int
    def __init__(self, ref: _Optional[str] = ..., ts: _Optional[int] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("room", "inbox", "from_offset", "offset", "epoch", "reason")
    ROOM_FIELD_NUMBER: _ClassVar[int]
    INBOX_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    room: str
    inbox: bool
    from_offset: int
    offset: int
    epoch: str
    reason: str
    def __init__(self, room: _Optional[str] = ..., inbox: _Optional[bool] = ..., from_offset: _Optional[int] = ..., offset: _Optional[int] = ..., epoch: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "ref")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    ref: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., ref: _Optional[str] = ...) -> None: ...
