"""Dashboard reads and actions that ``forkq.Client`` does not have (no web imports here).

Everything reads the Sidekiq-compatible layout through ``forkq.keys.Keys``.  The
rules that keep the dashboard fast on big sets (1,000,000 dead jobs):

* a listing is one ``ZREVRANGE``/``ZRANGE`` window plus ``ZCARD`` (``Client``);
* a search is ``ZSCAN ... MATCH`` run by Redis, bounded by a count of scanned
  entries and a deadline, and says when it stopped early;
* nothing walks a whole set on a page view.

History is kept in Redis, not in the server's memory: ``record_sample`` writes at
most one sample per minute (``HSETNX`` on the minute, so several dashboards and
a sampler agree), and Sidekiq's ``stat:processed:<day>`` counters give the days.

(Over 400 lines on purpose: every dashboard read and action, bounded for big sets, with no web library imported (usable without the extra).)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.exceptions import WatchError

from .. import job as jobcodec
from .. import scripts
from ..client import Client, JobEntry, Queue, Stats, as_text
from ..errors import ConfigError, NotDeleted, NotRetried
from ..keys import Keys, validate_job_name

# Samples kept: one day of minutes (a hash of ~1,440 short JSON values).
HISTORY_MINUTES = 24 * 60
# Queues kept per sample (the biggest ones): bounds a sample's size on installations
# with thousands of job names.
SAMPLE_QUEUES = 30
# A search stops after this many scanned entries or this many seconds, whichever first.
SEARCH_SCAN_LIMIT = 2_000_000
SEARCH_DEADLINE = 3.0
SEARCH_MAX_RESULTS = 500
# Per queue, how many entries a jid lookup reads at most.
LOCATE_QUEUE_LIMIT = 200_000

SETS = ("scheduled", "retries", "dead")


def _f(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def set_key(keys: Keys, which: str) -> str:
    """The zset behind a dashboard set page (``scheduled``, ``retries``, ``dead``)."""
    if which == "scheduled":
        return keys.schedule
    if which == "retries":
        return keys.retry
    if which == "dead":
        return keys.dead
    raise ConfigError(f"unknown set {which!r}")


def redis_time(conn: redis.Redis) -> float:
    """Redis's clock: what every process of the installation agrees on (DESIGN.md §8)."""
    sec, usec = conn.time()
    return float(sec) + float(usec) / 1e6


# ---------------------------------------------------------------------------
# Processes (Busy page)
# ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Running:
    """A job running on one thread of a live process, from its ``<identity>:work`` hash."""

    identity: str
    thread: str
    queue: str
    name: str
    jid: str
    args_text: str
    run_at: float
    payload: str


@dataclass(frozen=True, kw_only=True)
class Process:
    """A live pool (one forkq child), from the Sidekiq process hash its beat writes."""

    identity: str
    hostname: str
    pid: int
    tag: str
    started_at: float
    concurrency: int
    queues: tuple[str, ...]
    busy: int
    beat: float
    quiet: bool
    rss_kb: int
    running: tuple[Running, ...]


def processes(conn: redis.Redis, keys: Keys) -> list[Process]:
    """Every live process (its hash still exists), with its running jobs, by host then pid."""
    idents = sorted(as_text(i) for i in conn.smembers(keys.processes))
    if not idents:
        return []
    pipe = conn.pipeline(transaction=False)
    for ident in idents:
        pipe.hmget(keys.process(ident), "info", "busy", "beat", "quiet", "rss")
        pipe.hgetall(keys.process_work(ident))
    res = pipe.execute()
    out = []
    for i, ident in enumerate(idents):
        (info_raw, busy, beat, quiet, rss), work = res[2 * i], res[2 * i + 1]
        if beat is None:
            continue  # the hash expired: the process is gone (its set entry is stale)
        try:
            info = orjson.loads(info_raw) if info_raw else {}
        except orjson.JSONDecodeError:
            info = {}
        if not isinstance(info, dict):
            info = {}
        running = []
        for tid, raw in sorted(work.items(), key=lambda kv: _thread_order(as_text(kv[0]))):
            running.append(_running(ident, as_text(tid), raw))
        queues = info.get("queues")
        out.append(Process(
            identity=ident, hostname=as_text(info.get("hostname")) or ident.split(":")[0],
            pid=int(_f(info.get("pid"))), tag=as_text(info.get("tag")),
            started_at=_f(info.get("started_at")), concurrency=int(_f(info.get("concurrency"))),
            queues=tuple(sorted(as_text(q) for q in queues)) if isinstance(queues, list) else (),
            busy=int(_f(busy)), beat=_f(beat), quiet=as_text(quiet) == "true", rss_kb=int(_f(rss)),
            running=tuple(running)))
    out.sort(key=lambda p: (p.hostname, p.pid, p.identity))
    return out


