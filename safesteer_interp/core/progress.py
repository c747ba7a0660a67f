"""Progress a person can follow in a log file: done / total with elapsed and remaining time, at most every 30 s.

A rich bar redraws in place and leaves nothing in `run ... > run.log`; `log_ticks` writes a plain line instead (the
first tick, then one per `every` seconds, and the last), through whatever `log` the caller prints with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def log_ticks(log: Callable[[str], None], what: str, every: float = 30.0) -> Callable[[int], Callable[[], None]]:
    """A stage's `progress(total) -> tick` that logs "what: done/total, elapsed, ~remaining"."""
    def start(total: int) -> Callable[[], None]:
        began, last, done = time.perf_counter(), [-float("inf")], [0]

        def tick() -> None:
            done[0] += 1
            now = time.perf_counter()
            if now - last[0] >= every or done[0] == total:
                last[0] = now
                elapsed = now - began
                left = elapsed / done[0] * (total - done[0])
                log(f"  {what}: {done[0]}/{total}, {elapsed:.0f} s elapsed, ~{left:.0f} s left")
        return tick
    return start


@contextmanager
def timed(seconds: dict[str, float], step: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Adds the wall time of the block to `seconds[step]` (a stage's time by step, for its record and the report)
    and, with `log`, says when the step is done and how long it took."""
    began = time.perf_counter()
    try:
        yield
    finally:
        seconds[step] = round(seconds.get(step, 0.0) + time.perf_counter() - began, 1)
        if log is not None:
            log(f"  {step}: done in {time.perf_counter() - began:.0f} s")


__all__ = ["log_ticks", "timed"]
