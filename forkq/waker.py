"""Wakes idle pools for jobs pushed by clients that publish no wake.

forkq's own enqueue PUBLISHes a wake; Sidekiq's Ruby client (a plain ``LPUSH``), its
Web UI's "Retry Now" / "Add to queue", or any other writer do not, so without this
their jobs would wait for a pool's idle poll (10 s).

One pool per namespace (elected by a short lock, ``waker:lock``) asks Redis to
tell it about every write to a queue key: ``CLIENT TRACKING ON BCAST PREFIX
<prefix>queue:``, redirected to its own connection subscribed to
``__redis__:invalidate``.  That costs no command at all while idle (Redis pushes
the key names; core Redis >= 6, unlike keyspace notifications, which managed
Redis often disables).  On a write it checks which of those queues hold jobs
(one LINDEX per queue: a new next job) and, per such queue, wakes as many registered
idle pools as it holds jobs (wake_idle.lua; every pool when none is registered), so
idle pools fetch at once.  Jobs taken within the coalescing window publish nothing.
Where tracking is refused (Redis < 6, an ACL), the elected pool polls EXISTS
every ``POLL_EVERY`` seconds instead: still one pool per namespace, not per child.

Idle cost: the holder renews its lock every ``RENEW_EVERY`` (GET + SET XX), the
others try to take it every ``TRY_EVERY``.  Jobs are never touched here: losing
this component only brings back the idle-poll delay.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable

import redis
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from . import scripts
from .backoff import capped_exponential
from .connection import ConnectionSpec, publish, sharded_pubsub
from .keys import WAKER_MESSAGE, Keys

log = logging.getLogger("forkq.waker")

# Slow on purpose: a missing waker only brings back the idle poll (10 s), so failover
# may take a while, and the lock's traffic is most of the waker's idle cost.
LOCK_TTL_MS = 30_000
RENEW_EVERY = 10.0
TRY_EVERY = 20.0
POLL_EVERY = 0.5
# Writes seen within this window are checked and announced together.
COALESCE = 0.02
# A queue whose next job keeps changing (pools are draining it) is announced at most
# this often; an announcement is only ever delayed, never dropped (the trailing one
# goes out when the gap has passed).  A queue that was seen empty is announced at once.
ANNOUNCE_GAP = 0.5
INVALIDATE_CHANNEL = b"__redis__:invalidate"


class Waker:
    """A thread body (:meth:`run`) that is the namespace's waker while it holds the lock."""

    def __init__(self, *, spec: ConnectionSpec, keys: Keys, identity: str,
                 names: Iterable[str], stop: threading.Event) -> None:
        self._spec = spec
        self._keys = keys
        self._identity = identity.encode()
        self._stop = stop
        self._qprefix = keys.queue("")
        # Queues this pool polls in the fallback (its own names; tracking sees all).
        self._names = sorted(names)
        self._conn: redis.Redis | None = None
        self._track_pool: redis.ConnectionPool | None = None
        # name -> digest of the next job last announced (see _announce)
        self._announced: dict[str, bytes] = {}
        # name -> when it was last announced, and names whose announcement waits for the gap
        self._announced_at: dict[str, float] = {}
        self._deferred: set[str] = set()
        self.holding = False
        self.mode = ""  # "tracking" or "polling" while holding
        # True once a try found the lock held by another pool (until this one takes it):
        # that pool leads the namespace's promotion of due jobs (see fetcher.FOLLOWER_GRACE).
        self.follows = False
        # Called when this pool takes the lock (its fetcher's due timer loses its grace).
        self.on_lead: Callable[[], None] | None = None
        # Set to try for the lock now (its holder announced that it gave it up).
        self._try_now = threading.Event()

    # -- election -----------------------------------------------------------------------
    def _client(self) -> redis.Redis:
        if self._conn is None:
            self._conn = self._spec.connect_worker()
        return self._conn

    def _acquire(self) -> bool:
        return bool(self._client().set(self._keys.waker_lock, self._identity, nx=True, px=LOCK_TTL_MS))

    def _renew(self) -> bool:
        c = self._client()
        if c.get(self._keys.waker_lock) != self._identity:
            return False
        # SET XX, not PEXPIRE: one command fewer in the ACL line forkq needs.
        return bool(c.set(self._keys.waker_lock, self._identity, xx=True, px=LOCK_TTL_MS))

    def try_soon(self) -> None:
        """The holder gave the lock up (WAKER_MESSAGE): try for it now, not at the next try."""
        self._try_now.set()

    def release(self) -> None:
        """Give the lock up (at stop, from any thread), so another pool takes over at once:
        the others are told (WAKER_MESSAGE) and try for it."""
        self._try_now.set()  # this pool's own waker thread: do not sleep out a try
        try:
            c = self._client()
            if c.get(self._keys.waker_lock) == self._identity:
                c.delete(self._keys.waker_lock)
                publish(c, sharded_pubsub(c), self._keys.wake_channel, WAKER_MESSAGE)
        except Exception:  # noqa: BLE001 - best effort: it expires on its own
            # Not only RedisError: at stop the waker thread's own release() closes this
            # client's connections while the stopping thread may be using one (redis-py
            # then raises TypeError from a socket it no longer has).
            pass

    def run(self) -> None:
        # Jittered first try: the children of one master start together.
        self._stop.wait(random.uniform(0.0, 1.0))
        errors = 0
        try:
            while not self._stop.is_set():
                try:
                    if self._acquire():
                        self.holding = True
                        self.follows = False
                        if self.on_lead is not None:
                            self.on_lead()
                        self._serve()
                    else:
                        self.follows = True
                    errors = 0
                except RedisError as exc:
                    self.follows = False  # unknown: lead (promote on time) rather than wait
                    errors += 1
                    if errors == 1:
                        log.debug("waker: %s", exc)  # the pool's own loops report outages
                except Exception:  # noqa: BLE001 - the waker must never die: retry later
                    errors += 1
                    log.exception("waker failed; retrying")
                finally:
                    self.holding = False
                    self.mode = ""
                self._try_now.wait(TRY_EVERY * random.uniform(0.75, 1.25) if errors == 0
                                   else capped_exponential(errors, base=0.5, cap=TRY_EVERY))
                if self._try_now.is_set():
                    self._try_now.clear()
                    # Several pools heard it: a short jitter, so one wins without a pile-up.
                    self._stop.wait(random.uniform(0.0, 0.05))
        finally:
            self.release()
            if self._conn is not None:
                self._conn.close()
            if self._track_pool is not None:
                self._track_pool.disconnect()

    # -- serving ------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            conn = self._track()
        except ResponseError as exc:
            log.info("waker: Redis refused CLIENT TRACKING (%s); polling queues every %.1fs", exc, POLL_EVERY)
            self._poll()
            return
        try:
            self.mode = "tracking"
            self._listen(conn)
        finally:
            conn.disconnect()

    def _track(self) -> redis.Connection:
        """A raw connection that hears, as pub/sub messages, the names of written queue keys."""
        if self._track_pool is None:
            self._track_pool = self._spec.connect_worker(socket_timeout=None).connection_pool
        conn = self._track_pool.make_connection()
        conn.connect()
        # hiredis turns an invalidation into a push notification that redis-py drops
        # unless a handler takes it: hand it back as the reply.
        set_handler = getattr(getattr(conn, "_parser", None), "set_invalidation_push_handler", None)
        if set_handler is not None:
            set_handler(lambda response: response)
        try:
            conn.send_command("CLIENT", "ID")
            cid = conn.read_response()
            conn.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", cid, "BCAST", "PREFIX", self._qprefix)
            conn.read_response()
            conn.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
            # push_request: hiredis hands pub/sub messages over as push notifications.
            conn.read_response(push_request=True)
        except BaseException:
            conn.disconnect()
            raise
        return conn

    def _listen(self, conn: redis.Connection) -> None:
        renew_at = time.monotonic() + RENEW_EVERY
        # Loaded once per takeover, so an announcement is one EVALSHA, never a NOSCRIPT
        # and a second one (a server restarted since is still handled by scripts.run).
        self._client().script_load(scripts.script_for(self._client(), scripts.WAKE_IDLE).text)
        # Anything pushed before we listened is found by one check.
        self._announce(self._names)
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= renew_at:
                if not self._renew():
                    return
                renew_at = now + RENEW_EVERY
            wait = min(1.0, max(0.0, renew_at - now))
            due = float("inf")
            if self._deferred:
                due = min(self._announced_at.get(n, 0.0) for n in self._deferred) + ANNOUNCE_GAP
                wait = min(wait, max(0.0, due - now))
            if not conn.can_read(timeout=wait):
                if time.monotonic() >= due:
                    deferred, self._deferred = self._deferred, set()
                    self._announce(sorted(deferred))
                continue
            self._stop.wait(COALESCE)
            names: set[str] = set(self._deferred)
            self._deferred.clear()
            while conn.can_read(timeout=0):
                msg = conn.read_response(push_request=True)
                names.update(self._names_in(msg))
            if names:
                self._announce(sorted(names))

    def _names_in(self, msg: object) -> list[str]:
        # [b"message", b"__redis__:invalidate", [key, ...]] (RESP2 parser) or
        # [b"invalidate", [key, ...]] (hiredis); keys is None after a FLUSHDB.
        if not isinstance(msg, list) or not msg or msg[0] not in (b"message", b"invalidate"):
            return []
        keys = msg[-1]
        if not isinstance(keys, list):
            return []
        out = []
        for k in keys:
            text = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
            if text.startswith(self._qprefix) and len(text) > len(self._qprefix):
                out.append(text[len(self._qprefix):])
        return out

    def _announce(self, names: Iterable[str]) -> None:
        """PUBLISH a wake for each of ``names`` whose next job (the list's tail) is new.

        A job that stays next in line (a suspect a pool may not take yet, a name at its
        max_concurrency) was announced already: waking the pools again would only make
        them fetch, put it back, and so write the queue again - a loop.
        """
        names = list(names)
        if not names:
            return
        c = self._client()
        pipe = c.pipeline(transaction=False)
        for n in names:
            pipe.lindex(self._keys.queue(n), -1)
        try:
            heads = pipe.execute()
        except NoPermissionError:  # an ACL line without LINDEX: announce every queue with jobs
            pipe = c.pipeline(transaction=False)
            for n in names:
                pipe.exists(self._keys.queue(n))
            heads = [str(time.monotonic()).encode() if e else None for e in pipe.execute()]
        found = []
        now = time.monotonic()
        for n, head in zip(names, heads, strict=True):
            if head is None:
                self._announced.pop(n, None)
                continue
            digest = hashlib.blake2b(head, digest_size=8).digest()
            last = self._announced.get(n)
            if last != digest:
                if last is not None and now - self._announced_at.get(n, 0.0) < ANNOUNCE_GAP:
                    # Seen non-empty last time and announced moments ago: pools are on it.
                    self._deferred.add(n)
                    continue
                self._announced[n] = digest
                self._announced_at[n] = now
                found.append(n)
        if found:
            # As many registered idle pools as each queue holds jobs, not every pool: a
            # forkq enqueue's job seen here before its pool took it costs one fetch, not
            # one per pool (the pools that never register get the classic wake).
            scripts.run(c, [scripts.wake_idle(self._keys, name=n) for n in found])

    def _poll(self) -> None:
        """Fallback without tracking: one EXISTS over this pool's queues every POLL_EVERY."""
        self.mode = "polling"
        c = self._client()
        qkeys = [self._keys.queue(n) for n in self._names]
        renew_at = time.monotonic() + RENEW_EVERY
        while not self._stop.wait(POLL_EVERY):
            now = time.monotonic()
            if now >= renew_at:
                if not self._renew():
                    return
                renew_at = now + RENEW_EVERY
            if qkeys and c.exists(*qkeys):
                self._announce(self._names)
