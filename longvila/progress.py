"""Progress reporting for long work, decoupled from whoever displays it (a logger, Dagster's
context.log, a terminal). Libraries accept an optional `progress` callable and call it rarely."""

from __future__ import annotations

import time
from typing import Callable, Protocol


class ProgressFn(Protocol):
    def __call__(self, done: int, total: int | None, message: str) -> None: ...


def noop(done: int, total: int | None, message: str) -> None:  # noqa: ARG001
    return None


class Throttled:
    """Wrap a ProgressFn so that it fires at most every `interval` seconds (and always at the end)."""

    def __init__(self, fn: ProgressFn | None, interval: float = 5.0):
        self.fn = fn or noop
        self.interval = interval
        self._last = 0.0

    def __call__(self, done: int, total: int | None, message: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval or (total is not None and done >= total):
            self._last = now
            self.fn(done, total, message)


def printer(prefix: str = "") -> Callable[[int, int | None, str], None]:
    def _p(done: int, total: int | None, message: str) -> None:
        frac = f"{done}/{total}" if total else str(done)
        print(f"{prefix}{frac} {message}", flush=True)

    return _p
