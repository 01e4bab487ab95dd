"""Giving back the jobs of a pool that is gone.

Used by: a pool stopping with jobs still running (shutdown timeout), the master
when a child dies (at once, on SIGCHLD), a fetcher reconciling after a lost
reply, and the heartbeat-staleness reaper for whole hosts that died.

Staleness is judged by Redis's clock only: beats are scored with Redis's TIME
(beat.lua) and the reaper compares them with Redis's TIME, so a host whose clock
is minutes off neither reaps live pools nor is reaped itself.  The reaper is
scheduled from the oldest beat (``StaleReaper``): it runs when that beat turns
stale, not on a fixed period, so a dead host's jobs come back ``stale_after``
plus at most a second or two after its last beat.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Collection
from typing import Any, Literal

import redis

from . import clock, scripts
from . import job as jobcodec
from .config import Config
from .keys import Keys
from .retry import malformed_dead_entry

log = logging.getLogger("forkq.reaper")


# Why a pool is gone, for the poison detector:
#   "crash": it crashed, exited on its own, was OOM-killed, or vanished with its host:
#            its jobs may have done it ("recovered" +1; dead as poison past max_recoveries);
#   "kill":  SIGKILLed from outside (an operator, a deploy script, a chaos test) with no
#            OOM kill on the machine: probably not its jobs ("killed" +1; poison only past
#            KILLS_PER_RECOVERY times as many, so a job that SIGKILLs itself still ends);
#   "none":  forkq stopped it itself (shutdown, a frozen child): its jobs are not blamed.
Blame = Literal["crash", "kill", "none"]
KILLS_PER_RECOVERY = 3


def recover_inprogress(conn: redis.Redis, keys: Keys, identity: str, config: Config, *,
                       keep: Collection[str] = (), count_recovery: bool = True,
                       blame: Blame = "crash",
                       only: Collection[str] | None = None,
                       on_poison: Callable[[dict[str, Any]], None] | None = None) -> tuple[int, int]:
    """Requeue a pool's in-progress jobs (to run next), or bury poison; return (requeued, dead).

    ``keep``: fields still legitimately running here (not touched).
    ``only``: settle just these fields.  ``count_recovery``: bump the job's
    ``recovered`` counter; past ``config.max_recoveries`` it goes to dead as "poison".
    ``on_poison``: told of each job buried as poison, once it is in the dead set.
    """
    entries: dict[bytes, bytes] = conn.hgetall(keys.inprogress(identity))
    settles = []
    poisoned: list[dict[str, Any]] = []
    requeued = dead = 0
    now = clock.now()
    for raw_field, payload in entries.items():
        # Fields are written by forkq's fetch (plain ASCII), but the hash may hold
        # anything: settle by the raw bytes, compare by text.
        text = raw_field.decode("utf-8", "replace")
        field: str | bytes = raw_field if text.encode() != raw_field else text
        if text in keep or (only is not None and text not in only):
            continue
        try:
            data = jobcodec.decode(payload)
        except jobcodec.MalformedPayload as exc:
            settles.append(scripts.Settle(op="d", field=field, payload=malformed_dead_entry(
                queue="unknown", raw=payload, reason=str(exc)), score=now))
            dead += 1
            continue
        name = jobcodec.queue_of(data)
        why = None
        if count_recovery and blame == "crash":
            data["recovered"] = jobcodec.recovery_count(data) + 1
            if data["recovered"] > config.max_recoveries:
                why = f"poison: the pool running this job died {data['recovered']} times"
        elif count_recovery and blame == "kill":
            data["killed"] = jobcodec.kill_count(data) + 1
            if data["killed"] > config.max_recoveries * KILLS_PER_RECOVERY:
                why = f"poison: the pool running this job was SIGKILLed {data['killed']} times"
        if why is not None:
            data["error_class"] = "Poison"
            data["error_message"] = why
            data["failed_at"] = now
            settles.append(scripts.Settle(op="d", field=field, name=name,
                                          payload=jobcodec.encode(data), score=now,
                                          batch=jobcodec.bid_of(data), group=jobcodec.group_of(data)))
            poisoned.append(data)
            dead += 1
        else:
            # A unique job retakes its guard as it goes back (ack.lua's 'u').
            guard = jobcodec.unique_guard_of(data, keys)
            # A job of a fair group goes back to the head of its group (ack.lua).
            settles.append(scripts.Settle(op="u" if guard else "q", field=field, name=name,
                                          payload=jobcodec.encode(data), guard=guard,
                                          group=jobcodec.group_of(data)))
            requeued += 1
    if settles:
        scripts.run_one(conn, scripts.ack(keys, identity=identity, plain_done=(), settles=settles,
                                          dead_cutoff=now - config.dead_max_age,
                                          dead_max=config.dead_max_jobs,
                                          unique_ttl=config.unique_ttl))
    if on_poison is not None:
        for data in poisoned:
            on_poison(data)
    return requeued, dead


def release_pool(conn: redis.Redis, keys: Keys, identity: str, config: Config, *,
                 expected_beat: float | None = None, count_recovery: bool = True,
                 blame: Blame = "crash",
                 on_poison: Callable[[dict[str, Any]], None] | None = None) -> tuple[int, int] | None:
    """Claim a pool (compare-and-set on its beat) and requeue its jobs; None if it beat since."""
    if not scripts.run_one(conn, scripts.claim_pool(keys, identity=identity, expected_beat=expected_beat)):
        return None
    return recover_inprogress(conn, keys, identity, config, count_recovery=count_recovery,
                              blame=blame, on_poison=on_poison)


def redis_time(conn: redis.Redis) -> float:
    """Redis's time from a round trip (and this process's clock follows it)."""
    return clock.CLOCK.sync(conn)


def reap_stale_pools(conn: redis.Redis, keys: Keys, config: Config, *,
                     exclude: Collection[str] = (),
                     on_poison: Callable[[dict[str, Any]], None] | None = None) -> list[str]:
    """Recover every pool whose beat is older than ``config.stale_after`` by Redis's clock.

    ``on_poison``: told of each job buried as poison, as in ``recover_inprogress``: a
    pool that died with its job can no longer tell its reporters, so the reaper does.

    A short lock keeps reapers on many hosts from doing the work twice; the
    compare-and-set in ``claim_pool`` is what keeps a slow-but-alive pool safe.
    Pools that left an in-progress hash but no beat at all (stopped mid-boot) are
    found by scanning ``inprogress:*`` keys.
    """
    token = os.urandom(8).hex()
    if not conn.set(keys.reaper_lock, token, nx=True, px=int(config.stale_after * 1000)):
        return []
    reaped: list[str] = []
    try:
        t = redis_time(conn)
        stale = conn.zrangebyscore(keys.pools, "-inf", t - config.stale_after, withscores=True)
        for raw_id, beat in stale:
            identity = raw_id.decode()
            if identity in exclude:
                continue
            result = release_pool(conn, keys, identity, config, expected_beat=beat,
                                  on_poison=on_poison)
            if result is not None:
                reaped.append(identity)
                log.warning("reaped pool %s (no beat for %.1fs by Redis's clock): %d jobs requeued, "
                            "%d to dead", identity, t - beat, *result)
        # Orphaned in-progress hashes whose pool has no beat record at all.  Scan
        # first, then read the live set: a pool beats before it fetches, so one
        # that registers during the scan is in the live set by then.
        prefix = keys.inprogress("")
        candidates = [k.decode()[len(prefix):]
                      for k in conn.scan_iter(match=keys.inprogress_glob(), count=500)]
        live = {m.decode() for m in conn.zrange(keys.pools, 0, -1)}
        for identity in candidates:
            if identity in live or identity in exclude:
                continue
            result = recover_inprogress(conn, keys, identity, config, on_poison=on_poison)
            if result != (0, 0):
                reaped.append(identity)
                log.warning("recovered orphaned jobs of pool %s: %d requeued, %d to dead",
                            identity, *result)
    finally:
        # Compare-and-delete in one script: only our own lock (it also expires by itself).
        scripts.run_one(conn, scripts.release_lock(keys.reaper_lock, token))
    return reaped


def next_stale_in(conn: redis.Redis, keys: Keys, config: Config, *,
                  exclude: Collection[str] = ()) -> float:
    """Seconds (by Redis's clock) until the oldest beat of another pool turns stale.

    ``stale_after`` when there is no other pool: one that registers now beats
    now, so it cannot turn stale sooner.
    """
    pipe = conn.pipeline(transaction=False)
    pipe.execute_command("TIME")
    pipe.zrange(keys.pools, 0, len(exclude), withscores=True)
    sent = time.monotonic()
    reply, oldest = pipe.execute()
    now = clock.parse_time(reply)
    clock.CLOCK.observe(now, sent, time.monotonic())
    for raw_id, beat in oldest:
        if raw_id.decode() not in exclude:
            return max(0.0, beat + config.stale_after - now)
    return config.stale_after


class StaleReaper:
    """When to run the staleness reaper, and whether it may judge at all.

    Scheduled from the oldest beat: it runs when that beat turns stale (plus a
    little jitter, so the reapers of many pools do not all take the lock at
    once), so detection takes ``stale_after`` + about a second, not a fixed
    period on top of it.

    It only judges while its own beats have been getting through without a gap
    for ``stale_after``: after a Redis stall (or a network cut, or this process
    frozen), every pool's last beat is old by the length of the stall, and a
    reaper that judged at once would reap live pools before they could beat
    again.  The owner reports each of its beats with ``beaten``.
    """

    JITTER = 0.5

    def __init__(self, config: Config) -> None:
        self._config = config
        interval = config.heartbeat_interval
        # A live pool's beat before a stall of length g is at most `interval` older
        # than the stall; past this gap between our own beats, that pool may look stale.
        self._max_gap = max(1.2 * interval, config.stale_after - interval)
        self._chain_since: float | None = None  # Redis time our unbroken beats began
        self._last_beat: float | None = None
        self.next_at = time.monotonic() + random.uniform(0.0, self.JITTER)

    def beaten(self, redis_now: float | None) -> None:
        """Our beat succeeded at Redis time ``redis_now`` (None: it failed)."""
        if redis_now is None:
            self._chain_since = self._last_beat = None
            return
        if self._last_beat is None or redis_now - self._last_beat > self._max_gap:
            self._chain_since = redis_now
        self._last_beat = redis_now

    def wait(self) -> float:
        """Seconds until the reaper should run (monotonic)."""
        return max(0.0, self.next_at - time.monotonic())

    def run(self, conn: redis.Redis, keys: Keys, *, exclude: Collection[str] = (),
            on_poison: Callable[[dict[str, Any]], None] | None = None) -> list[str]:
        """Reap if it is time; schedule the next run from the oldest remaining beat."""
        if time.monotonic() < self.next_at:
            return []
        cfg = self._config
        if self._chain_since is None or self._last_beat is None:
            self.next_at = time.monotonic() + cfg.heartbeat_interval
            return []
        now = clock.now()
        steady = now - self._chain_since
        if steady < cfg.stale_after:
            self.next_at = time.monotonic() + (cfg.stale_after - steady) + random.uniform(0, self.JITTER)
            return []
        try:
            reaped = reap_stale_pools(conn, keys, cfg, exclude=exclude, on_poison=on_poison)
            delay = next_stale_in(conn, keys, cfg, exclude=exclude)
        except BaseException:
            self.next_at = time.monotonic() + cfg.heartbeat_interval
            raise
        # Never sooner than a tenth of a second: a pool that keeps its beat exactly
        # at the edge must not make us spin.
        self.next_at = time.monotonic() + max(0.1, delay + random.uniform(0.05, self.JITTER))
        return reaped
