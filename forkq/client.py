"""Admin client: inspect and repair a running forkq installation (gocraft/work's ``Client``).

Everything here reads or writes the Sidekiq-compatible layout of DESIGN.md §2,
so what this client shows is what Sidekiq's Web UI shows, and the other way
round.  Nothing here is on the job hot path: clarity beats round trips, but
each method still batches its reads in pipelines.

Differences from gocraft/work, on purpose:

* Scores are float epoch seconds (forkq and Sidekiq write sub-second scores).
  ``delete_*``/``retry_*`` accept the exact float shown by a listing, or a whole
  number of seconds as gocraft's int64 API does: a whole number matches any
  score within that second.  ``None`` searches the whole set by job id.
* ``dead_jobs`` lists the newest death first (what an operator wants to see);
  ``retry_jobs`` and ``scheduled_jobs`` list the soonest first, as gocraft.
* ``retry_dead_job`` follows gocraft: the job goes back to the *end* of its
  queue with its failure count, error and ``failed_at`` cleared, so it gets its
  full ``max_fails`` again (Sidekiq's Web UI instead decrements ``retry_count``
  by one, a single extra attempt).  Its ``recovered`` (poison) count is cleared too,
  and so are its unique-job fields: it holds no guard, so it must not release one.

(Over 400 lines on purpose: gocraft's whole admin Client API surface (dead/retry/scheduled pages, deletes, retries, queues, heartbeats, observations, stats).)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import orjson
import redis

from . import job as jobcodec
from . import results, scripts
from .batch import BatchStatus
from .connection import ConnectionSpec, publish, sharded_pubsub
from .errors import ConfigError, ForkqError, NotDeleted, NotRetried
from .keys import Keys, field_holds_jid, validate_job_name, worker_sort_key
from .results import JobResult

PAGE_SIZE = 20
# Entries read per round trip when a whole zset is walked (search by jid, retry all).
_SCAN_CHUNK = 500
# Rounds of cancel.lua when pools or queues appear after the listing (Client._where).
_STALE_RETRIES = 5

# Fields cleared when a dead job is retried (gocraft clears fails/err/failed_at).  A
# retried job holds no unique guard (it was released when the job first started), so
# it must not release, when taken, a guard that a newer job with its arguments holds.
_RESET_ON_RETRY = ("retry_count", "error_message", "error_class", "error_backtrace", "failed_at",
                   "retried_at", "recovered", "killed", "unique", "unique_key")


def as_text(value: Any) -> str:
    """A Redis reply (bytes, str, None) as text, for display."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _num(value: Any, default: float = 0.0) -> float:
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _ts(value: Any) -> float:
    """Epoch seconds of a timestamp field, float seconds (forkq, Sidekiq <= 7) or integer
    milliseconds (Sidekiq 8); 0.0 when absent or not a number."""
    try:
        return jobcodec.timestamp(value)
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any, default: int = 0) -> int:
    return int(_num(value, float(default)))


