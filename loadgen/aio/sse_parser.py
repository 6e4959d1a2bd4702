"""Moved to `loadgen.sse_parser` (shared with the gevent SSE client); kept for imports."""
from loadgen.sse_parser import *  # noqa: F403
