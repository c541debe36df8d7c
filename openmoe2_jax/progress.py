"""Progress lines for long loops, as training prints them: `what: done/total unit | rate | ETA`.

Imports nothing from the project (the bottom layer): eval, sampling, benchmarks and sweeps all use it.
"""
from __future__ import annotations

import sys
import time


def format_seconds(s: float) -> str:
    """1h02m, 3m07s."""
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def to_stderr(line: str) -> None:
    """Progress goes to stderr, so that what a command prints on stdout (JSON, samples) stays clean."""
    print(line, file=sys.stderr, flush=True)


class Progress:
    """Call with the count done so far (and the total, where only the loop knows it); prints at most
    one line every `every_seconds`, and always the line of the last item (done == total).

      progress = Progress("eval text", total=len(batches), unit="batches")
      for i, b in enumerate(batches): ...; progress(i + 1)
    """

    def __init__(self, what: str, total: int, unit: str, log=to_stderr, every_seconds: float = 10.0,
                 clock=time.monotonic):
        self.what, self.total, self.unit, self.log = what, total, unit, log
        self.every, self.clock = every_seconds, clock
        self.start = self.last = clock()

    def __call__(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        now = self.clock()
        if done < self.total and now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        self.log(f"{self.what}: {done:,}/{self.total:,} {self.unit} | {rate:,.2f} {self.unit}/s | "
                 f"{'ETA ' + format_seconds(eta) if done < self.total else 'done in ' + format_seconds(elapsed)}")
