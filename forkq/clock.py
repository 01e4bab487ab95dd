"""Redis's clock, readable in this process without a round trip per reading.

Every time that several processes must agree on (due times, lease expiry,
heartbeat staleness, periodic occurrences, the stats day, ``enqueued_at``) is
Redis's, never this host's ``time.time()`` (DESIGN.md §8): a host whose clock is
minutes off must not run a job early or reap a live pool.  Scripts that decide
read ``redis.call('TIME')`` themselves.  Python code that only needs to *write*
such a time (``enqueued_at``, ``failed_at``, a retry score, the day of a stats
counter) reads this clock: Redis's time taken from the last round trip that
returned it (a beat, or an explicit ``TIME``), carried forward with
``time.monotonic()``, so a wall-clock step on this host changes nothing.

Before the first observation it falls back to ``time.time()``; the Enqueuer and
every pool observe Redis's time before they write anything that depends on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

# Re-read Redis's time at least this often (monotonic drift versus Redis is ppm,
# but a long-lived producer should follow NTP corrections of the Redis host).
RESYNC_EVERY = 60.0
# How fast a reading's error is assumed to grow with its age (clock drift between
# this host's monotonic clock and Redis's clock: NTP keeps it below 100 ppm).
DRIFT = 1e-4


def parse_time(reply: Sequence[Any]) -> float:
    """A ``TIME`` reply (``[seconds, microseconds]``, as strings or ints) as epoch seconds."""
    return int(reply[0]) + int(reply[1]) / 1_000_000


class RedisClock:
    """Redis's time = the last observed Redis time + the monotonic time since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: tuple[float, float] | None = None  # (redis epoch, monotonic) of one instant
        self._error = float("inf")  # half the round trip of that reading
        self._observed = float("-inf")  # monotonic time of the last observation, kept or not

    def observe(self, redis_epoch: float, sent: float, received: float) -> None:
        """Record a Redis time read by a round trip sent and answered at these monotonic times.

        The server read its clock somewhere inside the round trip; the middle is
        the best guess (the error is at most half the round trip).  A reading
        replaces the current one only if it is at least as precise, counting the
        current one's error as growing with its age: a slow round trip on a loaded
        machine does not spoil a good reading.
        """
        error = max(0.0, received - sent) / 2
        mid = (sent + received) / 2
        with self._lock:
            self._observed = received
            if self._base is not None:
                current = self._error + (mid - self._base[1]) * DRIFT
                if error > current:
                    return
            self._base = (redis_epoch, mid)
            self._error = error

    def now(self) -> float:
        base = self._base
        if base is None:
            return time.time()
        return base[0] + (time.monotonic() - base[1])

    def age(self) -> float:
        """Seconds since the last observation (infinite before the first)."""
        return time.monotonic() - self._observed

    def sync(self, conn: redis.Redis) -> float:
        """``TIME`` round trips (the first may include connecting); returns Redis's time."""
        t = 0.0
        for _ in range(2):
            sent = time.monotonic()
            reply = conn.execute_command("TIME")
            received = time.monotonic()
            t = parse_time(reply)
            self.observe(t, sent, received)
        return t

    def ensure(self, conn: redis.Redis, max_age: float = RESYNC_EVERY) -> None:
        """Sync unless a recent observation exists (a producer calls this before writing times)."""
        if self.age() > max_age:
            self.sync(conn)


# One clock per process: every connection of a process talks to the same Redis
# deployment in practice, and code that writes times (retry scores, stats days)
# has no connection of its own to ask.
CLOCK = RedisClock()


def now() -> float:
    """Redis's time as best known in this process (epoch seconds)."""
    return CLOCK.now()
