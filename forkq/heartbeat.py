"""The beat every pool writes every few seconds (DESIGN.md §3 "Heartbeat").

One pipeline: the liveness beat (``beat.lua``: the ``pools`` score from Redis's
TIME and the renewal of the leases of every job the pool holds), gocraft's
``pool:<id>``, Sidekiq's ``processes``/``<id>`` and ``<id>:work`` (+ ``:workers``),
gocraft's worker observations, and the buffered stats.  The TIME it returns keeps
this process's ``clock`` on Redis's time.

Who beats for a prefork child: the child's own housekeeper thread AND its master
(``beat_for``).  The child's beat carries what only the child knows (running
jobs, observations, stats).  But a thread can be starved: a job that holds the
GIL inside C code for 30 s stops every other thread of its process, the beat
thread included, and a pool judged by its own beats alone would be reaped while
its job is still running (and the job would run twice).  The master is a
separate, single-threaded process that knows by ``waitpid`` that its children
are alive, so every beat interval it has a short-lived helper process
(``recovery.py``: the master's loop never waits on Redis) refresh their ``pools``
score and leases:
a child is presumed dead only when its whole host (master included) stopped
beating, which is what the staleness reaper is for.  A child that really dies
is released by its master at once (SIGCHLD), not by staleness.  An in-process
pool (``pool.start()``) has no master: only its own beats keep it alive, so its
jobs should not hold the GIL longer than ``stale_after``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psutil
import redis

from . import clock, scripts
from .executor import RUNNING, Slot
from .job_metrics import JobCounts, JobMetrics
from .keys import Keys, worker_id
from .stats import StatsBuffer

log = logging.getLogger("forkq.heartbeat")

LIVENESS_TTL = 60
# Slow-changing records are refreshed every third of their TTL, not every beat: the
# `processes` membership and the process hash TTL (60 s: every 20 s), gocraft's pool
# hash (600 s TTL; refreshed every 60 s since it only feeds the admin listing).
REFRESH_PERIOD = LIVENESS_TTL / 3
POOL_HASH_PERIOD = 60.0


@dataclass(frozen=True, kw_only=True)
class PoolInfo:
    identity: str
    hostname: str
    pid: int
    started_at: float
    concurrency: int
    job_names: tuple[str, ...]
    tag: str = ""
    # Flow limits of the names that have any: (name, max_concurrency, rate_limit,
    # group_concurrency), written as name -> {"max_concurrency": N, "rate_limit": "N/s",
    # "group_concurrency": G}.
    limits: tuple[tuple[str, int, str, int], ...] = ()

    @classmethod
    def create(cls, *, identity: str, concurrency: int, job_names: Sequence[str], tag: str = "",
               limits: Sequence[tuple[str, int, str, int]] = ()) -> PoolInfo:
        return cls(identity=identity, hostname=identity.split(":", 1)[0], pid=os.getpid(),
                   started_at=time.time(), concurrency=concurrency,
                   job_names=tuple(sorted(job_names)), tag=tag,
                   limits=tuple(sorted(x for x in limits if x[1] or x[2] or x[3])))

    def sidekiq_info(self) -> bytes:
        from . import __version__  # the package is fully imported by the time a pool beats

        return orjson.dumps({
            "hostname": self.hostname, "started_at": self.started_at, "pid": self.pid,
            "tag": self.tag, "concurrency": self.concurrency, "queues": list(self.job_names),
            "labels": ["forkq"], "identity": self.identity,
            # Sidekiq 7+'s Busy page: the version it shows, and one "capsule" whose
            # weights are the queues (0 = no weighted random pick, as Sidekiq's strict order).
            "version": f"forkq {__version__}", "weights": [dict.fromkeys(self.job_names, 0)],
            "embedded": False,
            # forkq's own (Sidekiq ignores it): what `forkq queues` and the dashboard show.
            "limits": {n: {"max_concurrency": m, "rate_limit": r or None, "group_concurrency": g}
                       for n, m, r, g in self.limits},
        })


class Heartbeat:
    def __init__(self, *, conn: redis.Redis, keys: Keys, info: PoolInfo, slots: Sequence[Slot],
                 stats: StatsBuffer, leased: frozenset[str], lease_ttl: float,
                 interval: float = 5.0, metrics: JobMetrics | None = None,
                 group_leases: bool = False) -> None:
        self._metrics = metrics
        # Whether this pool has names with group_concurrency (their group leases are renewed).
        self._group_leases = group_leases
        self._metrics_refused = False
        self._conn = conn
        self._keys = keys
        self.info = info
        self._slots = slots
        self._stats = stats
        self._leased = leased
        self._lease_ttl = lease_ttl
        self._proc = psutil.Process()
        self._sidekiq_info = info.sidekiq_info()
        # Redis's time of the last successful beat, and the monotonic time it returned.
        self.last_beat = 0.0
        self.last_beat_mono = float("-inf")
        # Set by the runtime once it knows the server (Redis >= 7 beats at maxmemory).
        self.allow_oom = False
        self._had_work = True
        self._beats = 0
        self._refresh_every = max(1, int(REFRESH_PERIOD / max(interval, 0.001)))
        self._pool_hash_every = max(1, int(POOL_HASH_PERIOD / max(interval, 0.001)))
        # Slots whose worker:<id> observation the last beat wrote; they are deleted
        # when the slot is idle again (gocraft readers take the hash as "busy").
        self._observed: set[int] = set()

    def beat(self, *, quiet: bool = False) -> str | None:
        """Write the beat; return a signal the Web UI left for this pool (``TSTP``/``TERM``)."""
        t = clock.now()
        keys, ident = self._keys, self.info.identity
        running = [s for s in self._slots if s.state == RUNNING and s.job is not None]
        pipe = self._conn.pipeline(transaction=False)
        # What reapers judge comes first: the pools score (Redis's TIME) and the leases
        # of every job this pool holds.  At maxmemory only a script flagged allow-oom
        # may write (Redis >= 7).
        liveness = scripts.beat(keys, identities=[ident], leased_names=sorted(self._leased),
                                lease_ttl=self._lease_ttl, allow_oom=self.allow_oom,
                                group_leases=self._group_leases)
        scripts.add_to_pipeline(pipe, liveness)
        # Records that change slowly are refreshed every few beats (well inside their
        # TTLs): an idle pool's beat stays at a handful of commands.
        refresh = self._beats % self._refresh_every == 0
        if self._beats % self._pool_hash_every == 0:
            pipe.hset(keys.pool(ident), mapping={
            "worker_pool_id": ident,
            "started_at": int(self.info.started_at),
            "heartbeat_at": int(t),
            "job_names": ",".join(self.info.job_names),
            "concurrency": self.info.concurrency,
            "host": self.info.hostname,
            "pid": self.info.pid,
            "worker_ids": ",".join(worker_id(ident, s.index) for s in self._slots),
            })
            pipe.expire(keys.pool(ident), LIVENESS_TTL * 10)
        if refresh:
            pipe.sadd(keys.processes, ident)
        try:
            rss_kb = self._proc.memory_info().rss // 1024
        except psutil.Error:
            rss_kb = 0
        pipe.hset(keys.process(ident), mapping={
            "info": self._sidekiq_info, "busy": len(running), "beat": t,
            "quiet": "true" if quiet else "false", "rss": rss_kb, "rtt_us": 0,
        })
        if refresh:
            pipe.expire(keys.process(ident), LIVENESS_TTL)
        signal_at = len(pipe)
        pipe.rpop(keys.process_signals(ident))
        work_key, workers_key = keys.process_work(ident), keys.process_workers(ident)
        # An idle pool whose last beat had no work has nothing to clear: an idle
        # beat stays at five commands.
        if running or self._had_work:
            pipe.delete(work_key, workers_key)
        self._had_work = bool(running)
        now_observed = {s.index for s in running}
        finished = self._observed - now_observed
        if finished:
            pipe.delete(*(keys.worker(worker_id(ident, i)) for i in finished))
        if running:
            work = {}
            for s in running:
                job = s.job
                tid = format(s.index, "x")
                work[tid] = orjson.dumps({"queue": s.queue, "payload": s.payload.decode("utf-8", "replace"),
                                          "run_at": int(s.started_at)})
                if job is None:
                    continue
                wkey = keys.worker(worker_id(ident, s.index))
                pipe.hset(wkey, mapping={
                    "job_name": job.name, "job_id": job.id, "started_at": int(s.started_at),
                    "args": orjson.dumps(job.args),
                    "checkin": job._checkin or "",
                    "checkin_at": int(job._checkin_at) if job._checkin_at else 0,
                })
                pipe.expire(wkey, LIVENESS_TTL)
            pipe.hset(work_key, mapping=work)
            pipe.hset(workers_key, mapping=work)
            pipe.expire(work_key, LIVENESS_TTL)
            pipe.expire(workers_key, LIVENESS_TTL)
        taken = self._stats.queue_flush(pipe, keys, t)
        # Sidekiq 7's job metrics go last: a refusal of theirs (an older ACL line without
        # HINCRBY/BITFIELD) must not fail the beat that keeps this pool alive.
        metrics_at = len(pipe)
        mtaken = self._queue_metrics(pipe, t)
        sent = time.monotonic()
        try:
            results = self._send(pipe, {0: liveness}, taken, mtaken, metrics_at)
        except redis.RedisError:
            self._had_work = True
            raise
        received = time.monotonic()
        self.last_beat = clock.parse_time(results[0])
        self.last_beat_mono = received
        clock.CLOCK.observe(self.last_beat, sent, received)
        self._beats += 1
        self._observed = now_observed
        sig = results[signal_at]
        return sig.decode("utf-8", "replace") if sig else None

    def forget(self) -> None:
        """Delete this pool's observations (at stop): none of its workers is busy any more."""
        ident = self.info.identity
        self._conn.delete(*(self._keys.worker(worker_id(ident, s.index)) for s in self._slots))
        self._observed = set()

    def flush_stats(self) -> None:
        pipe = self._conn.pipeline(transaction=False)
        t = clock.now()
        taken = self._stats.queue_flush(pipe, self._keys, t)
        metrics_at = len(pipe)
        mtaken = self._queue_metrics(pipe, t)
        if taken != (0, 0) or mtaken:
            self._send(pipe, {}, taken, mtaken, metrics_at)

    def _send(self, pipe: redis.client.Pipeline, calls: dict[int, scripts.Call],
              taken: tuple[int, int], mtaken: dict[str, JobCounts],
              metrics_at: int) -> list[Any]:
        """Execute a beat or flush pipeline; on failure the counts it carried go back
        to their buffers (sent with the next one).  Job metrics come after
        ``metrics_at`` and may be refused alone (see ``_metrics_written``)."""
        try:
            results = scripts.execute_pipeline(self._conn, pipe, calls)
            errors = [r for r in results[:metrics_at] if isinstance(r, Exception)]
            if errors:
                raise errors[0]
            self._metrics_written(results[metrics_at:])
            return results
        except redis.RedisError:
            self._stats.give_back(*taken)
            if self._metrics is not None and mtaken:
                self._metrics.give_back(mtaken)
            raise

    def _queue_metrics(self, pipe: redis.client.Pipeline, t: float) -> dict[str, JobCounts]:
        if self._metrics is None or self._metrics_refused:
            return {}
        return self._metrics.queue_flush(pipe, self._keys, t)

    def _metrics_written(self, results: list[object]) -> None:
        """Sidekiq 7's metrics refused (e.g. ACL): say so once and stop writing them."""
        err = next((r for r in results if isinstance(r, Exception)), None)
        if err is not None and not self._metrics_refused:
            self._metrics_refused = True
            log.warning("Sidekiq job metrics are not written any more: Redis refused them (%s); "
                        "the ACL line in docs/RELIABILITY.md lists +hincrby +bitfield", err)

def beat_for(conn: redis.Redis, keys: Keys, identities: Sequence[str], *, leased_names: Iterable[str],
             lease_ttl: float, allow_oom: bool = False, group_leases: bool = False) -> float:
    """A master's beat for its live children (see the module docstring): refresh their
    ``pools`` scores and the leases of their jobs; never register a pool.  Returns
    Redis's time (and keeps this process's clock on it)."""
    call = scripts.beat(keys, identities=identities, leased_names=leased_names, lease_ttl=lease_ttl,
                        allow_oom=allow_oom, only_registered=True, group_leases=group_leases)
    sent = time.monotonic()
    reply = scripts.run_one(conn, call)
    t = clock.parse_time(reply)
    clock.CLOCK.observe(t, sent, time.monotonic())
    return t
