"""What happens to a job that failed: retry later, dead, or dropped (gocraft's options)."""

from __future__ import annotations

import random
from typing import Any

from . import clock
from . import job as jobcodec
from .scripts import Settle
from .spec import Backoff


def default_backoff(job: Any) -> float:
    """Seconds before the next try: ``fails**4 + 15 + random(0 .. 10*(fails+1))``.

    ``job.fails`` counts failures so far, this one included (1 after the first).
    """
    fails = job.fails
    return float(fails**4 + 15 + random.randint(0, 10 * (fails + 1)))


def failure_settle(*, field: str, name: str | None, data: dict[str, Any], error_class: str,
                   error_message: str, max_fails: int, skip_dead: bool, backoff: Backoff | None,
                   job: Any, now: float | None = None,
                   backtrace: list[str] | None = None) -> Settle:
    """Build the ack for a failed job, Sidekiq-style fields included.

    The one place an outcome becomes an ack record (the executor, the hard timeout
    and the master's poison path all come here or to ``malformed_dead_entry``).
    ``retry_count`` follows Sidekiq: 0 after the first failure, +1 after each later one.
    Times are Redis's (``clock.now()``): the retry is due by the clock every promoter uses.
    """
    t = clock.now() if now is None else now
    rc = data.get("retry_count")
    if rc is not None:
        data["retry_count"] = rc + 1
        data["retried_at"] = t
    else:
        data["retry_count"] = 0
        data["failed_at"] = t
    # It ran to an answer: whatever killed pools under it before, it was not this run.
    data.pop("recovered", None)
    data.pop("killed", None)
    data["error_class"] = error_class
    data["error_message"] = error_message[:4000]
    if backtrace:
        data["error_backtrace"] = jobcodec.compress_backtrace(backtrace)
    else:
        data.pop("error_backtrace", None)
    fails = data["retry_count"] + 1
    bid = jobcodec.bid_of(data)  # a batch member's failure counts in its batch (ack.lua)
    if job is not None:
        job.fails = fails
    if fails >= max_fails:
        if skip_dead:
            return Settle(op="K", field=field, name=name, batch=bid)
        return Settle(op="d", field=field, name=name, payload=jobcodec.encode(data), score=t, batch=bid)
    delay = (backoff or default_backoff)(job if job is not None else _Fails(fails))
    due = t + max(0.0, float(delay))
    # Promotion moves the entry unchanged: it is enqueued when it is due.
    data["enqueued_at"] = due
    return Settle(op="r", field=field, name=name, payload=jobcodec.encode(data), score=due, batch=bid)


class _Fails:
    __slots__ = ("fails",)

    def __init__(self, fails: int) -> None:
        self.fails = fails


def malformed_dead_entry(*, queue: str, raw: bytes, reason: str, now: float | None = None) -> bytes:
    """A dead-set entry for a queue entry that is not a job, keeping the raw bytes."""
    t = clock.now() if now is None else now
    return jobcodec.encode({
        "jid": jobcodec.new_jid(),
        "class": queue,
        "queue": queue,
        "args": [],
        "created_at": t,
        "enqueued_at": t,
        "failed_at": t,
        "retry_count": 0,
        "error_class": "MalformedPayload",
        "error_message": reason,
        "raw": raw.decode("utf-8", "backslashreplace"),
    })
