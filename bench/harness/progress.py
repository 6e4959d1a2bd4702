"""Progress of a run: which transport and scenario, which step, elapsed and remaining time.

On a terminal one line is redrawn in place with a bar; otherwise (CI, a pipe, a
log file) a plain line is printed when a step starts or changes phase, so logs
stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Tracks planned vs done work; `update` draws, `note` prints a message line."""

    def __init__(self, planned: list[float], stream: TextIO | None = None,
                 tty: bool | None = None) -> None:
        self.planned = planned
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.index = 0
        self.step_started = self.started
        self.label = ""
        self.phase = ""
        self._drawn = False

    def start_step(self, index: int, label: str) -> None:
        self.index = index
        self.label = label
        self.step_started = time.monotonic()
        self.phase = ""

    def remaining(self) -> float:
        in_step = time.monotonic() - self.step_started
        current = max(0.0, self.planned[self.index] - in_step) if self.planned else 0.0
        return current + sum(self.planned[self.index + 1:])

    def fraction(self) -> float:
        total = sum(self.planned)
        if total <= 0:
            return 1.0
        done = sum(self.planned[:self.index])
        in_step = min(time.monotonic() - self.step_started, self.planned[self.index])
        return min(1.0, (done + in_step) / total)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        filled = int(self.fraction() * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        return (f"[{bar}] {self.index + 1}/{len(self.planned)} {self.label} {self.phase}"
                f"  elapsed {_clock(elapsed)}  remaining ~{_clock(self.remaining())}")

    def update(self, phase: str) -> None:
        changed = phase != self.phase
        self.phase = phase
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
            self._drawn = True
        elif changed:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line that stays (a warning, a finished step) above the redrawn bar."""
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