def _thread_order(tid: str) -> tuple[int, str]:
    try:
        return int(tid, 16), tid
    except ValueError:
        return 1 << 30, tid


def _running(ident: str, tid: str, raw: bytes) -> Running:
    queue = name = jid = args_text = payload = ""
    run_at = 0.0
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        entry = {}
    if isinstance(entry, dict):
        queue = as_text(entry.get("queue"))
        run_at = _f(entry.get("run_at"))
        p = entry.get("payload")
        payload = p if isinstance(p, str) else orjson.dumps(p).decode() if isinstance(p, dict) else ""
        try:
            data = jobcodec.decode(payload)
            job = jobcodec.Job.from_data(data)
            name, jid = job.name, job.id
            args_text = args_json(job.positional_args, job.args)
        except jobcodec.MalformedPayload:
            pass
    return Running(identity=ident, thread=tid, queue=queue, name=name, jid=jid,
                   args_text=args_text, run_at=run_at, payload=payload)


def args_json(positional: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """A job's arguments as one line of JSON, as a person would type them."""
    return orjson.dumps(list(positional) if positional else kwargs).decode()


def served_queues(procs: Iterable[Process]) -> dict[str, int]:
    """Queue name -> how many live, not quiet processes take jobs from it."""
    out: dict[str, int] = {}
    for p in procs:
        if p.quiet:
            continue
        for q in p.queues:
            out[q] = out.get(q, 0) + 1
    return out


def signal_process(conn: redis.Redis, keys: Keys, identity: str, sig: str) -> None:
    """Leave ``TSTP`` (quiet) or ``TERM`` (stop) where the pool's next beat picks it up.

    The same list and expiry as Sidekiq's Web UI, so a beat that never comes (the
    process died) does not leave a signal for a later process with that identity.
    """
    if sig not in ("TSTP", "TERM"):
        raise ConfigError(f"unknown signal {sig!r}")
    if not conn.sismember(keys.processes, identity):
        raise NotDeleted(f"no live process {identity!r}")
    key = keys.process_signals(identity)
    pipe = conn.pipeline(transaction=True)
    pipe.lpush(key, sig)
    pipe.expire(key, 60)
    pipe.execute()


# ---------------------------------------------------------------------------
# Queues
# ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class QueueJob:
    """One entry of a queue list, with its index (0 = newest, the end taken last)."""

    index: int
    name: str
    jid: str
    args_text: str
    enqueued_at: float
    payload: bytes


def queue_jobs(conn: redis.Redis, keys: Keys, name: str, page: int, per_page: int = 25
               ) -> tuple[list[QueueJob], int]:
    """A page of a queue, next-to-run first (the right end of the list), and its length."""
    validate_job_name(name)
    start = (page - 1) * per_page
    key = keys.queue(name)
    pipe = conn.pipeline(transaction=False)
    # Workers take from the right: -1 is the next job to run.
    pipe.lrange(key, -(start + per_page), -(start + 1))
    pipe.llen(key)
    rows, total = pipe.execute()
    out = []
    for i, m in enumerate(reversed(rows)):
        f = JobEntry.fields_of(m)
        out.append(QueueJob(index=start + i, name=f["name"], jid=f["id"],
                            args_text=args_json(f["positional_args"], f["args"]),
                            enqueued_at=f["enqueued_at"], payload=m))
    return out, int(total)


def clear_queue(conn: redis.Redis, keys: Keys, name: str) -> int:
    """Delete every waiting job of a queue; return how many there were.

    The queue stays in ``queues`` (forkq's names are the registered job names), so
    it stays listed, with its paused state, at size 0.
    """
    validate_job_name(name)
    # Fair groups: their lists, tokens and leases' bookkeeping go with the queue.
    groups = sorted(as_text(g) for g in conn.smembers(keys.groups(name)))
    pipe = conn.pipeline(transaction=True)
    pipe.llen(keys.queue(name))
    pipe.zcard(keys.group_parked(name))
    for g in groups:
        pipe.llen(keys.group_queue(name, g))
    pipe.delete(keys.queue(name), keys.groups(name), keys.group_parked(name),
                *(keys.group_queue(name, g) for g in groups))
    res = pipe.execute()
    tokens = max(0, len(groups) - int(res[1]))
    return max(0, int(res[0]) - tokens) + sum(int(n) for n in res[2:2 + len(groups)])


def delete_queue_job(conn: redis.Redis, keys: Keys, name: str, payload: bytes) -> None:
    """Remove one exact waiting entry (LREM of its bytes: a job taken meanwhile is not touched)."""
    validate_job_name(name)
    if jobcodec.is_group_token(payload):
        # Without its token a group would never be served again.
        raise NotDeleted(f"that entry stands for a fair group of {name!r}, not a job: clear the "
                         "queue or cancel the group's jobs instead")
    if not int(conn.lrem(keys.queue(name), 1, payload)):
        raise NotDeleted(f"that job is no longer waiting in queue {name!r}")


# ---------------------------------------------------------------------------
# Scheduled / retry / dead sets
# ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Entry:
    """A member of one of the three sets with its score, and the fields a page shows."""

    score: float
    member: bytes
    fields: dict[str, Any]

    @property
    def jid(self) -> str:
        return str(self.fields["id"])

    @property
    def name(self) -> str:
        return str(self.fields["name"])

    @property
    def key(self) -> str:
        """How a page names this entry in a URL or a checkbox: ``<score>-<jid>``."""
        return f"{self.score!r}-{self.jid}"

    @property
    def args_text(self) -> str:
        return args_json(self.fields["positional_args"], self.fields["args"])

    @property
    def data(self) -> dict[str, Any]:
        """The decoded job (empty when the member is not a job)."""
        try:
            return jobcodec.decode(self.member)
        except jobcodec.MalformedPayload:
            return {}


def _entries(rows: Iterable[tuple[bytes, float]]) -> list[Entry]:
    return [Entry(score=float(s), member=m, fields=JobEntry.fields_of(m)) for m, s in rows]


def page_of(conn: redis.Redis, key: str, page: int, per_page: int, *, newest_first: bool
            ) -> tuple[list[Entry], int]:
    """One window of a set (ZREVRANGE/ZRANGE) and ZCARD: constant work for any set size."""
    start = (page - 1) * per_page
    pipe = conn.pipeline(transaction=False)
    if newest_first:
        pipe.zrevrange(key, start, start + per_page - 1, withscores=True)
    else:
        pipe.zrange(key, start, start + per_page - 1, withscores=True)
    pipe.zcard(key)
    rows, total = pipe.execute()
    return _entries(rows), int(total)


def glob_escape(text: str) -> str:
    """Escape Redis MATCH glob characters so a search term matches literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    entries: list[Entry]
    scanned: int
    complete: bool  # False: stopped at the scan limit, the deadline or the result cap


def search(conn: redis.Redis, key: str, term: str, *, newest_first: bool,
           max_results: int = SEARCH_MAX_RESULTS, scan_limit: int = SEARCH_SCAN_LIMIT,
           deadline: float = SEARCH_DEADLINE) -> SearchResult:
    """Entries whose JSON contains ``term`` (job name, jid, text in args or error).

    Redis does the matching (ZSCAN MATCH), so Python only sees the hits.  Bounded:
    at most ``scan_limit`` entries scanned, ``deadline`` seconds, ``max_results`` hits.
    """
    pattern = "*" + glob_escape(term) + "*"
    cursor = 0
    scanned = 0
    hits: list[tuple[bytes, float]] = []
    end = time.monotonic() + deadline
    # Small ZSCAN steps: each call blocks Redis for a few ms at most (workers share it).
    count = 1000
    while True:
        cursor, rows = conn.zscan(key, cursor, match=pattern, count=count)
        scanned += count
        hits.extend((m, float(s)) for m, s in rows)
        if cursor == 0:
            complete = True
            break
        if len(hits) >= max_results or scanned >= scan_limit or time.monotonic() > end:
            complete = False
            break
    hits.sort(key=lambda ms: ms[1], reverse=newest_first)
    return SearchResult(entries=_entries(hits[:max_results]), scanned=scanned,
                        complete=complete and len(hits) <= max_results)


def parse_entry_key(text: str) -> tuple[float, str]:
    """``<score>-<jid>`` (as ``Entry.key``) -> (score, jid)."""
    score, sep, jid = text.partition("-")
    if not sep or not jid:
        raise ConfigError(f"bad job key {text!r}")
    try:
        return float(score), jid
    except ValueError:
        raise ConfigError(f"bad job key {text!r}") from None


def find_entries(conn: redis.Redis, key: str, score: float, jid: str) -> list[Entry]:
    """Members at exactly this score whose jid is ``jid`` (a ZRANGEBYSCORE of one score)."""
    rows = conn.zrangebyscore(key, score, score, withscores=True)
    return [e for e in _entries(rows) if e.jid == jid]


def _move_to_queue(conn: redis.Redis, keys: Keys, zset: str, entries: Sequence[Entry]) -> int:
    """Move entries to the end of their queues with the ZREM-guarded promote script."""
    moves = []
    now = redis_time(conn)
    for e in entries:
        data = e.data
        if not data or (data.get("error_class") == "MalformedPayload" and "raw" in data):
            continue
        name = jobcodec.queue_of(data)
        try:
            validate_job_name(name)
        except ConfigError:
            continue
        data["enqueued_at"] = now
        group = data.get("group")
        moves.append(scripts.Promotion(member=e.member, name=name, payload=jobcodec.encode(data),
                                       group=group if jobcodec.valid_group(group) else None))
    if not moves:
        return 0
    return int(scripts.run_one(conn, scripts.promote(keys, zset_key=zset, moves=moves)))


def run_now(conn: redis.Redis, keys: Keys, which: str, refs: Sequence[tuple[float, str]]) -> int:
    """Retries and scheduled jobs: enqueue now (Sidekiq's "Retry Now" / "Add to queue").

    A retry keeps its failure count (it is the next attempt, as in Sidekiq); a dead
    job goes through ``Client.retry_dead_job`` instead (gocraft's full reset).
    """
    zset = set_key(keys, which)
    entries = [e for score, jid in refs for e in find_entries(conn, zset, score, jid)]
    return _move_to_queue(conn, keys, zset, entries)


def retry_dead(client: Client, refs: Sequence[tuple[float, str]]) -> int:
    n = 0
    for score, jid in refs:
        try:
            client.retry_dead_job(score, jid)
            n += 1
        except NotRetried:
            pass
    return n


def delete_entries(client: Client, which: str, refs: Sequence[tuple[float, str]]) -> int:
    fn = {"dead": client.delete_dead_job, "retries": client.delete_retry_job,
          "scheduled": client.delete_scheduled_job}[which]
    n = 0
    for score, jid in refs:
        try:
            fn(score, jid)
            n += 1
        except NotDeleted:
            pass
    return n


def kill_entries(conn: redis.Redis, keys: Keys, which: str, refs: Sequence[tuple[float, str]]) -> int:
    """Move retries or scheduled jobs to ``dead`` now (Sidekiq's "Kill"), atomically each.

    WATCH on the source set: if a promoter took the job meanwhile, the move is
    dropped (the job runs instead of dying twice).
    """
    zset = set_key(keys, which)
    n = 0
    with conn.pipeline(transaction=True) as pipe:
        for score, jid in refs:
            for e in find_entries(conn, zset, score, jid):
                while True:
                    try:
                        pipe.watch(zset)
                        if pipe.zscore(zset, e.member) is None:
                            pipe.unwatch()
                            break
                        now = redis_time(conn)
                        data = e.data or {}
                        if data:
                            data.setdefault("error_message", "killed from the dashboard")
                            data.setdefault("error_class", "Killed")
                            data["failed_at"] = data.get("failed_at") or now
                        member = jobcodec.encode(data) if data else e.member
                        pipe.multi()
                        pipe.zrem(zset, e.member)
                        pipe.zadd(keys.dead, {member: now})
                        if int(pipe.execute()[0]):
                            n += 1
                        break
                    except WatchError:
                        continue
    return n


# ---------------------------------------------------------------------------
# Where is a job?
# ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Location:
    state: str  # "running" (in progress), "queued", "scheduled", "retrying", "dead"
    where: str  # queue name, set name, or pool identity
    score: float | None
    payload: bytes

    @property
    def fields(self) -> dict[str, Any]:
        return JobEntry.fields_of(self.payload)

    @property
    def data(self) -> dict[str, Any]:
        try:
            return jobcodec.decode(self.payload)
        except jobcodec.MalformedPayload:
            return {}


def locate(conn: redis.Redis, keys: Keys, jid: str, *, deadline: float = 6.0) -> list[Location]:
    """Every place a job with this jid is: in progress, a queue, schedule, retry, dead.

    In progress is exact and cheap (HGET on each pool's ``inprogress`` hash); the
    sets are matched by Redis (ZSCAN MATCH on the jid's JSON); each queue is read
    in windows, at most ``LOCATE_QUEUE_LIMIT`` entries.
    """
    if not jid or len(jid) > 200:
        return []
    out: list[Location] = []
    idents = sorted({as_text(i) for i in conn.smembers(keys.processes)}
                    | {as_text(i) for i in conn.zrange(keys.pools, 0, -1)})
    if idents:
        pipe = conn.pipeline(transaction=False)
        for ident in idents:
            pipe.hget(keys.inprogress(ident), jid)
        for ident, payload in zip(idents, pipe.execute(), strict=True):
            if payload is not None:
                out.append(Location(state="running", where=ident, score=None, payload=payload))
    needle = orjson.dumps({"jid": jid})[1:-1]  # b'"jid":"<jid>"'
    end = time.monotonic() + deadline
    for which, state in (("scheduled", "scheduled"), ("retries", "retrying"), ("dead", "dead")):
        key = set_key(keys, which)
        res = search(conn, key, needle.decode(), newest_first=True, max_results=50,
                     deadline=max(0.1, end - time.monotonic()))
        for e in res.entries:
            if e.jid == jid:
                out.append(Location(state=state, where=which, score=e.score, payload=e.member))
    lists = []
    for q in sorted(as_text(n) for n in conn.smembers(keys.queues)):
        lists.append((q, keys.queue(q)))
        # The lists of its fair groups are waiting jobs of q too.
        lists += [(q, keys.group_queue(q, as_text(g))) for g in sorted(conn.smembers(keys.groups(q)))]
    for q, key in lists:
        start = 0
        while start < LOCATE_QUEUE_LIMIT and time.monotonic() < end:
            rows = conn.lrange(key, start, start + 999)
            for m in rows:
                if needle in m and JobEntry.fields_of(m)["id"] == jid:
                    out.append(Location(state="queued", where=q, score=None, payload=m))
            if len(rows) < 1000:
                break
            start += 1000
    return out


# ---------------------------------------------------------------------------
# Periodic jobs
# ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Periodic:
    name: str
    next_runs: tuple[float, ...]


def periodic(conn: redis.Redis, keys: Keys, *, per_name: int = 5) -> tuple[list[Periodic], bool]:
    """Pre-scheduled occurrences (jid ``periodic:<name>:<epoch>``) grouped by job name.

    The cron specs live in the application's code, not in Redis; what Redis holds
    is the next few minutes of occurrences every pool pre-schedules, so that is
    what is shown.  Returns (by name, complete).
    """
    res = search(conn, keys.schedule, '"jid":"periodic:', newest_first=False,
                 max_results=5000, deadline=1.0)
    by: dict[str, list[float]] = {}
    for e in res.entries:
        if e.jid.startswith("periodic:"):
            by.setdefault(e.name, []).append(e.score)
    return ([Periodic(name=n, next_runs=tuple(sorted(ts)[:per_name])) for n, ts in sorted(by.items())],
            res.complete)


# ---------------------------------------------------------------------------
# History (kept in Redis)
# ---------------------------------------------------------------------------

def snapshot(client: Client) -> dict[str, Any]:
    """What the overview polls: totals, sizes and per-queue size/latency, at Redis time."""
    st: Stats = client.stats()
    qs: list[Queue] = client.queues()
    now = redis_time(client.connection)
    return {
        "t": now, "processed": st.processed, "failed": st.failed,
        "processed_today": st.processed_today, "failed_today": st.failed_today,
        "busy": st.busy, "enqueued": st.enqueued, "scheduled": st.scheduled,
        "retry": st.retry, "dead": st.dead, "processes": st.processes,
        "queues": {q.job_name: {"size": q.count, "latency": round(q.latency, 3),
                                "paused": q.paused} for q in qs},
    }


def record_sample(client: Client, snap: dict[str, Any] | None = None) -> bool:
    """Write this minute's sample unless one is there; return True if this call wrote it.

    Cheap when called often: an HEXISTS when the minute is already recorded.
    """
    conn, keys = client.connection, client.keys
    hkey = keys.web_history()
    now = redis_time(conn) if snap is None else float(snap["t"])
    minute = int(now // 60 * 60)
    if conn.hexists(hkey, str(minute)):
        return False
    s = snapshot(client) if snap is None else snap
    top = sorted(s["queues"].items(), key=lambda kv: -kv[1]["size"])[:SAMPLE_QUEUES]
    # "t" is when the numbers were read (rates divide by it); the field is the minute.
    sample = {"t": round(float(s["t"]), 3), "p": s["processed"], "f": s["failed"], "b": s["busy"],
              "e": s["enqueued"], "s": s["scheduled"], "r": s["retry"], "d": s["dead"],
              "q": {n: [v["size"], v["latency"]] for n, v in top}}
    wrote = bool(conn.hsetnx(hkey, str(minute), orjson.dumps(sample)))
    if wrote and conn.hlen(hkey) > HISTORY_MINUTES + 60:
        old = sorted(int(_f(f)) for f in conn.hkeys(hkey))[:-HISTORY_MINUTES]
        if old:
            conn.hdel(hkey, *[str(o) for o in old])
    return wrote


def history(conn: redis.Redis, keys: Keys, *, minutes: int = 60, now: float | None = None
            ) -> list[dict[str, Any]]:
    """The samples of the last ``minutes`` minutes, oldest first (gaps left out)."""
    t = redis_time(conn) if now is None else now
    last = int(t // 60 * 60)
    fields = [str(last - 60 * i) for i in range(minutes - 1, -1, -1)]
    out = []
    for raw in conn.hmget(keys.web_history(), fields):
        if raw is None:
            continue
        try:
            v = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(v, dict):
            out.append(v)
    return out


def days(conn: redis.Redis, keys: Keys, *, count: int = 30, now: float | None = None
         ) -> list[tuple[str, int, int]]:
    """Sidekiq's per-day counters: (day, processed, failed) for the last ``count`` days."""
    t = redis_time(conn) if now is None else now
    names = [keys.today(t - 86400 * i) for i in range(count - 1, -1, -1)]
    pipe = conn.pipeline(transaction=False)
    pipe.mget([keys.stat_processed_day(d) for d in names])
    pipe.mget([keys.stat_failed_day(d) for d in names])
    p, f = pipe.execute()
    return [(d, int(_f(a)), int(_f(b))) for d, a, b in zip(names, p, f, strict=True)]
