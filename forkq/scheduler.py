"""Moving due scheduled/retry jobs to their queues, and periodic (cron) enqueueing."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import redis

from . import job as jobcodec
from . import scripts
from .cron import occurrences
from .keys import Keys
from .retry import malformed_dead_entry
from .spec import PeriodicSpec


def schedule_periodic(conn: redis.Redis, keys: Keys, periodic: Sequence[PeriodicSpec], *,
                      now: float, horizon: float) -> int:
    """Pre-schedule the occurrences of the next ``horizon`` seconds, each exactly once.

    Deterministic jid ``periodic:<name>:<epoch>`` and a SET NX guard per occurrence:
    any number of pools on any number of hosts, restarted or with clocks a few
    seconds apart, schedule each occurrence once.  The guard is not released when
    the job starts (unlike unique jobs), so a pool whose clock lags cannot
    schedule an occurrence again after it ran.
    """
    calls = []
    for p in periodic:
        for t in occurrences(p.spec, now - 1, now + horizon):
            jid = f"periodic:{p.name}:{t}"
            data = jobcodec.build_payload(p.name, None, now=now, jid=jid)
            calls.append(scripts.enqueue_unique(
                keys, name=p.name, payload=jobcodec.encode(data), unique_key=keys.periodic_guard(p.name, t),
                jid=jid, ttl=int(t - now + horizon) + 24 * 3600, run_at=float(t)))
    if not calls:
        return 0
    return sum(int(r) for r in scripts.run(conn, calls))


def promote_due(conn: redis.Redis, keys: Keys, *, batch: int, now: float | None = None) -> int:
    """Move due jobs of ``schedule`` and ``retry`` to their queues; return how many moved."""
    t = time.time() if now is None else now
    moved = 0
    for zset in (keys.schedule, keys.retry):
        members: list[bytes] = conn.zrangebyscore(zset, "-inf", t, start=0, num=batch)
        if not members:
            continue
        moves = []
        for m in members:
            try:
                data = jobcodec.decode(m)
            except jobcodec.MalformedPayload as exc:
                _bury(conn, keys, zset, m, str(exc))
                continue
            name = data.get("queue") or data["class"]
            if not isinstance(name, str) or not name:
                name = data["class"]
            data["enqueued_at"] = t
            moves.append(scripts.Promotion(member=m, name=name, payload=jobcodec.encode(data)))
        if moves:
            moved += int(scripts.run_one(conn, scripts.promote(keys, zset_key=zset, moves=moves)))
    return moved


def _bury(conn: redis.Redis, keys: Keys, zset: str, member: bytes, reason: str) -> None:
    """A malformed entry of schedule/retry goes to dead, raw bytes kept."""
    score = conn.zscore(zset, member) or time.time()
    entry = malformed_dead_entry(queue="unknown", raw=member, reason=reason, now=score)
    # Deterministic entry: two promoters burying the same member write it once.
    data = jobcodec.decode(entry)
    data["jid"] = hashlib.sha1(member).hexdigest()[:24]
    pipe = conn.pipeline(transaction=True)
    pipe.zrem(zset, member)
    pipe.zadd(keys.dead, {jobcodec.encode(data): score})
    pipe.execute()
