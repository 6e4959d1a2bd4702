"""Sans-I/O pieces of the SSE client: the event-stream line parser and chunk framing size."""

from __future__ import annotations


class SseParser:
    """Sans-I/O event-stream parser (WHATWG HTML 9.2.6) for the fields rtbench uses.

    Feed it lines (with or without their CR/LF); it returns the `data` of each
    completed event (multi-line data joined with LF) and counts the bytes it saw.
    """

    __slots__ = ("_data", "nbytes")

    def __init__(self) -> None:
        self._data: list[bytes] = []
        self.nbytes = 0

    def line(self, raw: bytes) -> bytes | None:
        self.nbytes += len(raw)
        line = raw.rstrip(b"\r\n")
        if not line:
            if not self._data:
                return None
            data = b"\n".join(self._data)
            self._data = []
            return data
        if line[0] == 0x3A:  # ":" comment (keepalive)
            return None
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value[:1] == b" " else value)
        return None  # `event:` repeats the JSON `type`; `id:`/`retry:` unused in v1


def chunk_overhead(n: int) -> int:
    """Chunked transfer-encoding bytes around an `n`-byte chunk (hex size CRLF ... CRLF)."""
    return len(f"{n:x}") + 4
