"""``async def`` jobs: one asyncio event loop per pool, on a thread beside the workers.

The fetcher takes jobs for threads and async slots in one call, each kind up to
its own free slots (threads, ``async_concurrency``), and hands every job to
``Executor.submit``, which routes
jobs of ``async def`` names here by their queue name (no decode).  Each job gets
one of ``async_concurrency`` slots (the same ``Slot`` records the heartbeat, the
hard-timeout check and the metrics read for threads) and runs as one task;
its outcome goes through ``Executor.end``, so acks, retries, dead, reporters and
stats are the thread path's own.

Timeouts: at the job's timeout its task is cancelled (``asyncio.CancelledError``
inside the handler) and the job fails as a timeout; a handler that swallows the
cancellation or blocks the loop is caught by the child's hard timeout, which
fails it and replaces the process, as for a thread.

Hand-over from other threads is batched: the first job of a burst schedules one
loop callback (one self-pipe write), the rest ride it.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .executor import FINISHED, Executor, Slot, Taken, UnknownJob

if TYPE_CHECKING:
    from .job import Job

log = logging.getLogger("forkq.aio")

AsyncMiddleware = Callable[["Job", Callable[[], Awaitable[Any]]], Awaitable[Any]]


class AsyncRunner:
    """The event loop of one pool and the async slots it runs jobs in."""

    def __init__(self, executor: Executor, slots: Sequence[Slot], middleware: Sequence[Any]) -> None:
        self._ex = executor
        self.slots = list(slots)
        self._middleware = tuple(middleware)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="forkq-asyncio", daemon=True)
        # Only touched on the loop's thread.
        self._free = list(reversed(self.slots))
        self._waiting: collections.deque[Taken] = collections.deque()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # Filled by other threads; drained by one scheduled callback per burst.
        self._lock = threading.Lock()
        self._inbox: list[Taken] = []
        self._armed = False
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                self._loop.close()

    # -- from other threads ---------------------------------------------------------
    def submit(self, item: Taken) -> None:
        with self._lock:
            if self._closed:
                return
            self._inbox.append(item)
            if self._armed:
                return
            self._armed = True
        self._loop.call_soon_threadsafe(self._drain)

    def discard_pending(self) -> list[Taken]:
        """Jobs handed over but not started (shutdown requeues them)."""
        with self._lock:
            out, self._inbox = self._inbox, []
        done = threading.Event()
        taken: list[Taken] = []

        def grab() -> None:
            taken.extend(self._waiting)
            self._waiting.clear()
            done.set()

        if self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(grab)
                done.wait(2.0)
            except RuntimeError:  # loop already closed
                pass
        return out + taken

    def cancel_where(self, slot_pred: Callable[[Slot], bool], reason: str) -> list[Slot]:
        """Cancel the tasks of the running slots ``slot_pred`` picks, marking them ``reason``."""
        hit: list[Slot] = []
        done = threading.Event()

        def run() -> None:
            for slot in self.slots:
                task = self._tasks.get(slot.index)
                if task is None or slot.state == FINISHED or slot.aborted is not None:
                    continue
                if slot_pred(slot):
                    slot.aborted = reason
                    task.cancel()
                    hit.append(slot)
            done.set()

        if threading.current_thread() is self._thread:
            run()
            return hit
        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:
            return hit
        done.wait(2.0)
        return hit

    def close(self) -> None:
        with self._lock:
            self._closed = True
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:
            pass

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # -- on the loop ----------------------------------------------------------------
    def _drain(self) -> None:
        with self._lock:
            items, self._inbox = self._inbox, []
            self._armed = False
        self._waiting.extend(items)
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self._waiting and self._free:
            slot = self._free.pop()
            item = self._waiting.popleft()
            slot.settled = False
            self._tasks[slot.index] = self._loop.create_task(self._execute(slot, item))

    async def _execute(self, slot: Slot, item: Taken) -> None:
        try:
            await self._run(slot, item)
        except BaseException as exc:  # noqa: BLE001 - the slot must come back whatever happened
            if not slot.settled:
                self._ex.bury(item, f"forkq could not run this entry: {type(exc).__name__}: {exc}")
            log.exception("async job runner error outside a job; continuing")
        finally:
            self._tasks.pop(slot.index, None)
            self._free.append(slot)
            self._start_waiting()

    async def _run(self, slot: Slot, item: Taken) -> None:
        ex = self._ex
        run = ex.begin(slot, item)
        if run is None:
            return
        job, spec = run.job, run.spec
        timer = None
        if run.opts.timeout:
            timer = self._loop.call_later(run.opts.timeout, self._expire, slot, run.mono)
        error: BaseException | None = None
        tb = ""
        result: Any = None
        try:
            if spec is None:
                raise UnknownJob(f"no handler registered for job {job.name!r} (queue {run.qname!r})")
            job.raise_if_cancelled()  # cancelled before it started
            result = await self._call(job, spec.handler)
            slot.state = FINISHED
        except BaseException as exc:  # noqa: BLE001 - CancelledError is how timeouts land
            slot.state = FINISHED
            error = exc
            if slot.aborted is None:
                tb = traceback.format_exc()
        finally:
            slot.job = None
            if timer is not None:
                timer.cancel()
        ex.end(slot, run, error, tb, result)

    async def _call(self, job: Job, handler: Callable[[Job], Any]) -> Any:
        mws = self._middleware

        async def call(i: int) -> Any:
            if i == len(mws):
                out = handler(job)
                # A sync handler routed here (a Sidekiq client put it in an async
                # name's queue) ran already; an awaitable is awaited.
                return await out if inspect.isawaitable(out) else out
            return await mws[i](job, lambda: call(i + 1))

        return await call(0)

    def _expire(self, slot: Slot, mark: float) -> None:
        task = self._tasks.get(slot.index)
        if task is None or slot.state == FINISHED or slot.started_mono != mark or slot.aborted is not None:
            return
        slot.aborted = "timeout"
        task.cancel()
        log.warning("job %s %s passed its timeout; its task was cancelled", slot.queue, slot.field)
