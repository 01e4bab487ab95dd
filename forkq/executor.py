"""Runs jobs on a fixed set of threads: decode, middleware, handler, outcome.

Threads are created once per pool, never per job.  Each finished job becomes a
*done item* handed to the fetcher, which acks them in batches::

    (field, None)      plain success: only HDEL from in-progress
    (field, Settle)    anything that needs a write (retry, dead, lease drop)
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from . import clock, forked, otel, results
from .errors import JobTimeout, Shutdown
from .job import Job, MalformedPayload, backtrace_lines, decode, group_hint, group_of
from .job_metrics import JobMetrics as SidekiqMetrics
from .metrics import OTHER, JobMetrics
from .reporters import ReporterHub
from .retry import failure_settle, malformed_dead_entry
from .scripts import Settle
from .spec import JobOptions, JobSpec, Middleware, is_async_callable

log = logging.getLogger("forkq.executor")

Taken = tuple[str, str, bytes]  # (queue name, in-progress field, payload)
# (in-progress field, how it settles): None is a plain success (it rides in the next
# fetch call), a str is the batch id of a batch member's plain success (ack.lua counts
# it in its batch; a str, not a Settle, because it is as hot as the plain one), else a
# Settle for ack.lua.
Done = tuple[str, Settle | str | None]

_DEFAULT_OPTIONS = JobOptions()
_STOP = None

RUNNING, FINISHED = 1, 2
# Weight of the newest job in the moving average of durations (see job_seconds).
AVG_WEIGHT = 0.05
# How long a cancel for a job this pool has not started yet is remembered.
CANCEL_PENDING_FOR = 60.0


class Slot:
    """What one worker thread is doing; read by heartbeats, observations and the watchdog."""

    __slots__ = ("index", "ident", "lock", "job", "queue", "field", "payload", "started_at",
                 "started_mono", "deadline", "state", "aborted", "settled")

    def __init__(self, index: int) -> None:
        self.index = index
        self.ident = 0
        self.lock = threading.Lock()
        self.job: Job | None = None
        self.queue = ""
        self.field = ""
        self.payload = b""
        # started_at is wall time, for display only (observations, Sidekiq's run_at);
        # started_mono and deadline are monotonic, so a wall-clock step changes no timeout.
        self.started_at = 0.0
        self.started_mono = 0.0
        self.deadline = 0.0
        self.state = FINISHED
        self.aborted: str | None = None
        # Whether the current item has been handed back (acked or given up): an item
        # the worker loop could not settle is buried rather than holding its slot forever.
        self.settled = True


def _raise_in_thread(ident: int, exc: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))


class AsyncRunnerLike(Protocol):
    """What the executor needs of forkq.aio's runner (passed in: aio imports this module)."""

    slots: list[Slot]

    def start(self) -> None: ...
    def submit(self, item: Taken) -> None: ...
    def discard_pending(self) -> list[Taken]: ...
    def cancel_where(self, slot_pred: Callable[[Slot], bool], reason: str) -> list[Slot]: ...
    def close(self) -> None: ...
    def join(self, timeout: float) -> None: ...


AsyncRunnerFactory = Callable[["Executor", list[Slot], list[Any]], AsyncRunnerLike]


class Run:
    """One execution between ``Executor.begin`` and ``Executor.end``."""

    __slots__ = ("qname", "field", "payload", "data", "job", "spec", "opts", "lease_name", "mono",
                 "span_end", "group")

    def __init__(self, *, qname: str, field: str, payload: bytes, data: dict[str, Any], job: Job,
                 spec: JobSpec | None, opts: JobOptions, lease_name: str | None, mono: float,
                 span_end: Callable[[BaseException | None, str | None], None] | None,
                 group: str | None = None) -> None:
        self.qname = qname
        self.field = field
        self.payload = payload
        self.data = data
        self.job = job
        self.spec = spec
        self.opts = opts
        self.lease_name = lease_name
        self.mono = mono
        self.span_end = span_end
        # The job's fair group when its name has group_concurrency (its lease to drop).
        self.group = group


