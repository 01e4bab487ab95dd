"""One live worker pool: identity, threads, connections.  ``pool.start()`` makes one in
the calling process; the prefork master makes one in each child.

Threads (all created at start, none per job): N workers, one fetcher, one wake
listener (pub/sub), one housekeeper (beat, periodic, reaper), and when needed a
reporter thread and a timeout watchdog.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import NoPermissionError, RedisError

from . import clock, reaper, scheduler, scripts
from .aio import AsyncRunner
from .backoff import capped_exponential
from .config import pool_hostname
from .connection import ConnectionSpec, publish, sharded_pubsub
from .errors import ConfigError, RedisRefused
from .executor import Executor
from .fetcher import Fetcher
from .heartbeat import Heartbeat, PoolInfo
from .job import Job
from .job_metrics import JobMetrics
from .keys import CANCEL_MESSAGE, DUE_MESSAGE, WAKER_MESSAGE
from .reporters import ReporterHub
from .scripts import FetchTarget
from .spec import PoolDefinition
from .stats import StatsBuffer
from .waker import Waker

log = logging.getLogger("forkq.runtime")

PERIODIC_HORIZON = 300.0
PERIODIC_EVERY = 60.0
_CANCEL_PREFIX = CANCEL_MESSAGE.encode()
_WAKER = WAKER_MESSAGE.encode()


def new_identity(hostname: str = "") -> str:
    return f"{pool_hostname(hostname)}:{os.getpid()}:{os.urandom(6).hex()}"


class PoolRuntime:
    def __init__(self, pool: PoolDefinition, spec: ConnectionSpec, *, concurrency: int,
                 identity: str | None = None, tag: str = "", master_reaps: bool = False) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be an int >= 1, got {concurrency!r}")
        self.pool = pool
        self.keys = pool.keys
        self.config = pool.config
        self.spec = spec
        self.concurrency = concurrency
        self.identity = identity or new_identity(self.config.hostname)
        self.stats = StatsBuffer()
        self.job_metrics = JobMetrics()
        specs = pool.jobs
        self._names = sorted(specs)
        # Wake messages that concern this pool: its job names, and "a job became the
        # earliest due" (the fetcher re-reads the due time it sleeps until).
        self._name_set = {n.encode() for n in self._names} | {DUE_MESSAGE.encode()}
        self._leased = frozenset(n for n, s in specs.items() if s.options.max_concurrency > 0)
        self._stop = threading.Event()
        self._stopped = False
        self._beat_failures = 0
        # Connections: one per long-lived thread that talks to Redis.
        self.conn = spec.connect_worker()
        self._hk_conn = spec.connect_worker()
        self._listen_conn = spec.connect_worker(socket_timeout=None)
        self.reporters = ReporterHub(pool.reporters) if pool.reporters else None
        targets = [FetchTarget.of(self.keys, n, specs[n].options.max_concurrency,
                                  rate=(r.gcra() if (r := specs[n].options.rate) is not None else None),
                                  group_concurrency=specs[n].options.group_concurrency)
                   for n in self._names]
        # Side by side: the fetcher hands taken jobs to the executor, the executor hands
        # finished ones back to the fetcher's ack batch.
        self.executor = Executor(specs=specs, middleware=pool.middlewares, concurrency=concurrency,
                                 reporters=self.reporters, sidekiq_metrics=self.job_metrics,
                                 async_concurrency=self.config.async_concurrency,
                                 async_runner=AsyncRunner)
        # The fetcher's budget: free threads + free async slots (forkq.aio), each kind
        # capped by its own (split); the threads do not count in a pool whose every job
        # is async def.
        split: tuple[int, int, frozenset[str]] | None = None
        if self.executor.aio is not None:
            n_async = len(self.executor.aio.slots)
            if all(s.is_async for s in specs.values()):
                concurrency = n_async
            else:
                # Both kinds: the fetch takes each kind only up to its own free slots.
                split = (concurrency, n_async, frozenset(n for n, s in specs.items() if s.is_async))
                concurrency += n_async
            self.concurrency = concurrency
        # One pool per namespace wakes the others for jobs pushed by non-forkq clients, and
        # promotes due jobs on time (the fetcher asks it: leads).
        self.waker = Waker(spec=spec, keys=self.keys, identity=self.identity, names=self._names,
                           stop=self._stop)
        self.fetcher = Fetcher(
            conn=self.conn, keys=self.keys, identity=self.identity, config=self.config,
            targets=targets, priorities=[specs[n].options.priority for n in self._names],
            concurrency=concurrency, stats=self.stats,
            submit=self.executor.submit, pending=self.executor.pending,
            take_back=self.executor.discard_pending, job_seconds=self.executor.job_seconds,
            split=split, leads=self._leads_promotion)
        self.executor.deliver_to(self.fetcher.complete)
        self.info = PoolInfo.create(identity=self.identity, concurrency=concurrency,
                                    job_names=self._names, tag=tag,
                                    limits=[(n, specs[n].options.max_concurrency,
                                             specs[n].options.rate_limit or "",
                                             specs[n].options.group_concurrency) for n in self._names])
        self.heartbeat = Heartbeat(conn=self._hk_conn, keys=self.keys, info=self.info,
                                   slots=self.executor.slots, stats=self.stats, leased=self._leased,
                                   lease_ttl=self.config.lease_ttl,
                                   interval=self.config.heartbeat_interval,
                                   metrics=self.job_metrics,
                                   group_leases=any(s.options.group_concurrency > 0 for s in specs.values()))
        self._threads: list[threading.Thread] = []
        # Every pool reaps stale pools, scheduled from the oldest beat (under a prefork
        # master, which also reaps once at start, and beats for its children).
        self._reaper: reaper.StaleReaper | None = reaper.StaleReaper(self.config)
        self.waker.on_lead = self.fetcher.poke
        # Set by a prefork child: how a Web UI "Stop" reaches the master.
        self.on_remote_stop: Callable[[], None] | None = None
        # Set by a prefork child: called by start() once everything that can fail at
        # boot is done, just before the fetcher takes its first job (its ready report).
        self.on_running: Callable[[], None] | None = None

    def _leads_promotion(self) -> bool:
        """Whether this pool promotes due jobs on time: unless another pool holds the
        waker lock (one promoter per namespace; the others are its fallback)."""
        return not self.waker.follows

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.conn.ping()
            clock.CLOCK.sync(self.conn)  # Redis's time before anything is written with it
            self.fetcher.allow_oom = self.heartbeat.allow_oom = scripts.supports_script_flags(self.conn)
        except redis.AuthenticationError as exc:
            raise RedisRefused(f"Redis at {self.spec.describe()} refused the credentials: {exc}") from None
        except NoPermissionError as exc:
            raise RedisRefused(self._no_permission(exc)) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionError(f"cannot reach Redis at {self.spec.describe()}: {exc}") from None
        except RedisError as exc:
            raise ConnectionError(f"Redis at {self.spec.describe()} refused forkq: {exc}") from None
        # Beat before the first fetch: the orphan scan trusts that order.  A server
        # that is reachable but refuses writes (out of memory) still gets its queued
        # jobs run; the beat is retried by the housekeeper.
        # A read-only replica is not fatal either: after a failover it may be promoted.
        # A user without the rights forkq needs is: nothing would ever work.
        try:
            self.heartbeat.beat()
            if self._reaper is not None:
                self._reaper.beaten(self.heartbeat.last_beat)
        except NoPermissionError as exc:
            raise RedisRefused(self._no_permission(exc)) from None
        except RedisError as exc:
            log.warning("first heartbeat refused (%s); running anyway, it is retried every %.0fs",
                        exc, self.config.heartbeat_interval)
        if self.reporters is not None:
            self.reporters.start()
        self.executor.start()
        if self.on_running is not None:
            # Before the first fetch: a job taken at once (one requeued to run next)
            # may kill this process, and a prefork master must not count that death
            # as a child that could not boot.
            self.on_running()
        self.fetcher.start()
        self._spawn(self._listen, "forkq-wake")
        self._spawn(self._housekeep, "forkq-housekeeper")
        self._spawn(self.waker.run, "forkq-waker")
        if self.executor.has_timeouts:
            self._spawn(self._watchdog, "forkq-watchdog")

    def _no_permission(self, exc: Exception) -> str:
        return (f"the Redis user at {self.spec.describe()} lacks a permission forkq needs: {exc} "
                "(see the ACL line in docs/RELIABILITY.md)")

    def close(self) -> None:
        """Close this runtime's connections (after a failed start, or at the end of stop)."""
        if self.fetcher.is_alive():
            return
        self.fetcher.close()
        for c in (self.conn, self._hk_conn, self._listen_conn):
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def _spawn(self, target: object, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def quiet(self) -> None:
        """Stop taking jobs; running ones finish (Sidekiq's quiet, SIGTSTP)."""
        self.fetcher.set_quiet(True)
        self._unregister_idle()
        self._beat_safely()

    def _unregister_idle(self) -> None:
        """Leave every idle:<name> registry: a quiet pool must not be woken alone.

        Best effort: a wake that still reaches it is passed on (see ``_listen``), and
        one sent after it exits reaches nobody, so the enqueue tries the next pool.
        """
        try:
            pipe = self._hk_conn.pipeline(transaction=False)
            for n in self._names:
                pipe.zrem(self.keys.idle(n), self.identity)
            pipe.execute()
        except RedisError as exc:
            log.debug("could not leave the idle registry: %s", exc)

    def stop(self, timeout: float) -> int:
        """Stop; wait up to ``timeout`` for running jobs; requeue the rest.  Returns how many."""
        if self._stopped:
            return 0
        self._stopped = True
        self.fetcher.set_quiet(True)
        self._unregister_idle()
        deadline = time.monotonic() + max(0.0, timeout)
        # Prefetched jobs no thread started go back at once, not after the running ones.
        self.fetcher.give_back_pending()
        while self.fetcher.inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.fetcher.request_stop()
        self.fetcher.join(5.0)
        self.executor.discard_pending()
        aborted = self.executor.abort_all("shutdown")
        leftover = self.fetcher.held_fields()
        requeued = 0
        if leftover:
            try:
                requeued, _ = reaper.recover_inprogress(self.conn, self.keys, self.identity, self.config,
                                                        only=leftover, count_recovery=False)
            except RedisError as exc:
                log.error("could not requeue %d unfinished jobs (a reaper will): %s", len(leftover), exc)
            log.warning("shutdown: %d jobs did not finish in %.1fs and were requeued (%d interrupted)",
                        len(leftover), timeout, len(aborted))
        self.executor.close()
        self._stop.set()
        self.waker.release()
        # A beat still in flight would race the last flush and could re-add this pool
        # to `processes` after it is removed: wait for the threads that beat.
        for t in self._threads:
            if t.name == "forkq-housekeeper":
                t.join(max(2.0, self.config.heartbeat_interval))
        try:
            self.heartbeat.flush_stats()
            scripts.run_one(self.conn, scripts.claim_pool(self.keys, identity=self.identity,
                                                          expected_beat=None))
            self.heartbeat.forget()
        except RedisError as exc:
            log.error("could not remove this pool's liveness records: %s", exc)
        self.executor.join(0.5)
        if self.reporters is not None:
            self.reporters.close()
        self.close()
        return requeued

    def drain(self, timeout: float | None = None) -> None:
        """Return when every registered, unpaused queue is empty and nothing runs."""
        end = None if timeout is None else time.monotonic() + timeout
        self.fetcher.wake()
        conn = self._hk_conn
        while True:
            if self.fetcher.idle():
                pipe = conn.pipeline(transaction=False)
                for n in self._names:
                    # Waiting = queued, or in a fair group parked at its group_concurrency.
                    pipe.llen(self.keys.queue(n))
                    pipe.exists(self.keys.paused(n))
                    pipe.exists(self.keys.group_parked(n))
                res = pipe.execute()
                if all(res[i] + res[i + 2] == 0 or res[i + 1] for i in range(0, len(res), 3)):
                    return
                self.fetcher.wake()
            if end is not None and time.monotonic() > end:
                raise TimeoutError("drain timed out with jobs still queued or running")
            time.sleep(0.005)

    # -- threads ------------------------------------------------------------------------
    def _listen(self) -> None:
        """Wake the fetcher on each wake message naming one of our job names, forever.

        On Redis Cluster the channel is a shard channel (``SSUBSCRIBE``): when the
        namespace's slot moves, the old owner ends the subscription
        (``sunsubscribe``) and we subscribe again at the new owner.
        """
        sharded = sharded_pubsub(self._listen_conn)
        # This pool's own channel: an enqueue that found it in idle:<name> wakes it alone.
        own = self.keys.pool_wake(self.identity)
        own_b = own.encode()
        errors = 0
        while not self._stop.is_set():
            ps = self._listen_conn.pubsub(ignore_subscribe_messages=not sharded)
            try:
                if sharded:
                    ps.ssubscribe(self.keys.wake_channel, own)
                else:
                    ps.subscribe(self.keys.wake_channel, own)
                # Anything pushed while we were not subscribed is found by one fetch,
                # and cancels announced meanwhile by their marks.
                self.fetcher.wake()
                self._cancels_missed()
                errors = 0
                while not self._stop.is_set():
                    msg = ps.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    if msg.get("type") == "sunsubscribe":
                        self._listen_conn.connection_pool.connection_kwargs["locator"].invalidate()
                        raise redis.ConnectionError(f"{self.keys.wake_channel}: the slot moved")
                    data = msg.get("data")
                    if msg.get("channel") == own_b:
                        if data in self._name_set and not self.fetcher.wake_direct(data):
                            # Woken alone but cannot fetch (quiet, every slot taken since
                            # it registered): pass the wake on to every pool.
                            self._relay_wake(data)
                    elif data in self._name_set:
                        self.fetcher.wake(data)
                    elif data == _WAKER:
                        self.waker.try_soon()
                    elif isinstance(data, bytes) and data.startswith(_CANCEL_PREFIX):
                        self.executor.cancel(data[len(_CANCEL_PREFIX):].decode("utf-8", "replace"))
            except Exception as exc:  # noqa: BLE001 - the listener must never die
                if self._stop.is_set():
                    return
                errors += 1
                if errors == 1:
                    log.warning("wake subscription lost (%s); reconnecting", exc)
                self._stop.wait(capped_exponential(errors + 1, base=0.1, cap=5.0, jitter=0))
            finally:
                try:
                    ps.close()  # its socket: the next subscription dials where the locator says
                except Exception:  # noqa: BLE001, S110 - already broken
                    pass

    def _relay_wake(self, name: bytes) -> None:
        try:
            publish(self._hk_conn, sharded_pubsub(self._hk_conn), self.keys.wake_channel,
                    name.decode("utf-8", "replace"))
        except RedisError as exc:
            log.debug("could not relay a wake: %s", exc)

    def _cancels_missed(self) -> None:
        """Cancels of jobs we hold that were announced while we were not subscribed."""
        jids = sorted({f.split("#", 1)[0] for f in self.fetcher.held_fields()})
        if not jids:
            return
        try:
            marks = self._hk_conn.zmscore(self.keys.cancelled, jids)
        except RedisError as exc:
            log.warning("could not read cancel marks: %s", exc)
            return
        for jid, mark in zip(jids, marks, strict=True):
            if mark is not None:
                self.executor.cancel(jid)

    def _beat_safely(self) -> bool:
        try:
            sig = self.heartbeat.beat(quiet=self.fetcher.quiet)
            if self._reaper is not None:
                self._reaper.beaten(self.heartbeat.last_beat)
        except RedisError as exc:
            if self._reaper is not None:
                self._reaper.beaten(None)
            # Once per outage: a beat every few seconds would flood the log.
            self._beat_failures += 1
            if self._beat_failures == 1:
                log.warning("heartbeat failed (retried every %.0fs): %s",
                            self.config.heartbeat_interval, exc)
            return False
        except Exception:
            log.exception("heartbeat raised; retried at the next beat")
            return False
        if self._beat_failures:
            log.warning("heartbeat works again after %d failed beats", self._beat_failures)
            self._beat_failures = 0
        if sig is not None:
            self._remote_signal(sig)
        return True

    def _remote_signal(self, sig: str) -> None:
        """Sidekiq's Web UI buttons: Quiet (TSTP) stops fetching; Stop (TERM) stops the
        pool's process through ``on_remote_stop`` (the child asks its master), and
        only quiets a pool running inside someone else's process."""
        log.warning("Web UI asked this pool to %s", "stop" if sig == "TERM" else "quiet")
        if sig == "TSTP":
            self.fetcher.set_quiet(True)
        elif sig == "TERM":
            if self.on_remote_stop is not None:
                self.on_remote_stop()
            else:
                self.fetcher.set_quiet(True)

    def _housekeep(self) -> None:
        """Beat, pre-schedule periodic jobs, promote due jobs, reap stale pools.

        Each duty has its own next time and the thread sleeps until the earliest
        (monotonic).  Every duty is guarded on its own: if one raised out of this
        thread the beats would stop, and a live pool would be reaped as dead.
        """
        interval = self.config.heartbeat_interval
        next_beat = time.monotonic()  # at once: start() beat before the threads existed
        next_periodic = 0.0 if self.pool.periodic else float("inf")
        while True:
            now = time.monotonic()
            wake_at = min(next_beat, next_periodic)
            if self._reaper is not None:
                wake_at = min(wake_at, self._reaper.next_at)
            if self._stop.wait(max(0.0, wake_at - now)):
                return
            if self.fetcher.fenced:
                return  # reaped while frozen: beating would make it look alive again
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + interval
                self._beat_safely()
                # Due jobs normally move with the fetch that takes them; this covers a
                # pool whose threads are all busy (so it does not fetch) for a long time.
                self._duty("promoting due jobs", lambda: scheduler.promote_due(self._hk_conn, self.keys))
            if now >= next_periodic:
                if self._duty("periodic scheduling", lambda: scheduler.schedule_periodic(
                        self._hk_conn, self.keys, self.pool.periodic, horizon=PERIODIC_HORIZON,
                        guard_ttl=self.config.unique_ttl)):
                    next_periodic = now + PERIODIC_EVERY * random.uniform(0.8, 1.2)
                else:
                    next_periodic = now + interval
            if self._reaper is not None and time.monotonic() >= self._reaper.next_at:
                self._duty("stale-pool reaper", self._reap)

    def _reap(self) -> None:
        if self._reaper is not None:
            self._reaper.run(self._hk_conn, self.keys, exclude=(self.identity,),
                             on_poison=self._report_poison)

    def _report_poison(self, data: dict[str, Any]) -> None:
        """A stale pool's job this reaper buried as poison: its pool died with it, so
        this pool's reporters hear ``aborted(job, "poison")`` and ``stopped``."""
        if self.reporters is not None:
            job = Job.from_data(data)
            self.reporters.emit("aborted", job, "poison")
            self.reporters.emit("stopped", job)

    @staticmethod
    def _duty(what: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
            return True
        except RedisError as exc:
            log.warning("%s failed (will retry): %s", what, exc)
        except Exception:
            log.exception("%s raised; the heartbeat goes on", what)
        return False

    def _watchdog(self) -> None:
        while not self._stop.wait(0.1):
            self.executor.expire_overdue(time.monotonic())

