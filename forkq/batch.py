"""Batches: a group of jobs with callbacks that run once the group is done.

``with enq.batch(on_success="report", on_complete="cleanup", args={...}) as b:``
collects the jobs added with ``b.enqueue``/``b.enqueue_many``; when the block
ends without an exception they are pushed, with the batch's counts, in one
script call (lua/batch_push.lua): no job of the batch can finish before the
batch knows its size.  Every settle of a member (lua/ack.lua) counts it:
succeeded, a failure (still pending while it retries), or dead.  When nothing
is pending, ``on_complete`` is enqueued, and ``on_success`` too if no member
died: each exactly once, because the count and the push happen in the same
atomic ack that removes the member from its pool's in-progress hash — a member
requeued after a kill or a reaped host is not counted until it really ends.

A job of the batch may add jobs to it before it finishes
(``enq.batch(bid=job.batch_id)``): it is itself still pending, so the batch
cannot finish in between.  Callback jobs get the batch's ``args`` plus
``batch_id``.  A member that died and is later retried by hand from the dead
set is not counted again (the batch finished without it).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from . import job as jobcodec
from . import scripts
from .errors import ConfigError, EnqueueError
from .job import Job
from .keys import Keys, validate_job_name


class Producer(Protocol):
    """What a batch needs of its ``Enqueuer`` (forkq/enqueue.py builds batches)."""

    keys: Keys

    def _now(self) -> float: ...
    def _encode(self, data: dict[str, Any]) -> bytes: ...
    def _run(self, call: scripts.Call) -> Any: ...
    def _check_known(self, name: str) -> None: ...


def new_bid() -> str:
    return secrets.token_hex(12)


@dataclass(frozen=True, kw_only=True)
class BatchStatus:
    """What ``Client.batch(bid)`` reports (counts are executions' outcomes, by job)."""

    bid: str
    total: int
    pending: int
    succeeded: int
    failures: int  # failed executions, retries included
    dead: int
    created_at: float
    description: str
    on_success: str | None
    on_complete: str | None
    success_at: float | None  # when on_success was enqueued (None: not yet / never)
    complete_at: float | None

    @property
    def done(self) -> bool:
        return self.pending == 0

    @classmethod
    def from_hash(cls, bid: str, h: Mapping[bytes, bytes]) -> BatchStatus:
        def num(k: str) -> int:
            return int(h.get(k.encode(), b"0") or 0)

        def when(k: str) -> float | None:
            v = h.get(k.encode())
            return float(v) if v else None

        def text(k: str) -> str | None:
            v = h.get(k.encode())
            return v.decode() if v else None

        return cls(bid=bid, total=num("total"), pending=num("pending"), succeeded=num("succeeded"),
                   failures=num("failures"), dead=num("dead"),
                   created_at=float(h.get(b"created_at", b"0") or 0),
                   description=text("description") or "", on_success=text("success_queue"),
                   on_complete=text("complete_queue"), success_at=when("success_at"),
                   complete_at=when("complete_at"))


class Batch:
    """Collects a batch's jobs; pushed when the ``with`` block ends (see module doc)."""

    def __init__(self, enqueuer: Producer, *, bid: str | None, on_success: str | None,
                 on_complete: str | None, args: Mapping[str, Any] | None, description: str) -> None:
        self._enq = enqueuer
        self.adding = bid is not None
        if bid is not None and not jobcodec.valid_bid(bid):
            raise ConfigError(f"bad batch id {bid!r}: 1 to {jobcodec.MAX_BID_CHARS} letters, "
                              "digits, '-' or '_'")
        if self.adding and (on_success or on_complete or args or description):
            raise ConfigError("callbacks, args and description are set when a batch is created, "
                              "not when jobs are added to it")
        for cb in (on_success, on_complete):
            if cb is not None:
                validate_job_name(cb)
                enqueuer._check_known(cb)
        if args is not None and not isinstance(args, Mapping):
            raise TypeError(f"batch args must be a mapping, got {type(args).__name__}")
        self.bid = bid or new_bid()
        self._on_success = on_success
        self._on_complete = on_complete
        self._args = dict(args or {})
        self._description = description
        self._jobs: dict[str, list[dict[str, Any]]] = {}
        self._pushed = False
        self.jobs: list[Job] = []

    def enqueue(self, name: str, args: Mapping[str, Any] | None = None) -> Job:
        return self.enqueue_many(name, [args])[0]

    def enqueue_many(self, name: str, args_list: Iterable[Mapping[str, Any] | None]) -> list[Job]:
        if self._pushed:
            raise EnqueueError(f"batch {self.bid} was pushed already: open another with enq.batch(bid=...)")
        validate_job_name(name)
        now = self._enq._now()
        out = []
        for args in args_list:
            if args is not None and not isinstance(args, Mapping):
                raise TypeError(f"job args must be a mapping of keyword arguments, got {type(args).__name__}")
            data = jobcodec.build_payload(name, dict(args) if args else None, now=now)
            data["bid"] = self.bid
            self._jobs.setdefault(name, []).append(data)
            out.append(Job.from_data(data))
        self.jobs += out
        return out

    def _callback(self, name: str | None) -> scripts.BatchCallback | None:
        if name is None:
            return None
        data = jobcodec.build_payload(name, {**self._args, "batch_id": self.bid}, now=self._enq._now())
        return scripts.BatchCallback(queue=name, payload=self._enq._encode(data))

    def push(self) -> int:
        """Push the collected jobs (``__exit__`` does); the batch's pending count after it."""
        if self._pushed:
            raise EnqueueError(f"batch {self.bid} was pushed already")
        jobs = [(name, [self._enq._encode(d) for d in datas]) for name, datas in self._jobs.items()]
        call = scripts.batch_push(self._enq.keys, bid=self.bid, add=self.adding, jobs=jobs,
                                  on_success=self._callback(self._on_success),
                                  on_complete=self._callback(self._on_complete),
                                  description=self._description)
        self._pushed = True
        return int(self._enq._run(call))

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:  # a block that raised pushes nothing: no half batch
            self.push()
