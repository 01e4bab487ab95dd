"""The one place that calls Lua scripts and builds their KEYS/ARGV lists.

Scripts run by EVALSHA inside ordinary pipelines.  redis-py's ``Script`` objects
send ``SCRIPT EXISTS`` before every pipeline that uses them, an extra round trip
on the hot path; instead we run EVALSHA and, on NOSCRIPT (a restarted server or
``SCRIPT FLUSH``), load the script and re-run only the calls that failed.  A
NOSCRIPT call had no effect, so re-running it is safe.

(Over 400 lines on purpose: every script call's KEYS/ARGV are built here by design (one owner), with the one packed EVALSHA path and its NOSCRIPT/redirect recovery.)
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from . import results
from .backoff import capped_exponential
from .connection import REDIRECT_BACKOFF_CAP, REDIRECT_RETRIES, Locator, Redirected, sharded_pubsub
from .job import group_token
from .keys import CANCEL_MESSAGE, DUE_MESSAGE, Keys

log = logging.getLogger("forkq.scripts")

_pack: Any
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - redis[hiredis] is a dependency
    _pack = None

Arg = str | bytes | int | float


@dataclass(frozen=True, kw_only=True)
class Script:
    name: str
    text: str
    sha: str


def _read(name: str) -> str:
    return resources.files("forkq").joinpath("lua").joinpath(name + ".lua").read_text(encoding="utf-8")


def _load(name: str) -> Script:
    """A script's text, with each ``--@include <fragment>`` line replaced by that
    fragment (lua/_<fragment>.lua): logic two scripts share, written once."""
    lines = []
    for line in _read(name).splitlines(keepends=True):
        if line.startswith("--@include "):
            fragment = line.split(None, 1)[1].strip()
            if not fragment.startswith("_"):
                raise ValueError(f"{name}.lua includes {fragment!r}: fragments are named _<name>")
            lines.append(_read(fragment))
        else:
            lines.append(line)
    text = "".join(lines)
    return Script(name=name, text=text, sha=hashlib.sha1(text.encode()).hexdigest())


def _allow_oom(script: Script) -> Script:
    """The same script flagged to run while Redis is at maxmemory (Redis >= 7).

    Under ``noeviction`` Redis refuses every script that may write once memory is
    full.  Fetch and ack shrink or keep memory (a job moves from a list to a hash
    and is then deleted), and refusing them would stall workers on jobs that are
    already queued; so on servers that know shebang flags they run with
    ``allow-oom``.  Enqueue scripts keep the default and fail loudly instead.
    """
    text = "#!lua flags=allow-oom\n" + script.text
    return Script(name=script.name + "+oom", text=text, sha=hashlib.sha1(text.encode()).hexdigest())


def _sharded(script: Script) -> Script:
    """The same script announcing wakes with ``SPUBLISH`` (Redis Cluster; see
    ``connection.sharded_pubsub``).  The wake channel is ``{ns}:wake``, in the
    slot of every key the script touches, as a shard channel must be."""
    text = script.text.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
    return Script(name=script.name + "+sharded", text=text, sha=hashlib.sha1(text.encode()).hexdigest())


FETCH = _load("fetch")
ACK = _load("ack")
FETCH_OOM = _allow_oom(FETCH)
ACK_OOM = _allow_oom(ACK)
ENQUEUE = _load("enqueue")
ENQUEUE_UNIQUE = _load("enqueue_unique")
ENQUEUE_GROUP = _load("enqueue_group")
REPAIR_GROUPS = _load("repair_groups")
PROMOTE = _load("promote")
PROMOTE_DUE = _load("promote_due")
SCHEDULE = _load("schedule")
RELEASE_LOCK = _load("release_lock")
BURY = _load("bury")
CLAIM_POOL = _load("claim_pool")
RELEASE_UNIQUE = _load("release_unique")
DELETE_SCHEDULED = _load("delete_scheduled")
CANCEL = _load("cancel")
STORE_RESULTS = _load("store_results")
BEAT = _load("beat")
BATCH_PUSH = _load("batch_push")
BATCH_CANCEL = _load("batch_cancel")
WAKE_IDLE = _load("wake_idle")
BEAT_OOM = _allow_oom(BEAT)


# Scripts that announce wakes, and their sharded twins (picked per connection).
_SHARDED = {s.sha: _sharded(s) for s in (ACK, ACK_OOM, ENQUEUE, ENQUEUE_UNIQUE, ENQUEUE_GROUP,
                                         REPAIR_GROUPS, PROMOTE, PROMOTE_DUE, SCHEDULE, FETCH,
                                         FETCH_OOM, RELEASE_LOCK, BURY, CLAIM_POOL, RELEASE_UNIQUE,
                                         DELETE_SCHEDULED, BEAT, BEAT_OOM, BATCH_PUSH, CANCEL,
                                         WAKE_IDLE)
            if "redis.call('PUBLISH'" in s.text}
# FetchPlan pre-packs its EVALSHA (no per-connection choice): fetch must not publish.
assert FETCH.sha not in _SHARDED and FETCH_OOM.sha not in _SHARDED


def script_for(c: Any, script: Script) -> Script:
    """``script``, or its sharded twin on a Redis Cluster connection ``c``."""
    if script.sha in _SHARDED and sharded_pubsub(c):
        return _SHARDED[script.sha]
    return script


def supports_script_flags(conn: redis.Redis) -> bool:
    """Shebang flags (``#!lua flags=...``) arrived in Redis 7.0."""
    version = conn.info("server").get("redis_version", "0")
    try:
        return int(str(version).split(".")[0]) >= 7
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class Call:
    """One script invocation, ready to go into a pipeline."""

    script: Script
    keys: Sequence[str | bytes]
    args: Sequence[Arg]
    # Pre-encoded EVALSHA command (FetchPlan); only ``Runner`` sends these.
    packed: bytes | None = None


class NotReplicated(Exception):
    """``WAIT`` confirmed fewer replicas than asked: the calls ran on the master, but a
    failover now could lose them."""

    def __init__(self, wanted: int, confirmed: int) -> None:
        super().__init__(f"only {confirmed} of {wanted} replicas confirmed the write")
        self.wanted = wanted
        self.confirmed = confirmed


# Acks sent this long before a master switch are sent again to the new master: a
# write accepted by the old master after its replica was promoted is lost when it is
# demoted.  Acks are idempotent (ack.lua settles only fields still in progress).
ACK_RESEND_WINDOW = 5.0
_ACKS = frozenset({"ack", "ack+oom"})


def _packed(c: Any, x: Call) -> list[bytes]:
    if x.packed is not None:
        return [x.packed]
    cmd = ("EVALSHA", script_for(c, x.script).sha, len(x.keys), *x.keys, *x.args)
    # hiredis packs in C; redis-py's packer walks every argument in Python.
    return [_pack(cmd)] if _pack is not None else list(c.pack_commands([cmd]))


def _send(c: Any, calls: Sequence[Call], wait: tuple[int, int] | None) -> list[Any]:
    """One write and one read per call on connection ``c``; errors come back as results.

    A ``Redirected`` result (Sentinel/Cluster: the call never ran) is one of them.
    """
    packed: list[bytes] = []
    for x in calls:
        packed += _packed(c, x)
    if wait is not None:
        packed.append(b"*3\r\n$4\r\nWAIT\r\n" + _bulk(str(wait[0]).encode()) + _bulk(str(wait[1]).encode()))
    results: list[Any] = []
    try:
        c.send_packed_command(packed, check_health=False)
        for _ in range(len(calls) + (wait is not None)):
            try:
                results.append(c.read_response())
            except (ResponseError, Redirected) as exc:  # the connection is still in step
                results.append(exc)
    except BaseException:
        c.disconnect()
        raise
    return results


def _execute(c: Any, calls: Sequence[Call], *, wait: tuple[int, int] | None = None) -> list[Any]:
    """The one way forkq runs scripts: packed EVALSHA, NOSCRIPT recovery, redirects followed.

    Calls that a server did not run (NOSCRIPT, or redirected: MOVED, ASK, TRYAGAIN,
    CLUSTERDOWN, READONLY after a failover) had no effect, so only they are sent
    again; the first other error is raised once every call has been sent.
    """
    results = _send(c, calls, wait)
    if wait is not None:
        confirmed = results.pop()
    for attempt in range(REDIRECT_RETRIES):
        again = [i for i, r in enumerate(results) if isinstance(r, (Redirected, NoScriptError))]
        if not again:
            break
        if any(isinstance(results[i], Redirected) for i in again):
            c.disconnect()  # dial the server the locator names now
            time.sleep(capped_exponential(attempt + 1, base=0.005, cap=REDIRECT_BACKOFF_CAP, jitter=0))
        for script in {calls[i].script.name: script_for(c, calls[i].script)
                       for i in again if isinstance(results[i], NoScriptError)}.values():
            c.send_command("SCRIPT", "LOAD", script.text)
            try:
                c.read_response()
            except Redirected:
                pass  # the EVALSHA below gets redirected too, and is retried
        sub = _send(c, [calls[i] for i in again], wait)
        if wait is not None:
            confirmed = sub.pop()
        for i, r in zip(again, sub, strict=True):
            results[i] = r
    for r in results:
        if isinstance(r, Exception):
            raise r
    if wait is not None:
        if isinstance(confirmed, Exception):
            raise confirmed
        if int(confirmed) < wait[0]:
            raise NotReplicated(wait[0], int(confirmed))
    return results


def run(conn: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Run calls in one round trip on a connection of ``conn``'s pool; results in order.

    Redis errors other than NOSCRIPT are raised (the first one), after every call
    has been sent, like a plain pipeline.
    """
    pool = conn.connection_pool
    c = pool.get_connection()
    try:
        # The client's retry policy, as redis-py applies it to its own commands.
        return list(c.retry.call_with_retry(lambda: _execute(c, calls), lambda _error: c.disconnect()))
    finally:
        pool.release(c)


def run_one(conn: redis.Redis, call: Call) -> Any:
    return run(conn, [call])[0]


class Runner:
    """A connection owned by one thread (the fetcher, an enqueuing thread), for the hot path.

    Same contract as ``run`` without redis-py's Pipeline machinery (object
    set-up, command stack, reset), which costs more than the Lua scripts
    themselves when a round trip carries a handful of jobs: here a round trip is
    one ``pack_commands``, one ``sendall`` and one read per call.

    Behind Sentinel, the acks of the last ``ACK_RESEND_WINDOW`` seconds are sent
    again once the master has moved (they may have gone to the old one).
    """

    def __init__(self, conn: redis.Redis) -> None:
        self._pool = conn.connection_pool
        self._c = self._pool.make_connection()
        self._locator: Locator | None = getattr(self._c, "locator", None)
        self._generation = self._locator.generation if self._locator is not None else 0
        self._recent: deque[tuple[float, Call]] = deque()

    def run(self, calls: Sequence[Call], *, wait_replicas: int = 0, wait_timeout: float = 1.0) -> list[Any]:
        """Run ``calls`` in one round trip; with ``wait_replicas``, ``WAIT`` rides along
        and ``NotReplicated`` is raised if fewer replicas confirm within ``wait_timeout``."""
        wait = (wait_replicas, max(1, int(wait_timeout * 1000))) if wait_replicas > 0 else None
        loc = self._locator
        if loc is None:
            return _execute(self._c, calls, wait=wait)
        resent: list[Call] = []
        if loc.generation != self._generation:
            resent = self._acks_to_resend()
        results = _execute(self._c, [*resent, *calls], wait=wait)
        now = time.monotonic()
        recent = self._recent
        recent.extend((now, x) for x in calls if x.script.name in _ACKS)
        while recent and recent[0][0] < now - ACK_RESEND_WINDOW:
            recent.popleft()
        self._generation = loc.generation
        return results[len(resent):]

    @property
    def resends_acks(self) -> bool:
        """Whether recent acks are re-sent after a master switch (Sentinel): then an ack
        must travel as its own call (a fetch sent twice would take jobs twice)."""
        return self._locator is not None

    def _acks_to_resend(self) -> list[Call]:
        cutoff = time.monotonic() - ACK_RESEND_WINDOW
        resend = [x for t, x in self._recent if t >= cutoff]
        self._recent.clear()
        if resend:
            log.warning("%s moved: sending the last %d ack batches again (acks are idempotent)",
                        self._locator.describe() if self._locator else "Redis", len(resend))
        return resend

    def close(self) -> None:
        self._c.disconnect()


# ---------------------------------------------------------------------------
# Builders: one per script, so no other module knows an argument's position.
# ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class FetchTarget:
    """A job name as the fetch script sees it: its four keys and its limits."""

    name: str
    queue_key: str
    paused_key: str
    lease_key: str
    rate_key: str
    max_concurrency: int
    # (seconds between starts, tolerance) of a rate-limited name (spec.RateLimit), else None.
    rate: tuple[float, float] | None = None
    # Running jobs per fair group (group_concurrency; 0 = no cap).
    group_concurrency: int = 0

    @classmethod
    def of(cls, keys: Keys, name: str, max_concurrency: int,
           rate: tuple[float, float] | None = None, group_concurrency: int = 0) -> FetchTarget:
        return cls(name=name, queue_key=keys.queue(name), paused_key=keys.paused(name),
                   lease_key=keys.lease(name), rate_key=keys.rate(name),
                   max_concurrency=max_concurrency, rate=rate, group_concurrency=group_concurrency)

    def limit_arg(self) -> str:
        """fetch.lua's per-name limit: ``"maxc"`` or ``"maxc:interval:tolerance"``, then
        ``"/group_concurrency"`` when groups are capped."""
        text = str(self.max_concurrency)
        if self.rate is not None:
            text = f"{self.max_concurrency}:{self.rate[0]!r}:{self.rate[1]!r}"
        if self.group_concurrency > 0:
            text += f"/{self.group_concurrency}"
        return text


# How long a claimed pool's fence stays: far longer than any freeze it could resume from.
FENCE_TTL = 7 * 86400

# Pool deaths under a job before its pool runs it apart (fetch.lua's ARGV[8]; the
# fetcher's twin check reads the same constant).
SUSPECT_AFTER = 2


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class FetchPlan:
    """The fetch call of one pool, pre-encoded.

    A pool asks for jobs hundreds of times a second, and its KEYS (four per job
    name) and limits never change; with many job names, encoding them per call cost
    more than the script.  So the command is packed once, and a call only adds the
    arguments that vary (the script rotates from ``start``).  Times are not
    arguments: the script reads Redis's TIME.
    """

    def __init__(self, keys: Keys, *, identity: str, targets: Sequence[FetchTarget],
                 lease_ttl: float) -> None:
        self.names = [t.name for t in targets]
        key_list = [keys.inprogress(identity), keys.schedule, keys.retry]
        key_list += [k for t in targets for k in (t.queue_key, t.paused_key, t.lease_key, t.rate_key)]
        key_list.append(keys.fence(identity))
        key_list += [keys.idle(t.name) for t in targets]
        self._keys_packed = b"".join(_bulk(k.encode()) for k in key_list)
        self._limits_packed = b"".join(_bulk(t.limit_arg().encode()) for t in targets)
        self._fixed = (_bulk(repr(float(lease_ttl)).encode())
                       + _bulk(Keys.lease_member(identity, "").encode())
                       + _bulk(str(SUSPECT_AFTER).encode()))
        self._identity = _bulk(identity.encode())
        # + the ack and batch-section counts, + identity, registered, register, skip,
        # + the split
        self._argc = 3 + len(key_list) + 7 + len(targets) + 2 + 4 + 1
        self._batch_fixed = b"".join(_bulk(str(v).encode()) for v in (
            keys.batch(""), keys.queue_prefix(), keys.queues, BATCH_TTL))
        self._tails = {
            s.sha: _bulk(b"EVALSHA") + _bulk(s.sha.encode()) + _bulk(str(len(key_list)).encode())
            for s in (FETCH, FETCH_OOM)
        }

    def call(self, *, start: int, want: int, may_take_suspect: bool = True,
             allow_oom: bool = False, report_due: bool = True, acks: Sequence[str] = (),
             members: Mapping[str, Sequence[str]] | None = None,
             registered: bool = False, register: Sequence[int] | None = None,
             skip: Sequence[int] = (), split: str = "") -> Call:
        """Fetch up to ``want`` jobs trying name ``start`` first (result indices are 1-based),
        after acking ``acks`` (in-progress fields of plain successes: no lease, no write)
        and ``members`` (bid -> fields of batch members' plain successes, counted in
        their batch: as hot as plain ones, so they ride here too, not in ack.lua).
        ``registered``: the previous fetch left this pool idle (registered in ``idle:<name>``),
        so a fetch that fills it must take it out.  ``register``: 0-based indices of the
        names under which it is not registered now (None: all of them).  ``skip``: 0-based
        indices of names believed empty: they share one EXISTS, and are looked at one
        by one only when it finds something.
        ``split`` caps each kind in a pool with sync and async jobs (see fetch.lua).

        Reply: ``[due_in, suspects_left, acked, empty, rate_in, woke, idx, field, payload, ...]``
        (see fetch.lua);
        ``due_in`` is ``b"-"`` unless ``report_due``, ``b""`` when schedule and retry
        are empty, else ``b"<earliest>|<schedule's>|<retry's>|<queue of the earliest>"``
        (seconds from now by Redis's clock; ``b""`` for an empty zset or a queue not read).
        """
        script = FETCH_OOM if allow_oom else FETCH
        argc = self._argc + len(acks)
        sections: list[bytes] = []
        if members:
            sections.append(self._batch_fixed)
            for bid, fields in members.items():
                sections += (_bulk(bid.encode()), _bulk(str(len(fields)).encode()),
                             *[_bulk(f.encode()) for f in fields])
                argc += 2 + len(fields)
            argc += 4
        packed = b"".join((
            b"*%d\r\n" % argc, self._tails[script.sha], self._keys_packed,
            _bulk(str(want).encode()), self._fixed,
            _bulk(str(start).encode()), _bulk(b"1" if may_take_suspect else b"0"),
            _bulk(b"1" if report_due else b"0"), self._identity,
            _bulk(b"1" if registered else b"0"),
            _bulk(b"*" if register is None else ",".join(str(i + 1) for i in register).encode()),
            _bulk(",".join(str(i + 1) for i in skip).encode()),
            self._limits_packed,
            _bulk(str(len(acks)).encode()), *[_bulk(f.encode()) for f in acks],
            _bulk(str(len(members or ())).encode()), *sections, _bulk(split.encode())))
        return Call(script=script, keys=(), args=(), packed=packed)



@dataclass(frozen=True, kw_only=True)
class Settle:
    """How one taken job is settled by the ack script.

    op: 'k' done, 'K' dropped after failing, 'r' retry at ``score``, 'd' dead at
    ``score``, 'q' requeue to run next, 'u' requeue a unique job that retakes
    ``guard`` (see ack.lua).
    ``name`` is needed when the job holds a lease or is requeued (its queue/lease keys).
    """

    op: str
    field: str | bytes
    name: str | None = None
    payload: bytes | str = b""
    score: float = 0.0
    guard: str | None = None
    # The batch the job belongs to (``bid``): settling it counts in ``batch:<bid>``.
    batch: str | None = None
    # A job with a result_ttl: its record (forkq.results), written beside the ack.
    result: bytes | None = None
    result_ttl: int = 0
    result_final: bool = False
    jid: str = ""
    # The job's fair group: a requeue goes back to its group; its group lease (a name
    # with group_concurrency) is dropped.  Needs ``name``.
    group: str | None = None


def ack(keys: Keys, *, identity: str, plain_done: Sequence[str], settles: Iterable[Settle],
        dead_cutoff: float, dead_max: int, allow_oom: bool = False, unique_ttl: int = 86400,
        batch_plain: Mapping[str, Sequence[str | bytes]] | None = None) -> Call:
    """The ack.lua call settling ``plain_done`` (plain successes), ``settles``, and
    ``batch_plain`` (bid -> in-progress fields of that batch's plain successes)."""
    k: list[str] = [keys.inprogress(identity), keys.retry, keys.dead, keys.queues,
                    keys.fence(identity)]
    pair_of: dict[str, int] = {}
    groups: list[Arg] = []
    guarded: list[tuple[Settle, int]] = []
    batched: list[tuple[str, int]] = []
    grouped: list[tuple[str, str, int, int]] = []  # (name, group, its pair slot, pair)
    # Plain successes of batch members: one HDEL per batch counts them (ack.lua).
    members: dict[str, list[str | bytes]] = {bid: list(f) for bid, f in (batch_plain or {}).items()}
    for s in settles:
        if s.batch is not None and s.op == "k" and s.name is None:
            members.setdefault(s.batch, []).append(s.field)
            continue
        pair = 0
        if s.name is not None:
            pair = pair_of.get(s.name, 0)
            if not pair:
                k += (keys.queue(s.name), keys.lease(s.name))
                pair = pair_of[s.name] = len(pair_of) + 1
        if s.batch is not None:
            batched.append((s.batch, len(groups) + 5))
        if s.group is not None:
            assert s.name is not None, "a settle with a group needs its name"
            grouped.append((s.name, s.group, len(groups) + 2, pair))
        if s.op == "u":
            guarded.append((s, len(groups) + 4))
            groups += (s.op, s.field, pair, s.payload, "", 0)
        else:
            groups += (s.op, s.field, pair, s.payload, repr(s.score), 0)
    group_at: dict[tuple[str, str], int] = {}
    for name, group, at, pair in grouped:
        # Four keys per (name, group), after the pairs; the pair slot becomes "pair:index".
        gi = group_at.get((name, group))
        if gi is None:
            k += (keys.group_lease(name, group), keys.group_queue(name, group), keys.groups(name),
                  keys.group_parked(name))
            gi = group_at[(name, group)] = len(k) - 3
        groups[at] = f"{pair}:{gi}"
    for s, at in guarded:
        # Guard keys follow the pairs; the group's score slot names the guard's KEYS index.
        assert s.guard is not None, "a 'u' settle needs its guard key"
        k.append(s.guard)
        groups[at] = len(k)
    batch_at: dict[str, int] = {}

    def batch_index(bid: str) -> int:
        # Batch hashes follow the guards.
        if bid not in batch_at:
            k.append(keys.batch(bid))
            batch_at[bid] = len(k)
        return batch_at[bid]

    for bid, at in batched:
        groups[at] = batch_index(bid)  # the group's last slot names its KEYS index
    sections: list[Arg] = []
    for bid, fields in members.items():
        sections += (batch_index(bid), len(fields), *fields)
    k.append(keys.cancelled)  # always last (ack.lua reads it as KEYS[#KEYS])
    args: list[Arg] = [Keys.lease_member(identity, ""), keys.wake_channel, repr(dead_cutoff), dead_max,
                       unique_ttl, DUE_MESSAGE, len(pair_of), *pair_of, len(plain_done)]
    args += plain_done
    args.append(len(members))
    args += sections
    args += groups
    args += (keys.queue_prefix(), BATCH_TTL)
    return Call(script=ACK_OOM if allow_oom else ACK, keys=k, args=args)


# A finished batch stays readable (Client.batch) this long after its callbacks fired.
BATCH_TTL = 7 * 86400


@dataclass(frozen=True, kw_only=True)
class BatchCallback:
    """A callback job of a batch, built by the client (job.py owns the format)."""

    queue: str
    payload: bytes


def batch_cancel(keys: Keys, *, bid: str) -> Call:
    """A waiting member of batch ``bid`` was cancelled: count it dead (see batch_cancel.lua)."""
    return Call(script=BATCH_CANCEL, keys=[keys.queues, keys.batch(bid)],
                args=[keys.wake_channel, keys.queue_prefix(), BATCH_TTL])


def batch_push(keys: Keys, *, bid: str, add: bool, jobs: Sequence[tuple[str, Sequence[bytes]]],
               on_success: BatchCallback | None = None, on_complete: BatchCallback | None = None,
               description: str = "") -> Call:
    """Create batch ``bid`` (or, with ``add``, add to it) and push ``jobs``
    (``[(name, payloads), ...]``) in one script call; the reply is the pending count."""
    names = [name for name, _ in jobs]
    groups: list[Arg] = []
    for name, payloads in jobs:
        groups += (name, len(payloads), *payloads)
    return Call(script=BATCH_PUSH, keys=[keys.queues, keys.batch(bid), keys.batches,
                                         *(keys.queue(n) for n in names)],
                args=[keys.wake_channel, bid, "add" if add else "new",
                      on_success.queue if on_success else "", on_success.payload if on_success else b"",
                      on_complete.queue if on_complete else "", on_complete.payload if on_complete else b"",
                      description, BATCH_TTL, keys.queue_prefix(), len(jobs), *groups])


def enqueue(keys: Keys, *, name: str, payloads: Sequence[bytes]) -> Call:
    """Push ``payloads`` and wake registered idle pools, as many as the jobs need."""
    return Call(script=ENQUEUE, keys=[keys.queues, keys.queue(name), keys.idle(name)],
                args=[name, keys.wake_channel, keys.pool_wake_prefix(), *payloads])


def wake_idle(keys: Keys, *, name: str) -> Call:
    """Wake as many registered idle pools as ``name``'s queue holds jobs (the waker's
    announcement of a push that published nothing; wake_idle.lua)."""
    return Call(script=WAKE_IDLE, keys=[keys.queue(name), keys.idle(name)],
                args=[name, keys.wake_channel, keys.pool_wake_prefix()])


def enqueue_group(keys: Keys, *, name: str, group: str, payloads: Sequence[bytes]) -> Call:
    """Push jobs of fair group ``group`` of ``name`` (enqueue_group.lua)."""
    return Call(script=ENQUEUE_GROUP,
                keys=[keys.queues, keys.queue(name), keys.group_queue(name, group), keys.groups(name)],
                args=[name, keys.wake_channel, group, group_token(name, group), *payloads])


def repair_groups(keys: Keys, *, name: str, groups: Sequence[str]) -> Call:
    """Tokens back for those of ``groups`` of ``name`` that lost theirs (repair_groups.lua)."""
    return Call(script=REPAIR_GROUPS, keys=[keys.queue(name), keys.groups(name), keys.group_parked(name)],
                args=[name, keys.group_queue(name, ""), keys.wake_channel, *groups])


def enqueue_unique(keys: Keys, *, name: str, payload: bytes, unique_key: str, jid: str,
                   ttl: int, run_at: float | None = None, delay: float | None = None) -> Call:
    """Now (neither), at epoch ``run_at``, or ``delay`` seconds after Redis's TIME."""
    when = "" if run_at is None else repr(float(run_at))
    if delay is not None:
        when = "+" + repr(max(0.0, float(delay)))
    target = keys.schedule if when else keys.queue(name)
    return Call(script=ENQUEUE_UNIQUE, keys=[keys.queues, target, unique_key],
                args=[name, keys.wake_channel, payload, ttl, when, jid, DUE_MESSAGE])


def schedule(keys: Keys, *, payloads: Sequence[bytes], delay: float | None = None,
             run_at: float | None = None) -> Call:
    """Schedule jobs ``delay`` seconds after Redis's TIME, or at epoch ``run_at``.

    The reply is the due time as a string (epoch seconds).
    """
    if (delay is None) == (run_at is None):
        raise ValueError("give exactly one of delay and run_at")
    mode, seconds = ("in", max(0.0, float(delay))) if delay is not None else ("at", float(run_at or 0.0))
    return Call(script=SCHEDULE, keys=[keys.schedule, keys.retry],
                args=[keys.wake_channel, DUE_MESSAGE, mode, repr(seconds), *payloads])


def promote_due(keys: Keys, *, zset_key: str, limit: int, identity: str = "", room: int = 0,
                lag: float = 0.0) -> Call:
    """Move up to ``limit`` due jobs of ``zset_key`` to their queues (Redis's clock).

    ``identity``/``room``: the pool whose fetch follows in the same round trip and how
    many jobs it may take: registered idle pools are woken only for the rest, never it
    (see promote_due.lua).  ``lag``: move only jobs due at least this many seconds
    ago (a follower's look for what the promoter left).  The reply is
    ``[moved, more, bad members...]``.
    """
    return Call(script=PROMOTE_DUE, keys=[zset_key, keys.queues],
                args=[keys.queue_prefix(), keys.wake_channel, max(1, int(limit)), keys.prefix,
                      keys.pool_wake_prefix(), identity, max(0, int(room)), f"{max(0.0, lag):.6f}"])


@dataclass(frozen=True, kw_only=True)
class Promotion:
    member: bytes
    name: str
    payload: bytes
    group: str | None = None  # a job of a fair group goes back to its group


def promote(keys: Keys, *, zset_key: str, moves: Sequence[Promotion]) -> Call:
    k: list[str] = [zset_key, keys.queues]
    index: dict[str, int] = {}
    args: list[Arg] = [keys.wake_channel]
    gindex: dict[tuple[str, str], int] = {}
    grouped: list[tuple[int, str, str]] = []
    for m in moves:
        i = index.get(m.name)
        if i is None:
            k.append(keys.queue(m.name))
            i = index[m.name] = len(index) + 1
        if m.group is not None:
            grouped.append((len(args) + 1, m.name, m.group))
        args += (m.member, i, m.payload, m.name)
    for at, name, group in grouped:
        # After the queue keys: gqueue:<name>:<group>, groups:<name>; the index is "qi:gi".
        gi = gindex.get((name, group))
        if gi is None:
            k += (keys.group_queue(name, group), keys.groups(name))
            gi = gindex[(name, group)] = len(k) - 3
        args[at] = f"{index[name]}:{gi}"
    return Call(script=PROMOTE, keys=k, args=args)


def release_unique(guards: Sequence[tuple[str, str]]) -> Call:
    """Release unique guards ``(guard key, jid)`` that still hold the jid."""
    return Call(script=RELEASE_UNIQUE, keys=[g for g, _ in guards], args=[j for _, j in guards])


def delete_scheduled(keys: Keys, *, member: bytes, jid: str, guard: str | None) -> Call:
    """ZREM one scheduled member and release its unique guard if it still holds ``jid``."""
    return Call(script=DELETE_SCHEDULED, keys=[keys.schedule] + ([guard] if guard else []),
                args=[member, jid])


# A running job's cancel mark outlives any job run (and trims the set of old marks).
CANCEL_MARK_TTL = 7 * 86400


def cancel(keys: Keys, *, jid: str, queue_keys: Sequence[str], inprogress_keys: Sequence[str],
           locate: bool = False) -> Call:
    """Remove every waiting copy of a job by jid, and mark and announce a running one
    (cancel.lua); ``locate``: only say where it is.  ``[b'stale']`` when the listed keys
    miss a pool that registered since they were listed (list again)."""
    return Call(script=CANCEL,
                keys=[keys.cancelled, keys.schedule, keys.retry, keys.result(jid), keys.result_notify(jid),
                      keys.pools, *queue_keys, *inprogress_keys],
                args=[jid, len(queue_keys), keys.wake_channel, CANCEL_MESSAGE, CANCEL_MARK_TTL,
                      "1" if locate else "0", results.record("cancelled"), keys.inprogress("")])


def store_results(keys: Keys, settles: Iterable[Settle]) -> Call:
    """Result records of settles that carry one (store_results.lua)."""
    k: list[str] = []
    args: list[Arg] = []
    for s in settles:
        assert s.result is not None and s.jid
        k += (keys.result(s.jid), keys.result_notify(s.jid))
        args += (s.result, s.result_ttl, "1" if s.result_final else "0")
    return Call(script=STORE_RESULTS, keys=k, args=args)


def beat(keys: Keys, *, identities: Sequence[str], leased_names: Iterable[str], lease_ttl: float,
         allow_oom: bool, only_registered: bool = False, group_leases: bool = False) -> Call:
    """Liveness beat for these pools, with Redis's TIME, renewing their leases.

    The reply is Redis's TIME.  ``only_registered``: refresh pools that are still in
    ``pools`` and never add one (a master beating for its children).
    """
    k = [keys.pools, *(keys.inprogress(i) for i in identities), *(keys.lease(n) for n in leased_names)]
    args: list[Arg] = [len(identities), repr(float(lease_ttl)), "XX" if only_registered else "",
                       *identities, *(Keys.lease_member(i, "") for i in identities)]
    if group_leases:  # names with group_concurrency: renew the group leases of held jobs
        args.append(keys.prefix)
    return Call(script=BEAT_OOM if allow_oom else BEAT, keys=k, args=args)


def release_lock(key: str, token: str) -> Call:
    """Delete ``key`` only if it still holds ``token``."""
    return Call(script=RELEASE_LOCK, keys=[key], args=[token])


def bury(keys: Keys, *, zset_key: str, member: bytes, entry: bytes, score: float) -> Call:
    """Move a member of ``schedule``/``retry`` that is not a job to dead as ``entry``."""
    return Call(script=BURY, keys=[zset_key, keys.dead], args=[member, entry, repr(score)])


def execute_pipeline(conn: redis.Redis, pipe: redis.client.Pipeline,
                     calls: dict[int, Call]) -> list[Any]:
    """Execute a pipeline whose commands at these positions are script calls
    (``add_to_pipeline``); one that met NOSCRIPT had no effect, so it is loaded and
    run again here.  Errors come back as results, as ``raise_on_error=False`` does."""
    results = pipe.execute(raise_on_error=False)
    for i, call in calls.items():
        if isinstance(results[i], NoScriptError):
            results[i] = run_one(conn, call)
    return results


def add_to_pipeline(pipe: redis.client.Pipeline, call: Call) -> None:
    """Queue a script call in a redis-py pipeline (NOSCRIPT comes back as its result)."""
    pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


def claim_pool(keys: Keys, *, identity: str, expected_beat: float | None) -> Call:
    """Remove a pool's liveness records, only if its beat is still ``expected_beat``.

    ``None`` claims unconditionally (the master reaping its own dead child).
    """
    return Call(script=CLAIM_POOL,
                keys=[keys.pools, keys.processes, keys.pool(identity), keys.process(identity),
                      keys.process_work(identity), keys.process_workers(identity),
                      keys.fence(identity)],
                args=[identity, "" if expected_beat is None else repr(expected_beat), FENCE_TTL])
