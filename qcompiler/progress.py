"""A minimal progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.done, self.start, self._last_decile, self._note = 0, time.perf_counter(), -1, ""
        self.tty = sys.stderr.isatty()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done = min(self.done + n, self.total)
        if not self.enabled:
            return
        self._note = note
        fraction = self.done / self.total
        elapsed = time.perf_counter() - self.start
        left = f" ~{elapsed / self.done * (self.total - self.done):.0f}s left" if 0 < self.done < self.total else ""
        line = f"{self.label} {'#' * int(20 * fraction):<20} {self.done}/{self.total} {elapsed:5.1f}s{left} {note}"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif int(fraction * 10) != self._last_decile:
            self._last_decile = int(fraction * 10)
            print(line, file=sys.stderr, flush=True)

    def close(self, note: str = "") -> None:
        """End the bar; a `note` (e.g. a held-out result) is printed on its last line."""
        if note and self.enabled and (note != self._note or self.done < self.total):
            self._last_decile = -1  # print the final line again, with the note
            self.advance(0, note)
        if self.enabled and self.tty:
            print(file=sys.stderr)
