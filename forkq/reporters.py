"""Reporters: lifecycle events delivered off the job's thread (Kiq's reporters).

Each job emits ``started``, then exactly one of ``success(job, duration)``,
``failure(job, exc, traceback_text)`` or ``aborted(job, reason)``, then ``stopped``.
Events go through one queue to one thread per pool, so a slow reporter delays
other reports, never a job; a raising reporter is logged and ignored.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("forkq.reporters")

EVENTS = ("started", "success", "failure", "aborted", "stopped")


class Reporter:
    """Base class with no-op handlers; override the events you care about."""

    def started(self, job: Any) -> None: ...

    def success(self, job: Any, duration: float) -> None: ...

    def failure(self, job: Any, error: BaseException, traceback: str) -> None: ...

    def aborted(self, job: Any, reason: str) -> None: ...

    def stopped(self, job: Any) -> None: ...


class ReporterHub:
    """Fans events out to the reporters on a dedicated thread."""

    def __init__(self, reporters: Sequence[Any]) -> None:
        # Resolve bound methods once; reporters may implement any subset.
        self._handlers: dict[str, list[Any]] = {
            ev: [getattr(r, ev) for r in reporters if callable(getattr(r, ev, None))] for ev in EVENTS
        }
        self._q: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="forkq-reporters", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def emit(self, event: str, *args: Any) -> None:
        self._q.put((event, *args))

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what was emitted so far, then end every job still open.

        A job whose thread did not answer the shutdown interrupt in time (stuck in
        a C call) emits nothing more that anyone reads; the pool has requeued it,
        so its reporters get ``aborted(job, "shutdown")`` and ``stopped`` here and
        the started/outcome/stopped pairing holds for every job.
        """
        self._q.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        # id(job) -> [job, outcome seen]; only this thread touches it.
        open_jobs: dict[int, list[Any]] = {}
        while True:
            item = self._q.get()
            if item is None:
                break
            event, *args = item
            if event == "started":
                open_jobs[id(args[0])] = [args[0], False]
            elif event == "stopped":
                open_jobs.pop(id(args[0]), None)
            else:
                entry = open_jobs.get(id(args[0]))
                if entry is not None:
                    entry[1] = True
            self._deliver(event, args)
        for job, outcome_seen in open_jobs.values():
            if not outcome_seen:
                self._deliver("aborted", (job, "shutdown"))
            self._deliver("stopped", (job,))

    def _deliver(self, event: str, args: Sequence[Any]) -> None:
        for handler in self._handlers[event]:
            try:
                handler(*args)
            except BaseException:  # noqa: B036 - a reporter's SystemExit must not end delivery
                # If this thread died, every later event would pile up unseen.
                log.exception("reporter %r raised on %s; ignored", handler, event)