# ---------------------------------------------------------------------------
# Values returned by the client.  Frozen: they are snapshots, not live handles.
# ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class JobEntry:
    """A job stored in ``schedule``, ``retry`` or ``dead``, with gocraft's Job fields.

    ``args`` are forkq's keyword arguments (the single JSON object in the
    Sidekiq ``args`` list); ``positional_args`` holds a Sidekiq client's plain
    list instead.  ``payload`` is the exact member bytes stored in Redis.
    """

    name: str
    id: str
    queue: str
    args: dict[str, Any]
    positional_args: tuple[Any, ...]
    fails: int
    last_err: str
    error_class: str
    error_message: str
    failed_at: float | None
    enqueued_at: float
    created_at: float
    payload: bytes = field(repr=False)
    # Sidekiq's ``error_backtrace`` (innermost frame first), when one is stored.
    backtrace: tuple[str, ...] = ()

    @property
    def jid(self) -> str:
        return self.id

    @property
    def job(self) -> jobcodec.Job:
        """The stored job as the value a handler would receive."""
        return jobcodec.Job.from_data(jobcodec.decode(self.payload))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (payload as text, positional args as a list)."""
        d = asdict(self)
        d["payload"] = self.payload.decode("utf-8", "replace")
        d["positional_args"] = list(self.positional_args)
        d["backtrace"] = list(self.backtrace)
        return d

    @staticmethod
    def fields_of(member: bytes) -> dict[str, Any]:
        """Constructor kwargs for one zset member; a member that is not a job still lists."""
        try:
            data = jobcodec.decode(member)
        except jobcodec.MalformedPayload as exc:
            return {"name": "", "id": "", "queue": "", "args": {}, "positional_args": (),
                    "fails": 0, "last_err": str(exc), "error_class": "MalformedPayload",
                    "error_message": str(exc), "failed_at": None, "enqueued_at": 0.0,
                    "created_at": 0.0, "payload": member}
        job = jobcodec.Job.from_data(data)
        queue = data.get("queue")
        failed_at = data.get("failed_at")
        return {
            "name": job.name, "id": job.id,
            "queue": queue if isinstance(queue, str) and queue else job.name,
            "args": dict(job.args), "positional_args": tuple(job.positional_args),
            "fails": job.fails, "last_err": as_text(data.get("error_message")),
            "error_class": as_text(data.get("error_class")),
            "error_message": as_text(data.get("error_message")),
            "failed_at": _ts(failed_at) if failed_at is not None else None,
            "enqueued_at": _ts(data.get("enqueued_at")),
            "created_at": _ts(data.get("created_at")),
            "payload": member,
            "backtrace": tuple(jobcodec.backtrace_of(data) or ()),
        }


@dataclass(frozen=True, kw_only=True)
class DeadJob(JobEntry):
    died_at: float


@dataclass(frozen=True, kw_only=True)
class RetryJob(JobEntry):
    retry_at: float


@dataclass(frozen=True, kw_only=True)
class ScheduledEntry(JobEntry):
    """A job in ``schedule``: like ``forkq.ScheduledJob`` it has ``run_at`` and ``job``."""

    run_at: float


@dataclass(frozen=True, kw_only=True)
class Queue:
    """gocraft's Queue: ``latency`` = seconds since the next job to run was enqueued."""

    job_name: str
    count: int
    latency: float
    paused: bool
    # Whether a live pool lists this name (Sidekiq's process ``info.queues``).
    served: bool = True
    # The limits live pools declare for it (0 / None: none), and running jobs under
    # max_concurrency (its leases).
    max_concurrency: int = 0
    rate_limit: str | None = None
    running: int = 0
    group_concurrency: int = 0
    # Fair groups (enqueue(..., group=)): how many groups have jobs waiting, how many of
    # ``count`` are in them, and the largest few (group, waiting).  ``count`` counts jobs,
    # not the groups' tokens in queue:<name>.
    groups: int = 0
    grouped: int = 0
    largest_groups: tuple[tuple[str, int], ...] = ()

    @property
    def limits_text(self) -> str:
        """``max 5 (3 running), 100/s, 2 per group``, or ``-`` (CLI and dashboard)."""
        parts = []
        if self.max_concurrency:
            parts.append(f"max {self.max_concurrency} ({self.running} running)")
        if self.rate_limit:
            parts.append(self.rate_limit)
        if self.group_concurrency:
            parts.append(f"{self.group_concurrency} per group")
        return ", ".join(parts) or "-"


@dataclass(frozen=True, kw_only=True)
class GroupInfo:
    """One fair group of a job name (``Client.groups``)."""

    group: str
    count: int       # jobs waiting in the group
    running: int     # jobs holding a group lease (names with group_concurrency), else 0
    parked: bool     # at its group_concurrency cap: skipped until a lease is released


@dataclass(frozen=True, kw_only=True)
class _Sizes:
    """What ``Client._sizes`` reads of one name: jobs waiting, the next one, its groups."""

    count: int
    oldest: bytes | None
    groups: list[GroupInfo]


@dataclass(frozen=True, kw_only=True)
class WorkerPoolHeartbeat:
    """gocraft's WorkerPoolHeartbeat, read from ``pools`` + ``pool:<identity>``."""

    worker_pool_id: str
    started_at: int
    heartbeat_at: int
    job_names: tuple[str, ...]
    concurrency: int
    host: str
    pid: int
    worker_ids: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class WorkerObservation:
    """gocraft's WorkerObservation; job fields are empty when the worker is idle."""

    worker_id: str
    worker_pool_id: str
    is_busy: bool
    job_name: str = ""
    job_id: str = ""
    started_at: int = 0
    args_json: str = ""
    checkin: str = ""
    checkin_at: int = 0

    @property
    def args(self) -> dict[str, Any]:
        if not self.args_json:
            return {}
        try:
            value = orjson.loads(self.args_json)
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True, kw_only=True)
class Stats:
    """Sidekiq's dashboard numbers (``Sidekiq::Stats``)."""

    processed: int
    failed: int
    processed_today: int
    failed_today: int
    busy: int
    enqueued: int
    scheduled: int
    retry: int
    dead: int
    processes: int


E = TypeVar("E", bound=JobEntry)


