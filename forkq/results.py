"""Job results and status by jid (``@pool.job(result_ttl=SECONDS)``, DESIGN.md §11).

A job whose name has a ``result_ttl`` gets a record ``{ns}:result:<jid>`` (JSON:
state, result, error) written by ``store_results.lua`` in the same pipeline as
the ack that settles it, so a result costs no round trip of its own; names
without ``result_ttl`` pay nothing.  States that only exist while the job waits
or runs (queued, scheduled, retrying, running) are read from where the job is
(``cancel.lua`` in locate mode), so enqueue writes nothing either.  A job that
ended pushes one element on ``{ns}:result-notify:<jid>``: ``Enqueuer.wait``
blocks on it with BLPOP instead of polling.

This module owns the record's format (it is not job JSON: forkq.job owns that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ForkqError

STATES = ("queued", "scheduled", "running", "succeeded", "retrying", "dead", "cancelled")
FINAL = frozenset({"succeeded", "dead", "cancelled"})


class ResultNotSerializable(ForkqError, TypeError):
    """A job with a result_ttl returned a value JSON cannot carry: the job fails with this."""


@dataclass(frozen=True, kw_only=True)
class JobResult:
    """What is known about a job: ``state`` (one of ``STATES``), its JSON return value
    (``result``, once succeeded) and its last error (``error``, "Class: message")."""

    jid: str
    state: str
    result: Any = None
    error: str | None = None

    @property
    def done(self) -> bool:
        """True once the job ended: succeeded, dead or cancelled."""
        return self.state in FINAL


def encode_result(value: Any) -> bytes:
    """The JSON of a return value, or ResultNotSerializable saying why not."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise ResultNotSerializable(
            f"the job returned {type(value).__name__} which is not JSON-serialisable "
            f"(result_ttl keeps the return value as JSON): {exc}") from None


def record(state: str, *, result_json: bytes | None = None, error: str | None = None) -> bytes:
    """The stored record; ``result_json`` is already JSON (``encode_result``)."""
    assert state in STATES, state
    head = orjson.dumps({"state": state, "error": error})
    if result_json is None:
        return head
    return head[:-1] + b',"result":' + result_json + b"}"


def parse(jid: str, raw: bytes) -> JobResult | None:
    """A stored record; None if it is not one (written by something else)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("state") not in STATES:
        return None
    error = data.get("error")
    return JobResult(jid=jid, state=data["state"], result=data.get("result"),
                     error=error if isinstance(error, str) else None)
