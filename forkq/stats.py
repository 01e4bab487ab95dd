"""Sidekiq counters, buffered in memory and flushed with the heartbeat.

Counting costs an integer add per ack batch; Redis sees two INCRBYs per counter
per beat, not a command per job.  A SIGKILLed child loses at most one beat of
counts (as Sidekiq does); jobs are never lost with it.
"""

from __future__ import annotations

import threading

import redis

from . import clock
from .keys import Keys

# Sidekiq keeps per-day counters for five years.
DAY_TTL = 5 * 365 * 24 * 3600


class StatsBuffer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processed = 0
        self._failed = 0
        self.total_processed = 0  # since start, for titles and recycling

    def add(self, processed: int, failed: int) -> None:
        with self._lock:
            self._processed += processed
            self._failed += failed
            self.total_processed += processed

    def take(self) -> tuple[int, int]:
        with self._lock:
            p, f = self._processed, self._failed
            self._processed = self._failed = 0
        return p, f

    def give_back(self, processed: int, failed: int) -> None:
        """Put counts back after a failed flush, so the next beat sends them."""
        with self._lock:
            self._processed += processed
            self._failed += failed

    def queue_flush(self, pipe: redis.client.Pipeline, keys: Keys, now: float | None = None) -> tuple[int, int]:
        """Add the INCRBYs to a pipeline; return what was taken (to give back on error)."""
        p, f = self.take()
        day = keys.today(clock.now() if now is None else now)  # Redis's day, not this host's
        if p:
            pipe.incrby(keys.stat_processed, p)
            pipe.incrby(keys.stat_processed_day(day), p)
            pipe.expire(keys.stat_processed_day(day), DAY_TTL)
        if f:
            pipe.incrby(keys.stat_failed, f)
            pipe.incrby(keys.stat_failed_day(day), f)
            pipe.expire(keys.stat_failed_day(day), DAY_TTL)
        return p, f
