"""Producers: ``Enqueuer`` puts jobs in Redis (one round trip per call or batch)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson
import redis
from redis.exceptions import (
    AuthenticationError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from . import clock, otel, results, scripts
from . import job as jobcodec
from .batch import Batch
from .config import DAY, Config, env_value
from .connection import ConnectionSpec
from .errors import ConfigError, EnqueueError, PayloadTooLarge
from .job import Job
from .keys import Keys, validate_job_name
from .results import JobResult


@dataclass(frozen=True, kw_only=True)
class ScheduledJob:
    """A job put in the ``schedule`` set, and when it is due (epoch seconds, Redis's clock)."""

    job: Job
    run_at: float


def unique_suffix(args: Mapping[str, Any] | None) -> str:
    """Canonical JSON of the arguments: key order must not change uniqueness."""
    return orjson.dumps(dict(args or {}), option=orjson.OPT_SORT_KEYS).decode()


_Redis: TypeAlias = redis.Redis  # (the constructor's `redis` argument shadows the module)


class Enqueuer:
    """Enqueue jobs by name.  Thread-safe (redis-py pools connections).

    ``wait_replicas=N`` (default ``$FORKQ_WAIT_REPLICAS``, else 0): an enqueue returns
    only once Redis ``WAIT`` says N replicas have it, so a Sentinel failover right
    after cannot lose it; ``WAIT`` rides in the enqueue's round trip.  If fewer
    confirm within ``wait_timeout`` seconds, ``EnqueueError`` says the job may or may
    not be enqueued (it is on the master; the caller decides whether to retry).
    """

    def __init__(self, redis: str | redis.Redis | ConnectionSpec | None, namespace: str, *,
                 config: Config | None = None, wait_replicas: int | None = None,
                 wait_timeout: float = 1.0, known_jobs: Iterable[str] | None = None) -> None:
        self.keys = Keys(namespace)
        # The job names a pool registered (``pool.enqueuer()``): a batch callback naming
        # another is refused at once.  A bare Enqueuer cannot know them.
        self._known = frozenset(known_jobs) if known_jobs is not None else None
        self.config = config or Config()
        if wait_replicas is None:
            wait_replicas = int(env_value("FORKQ_WAIT_REPLICAS", "0").strip() or 0)
        if not isinstance(wait_replicas, int) or wait_replicas < 0:
            raise ConfigError(f"wait_replicas must be an int >= 0, got {wait_replicas!r}")
        if not isinstance(wait_timeout, (int, float)) or wait_timeout <= 0:
            raise ConfigError(f"wait_timeout must be a number of seconds > 0, got {wait_timeout!r}")
        self.wait_replicas = wait_replicas
        self.wait_timeout = float(wait_timeout)
        self._spec = ConnectionSpec.of(redis).for_namespace(namespace)
        self._conn = self._spec.connect()
        # Script calls go through a Runner per calling thread (a web app enqueues from
        # many): one packed write and one read per call, none of redis-py's per-call
        # machinery, which costs as much as the round trip itself.
        self._local = threading.local()
        self._runners: list[scripts.Runner] = []
        self._runners_lock = threading.Lock()
        # Enqueuer.wait's connection (no socket timeout: it blocks in BLPOP).
        self._blocking: _Redis | None = None

    # -- plumbing -------------------------------------------------------------
    def _encode(self, data: dict[str, Any]) -> bytes:
        try:
            payload = jobcodec.encode(data)
        except TypeError as exc:
            raise TypeError(f"job {data['class']!r}: arguments are not JSON-serialisable: {exc}") from None
        if len(payload) > self.config.max_payload_bytes:
            raise PayloadTooLarge(
                f"job {data['class']!r}: payload is {len(payload)} bytes, limit is "
                f"{self.config.max_payload_bytes} (Config.max_payload_bytes)")
        return payload

    def _now(self) -> float:
        """Redis's time for ``enqueued_at``/``created_at`` (one TIME round trip a minute)."""
        try:
            clock.CLOCK.ensure(self._conn)
        except RedisError as exc:
            raise self._refused(exc) from exc
        return clock.now()

    def _runner(self) -> scripts.Runner:
        runner: scripts.Runner | None = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = scripts.Runner(self._conn)
            with self._runners_lock:
                self._runners.append(runner)
        return runner

    def _call(self, call: scripts.Call) -> Any:
        runner = self._runner()
        w, t = self.wait_replicas, self.wait_timeout
        try:
            return runner.run([call], wait_replicas=w, wait_timeout=t)[0]
        except (redis.ConnectionError, redis.TimeoutError):
            # One more try on a fresh connection, as redis-py does by default: a reply
            # lost after Redis applied the call means one duplicate job, never a lost one.
            return runner.run([call], wait_replicas=w, wait_timeout=t)[0]

    def _run(self, call: scripts.Call) -> Any:
        try:
            return self._call(call)
        except scripts.NotReplicated as exc:
            raise self._not_replicated(exc) from None
        except RedisError as exc:
            raise self._refused(exc) from exc

    def _not_replicated(self, exc: scripts.NotReplicated) -> EnqueueError:
        return EnqueueError(
            f"the job may or may not be enqueued: Redis at {self._spec.describe()} took it, but only "
            f"{exc.confirmed} of {exc.wanted} replicas confirmed it within {self.wait_timeout:g}s "
            "(a failover now could lose it)")

    def _refused(self, exc: RedisError) -> EnqueueError:
        """One clear line per cause, the same for every enqueue call (no password in it)."""
        where = self._spec.describe()
        if isinstance(exc, OutOfMemoryError):
            return EnqueueError(
                "Redis refused the enqueue: out of memory (OOM: maxmemory reached with "
                f"noeviction); nothing was enqueued: {exc}")
        if isinstance(exc, ReadOnlyError):
            return EnqueueError(
                f"Redis refused the enqueue: {where} is a read-only replica; nothing was enqueued")
        if isinstance(exc, AuthenticationError):
            # A ConnectionError subclass in redis-py, but the server was reached.
            return EnqueueError(f"Redis at {where} refused the credentials: {exc}")
        if isinstance(exc, ResponseError):
            return EnqueueError(f"Redis refused the enqueue: {exc}")
        return EnqueueError(f"could not reach Redis at {where}: {exc}")

    @staticmethod
    def _send(name: str, datas: list[dict[str, Any]], call: Callable[[], Any]) -> Any:
        """Run one enqueue call; with forkq.otel on, inside its PRODUCER span (which
        writes ``traceparent`` into the payloads before ``call`` encodes them)."""
        tracing = otel.tracing
        if tracing is None:
            return call()
        with tracing.send(name, datas):
            return call()

    @staticmethod
    def _check_args(args: Mapping[str, Any] | None) -> None:
        if args is not None and not isinstance(args, Mapping):
            raise TypeError(f"job args must be a mapping of keyword arguments, got {type(args).__name__}")

    # -- gocraft's API ---------------------------------------------------------
    def _push(self, name: str, payloads: Sequence[bytes], group: str | None) -> scripts.Call:
        if group is None:
            return scripts.enqueue(self.keys, name=name, payloads=payloads)
        return scripts.enqueue_group(self.keys, name=name, group=group, payloads=payloads)

    def enqueue(self, name: str, args: Mapping[str, Any] | None = None, *,
                group: str | None = None) -> Job:
        """Enqueue one job.  ``group`` (fair groups, e.g. a tenant id): the jobs of one
        name are taken round-robin across their groups, so one group's backlog does not
        delay another's jobs; ``@pool.job(group_concurrency=N)`` caps each group."""
        validate_job_name(name)
        self._check_args(args)
        if group is not None:
            jobcodec.check_group(group)
        data = jobcodec.build_payload(name, dict(args) if args else None, now=self._now(), group=group)
        self._send(name, [data], lambda: self._run(self._push(name, [self._encode(data)], group)))
        return Job.from_data(data)

    def enqueue_many(self, name: str, args_list: Iterable[Mapping[str, Any] | None], *,
                     group: str | None = None) -> list[Job]:
        """Enqueue a batch of jobs of one name (and one ``group``) in one round trip, in order."""
        validate_job_name(name)
        if group is not None:
            jobcodec.check_group(group)
        now = self._now()
        datas = []
        for args in args_list:
            self._check_args(args)
            datas.append(jobcodec.build_payload(name, dict(args) if args else None, now=now, group=group))
        if otel.tracing is None:
            payloads = [self._encode(d) for d in datas]  # every payload checked before the call
            if payloads:
                self._run(self._push(name, payloads, group))
        elif datas:
            self._send(name, datas, lambda: self._run(self._push(
                name, [self._encode(d) for d in datas], group)))
        return [Job.from_data(d) for d in datas]

    def enqueue_in(self, name: str, seconds: float, args: Mapping[str, Any] | None = None, *,
                   group: str | None = None) -> ScheduledJob:
        """Run ``seconds`` from now by Redis's clock (the script adds them to TIME); a
        ``group`` job enters its group when due."""
        return self._schedule(name, args, delay=max(0.0, float(seconds)), group=group)

    def enqueue_at(self, name: str, epoch_seconds: float,
                   args: Mapping[str, Any] | None = None, *, group: str | None = None) -> ScheduledJob:
        """Run at ``epoch_seconds`` (Unix time, judged by Redis's clock: a time already
        past runs at once)."""
        return self._schedule(name, args, run_at=float(epoch_seconds), group=group)

    def enqueue_in_many(self, name: str, seconds: float,
                        args_list: Iterable[Mapping[str, Any] | None], *,
                        group: str | None = None) -> list[ScheduledJob]:
        """Schedule a batch of jobs of one name, all due ``seconds`` from now by Redis's
        clock, in one round trip (one script: a multi-member ZADD)."""
        return self._schedule_many(name, args_list, delay=max(0.0, float(seconds)), group=group)

    def enqueue_at_many(self, name: str, epoch_seconds: float,
                        args_list: Iterable[Mapping[str, Any] | None], *,
                        group: str | None = None) -> list[ScheduledJob]:
        """Schedule a batch of jobs of one name, all due at ``epoch_seconds``, in one round trip."""
        return self._schedule_many(name, args_list, run_at=float(epoch_seconds), group=group)

    def _schedule(self, name: str, args: Mapping[str, Any] | None, *, delay: float | None = None,
                  run_at: float | None = None, group: str | None = None) -> ScheduledJob:
        return self._schedule_many(name, [args], delay=delay, run_at=run_at, group=group)[0]

    def _schedule_many(self, name: str, args_list: Iterable[Mapping[str, Any] | None], *,
                       delay: float | None = None, run_at: float | None = None,
                       group: str | None = None) -> list[ScheduledJob]:
        validate_job_name(name)
        if group is not None:
            jobcodec.check_group(group)
        now = self._now()
        # The job enters its queue when it is due: promotion moves the bytes unchanged,
        # so enqueued_at is the due time from the start (queue latency counts from then).
        enqueued_at = now + delay if delay is not None else run_at
        datas = []
        for args in args_list:
            self._check_args(args)
            data = jobcodec.build_payload(name, dict(args) if args else None, now=now, group=group)
            data["enqueued_at"] = enqueued_at
            datas.append(data)
        if not datas:
            return []
        if otel.tracing is None:
            payloads = [self._encode(d) for d in datas]  # every payload checked before the call
            due = float(self._run(scripts.schedule(self.keys, payloads=payloads, delay=delay, run_at=run_at)))
        else:  # the PRODUCER span writes traceparent into the payloads: encode inside it
            due = float(self._send(name, datas, lambda: self._run(scripts.schedule(
                self.keys, payloads=[self._encode(d) for d in datas], delay=delay, run_at=run_at))))
        return [ScheduledJob(job=Job.from_data(d), run_at=due) for d in datas]

    def enqueue_unique(self, name: str, args: Mapping[str, Any] | None = None) -> Job | None:
        """Enqueue unless the same name+args is already queued or scheduled; None if it was."""
        return self._unique(name, args, None, 0.0)

    def enqueue_unique_in(self, name: str, seconds: float,
                          args: Mapping[str, Any] | None = None) -> ScheduledJob | None:
        job = self._unique(name, args, None, max(0.0, float(seconds)))
        if job is None:
            return None
        return ScheduledJob(job=job, run_at=job.data["enqueued_at"])

    def enqueue_unique_at(self, name: str, epoch_seconds: float,
                          args: Mapping[str, Any] | None = None) -> ScheduledJob | None:
        """``enqueue_at`` unless the same name+args is already queued or scheduled."""
        job = self._unique(name, args, None, 0.0, run_at=float(epoch_seconds))
        if job is None:
            return None
        return ScheduledJob(job=job, run_at=float(epoch_seconds))

    def enqueue_unique_by_key(self, name: str, args: Mapping[str, Any] | None,
                              key: Mapping[str, Any] | str) -> Job | None:
        """Unique on ``key`` instead of on the arguments."""
        return self._unique(name, args, key, 0.0)

    def enqueue_unique_in_by_key(self, name: str, seconds: float, args: Mapping[str, Any] | None,
                                 key: Mapping[str, Any] | str) -> ScheduledJob | None:
        delay = max(0.0, float(seconds))
        job = self._unique(name, args, key, delay)
        if job is None:
            return None
        return ScheduledJob(job=job, run_at=job.data["enqueued_at"])

    def _unique(self, name: str, args: Mapping[str, Any] | None,
                key: Mapping[str, Any] | str | None, delay: float,
                run_at: float | None = None) -> Job | None:
        """Enqueue now, ``delay`` seconds from now by Redis's TIME, or at epoch ``run_at``."""
        validate_job_name(name)
        self._check_args(args)
        suffix = key if isinstance(key, str) else unique_suffix(key if key is not None else args)
        unique_key = self.keys.unique(name, suffix)
        now = self._now()
        data = jobcodec.build_payload(name, dict(args) if args else None, unique_key=unique_key, now=now)
        if run_at is None and delay > 0:
            run_at = now + delay  # Redis's time (the synced clock) + delay
        if run_at is not None:
            delay = max(0.0, run_at - now)
            data["enqueued_at"] = run_at  # the due time, as for enqueue_in
        # The guard outlives the delay by a day (gocraft's flat 24 h expired under
        # long-scheduled jobs: gocraft/work#221).
        ttl = int(delay) + self.config.unique_ttl if delay > 0 else self.config.unique_ttl
        done = self._send(name, [data], lambda: self._run(scripts.enqueue_unique(
            self.keys, name=name, payload=self._encode(data), unique_key=unique_key,
            jid=data["jid"], ttl=max(1, ttl), run_at=run_at)))
        return Job.from_data(data) if done else None

    # -- batches ----------------------------------------------------------------
    def batch(self, *, on_success: str | None = None, on_complete: str | None = None,
              args: Mapping[str, Any] | None = None, description: str = "",
              bid: str | None = None) -> Batch:
        """A batch: ``with enq.batch(on_success="report") as b: b.enqueue("work", {...})``.

        The jobs are pushed with the batch in one script call when the block ends
        (nothing if it raised).  ``on_success`` is enqueued once every job succeeded,
        ``on_complete`` once every job ended either way; each gets ``args`` plus
        ``batch_id``.  ``bid=job.batch_id`` adds jobs to an open batch from one of its
        own jobs.  See forkq/batch.py.
        """
        return Batch(self, bid=bid, on_success=on_success, on_complete=on_complete, args=args,
                     description=description)

    def _check_known(self, name: str) -> None:
        if self._known is not None and name not in self._known:
            raise ConfigError(f"unknown job {name!r}: no handler is registered under that name "
                              f"(known: {', '.join(sorted(self._known)) or 'none'})")

    def wait(self, jid: str, timeout: float | None = None) -> JobResult:
        """Block until job ``jid`` (of a name with ``result_ttl``) ends; its JobResult.

        No polling: a blocking pop on the job's notify list, which the ack that
        ends the job pushes (store_results.lua).  ``timeout`` seconds (None =
        forever) then ``TimeoutError``.  A job without ``result_ttl`` keeps no
        outcome, so waiting on it can only time out.
        """
        if not isinstance(jid, str) or not jid:
            raise ConfigError(f"a jid is a non-empty string, got {jid!r}")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise ConfigError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
        end = None if timeout is None else time.monotonic() + timeout
        rkey, nkey = self.keys.result(jid), self.keys.result_notify(jid)
        if self._blocking is None:
            self._blocking = self._spec.connect(socket_timeout=None)
        conn = self._blocking
        while True:
            raw = conn.get(rkey)
            kept = results.parse(jid, raw) if raw is not None else None
            if kept is not None and kept.done:
                return kept
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"job {jid} did not end within {timeout}s")
            # BLPOP's 0 blocks forever; a positive timeout is at least Redis's 1 ms.
            if conn.blpop([nkey], timeout=0 if left is None else max(left, 0.001)) is not None:
                # Put the element back for other waiters, for as long as the result lives.
                ttl = conn.ttl(rkey)
                pipe = conn.pipeline(transaction=True)
                pipe.rpush(nkey, "1")
                pipe.expire(nkey, ttl if ttl and ttl > 0 else 1)
                pipe.execute()

    def close(self) -> None:
        if self._blocking is not None:
            self._blocking.close()
        with self._runners_lock:
            runners, self._runners = self._runners, []
        for runner in runners:
            runner.close()
        self._conn.close()


__all__ = ["Enqueuer", "ScheduledJob", "DAY"]
