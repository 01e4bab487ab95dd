"""Sidekiq 7's per-minute job metrics, accumulated in memory and written with the beat.

Sidekiq 7+'s Metrics page reads, per UTC minute, the hash ``j|YYYYMMDD|H:M`` with
``<class>|p`` (executions), ``<class>|f`` (failures) and ``<class>|ms`` (milliseconds
spent in successful executions), and per class a 26-bucket histogram of u16
BITFIELD counters ``<class>-DD-HH:M`` (sidekiq/metrics/tracking.rb, shared.rb).
Recording a job is an in-memory dict update under a lock (no Redis command per
job); :meth:`JobMetrics.queue_flush` adds the HINCRBYs/BITFIELDs to the
heartbeat's pipeline, so Redis sees a few commands per job name per beat, not per
job.  A SIGKILLed child loses at most one beat of metrics (as Sidekiq does).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

import redis

from .keys import Keys

# Upper bounds (ms) of Sidekiq's histogram buckets; the 26th is "Slow".
BUCKET_MS = (20, 30, 45, 65, 100, 150, 225, 335, 500, 750, 1100, 1700, 2500, 3800, 5750,
             8500, 13000, 20000, 30000, 45000, 65000, 100000, 150000, 225000, 335000)
N_BUCKETS = len(BUCKET_MS) + 1
# Sidekiq's TTLs for both records (SHORT_TERM, HISTOGRAM_TTL).
METRICS_TTL = 8 * 3600


def bucket_of(ms: float) -> int:
    """Sidekiq's bucket: the first whose bound is above ``ms``."""
    return bisect.bisect_right(BUCKET_MS, ms)


class JobCounts:
    __slots__ = ("p", "f", "ms", "buckets")

    def __init__(self) -> None:
        self.p = 0
        self.f = 0
        self.ms = 0
        self.buckets = [0] * N_BUCKETS


class JobMetrics:
    """Per-job-name execution counts, success milliseconds and histograms since the last flush."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, JobCounts] = defaultdict(JobCounts)
        # Keys this process has set a TTL on already: one EXPIRE per key (a minute's
        # records), not one per beat.
        self._expired: set[str] = set()

    def record(self, name: str, seconds: float, failed: bool) -> None:
        """One finished execution (Sidekiq times successes only, counts both)."""
        with self._lock:
            c = self._by_name[name]
            c.p += 1
            if failed:
                c.f += 1
            else:
                ms = int(seconds * 1000)
                c.ms += ms
                c.buckets[bucket_of(ms)] += 1

    def take(self) -> dict[str, JobCounts]:
        with self._lock:
            out, self._by_name = self._by_name, defaultdict(JobCounts)
        return out

    def give_back(self, taken: dict[str, JobCounts]) -> None:
        """Merge counts back after a failed flush, so the next beat sends them (and the
        TTLs that flush may not have set)."""
        self._expired.clear()
        with self._lock:
            for name, t in taken.items():
                c = self._by_name[name]
                c.p += t.p
                c.f += t.f
                c.ms += t.ms
                c.buckets = [a + b for a, b in zip(c.buckets, t.buckets, strict=True)]

    def queue_flush(self, pipe: redis.client.Pipeline, keys: Keys, now: float) -> dict[str, JobCounts]:
        """Add this minute's writes to ``pipe``; return what was taken (to give back on error).
        Called by one thread at a time (the heartbeat's)."""
        taken = self.take()
        if not taken:
            return taken
        jkey = keys.job_metrics(now)
        if len(self._expired) > 10_000:  # minutes long past; their keys expire on their own
            self._expired.clear()
        for name, c in taken.items():
            pipe.hincrby(jkey, name + "|p", c.p)
            if c.f:
                pipe.hincrby(jkey, name + "|f", c.f)
            if c.ms or c.p > c.f:
                pipe.hincrby(jkey, name + "|ms", c.ms)
            if any(c.buckets):
                hkey = keys.job_histogram(name, now)
                args: list[str | int] = [hkey, "OVERFLOW", "SAT"]
                for i, n in enumerate(c.buckets):
                    if n:
                        args += ["INCRBY", "u16", f"#{i}", n]
                pipe.execute_command("BITFIELD", *args)
                self._expire_once(pipe, hkey)
        self._expire_once(pipe, jkey)
        return taken

    def _expire_once(self, pipe: redis.client.Pipeline, key: str) -> None:
        if key not in self._expired:
            self._expired.add(key)
            pipe.expire(key, METRICS_TTL)