class Client:
    """Inspect queues, pools and workers; delete or retry stored jobs.

    ``redis``: a URL (``redis://``, ``rediss://``, ``unix://``), a ``redis.Redis``
    (only its connection settings are used: the client opens its own bytes-mode
    connections), or None for the default URL.  ``connect_overrides`` go to
    ``redis.Redis`` (the CLI passes short timeouts).
    """

    def __init__(self, redis: str | redis.Redis | ConnectionSpec | None = None,
                 namespace: str = "forkq", **connect_overrides: Any) -> None:
        self.keys = Keys(namespace)
        self.namespace = namespace
        self._spec = ConnectionSpec.of(redis).for_namespace(namespace)
        self._conn = self._spec.connect(**connect_overrides)

    @property
    def connection(self) -> redis.Redis:
        return self._conn

    def describe(self) -> str:
        """Where this client points, safe to print (no password)."""
        return self._spec.describe()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- listings -----------------------------------------------------------------------
    def dead_jobs(self, page: int = 1) -> tuple[list[DeadJob], int]:
        """Page ``page`` (1-based, 20 a page) of dead jobs, newest death first, and the total."""
        rows, total = self._page(self.keys.dead, page, newest_first=True)
        return [DeadJob(died_at=s, **JobEntry.fields_of(m)) for m, s in rows], total

    def retry_jobs(self, page: int = 1) -> tuple[list[RetryJob], int]:
        """Page of jobs waiting to be retried, soonest first, and the total."""
        rows, total = self._page(self.keys.retry, page, newest_first=False)
        return [RetryJob(retry_at=s, **JobEntry.fields_of(m)) for m, s in rows], total

    def scheduled_jobs(self, page: int = 1) -> tuple[list[ScheduledEntry], int]:
        """Page of scheduled jobs, soonest first, and the total."""
        rows, total = self._page(self.keys.schedule, page, newest_first=False)
        return [ScheduledEntry(run_at=s, **JobEntry.fields_of(m)) for m, s in rows], total

    def _page(self, key: str, page: int, *, newest_first: bool) -> tuple[list[tuple[bytes, float]], int]:
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise ConfigError(f"page must be a whole number >= 1, got {page!r}")
        start = (page - 1) * PAGE_SIZE
        pipe = self._conn.pipeline(transaction=False)
        if newest_first:
            pipe.zrevrange(key, start, start + PAGE_SIZE - 1, withscores=True)
        else:
            pipe.zrange(key, start, start + PAGE_SIZE - 1, withscores=True)
        pipe.zcard(key)
        rows, total = pipe.execute()
        return [(m, float(s)) for m, s in rows], int(total)

    # -- finding one entry ------------------------------------------------------------------
    def _find(self, key: str, score: float | None, jid: str) -> list[tuple[bytes, float]]:
        """Members of ``key`` whose jid is ``jid`` (and score matches, when given)."""
        if not isinstance(jid, str) or not jid:
            raise ConfigError(f"job id must be a non-empty string, got {jid!r}")
        if score is None:
            candidates: Iterator[tuple[bytes, float]] = self._walk(key)
        else:
            s = float(score)
            hi: str | float = f"({s + 1!r}" if s.is_integer() else s
            rows = self._conn.zrangebyscore(key, s, hi, withscores=True)
            candidates = iter([(m, float(sc)) for m, sc in rows])
        return [(m, sc) for m, sc in candidates if _jid_of(m) == jid]

    def _walk(self, key: str) -> Iterator[tuple[bytes, float]]:
        """Every member of a zset, in chunks (ZSCAN tolerates concurrent changes)."""
        for m, sc in self._conn.zscan_iter(key, count=_SCAN_CHUNK):
            yield m, float(sc)

    def find_dead_job(self, job_id: str) -> DeadJob | None:
        """The dead entry with this jid (newest if several), searching the whole set."""
        found = self._find(self.keys.dead, None, job_id)
        if not found:
            return None
        m, s = max(found, key=lambda pair: pair[1])
        return DeadJob(died_at=s, **JobEntry.fields_of(m))

    def find_retry_job(self, job_id: str) -> RetryJob | None:
        """The retry entry with this jid (the soonest if several), searching the whole set."""
        found = self._find(self.keys.retry, None, job_id)
        if not found:
            return None
        m, s = min(found, key=lambda pair: pair[1])
        return RetryJob(retry_at=s, **JobEntry.fields_of(m))

    # -- deleting -------------------------------------------------------------------------
    def delete_dead_job(self, died_at: float | None, job_id: str) -> None:
        """Delete one dead job; NotDeleted if no entry matched."""
        self._delete(self.keys.dead, died_at, job_id, what="dead job")

    def delete_retry_job(self, retry_at: float | None, job_id: str) -> None:
        """Delete a job waiting in ``retry`` (it will not run again); NotDeleted if none matched."""
        self._delete(self.keys.retry, retry_at, job_id, what="retry job")

    def delete_scheduled_job(self, scheduled_for: float | None, job_id: str) -> None:
        """Delete a scheduled job, and release its unique guard if it holds one (as gocraft)."""
        found = self._find(self.keys.schedule, scheduled_for, job_id)
        removed = 0
        for member, _ in found:
            removed += self._remove_scheduled(member, job_id)
        if not removed:
            raise NotDeleted(f"no scheduled job {job_id!r}" + _at(scheduled_for))

    def _delete(self, key: str, score: float | None, job_id: str, *, what: str) -> None:
        found = self._find(key, score, job_id)
        # ZREM of the exact member is atomic: if someone else removed (or
        # promoted) it since we read it, the count is 0 and nothing is claimed.
        removed = int(self._conn.zrem(key, *[m for m, _ in found])) if found else 0
        if not removed:
            raise NotDeleted(f"no {what} {job_id!r}" + _at(score))

    def _remove_scheduled(self, member: bytes, jid: str) -> int:
        """ZREM a scheduled member and, atomically with it, DEL its unique guard if ours."""
        return int(scripts.run_one(self._conn, scripts.delete_scheduled(
            self.keys, member=member, jid=jid, guard=self._guard_of(member))))

    def _guard_of(self, member: bytes) -> str | None:
        """The unique-guard key a stored job holds, if it is one of this namespace's."""
        try:
            data = jobcodec.decode(member)
        except jobcodec.MalformedPayload:
            return None
        uk = data.get("unique_key")
        if not data.get("unique") or not isinstance(uk, str):
            return None
        # Never delete an arbitrary key named by stored data: only this job's guards.
        if not uk.startswith(self.keys.unique(data["class"], "")):
            return None
        return uk

    # -- cancellation ---------------------------------------------------------------------
    def cancel(self, jid: str) -> bool:
        """Cancel job ``jid``: a queued, scheduled or retrying job is removed and never
        runs; a running one is told at once (``job.cancelled``; an async job's task is
        cancelled) and is never retried or requeued, even if its process dies.  Every
        copy of the jid is cancelled (a jid can be held twice, e.g. a recovered job
        whose first run goes on): each waiting copy removed, each running one told.

        Returns False if no job has that jid (unknown, or already finished: a job in
        the dead set is finished, it stays there).  One script call, which scans the
        namespace's queues, schedule and retry (a cancel is an operator's action;
        queued jobs carry their jid only inside the JSON).
        """
        if not isinstance(jid, str) or not jid:
            raise ConfigError(f"a jid is a non-empty string, got {jid!r}")
        reply = self._where(jid, locate=False)
        if not reply:
            return False
        if as_text(reply[0]) != "running":
            # The removed copies will never run.  A running copy's own ack releases
            # its guard and counts it in its batch, so then nothing is done here.
            guards = {g for g in map(self._guard_of, reply[1:]) if g is not None}
            if guards:
                scripts.run_one(self._conn, scripts.release_unique([(g, jid) for g in sorted(guards)]))
            # Its batch counts it ended (dead), once however many copies, else the
            # batch would wait for it forever.
            for bid in sorted({b for b in map(self._bid_of, reply[1:]) if b is not None}):
                scripts.run_one(self._conn, scripts.batch_cancel(self.keys, bid=bid))
        return True

    @staticmethod
    def _bid_of(payload: bytes) -> str | None:
        try:
            return jobcodec.bid_of(jobcodec.decode(payload))
        except jobcodec.MalformedPayload:
            return None

    def _where(self, jid: str, *, locate: bool) -> list[Any]:
        """cancel.lua over every queue and in-progress hash of the namespace.

        The keys are listed first, then the script runs, so what appears in between is
        not among them.  A pool that registered meanwhile may run the job: the script
        checks the list against ``pools`` and answers ``stale``, changing nothing.  A
        queue (or fair group) that appeared meanwhile may hold it (a scheduled job
        promoted into a new queue): when the job was not found, the keys are listed
        again and, if any is new, the script runs again.  A few rounds at most (it
        takes pools or queues appearing faster than a round trip).
        """
        listing = self._cancel_listing()
        for _ in range(_STALE_RETRIES):
            reply = self._where_listed(jid, listing, locate=locate)
            if reply == [b"stale"]:
                listing = self._cancel_listing()
                continue
            if reply:
                return reply
            again = self._cancel_listing()
            if set(again[0]) <= set(listing[0]) and set(again[1]) <= set(listing[1]):
                return reply  # nowhere, and nowhere new to look
            listing = again
        raise ForkqError(f"cancel {jid!r}: pools or queues kept appearing while it ran; try again")

    def _cancel_listing(self) -> tuple[list[str], list[str]]:
        """The queue keys and the in-progress hashes cancel.lua must look at."""
        names = sorted(as_text(n) for n in self._conn.smembers(self.keys.queues))
        # Every registered pool's hash, even if empty now (an idle pool's hash does not
        # exist until it takes a job, maybe between this read and the script), plus the
        # hashes of pools no longer registered (dead, not yet reaped).
        live = {self.keys.inprogress(as_text(i)) for i in self._conn.zrange(self.keys.pools, 0, -1)}
        inprogress = sorted(live | {as_text(k) for k in self._conn.scan_iter(
            match=self.keys.inprogress_glob(), count=1000)})
        queue_keys = [self.keys.queue(n) for n in names]
        if names:  # the lists of fair groups are queues too
            pipe = self._conn.pipeline(transaction=False)
            for n in names:
                pipe.smembers(self.keys.groups(n))
            for n, members in zip(names, pipe.execute(), strict=True):
                queue_keys += [self.keys.group_queue(n, g) for g in sorted(as_text(m) for m in members)]
        return queue_keys, inprogress

    def _where_listed(self, jid: str, listing: tuple[list[str], list[str]], *, locate: bool) -> list[Any]:
        queue_keys, inprogress = listing
        return list(scripts.run_one(self._conn, scripts.cancel(
            self.keys, jid=jid, queue_keys=queue_keys, inprogress_keys=inprogress, locate=locate)))

    # -- results ------------------------------------------------------------------------
    def result(self, jid: str) -> JobResult | None:
        """What is known of job ``jid``: where it is now (queued, scheduled, retrying,
        running), else its kept outcome (succeeded, dead, cancelled; jobs with a
        ``result_ttl`` keep result/error that long), else None (unknown or forgotten).
        """
        if not isinstance(jid, str) or not jid:
            raise ConfigError(f"a jid is a non-empty string, got {jid!r}")
        where = self._where(jid, locate=True)
        pipe = self._conn.pipeline(transaction=False)
        pipe.get(self.keys.result(jid))
        pipe.zscore(self.keys.cancelled, jid)
        raw, cancelled = pipe.execute()
        kept = results.parse(jid, raw) if raw is not None else None
        if where:
            return JobResult(jid=jid, state=as_text(where[0]), error=kept.error if kept else None)
        if kept is not None:
            return kept
        if cancelled is not None:
            return JobResult(jid=jid, state="cancelled")
        return None

    def delete_all_dead_jobs(self) -> int:
        """Empty the dead set; return how many entries it held."""
        pipe = self._conn.pipeline(transaction=True)
        pipe.zcard(self.keys.dead)
        pipe.delete(self.keys.dead)
        return int(pipe.execute()[0])

    # -- retrying ---------------------------------------------------------------------------
    def retry_dead_job(self, died_at: float | None, job_id: str) -> None:
        """Put one dead job back at the end of its queue (see module docstring); NotRetried if none."""
        found = self._find(self.keys.dead, died_at, job_id)
        # Should bad data hold the same jid twice, requeue one copy (the newest
        # death), never two runs of one job.
        found = sorted(found, key=lambda pair: pair[1])[-1:]
        moves = [p for p in (self._requeue_move(m) for m, _ in found) if p is not None]
        moved = self._promote(self.keys.dead, moves) if moves else 0
        if not moved:
            if found and not moves:
                raise NotRetried(f"dead job {job_id!r} cannot be retried: its payload is not a "
                                 f"runnable job (delete it instead)")
            raise NotRetried(f"no dead job {job_id!r}" + _at(died_at))

    def retry_all_dead_jobs(self) -> int:
        """Requeue every retryable dead job; return how many moved.

        Entries that are not runnable jobs (malformed payloads) stay in dead.
        Each batch is moved by the ZREM-guarded promote script, so a concurrent
        delete or retry never makes a job run twice.
        """
        moved = 0
        start = 0
        while True:
            rows = self._conn.zrange(self.keys.dead, start, start + _SCAN_CHUNK - 1)
            if not rows:
                return moved
            moves = [p for p in (self._requeue_move(m) for m in rows) if p is not None]
            n = self._promote(self.keys.dead, moves) if moves else 0
            moved += n
            # What was not moved stays ahead of the next window.
            start += len(rows) - n

    def _requeue_move(self, member: bytes) -> scripts.Promotion | None:
        try:
            data = jobcodec.decode(member)
        except jobcodec.MalformedPayload:
            return None
        if data.get("error_class") == "MalformedPayload" and "raw" in data:
            return None
        name = data.get("queue")
        if not isinstance(name, str) or not name:
            name = data["class"]
        try:
            validate_job_name(name)
        except ConfigError:
            return None
        for f in _RESET_ON_RETRY:
            data.pop(f, None)
        data["enqueued_at"] = time.time()
        return scripts.Promotion(member=member, name=name, payload=jobcodec.encode(data),
                                 group=jobcodec.group_of(data))

    def _promote(self, zset_key: str, moves: Sequence[scripts.Promotion]) -> int:
        return int(scripts.run_one(self._conn, scripts.promote(self.keys, zset_key=zset_key, moves=moves)))

    # -- queues and pausing -------------------------------------------------------------------
    # -- batches (Enqueuer.batch) ---------------------------------------------------
    def batch(self, bid: str) -> BatchStatus | None:
        """A batch's counts and callbacks, or None if unknown (or expired: a finished
        batch is kept for ``scripts.BATCH_TTL``)."""
        if not jobcodec.valid_bid(bid):
            return None
        h = self._conn.hgetall(self.keys.batch(bid))
        return BatchStatus.from_hash(bid, h) if h else None

    def batches(self, limit: int = 50) -> list[BatchStatus]:
        """The newest batches, newest first (those whose hash has not expired)."""
        bids = [b.decode() for b in self._conn.zrevrange(self.keys.batches, 0, max(0, limit - 1))]
        if not bids:
            return []
        pipe = self._conn.pipeline(transaction=False)
        for bid in bids:
            pipe.hgetall(self.keys.batch(bid))
        return [BatchStatus.from_hash(bid, h) for bid, h in zip(bids, pipe.execute(), strict=True) if h]

    def queues(self) -> list[Queue]:
        """Every queue named in ``queues``, sorted by name, with length and latency."""
        names = sorted(as_text(n) for n in self._conn.smembers(self.keys.queues))
        if not names:
            return []
        live = self._live_processes()
        served = {q for p in live.values() for q in p.queues}
        limits: dict[str, tuple[int, str | None, int]] = {}
        for ident in sorted(live):
            for n, lim in live[ident].limits.items():
                limits.setdefault(n, lim)  # pools should agree; the first (by identity) is shown
        sizes = self._sizes(names)
        pipe = self._conn.pipeline(transaction=False)
        for n in names:
            pipe.exists(self.keys.paused(n))
        for n in names:
            if limits.get(n, (0, None, 0))[0]:
                pipe.zcard(self.keys.lease(n))  # expired leases are dropped by the next fetch
        res = pipe.execute()
        leases = iter(res[len(names):])
        now = time.time()
        out = []
        for i, n in enumerate(names):
            size, paused = sizes[n], res[i]
            count, oldest = size.count, size.oldest
            latency = 0.0
            if oldest is not None:
                try:
                    data = orjson.loads(oldest)
                    enq = _ts(data.get("enqueued_at")) if isinstance(data, dict) else 0.0
                except orjson.JSONDecodeError:
                    enq = 0.0
                if enq > 0:
                    latency = max(0.0, now - enq)
            maxc, rate, per_group = limits.get(n, (0, None, 0))
            out.append(Queue(job_name=n, count=int(count), latency=latency, paused=bool(paused),
                             served=n in served, max_concurrency=maxc, rate_limit=rate,
                             group_concurrency=per_group,
                             running=int(next(leases)) if maxc else 0,
                             groups=sum(1 for g in size.groups if g.count),
                             grouped=sum(g.count for g in size.groups),
                             largest_groups=tuple((g.group, g.count) for g in size.groups[:3] if g.count)))
        return out

    def groups(self, name: str) -> list[GroupInfo]:
        """The fair groups of job ``name`` with jobs waiting or running, largest first."""
        validate_job_name(name)
        return self._sizes([name])[name].groups

    def repair_groups(self, name: str) -> int:
        """Give back their entry in ``queue:<name>`` to fair groups that lost it (deleted
        by hand, e.g. from Sidekiq's Web UI, which forkq's own views refuse to do): such a
        group would never be served.  Returns how many were repaired.  Scans the queue
        once per group: an operator's action."""
        validate_job_name(name)
        groups = sorted(as_text(g) for g in self._conn.smembers(self.keys.groups(name)))
        if not groups:
            return 0
        repaired, _dropped = scripts.run_one(self._conn, scripts.repair_groups(
            self.keys, name=name, groups=groups))
        return int(repaired)

    def _sizes(self, names: Sequence[str]) -> dict[str, _Sizes]:
        """Waiting jobs per name (queue entries minus group tokens, plus the groups' jobs),
        the next to run (a token stands for its group's oldest job) and the groups.

        Two pipelines; names without groups cost what they did before (LLEN, LINDEX)
        plus one SMEMBERS.  Tokens in the queue = groups known - groups parked (the
        invariant enqueue_group.lua/fetch.lua keep).
        """
        k = self.keys
        pipe = self._conn.pipeline(transaction=False)
        for n in names:
            pipe.llen(k.queue(n))
            pipe.lindex(k.queue(n), -1)
            pipe.smembers(k.groups(n))
            pipe.zrange(k.group_parked(n), 0, -1)
        res = pipe.execute()
        out: dict[str, _Sizes] = {}
        grouped: list[tuple[str, list[str], set[str], str | None]] = []
        pipe = self._conn.pipeline(transaction=False)
        for i, n in enumerate(names):
            length, oldest, members, parked = res[4 * i: 4 * i + 4]
            out[n] = _Sizes(count=int(length), oldest=oldest, groups=[])
            if not members:
                continue
            groups = sorted(as_text(g) for g in members)
            token = jobcodec.token_group(oldest) if oldest is not None else None
            grouped.append((n, groups, {as_text(g) for g in parked}, token))
            for g in groups:
                pipe.llen(k.group_queue(n, g))
                pipe.zcard(k.group_lease(n, g))
            if token is not None:
                pipe.lindex(k.group_queue(n, token), -1)
        if not grouped:
            return out
        res = iter(pipe.execute())
        for n, groups, parked, token in grouped:
            infos = []
            for g in groups:
                infos.append(GroupInfo(group=g, count=int(next(res)), running=int(next(res)),
                                       parked=g in parked))
            infos.sort(key=lambda x: (-x.count, x.group))
            size = out[n]
            tokens = max(0, len(groups) - len(parked))
            oldest = next(res) if token is not None else size.oldest
            out[n] = _Sizes(count=max(0, size.count - tokens) + sum(x.count for x in infos),
                            oldest=oldest, groups=infos)
        return out

    def served_names(self) -> set[str]:
        """Job (queue) names that at least one live pool takes jobs of."""
        return {q for p in self._live_processes().values() for q in p.queues}

    def is_known_name(self, name: str) -> bool:
        """Served by a live pool, or a queue of that name exists (``queues``): not a typo."""
        validate_job_name(name)
        return name in self.served_names() or bool(self._conn.sismember(self.keys.queues, name))

    def pause(self, name: str) -> None:
        """Stop workers from taking jobs of ``name`` (queued jobs stay queued)."""
        validate_job_name(name)
        self._conn.set(self.keys.paused(name), b"1")

    def unpause(self, name: str) -> None:
        """Let workers take jobs of ``name`` again, and wake fetchers that sleep idle."""
        validate_job_name(name)
        pipe = self._conn.pipeline(transaction=True)
        pipe.delete(self.keys.paused(name))
        publish(pipe, sharded_pubsub(self._conn), self.keys.wake_channel, name)
        pipe.execute()

    def is_paused(self, name: str) -> bool:
        validate_job_name(name)
        return bool(self._conn.exists(self.keys.paused(name)))

    # -- pools, workers, stats ------------------------------------------------------------------
    def worker_pool_heartbeats(self) -> list[WorkerPoolHeartbeat]:
        """Every pool in ``pools`` (current heartbeat or not), sorted by id."""
        beats = {as_text(m): score for m, score in self._conn.zrange(self.keys.pools, 0, -1, withscores=True)}
        ids = sorted(beats)
        if not ids:
            return []
        pipe = self._conn.pipeline(transaction=False)
        for ident in ids:
            pipe.hgetall(self.keys.pool(ident))
        out = []
        for ident, raw in zip(ids, pipe.execute(), strict=True):
            h = {as_text(k): as_text(v) for k, v in raw.items()}
            out.append(WorkerPoolHeartbeat(
                worker_pool_id=ident,
                started_at=_int(h.get("started_at")),
                # The `pools` score is written every beat; the hash only about once a minute.
                heartbeat_at=int(beats[ident]),
                job_names=tuple(sorted(x for x in h.get("job_names", "").split(",") if x)),
                concurrency=_int(h.get("concurrency")),
                host=h.get("host", ""),
                pid=_int(h.get("pid")),
                worker_ids=tuple(sorted((x for x in h.get("worker_ids", "").split(",") if x),
                                        key=worker_sort_key)),
            ))
        return out

    def _live_processes(self) -> dict[str, _LiveProcess]:
        """Every process in ``processes`` whose hash still exists (Sidekiq's liveness rule).

        ``in_flight`` is the length of its in-progress hash, which fetch and ack
        change atomically with the jobs: live, unlike the ``busy`` its beat writes
        every few seconds.
        """
        k = self.keys
        idents = sorted(as_text(p) for p in self._conn.smembers(k.processes))
        if not idents:
            return {}
        pipe = self._conn.pipeline(transaction=False)
        for ident in idents:
            pipe.hmget(k.process(ident), "beat", "info")
            pipe.hkeys(k.inprogress(ident))
        res = pipe.execute()
        out = {}
        for i, ident in enumerate(idents):
            (beat, info), fields = res[2 * i], res[2 * i + 1]
            if beat is None:
                continue
            out[ident] = _LiveProcess(queues=_info_queues(info),
                                      in_flight=frozenset(as_text(f) for f in fields),
                                      limits=_info_limits(info))
        return out

    def worker_observations(self) -> list[WorkerObservation]:
        """One observation per worker of every live pool; idle workers are listed as not busy.

        A worker counts as busy only while its pool's in-progress hash holds the
        job its observation names (fetch and ack change that hash atomically with
        the job), so a finished job is not shown as running, and a job recovered
        from a dead pool shows only where it runs now, with that run's start time.
        """
        live = self._live_processes()
        hbs = [hb for hb in self.worker_pool_heartbeats() if hb.worker_pool_id in live]
        pipe = self._conn.pipeline(transaction=False)
        for hb in hbs:
            for wid in hb.worker_ids:
                pipe.hgetall(self.keys.worker(wid))
        res = iter(pipe.execute() if hbs else [])
        out = []
        for hb in hbs:
            held = live[hb.worker_pool_id].in_flight
            for wid in hb.worker_ids:
                h = {as_text(k): as_text(v) for k, v in next(res).items()}
                job_id = h.get("job_id", "")
                if job_id and any(field_holds_jid(f, job_id) for f in held):
                    out.append(WorkerObservation(
                        worker_id=wid, worker_pool_id=hb.worker_pool_id, is_busy=True,
                        job_name=h.get("job_name", ""), job_id=job_id,
                        started_at=_int(h.get("started_at")), args_json=h.get("args", ""),
                        checkin=h.get("checkin", ""), checkin_at=_int(h.get("checkin_at"))))
                else:
                    out.append(WorkerObservation(worker_id=wid, worker_pool_id=hb.worker_pool_id,
                                                 is_busy=False))
        return out

    def stats(self) -> Stats:
        """Sidekiq's dashboard numbers; ``busy`` = jobs the live pools hold in progress now."""
        k = self.keys
        day = k.today()
        pipe = self._conn.pipeline(transaction=False)
        pipe.get(k.stat_processed)
        pipe.get(k.stat_failed)
        pipe.get(k.stat_processed_day(day))
        pipe.get(k.stat_failed_day(day))
        pipe.zcard(k.schedule)
        pipe.zcard(k.retry)
        pipe.zcard(k.dead)
        pipe.smembers(k.queues)
        processed, failed, p_day, f_day, scheduled, retry, dead, queues = pipe.execute()
        queues = sorted(as_text(q) for q in queues)
        live = self._live_processes()
        lengths = [s.count for s in self._sizes(queues).values()] if queues else []
        return Stats(
            processed=_int(processed), failed=_int(failed),
            processed_today=_int(p_day), failed_today=_int(f_day),
            busy=sum(len(p.in_flight) for p in live.values()),
            enqueued=sum(int(n) for n in lengths),
            scheduled=int(scheduled), retry=int(retry), dead=int(dead),
            processes=len(live),
        )


