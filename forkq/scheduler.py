"""Moving due scheduled/retry jobs to their queues, and periodic (cron) enqueueing.

Both run by Redis's clock (DESIGN.md §8): promotion decides what is due with TIME
inside the script, and periodic occurrences are computed from Redis's time, so a
worker host whose clock is off neither runs a job early nor skips an occurrence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import redis

from . import clock, scripts
from . import job as jobcodec
from .cron import occurrences
from .keys import Keys
from .retry import malformed_dead_entry
from .spec import PeriodicSpec


def schedule_periodic(conn: redis.Redis, keys: Keys, periodic: Sequence[PeriodicSpec], *,
                      horizon: float, now: float | None = None, guard_ttl: int = 86400) -> int:
    """Pre-schedule the occurrences of the next ``horizon`` seconds, each exactly once.

    Deterministic jid ``periodic:<name>:<epoch>`` and a SET NX guard per occurrence:
    any number of pools on any number of hosts, restarted, schedule each occurrence
    once.  ``now`` is Redis's time (a TIME round trip), so hosts whose clocks are
    minutes apart compute the same occurrences.  The guard is not released when the
    job starts (unlike unique jobs), so an occurrence is never scheduled again after
    it ran.  An occurrence is a scheduled job like any other: fetchers sleep until
    it is due and promote it then (scheduling it re-arms them if it is the earliest).
    ``guard_ttl`` (``Config.unique_ttl``) is how long a guard outlives its occurrence.
    """
    t_now = clock.CLOCK.sync(conn) if now is None else now
    calls = []
    for p in periodic:
        for t in occurrences(p.spec, t_now - 1, t_now + horizon):
            jid = f"periodic:{p.name}:{t}"
            data = jobcodec.build_payload(p.name, None, now=t_now, jid=jid)
            data["enqueued_at"] = float(t)  # it enters its queue when due (see enqueue_at)
            calls.append(scripts.enqueue_unique(
                keys, name=p.name, payload=jobcodec.encode(data), unique_key=keys.periodic_guard(p.name, t),
                jid=jid, ttl=int(t - t_now + horizon) + guard_ttl, run_at=float(t)))
    if not calls:
        return 0
    return sum(int(r) for r in scripts.run(conn, calls))


# Due jobs moved per script call: large enough that 20,000 due at once move in a
# few calls (tens of thousands a second), small enough that one call holds Redis
# for only a few milliseconds.
PROMOTE_BATCH = 2000


def promote_due(conn: redis.Redis, keys: Keys, *, batch: int = PROMOTE_BATCH,
                max_rounds: int = 1000) -> int:
    """Move due jobs of ``schedule`` and ``retry`` to their queues; return how many moved.

    Redis decides what is due (TIME in the script).  Loops while a batch came back
    full, so a burst of due jobs moves at once rather than one batch per fetch.
    """
    moved = 0
    for zset in (keys.schedule, keys.retry):
        for _ in range(max_rounds):
            n, more, bad = promote_reply(scripts.run_one(conn, scripts.promote_due(keys, zset_key=zset,
                                                                                  limit=batch)))
            moved += n
            bury_bad(conn, keys, zset, bad)
            if not more:
                break
    return moved


def promote_reply(reply: Sequence[object]) -> tuple[int, bool, list[bytes]]:
    """(moved, more due, members that are not jobs) from promote_due.lua's reply."""
    bad = [m for m in reply[2:] if isinstance(m, bytes)]
    return int(reply[0]), bool(int(reply[1])), bad  # type: ignore[call-overload]


def bury_bad(conn: redis.Redis, keys: Keys, zset: str, members: Sequence[bytes]) -> None:
    """Due members of ``zset`` that are not jobs go to dead, their bytes kept."""
    for member in members:
        _bury(conn, keys, zset, member, _why_bad(member))


def _why_bad(member: bytes) -> str:
    try:
        jobcodec.decode(member)
    except jobcodec.MalformedPayload as exc:
        return str(exc)
    return "entry names no queue or class"


def _bury(conn: redis.Redis, keys: Keys, zset: str, member: bytes, reason: str) -> None:
    """A malformed entry of schedule/retry goes to dead, raw bytes kept."""
    score = conn.zscore(zset, member) or clock.now()
    entry = malformed_dead_entry(queue="unknown", raw=member, reason=reason, now=score)
    # Deterministic entry: two promoters burying the same member write it once.
    data = jobcodec.decode(entry)
    data["jid"] = hashlib.sha1(member).hexdigest()[:24]
    scripts.run_one(conn, scripts.bury(keys, zset_key=zset, member=member,
                                       entry=jobcodec.encode(data), score=score))
