"""When a message may go out: quiet hours, retry backoff and the send rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from renkei.delivery.config import QuietHours, Retry
from renkei.delivery.receipts import NoticeState


def in_quiet_hours(now: datetime, quiet: QuietHours) -> bool:
    return quiet.covers(now.astimezone(quiet.tz).time())


def retry_due(state: NoticeState | None, now: datetime, retry: Retry) -> bool:
    """True unless the notice failed and its backoff has not elapsed yet."""
    if state is None or not state.failures or state.last_failure_at is None:
        return True
    return now >= state.last_failure_at + timedelta(seconds=retry.wait_s(state.failures))


class RateLimiter:
    """At most `per_second` calls of :meth:`wait` per second (clock and sleep injectable)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / per_second
        self.clock, self.sleep = clock, sleep
        self._next: float | None = None

    def wait(self) -> None:
        now = self.clock()
        if self._next is not None and now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval
