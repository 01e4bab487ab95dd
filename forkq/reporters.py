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
        self._q.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            event, *args = item
            for handler in self._handlers[event]:
                try:
                    handler(*args)
                except BaseException:  # noqa: B036 - a reporter's SystemExit must not end delivery
                    # If this thread died, every later event would pile up unseen.
                    log.exception("reporter %r raised on %s; ignored", handler, event)