@dataclass(frozen=True)
class _LiveProcess:
    queues: frozenset[str]
    in_flight: frozenset[str]  # in-progress fields (jid, or jid#n)
    limits: dict[str, tuple[int, str | None, int]] = field(default_factory=dict)


def _count(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _info_limits(info: bytes | None) -> dict[str, tuple[int, str | None, int]]:
    """The flow limits a forkq pool's ``info`` declares (anything malformed is skipped:
    the hash may have been written by anyone)."""
    try:
        data = orjson.loads(info) if info else None
    except orjson.JSONDecodeError:
        return {}
    raw = data.get("limits") if isinstance(data, dict) else None
    out: dict[str, tuple[int, str | None, int]] = {}
    if isinstance(raw, dict):
        for n, v in raw.items():
            if not isinstance(v, dict):
                continue
            r = v.get("rate_limit")
            out[n] = (_count(v.get("max_concurrency")), r if isinstance(r, str) and len(r) < 40 else None,
                      _count(v.get("group_concurrency")))
    return out


def _info_queues(info: bytes | None) -> frozenset[str]:
    """The queue names a Sidekiq process hash's ``info`` lists (forkq: its job names)."""
    if not info:
        return frozenset()
    try:
        data = orjson.loads(info)
    except orjson.JSONDecodeError:
        return frozenset()
    queues = data.get("queues") if isinstance(data, dict) else None
    if not isinstance(queues, list):
        return frozenset()
    return frozenset(q for q in queues if isinstance(q, str))


def _at(score: float | None) -> str:
    return "" if score is None else f" at {score!r}"


def _jid_of(member: bytes) -> str:
    """The jid of a stored job ("" if it has none); the job codec owns the format."""
    return jobcodec.jid_of(member) or ""


__all__ = ["Client", "DeadJob", "JobEntry", "PAGE_SIZE", "Queue", "RetryJob", "ScheduledEntry",
           "Stats", "WorkerObservation", "WorkerPoolHeartbeat"]