class Executor:
    def __init__(self, *, specs: dict[str, JobSpec], middleware: Sequence[Middleware],
                 concurrency: int, reporters: ReporterHub | None,
                 thread_prefix: str = "forkq-worker",
                 sidekiq_metrics: SidekiqMetrics | None = None, async_concurrency: int = 0,
                 async_runner: AsyncRunnerFactory | None = None) -> None:
        self._specs = specs
        # Sidekiq 7's per-minute job metrics (an in-memory add per job; flushed by the beat).
        self._sk_metrics = sidekiq_metrics
        self._middleware = tuple(m for m in middleware if not is_async_callable(m))
        self._complete: Callable[[Done], None] = _not_wired
        self._reporters = reporters
        self._leased = frozenset(n for n, s in specs.items() if s.options.max_concurrency > 0)
        # Names with group_concurrency: their settles name the job's group (its lease).
        self._group_capped = frozenset(n for n, s in specs.items() if s.options.group_concurrency > 0)
        self._q: queue.SimpleQueue[Taken | None] = queue.SimpleQueue()
        self.slots = [Slot(i) for i in range(concurrency)]
        self._threads = [threading.Thread(target=self._loop, args=(s,), daemon=True,
                                          name=f"{thread_prefix}-{s.index}") for s in self.slots]
        self._thread_slots = tuple(self.slots)
        # async def jobs: an event loop beside the threads, with slots of its own after
        # the threads' (heartbeats, hard timeouts and metrics read them all).
        self._async_names = frozenset(n for n, s in specs.items() if s.is_async)
        self.aio: AsyncRunnerLike | None = None
        if self._async_names and async_concurrency > 0 and async_runner is not None:
            aslots = [Slot(concurrency + i) for i in range(async_concurrency)]
            self.slots.extend(aslots)
            self.aio = async_runner(self, aslots, [m for m in middleware if is_async_callable(m)])
        self.has_timeouts = any(s.options.timeout for s in specs.values())
        # Per-job-name counts for ``forkq --metrics`` (set by the child when enabled).
        self.metrics: JobMetrics | None = None
        # Recent job duration (seconds, moving average; < 0 before the first job): how
        # deep the fetcher may prefetch without jobs waiting long behind running ones.
        self._avg_seconds = -1.0
        # jid -> monotonic time of cancels that arrived for jobs not running yet (taken
        # but waiting for a thread, or still in the fetch reply): they end at begin.
        self._cancel_pending: dict[str, float] = {}

    def deliver_to(self, complete: Callable[[Done], None]) -> None:
        """Where finished jobs go (the fetcher's ack batch); set before ``start``."""
        self._complete = complete

    def start(self) -> None:
        for t in self._threads:
            t.start()
        if self.aio is not None:
            self.aio.start()

    def submit(self, item: Taken) -> None:
        if item[0] in self._async_names and self.aio is not None:
            self.aio.submit(item)
        else:
            self._q.put(item)

    def pending(self) -> int:
        """Jobs handed over and not started yet (the fetcher's prefetch buffer)."""
        return self._q.qsize()

    def job_seconds(self) -> float:
        """Moving average of recent job durations in seconds; ``inf`` before the first job.

        Racy on purpose (threads update it without a lock): an estimate, read by the
        fetcher to size its prefetch, never for correctness.
        """
        avg = self._avg_seconds
        est = avg if avg >= 0 else float("inf")
        # While every thread is inside a job that has already run longer than that, the
        # next free thread is further off than the average says: a job prefetched now
        # would wait behind them while other pools have free threads.
        now = time.monotonic()
        soonest = float("inf")
        for slot in self._thread_slots:
            if slot.state != RUNNING:
                return est
            soonest = min(soonest, now - slot.started_mono)
        return max(est, soonest)

    def discard_pending(self) -> list[Taken]:
        """Take back jobs handed over but not started (shutdown requeues them)."""
        out: list[Taken] = self.aio.discard_pending() if self.aio is not None else []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return out
            if item is not None:
                out.append(item)

    def close(self) -> None:
        for _ in self._threads:
            self._q.put(_STOP)
        if self.aio is not None:
            self.aio.close()

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        if self.aio is not None:
            self.aio.join(max(0.0, end - time.monotonic()))

    # -- timeouts and aborts (called from other threads) ---------------------------
    def interrupt(self, slot: Slot, exc: type[BaseException], reason: str) -> bool:
        """Raise ``exc`` in the slot's thread if it is still running the same job."""
        with slot.lock:
            if slot.state != RUNNING or slot.aborted is not None:
                return False
            slot.aborted = reason
            _raise_in_thread(slot.ident, exc)
            return True

    def cancel(self, jid: str) -> bool:
        """A cancel arrived (wake channel): tell the running job, or end it at its start.

        A thread's job sees ``job.cancelled`` (it stops when it checks); an async
        job's task is cancelled.  Returns whether a running job had that jid.
        """
        now = time.monotonic()
        pending = self._cancel_pending
        pending[jid] = now
        for old in [j for j, t in pending.items() if now - t > CANCEL_PENDING_FOR]:
            del pending[old]
        hit = False
        for slot in self.slots:
            job = slot.job
            if job is not None and job.id == jid and slot.state == RUNNING:
                job.mark_cancelled()
                hit = True
        if hit and self.aio is not None:
            self.aio.cancel_where(lambda s: s.job is not None and s.job.id == jid, "cancelled")
        return hit

    def cancel_heard(self, jid: str) -> bool:
        """Whether a cancel of ``jid`` reached this pool and waits for the job to start."""
        return jid in self._cancel_pending

    def job_mark(self, ident: int) -> float | None:
        """What identifies the job thread ``ident`` runs now (None if it runs none)."""
        for slot in self.slots:
            if slot.ident == ident:
                return slot.started_mono if slot.state == RUNNING else None
        return None

    def expire_overdue(self, now: float) -> None:
        """Raise JobTimeout in jobs past their deadline; ``now`` is ``time.monotonic()``."""
        for slot in self._thread_slots:  # async jobs time out on their loop (forkq.aio)
            if slot.state == RUNNING and slot.deadline and now >= slot.deadline and slot.aborted is None:
                if self.interrupt(slot, JobTimeout, "timeout"):
                    log.warning("job %s %s passed its timeout; JobTimeout raised in its thread",
                                slot.queue, slot.field)

    def abort_all(self, reason: str = "shutdown") -> list[Slot]:
        hit = []
        for slot in self._thread_slots:
            if self.interrupt(slot, Shutdown, reason):
                hit.append(slot)
        if self.aio is not None:
            hit += self.aio.cancel_where(lambda _slot: True, reason)
        return hit

    # -- the worker loop ---------------------------------------------------------
    def _loop(self, slot: Slot) -> None:
        slot.ident = threading.get_ident()
        get = self._q.get
        run = self._run
        item: Taken | None = None
        while True:
            try:
                item = get()
                if item is None:
                    return
                slot.settled = False
                run(slot, item)
            except (JobTimeout, Shutdown):
                # An interrupt that landed after the job had finished: nothing to undo.
                continue
            except BaseException as exc:  # never let a worker thread die
                if item is not None and not slot.settled:
                    # Never leave an item unsettled: its thread slot would be lost for good.
                    self._bury(item, f"forkq could not run this entry: {describe_error(exc)[1]}")
                log.exception("worker thread error outside a job; continuing")

    def bury(self, item: Taken, reason: str) -> None:
        self._bury(item, reason)

    def _bury(self, item: Taken, reason: str) -> None:
        qname, field, payload = item
        group = group_hint(payload) if qname in self._group_capped else None
        self._complete((field, Settle(
            op="d", field=field, name=qname if qname in self._leased or group else None,
            payload=malformed_dead_entry(queue=qname, raw=payload, reason=reason),
            score=clock.now(), group=group)))

    def _run(self, slot: Slot, item: Taken) -> None:
        run = self.begin(slot, item)
        if run is None:
            return
        job, spec = run.job, run.spec
        error: BaseException | None = None
        tb = ""
        result: Any = None
        try:
            if spec is None:
                raise UnknownJob(f"no handler registered for job {job.name!r} (queue {run.qname!r})")
            job.raise_if_cancelled()  # cancelled before it started
            if self._middleware:
                result = self._chain(job, spec.handler)
            else:
                result = spec.handler(job)
            if inspect.isawaitable(result):
                # A handler that only looks sync (a wrapper around an async def): never
                # report a coroutine that did not run as a success.
                getattr(result, "close", lambda: None)()
                raise TypeError(f"handler of {job.name!r} returned an awaitable but is not an "
                                "async def, so it did not run (register the async def itself)")
            with slot.lock:
                slot.state = FINISHED
        except BaseException as exc:  # noqa: B036 - JobTimeout/Shutdown are BaseExceptions
            # The job raised just as its interrupt was being set: the interrupt may land
            # here.  Only one is ever set per job, so a second try cannot be hit.
            try:
                with slot.lock:
                    slot.state = FINISHED
            except (JobTimeout, Shutdown):
                slot.state = FINISHED
            error = exc
            if self._reporters is not None and not isinstance(exc, (JobTimeout, Shutdown)):
                tb = traceback.format_exc()  # only reporters read it (costly in a retry storm)
        finally:
            slot.job = None
        took = time.monotonic() - run.mono
        avg = self._avg_seconds
        self._avg_seconds = took if avg < 0 else avg + (took - avg) * AVG_WEIGHT
        # A process the job forked must not go on into forkq's code (see forked.py).
        forked.leave_if_forked(error is None)
        self.end(slot, run, error, tb, result)

    def begin(self, slot: Slot, item: Taken) -> Run | None:
        """Decode, fill the slot, report "started"; None if the entry was buried instead.

        Shared by the worker threads and the event loop (forkq.aio), so both kinds
        of job have one path for bookkeeping and outcomes.
        """
        qname, field, payload = item
        # The queue's lease (max_concurrency) is dropped when the job is settled.
        lease_name = qname if qname in self._leased else None
        try:
            data = decode(payload)
        except MalformedPayload as exc:
            log.warning("malformed payload in queue %r moved to dead: %s", qname, exc)
            slot.settled = True
            self._bury(item, str(exc))
            return None
        job = Job.from_data(data)
        spec = self._specs.get(job.name)
        opts = spec.options if spec is not None else _DEFAULT_OPTIONS
        reporters = self._reporters
        mono = time.monotonic()
        slot.job = job
        slot.queue = qname
        slot.field = field
        slot.payload = payload
        slot.started_at = time.time()
        slot.started_mono = mono
        slot.deadline = mono + opts.timeout if opts.timeout else 0.0
        slot.aborted = None
        slot.state = RUNNING
        if self._cancel_pending and self._cancel_pending.pop(job.id, None) is not None:
            job.mark_cancelled()
        if reporters is not None:
            reporters.emit("started", job)
        # forkq.otel: the CONSUMER span, current while the handler runs (None when off).
        tracing = otel.tracing
        span_end = tracing.process(qname, job) if tracing is not None else None
        return Run(qname=qname, field=field, payload=payload, data=data, job=job, spec=spec,
                   opts=opts, lease_name=lease_name, mono=mono, span_end=span_end,
                   group=group_of(data) if qname in self._group_capped else None)

    def end(self, slot: Slot, run: Run, error: BaseException | None, tb: str,
            result: Any = None) -> None:
        """Hand the outcome of a finished job to the ack batch, metrics and reporters."""
        qname, field, payload, data = run.qname, run.field, run.payload, run.data
        job, spec, opts, lease_name, mono = run.job, run.spec, run.opts, run.lease_name, run.mono
        reporters = self._reporters
        complete = self._complete if run.group is None else self._grouped(qname, run.group)
        aborted = slot.aborted
        ttl = opts.result_ttl
        result_json = b"null"
        if ttl is not None and error is None and aborted is None:
            # The value is kept as JSON: one that is not fails the job, visibly.
            try:
                result_json = results.encode_result(result)
            except results.ResultNotSerializable as exc:
                error = exc
        if run.span_end is not None:
            run.span_end(error, aborted)
        metrics = self.metrics
        if metrics is not None and aborted != "shutdown":
            metrics.record(slot.index, job.name if spec is not None else OTHER,
                           time.monotonic() - mono, error is not None or aborted is not None)
        if error is None and aborted is None:
            slot.settled = True
            bid = job.batch_id
            if ttl is not None:
                complete((field, Settle(op="k", field=field, name=lease_name, batch=bid, jid=job.id,
                                        result=results.record("succeeded", result_json=result_json),
                                        result_ttl=ttl, result_final=True)))
            elif lease_name:
                complete((field, Settle(op="k", field=field, name=lease_name, batch=bid)))
            else:
                complete((field, bid))
            if self._sk_metrics is not None:
                self._sk_metrics.record(job.name, time.monotonic() - mono, False)
            if reporters is not None:
                reporters.emit("success", job, time.monotonic() - mono)
                reporters.emit("stopped", job)
            return
        if job.cancelled and (error is not None or aborted is not None) and aborted != "shutdown":
            # Cancelled: it ends here, whatever it raised; never retried.
            slot.settled = True
            bid = job.batch_id
            # In a batch it counts as ended without success ('K'), not as a success.
            op = "K" if bid else "k"
            if ttl is not None:
                complete((field, Settle(op=op, field=field, name=lease_name, batch=bid, jid=job.id,
                                        result=results.record("cancelled"), result_ttl=ttl,
                                        result_final=True)))
            else:
                complete((field, Settle(op=op, field=field, name=lease_name, batch=bid)
                          if lease_name or bid else None))
            log.info("job %s %s was cancelled", job.name, job.id)
            if reporters is not None:
                reporters.emit("aborted", job, "cancelled")
                reporters.emit("stopped", job)
            return
        if aborted == "shutdown":
            slot.settled = True
            # Requeued by the pool at shutdown; nothing to settle here.
            if reporters is not None:
                reporters.emit("aborted", job, "shutdown")
                reporters.emit("stopped", job)
            return
        lines: list[str] = []
        if aborted is not None:
            error_class, message = "JobTimeout", f"job ran longer than its timeout of {opts.timeout}s"
        else:
            assert error is not None
            error_class, message = describe_error(error)
            lines = backtrace_lines(error.__traceback__)
        try:
            settle = failure_settle(field=field, name=lease_name, data=data, error_class=error_class,
                                    error_message=message, max_fails=opts.max_fails,
                                    skip_dead=opts.skip_dead, backoff=opts.backoff, job=job,
                                    backtrace=lines)
        except Exception as exc:  # e.g. a user backoff that raised: the job must still settle
            log.exception("could not compute the retry of %s %s; it goes to dead", job.name, job.id)
            settle = Settle(op="d", field=field, name=lease_name, score=clock.now(), batch=job.batch_id,
                            payload=malformed_dead_entry(
                                queue=qname, raw=payload,
                                reason=f"{error_class}: {message} (and its retry failed: {describe_error(exc)[1]})"))
        if ttl is not None:
            final = settle.op != "r"
            settle = replace(settle, jid=job.id, result_ttl=ttl, result_final=final,
                             result=results.record("dead" if final else "retrying",
                                                   error=f"{error_class}: {message}"))
        slot.settled = True
        complete((field, settle))
        if self._sk_metrics is not None:
            self._sk_metrics.record(job.name, time.monotonic() - mono, True)
        # Failures are never silent: one WARNING per failed execution (not per success).
        log.warning("job %s %s failed: %s: %s%s; %s", job.name, job.id, error_class,
                    _short(message), f" (at {lines[0]})" if lines else "", _fate(settle))
        if reporters is not None:
            if aborted is not None:
                reporters.emit("aborted", job, aborted)
            else:
                assert error is not None
                reporters.emit("failure", job, error, tb)
            reporters.emit("stopped", job)

    def _grouped(self, qname: str, group: str) -> Callable[[Done], None]:
        """The ack hand-off for a job holding a group lease: every settle (a plain
        success too) names its group, so ack.lua drops that lease."""
        deliver = self._complete

        def complete(item: Done) -> None:
            field, settle = item
            if settle is None or isinstance(settle, str):  # plain (a str: a batch member's)
                settle = Settle(op="k", field=field, batch=settle)
            deliver((field, replace(settle, name=qname, group=group)))

        return complete

    def _chain(self, job: Job, handler: Callable[[Job], Any]) -> Any:
        mws = self._middleware

        def call(i: int) -> Any:
            if i == len(mws):
                return handler(job)
            return mws[i](job, lambda: call(i + 1))

        return call(0)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _fate(settle: Settle) -> str:
    if settle.op == "r":
        return f"retry in {max(0.0, settle.score - clock.now()):.0f}s"
    if settle.op == "d":
        return "moved to dead"
    return "dropped (skip_dead)"


def _printable(text: str) -> str:
    """Lone surrogates (from C extensions, bad decodes) would make orjson refuse the entry."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(class name, message) of an exception, whatever its ``__str__`` does."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the job
        text = f"<{name} whose str() raised>"
    return _printable(name), _printable(text or name)


def _not_wired(item: Done) -> None:
    raise RuntimeError("Executor.deliver_to() was not called before start()")


class UnknownJob(Exception):
    """A queue entry whose ``class`` no registered handler has."""
