"""Moving due scheduled/retry jobs to their queues, and periodic (cron) enqueueing."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import redis
from croniter import CroniterBadDateError, croniter

from . import job as jobcodec
from . import scripts
from .errors import ConfigError
from .keys import Keys
from .registry import PeriodicSpec
from .retry import malformed_dead_entry

_FIELD_NAMES = ("seconds", "minutes", "hours", "day of month", "month", "day of week")
_FIELD_RANGES = ("0-59", "0-59", "0-23", "1-31", "1-12 or jan-dec", "0-7 or sun-sat")


def parse_cron(spec: str) -> croniter:
    """A 6-field cron spec, seconds FIRST (gocraft's format): ``"0 */5 * * * *"``.

    Rejected with a ConfigError naming the bad field: a spec that is malformed,
    out of range, or that can never fire (``"0 0 0 31 2 *"``) would otherwise only
    fail later, on a housekeeper thread, where nobody sees it.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"cron spec must be a string, got {type(spec).__name__}")
    fields = spec.split()
    if len(fields) != 6:
        raise ConfigError(
            f"bad cron spec {spec!r}: need 6 fields, seconds first (sec min hour day month weekday), "
            f"got {len(fields)}")
    # croniter takes seconds as the LAST field.
    expr = " ".join(fields[1:] + fields[:1])
    if not _valid(expr):
        raise ConfigError(f"bad cron spec {spec!r}: {_diagnose(fields)}")
    it = croniter(expr, datetime.fromtimestamp(time.time(), tz=timezone.utc))
    try:
        it.get_next(float)
    except CroniterBadDateError:
        raise ConfigError(f"bad cron spec {spec!r}: it never fires (no such date)") from None
    return croniter(expr, datetime.fromtimestamp(0, tz=timezone.utc))


def _valid(expr: str) -> bool:
    try:
        return bool(croniter.is_valid(expr, second_at_beginning=False))
    except (ValueError, KeyError, TypeError):
        return False


def _diagnose(fields: list[str]) -> str:
    """Name the first field that is wrong on its own (all others replaced by ``*``)."""
    for i, value in enumerate(fields):
        probe = ["*"] * 6
        probe[i] = value
        if not _valid(" ".join(probe[1:] + probe[:1])):
            return f"{_FIELD_NAMES[i]} field {value!r} is not valid (allowed: {_FIELD_RANGES[i]}, *, a-b, */n, lists)"
    return "the fields are not a valid combination"


def occurrences(spec: str, start: float, end: float) -> list[int]:
    """Epoch seconds of the occurrences in (start, end]."""
    it = parse_cron(spec)
    it.set_current(datetime.fromtimestamp(int(start), tz=timezone.utc))
    out: list[int] = []
    while True:
        t = int(it.get_next(float))
        if t > end:
            return out
        out.append(t)


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
