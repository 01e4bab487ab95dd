"""The fetcher: one thread per pool that acks finished jobs and takes new ones.

Each round trip is one pipeline: ``ack`` (finished jobs that need a write:
retry, dead, leases, batches), ``promote_due`` of schedule and retry when the
earliest due time has come, then ``fetch``, which first acks the plain successes
(one HDEL) and takes up to the free thread slots plus a prefetch.  Completions
batch themselves: while a round trip is in flight, more jobs finish and ride
the next one.

Prefetch (issue 12): with short jobs one round trip per freed thread cost more
Redis work than the jobs.  While recent jobs are short, a pool holds up to
``PREFETCH_WINDOW`` seconds of work beyond its threads (at most one extra job per
thread) and refills only when that buffer runs low, so a round trip carries the
acks and takes of several jobs.  Prefetched jobs sit in the in-progress hash like
running ones (a killed child's are requeued by its master); if no thread finishes
for ``STALL_GIVE_BACK`` they go back to the head of their queue for other pools,
and a graceful stop gives them back at once.  This file is long because the wait
decision (fetch now, batch, defer acks, give back) is one loop that must see all
of that state under one lock.  With nothing to take, the fetcher sleeps until a wake message
(enqueue to an empty queue, a freed lease, a promotion, a job scheduled earlier
than any other: ``DUE_MESSAGE``), a completion to ack, the earliest due time of
schedule/retry (which every fetch reports by Redis's clock, as a delay, so the
sleep is on the monotonic clock), or ``idle_poll_interval`` (which notices jobs
pushed by non-forkq clients).  Idle cost: one fetch per interval.

Due jobs are promoted in batches of ``scheduler.PROMOTE_BATCH`` inside Redis in
the same round trip as the fetch that takes them; a full batch makes the next
round trip promote again at once, so a burst of due jobs moves at the rate the
pools take them (tens of thousands a second), not one batch per poll.  One pool
per namespace promotes on time (``leads``: the waker lock's holder; with no room it
promotes alone, and the promotion wakes idle pools for what it moved); the others
only look ``FOLLOWER_GRACE`` later, so a due time wakes one pool, not all of them.
"""

from __future__ import annotations

import bisect
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

import redis
from redis.exceptions import RedisError

from . import clock, scheduler, scripts
from . import job as jobcodec
from .backoff import capped_exponential
from .config import Config
from .connection import publish, sharded_pubsub
from .executor import Done, Taken
from .keys import Keys
from .reaper import recover_inprogress
from .scripts import FetchTarget, Settle
from .stats import StatsBuffer

log = logging.getLogger("forkq.fetcher")

# A due time that came but whose promotion moved nothing (another pool is on it):
# look again this much later, so we never spin.
MIN_POLL_GAP = 0.01
# Wake this long after a due time (Redis's TIME resolution is a microsecond; the
# delay is converted to the monotonic clock within a round trip).
DUE_MARGIN = 0.0005
# Large pools refill in batches: while jobs run, wait until this fraction of the
# threads is free (or BATCH_DELAY passed) before a round trip.  One round trip per
# freed thread costs more CPU than the jobs themselves at a hundred threads.
BATCH_FRACTION = 20
BATCH_DELAY = 0.0005
# Prefetch: while jobs are short, a pool takes up to this many seconds of work beyond
# its threads (estimated from recent durations; at most one job per thread more), so
# one round trip carries several acks and several takes instead of one of each.
PREFETCH_WINDOW = 0.01
# Acks of plain successes wait for the next refill at most this long.
ACK_WINDOW = 0.02
# Prefetched jobs nobody started for this long (every thread is in a long job) are
# given back to the head of their queue, for other pools; no prefetch then until the
# threads have turned over.
STALL_GIVE_BACK = 0.1
# A busy pool re-reads the earliest due time at least this often (a wake tells it of
# an earlier one sooner; see fetch.lua's ARGV[7]).
DUE_REFRESH = 1.0
# How long a pool trusts that a queue it found empty stays so (its wake says otherwise).
EMPTY_REFRESH = 1.0
# One pool per namespace (the waker lock's holder) promotes due jobs at their due time;
# the others look this much later, and promote only what is still due by then: the
# fallback when the leader is dead, frozen or cut off.  Without it every idle pool woke
# at each due time (a scheduled trickle into 16 pools cost 59 script calls a job).
FOLLOWER_GRACE = 0.5
# A follower that found due jobs nobody promoted in time (the leader died, or left a
# lock behind) promotes on time itself for this long (a dead holder's lock expires
# within waker.LOCK_TTL_MS): one late job, not one per due time, until a leader is back.
TAKEOVER = 30.0


class FirstPick:
    """Which job name a fetch tries first: name *i* with probability ``w_i / sum(w)``.

    gocraft's sampler; what sets the ratio between busy queues is which name is
    tried first (a fetch takes all it can from it), so the rest are tried in
    cyclic order after it: one ``random()`` and a bisect per fetch instead of a
    weighted sort of every name.
    """

    def __init__(self, weights: Sequence[float]) -> None:
        total = 0.0
        self._cumulative: list[float] = []
        for w in weights:
            total += w
            self._cumulative.append(total)
        self._total = total
        self._n = len(self._cumulative)

    def __call__(self) -> int:
        if self._n == 1:
            return 0
        return min(bisect.bisect_right(self._cumulative, random.random() * self._total), self._n - 1)


class Fetcher(threading.Thread):
    def __init__(self, *, conn: redis.Redis, keys: Keys, identity: str, config: Config,
                 targets: Sequence[FetchTarget], priorities: Sequence[int], concurrency: int,
                 submit: Callable[[Taken], None],
                 stats: StatsBuffer,
                 pending: Callable[[], int] | None = None,
                 take_back: Callable[[], list[Taken]] | None = None,
                 job_seconds: Callable[[], float] | None = None,
                 split: tuple[int, int, frozenset[str]] | None = None,
                 leads: Callable[[], bool] | None = None) -> None:
        """``split``: for a pool with both sync and async jobs, (threads, async slots,
        async names): each kind is fetched only up to its own free slots, so sync
        jobs never fill the async budget (they would wait in this child for a thread
        while other pools idle), nor async jobs the threads'.  ``leads``: whether this
        pool is the namespace's promoter now (default: always; see FOLLOWER_GRACE)."""
        super().__init__(name="forkq-fetcher", daemon=True)
        self._conn = conn
        self._runner = scripts.Runner(conn)
        self._keys = keys
        self._identity = identity
        self._config = config
        self._plan = scripts.FetchPlan(keys, identity=identity, targets=targets,
                                       lease_ttl=config.lease_ttl)
        self._leads_by_lock = leads if leads is not None else (lambda: True)
        # Monotonic time until which this pool promotes on time though it follows (TAKEOVER).
        self._took_over_until = 0.0
        # The last due report said a job was due already (a follower promotes only such).
        self._overdue = False
        self._names = self._plan.names
        self._index = {n.encode(): i for i, n in enumerate(self._names)}
        self._first = FirstPick([float(p) for p in priorities])
        self._concurrency = concurrency
        self._split = split
        # Mixed pools (split): the 1-based positions of the async names, the fields of
        # async jobs taken and not finished, and whether the last fetch found every
        # queue of a kind empty (sync, async).
        self._async_pos = set()
        if split is not None:
            self._async_pos = {i + 1 for i, n in enumerate(self._names) if n in split[2]}
        self._async_pos_arg = ",".join(str(p) for p in sorted(self._async_pos))
        self._async_held: set[str] = set()
        self._kind_empty = (False, False)
        self._stats = stats
        # Monotonic time the earliest scheduled/retry job is due (0: promote at once).
        self._due_at = 0.0
        # The same for schedule and for retry (0: not known, promote it), and the queue
        # of the earliest due job (None: not known): a promotion calls only the zsets
        # with a job due, and its fetch looks at that queue alone among those it
        # believes empty (fetch.lua's due report).
        self._due_each = (0.0, 0.0)
        self._due_queue: int | None = None
        self._cv = threading.Condition(threading.Lock())
        self._done: list[Done] = []
        # Every item of _done is a plain success (no lease, retry or dead to write): such
        # acks may wait for the next fetch to carry them (ACK_WINDOW); the others may free
        # a lease another pool waits for, so they go at once.
        self._done_plain = True
        self._inflight = 0
        self._held: set[str] = set()
        # The field of the suspect job this pool runs (at most one; see fetch.lua).
        self._suspect: str | None = None
        self._woken = True
        # The earliest due time we know may be out of date (start, a reconnect, a due
        # message): the next fetch reads it again.  A wake for a job name does not.
        self._due_stale = True
        # The last fetch left this pool in idle:<name> (fetch.lua): one that fills it
        # must take it out, or an enqueue would wake it while others are free.
        self._registered = False
        # Indices of the names under which it is not registered (None: any of them may
        # be missing), so a woken idle fetch writes no registration it already has.
        self._unregistered: set[int] | None = None
        self._waiting = False
        self._batch_min = max(1, concurrency // BATCH_FRACTION)
        self._notify_at = 1
        self._batch_until = 0.0
        self._quiet = False
        self._stopping = False
        self._last_empty = False
        self._in_round_trip = False
        self._next_poll = 0.0
        self._errors = 0
        self._reconcile = False
        self.last_progress = time.monotonic()
        self.rounds = 0
        # Set once a round trip found this pool fenced (see fetch.lua / ack.lua).
        self.fenced = False
        self.on_fenced: Callable[[], None] | None = None
        self._submit = submit
        # The executor's buffer (jobs handed over, not started) and recent job length:
        # prefetch needs all three (without them a pool takes only what its threads run).
        self._pending = pending
        self._take_back = take_back
        self._job_seconds = job_seconds
        self._prefetch = pending is not None and take_back is not None and job_seconds is not None
        self._completions = 0
        self._no_prefetch_until = 0
        self._done_since = 0.0
        self._last_done_at = 0.0
        self._last_fetch_at = 0.0
        self._rtt = 0.0005
        self._due_checked = -DUE_REFRESH
        # Indices of names the last fetches found empty (see _start).
        self._empty: set[int] = set()
        self._empty_reset_at = 0.0
        self._give_back_lock = threading.Lock()
        # Merge plain acks into the fetch call, unless acks must be re-sendable alone
        # (behind Sentinel the runner re-sends recent acks after a failover).
        self._merge_acks = not self._runner.resends_acks
        # Set by the runtime once it knows the server (Redis >= 7 runs fetch/ack at maxmemory).
        self.allow_oom = False

    def _leads(self) -> bool:
        """Whether this pool promotes due jobs on time now: it holds the waker lock (or
        nobody is known to), or it took over from a leader that did not promote."""
        return self._leads_by_lock() or time.monotonic() < self._took_over_until

    # -- called from other threads ---------------------------------------------------
    def complete(self, item: Done) -> None:
        """A worker thread finished a job (hot path: one lock, maybe one notify)."""
        now = time.monotonic()
        with self._cv:
            if not self._done:
                self._done_since = now
                self._done_plain = True
            self._done.append(item)
            if item[1] is not None and not isinstance(item[1], str):
                self._done_plain = False
            if self._async_held:
                self._async_held.discard(item[0])
            self._last_done_at = now
            self._completions += 1
            if self._waiting and len(self._done) >= self._notify_at:
                self._cv.notify()

    def request_reconcile(self) -> None:
        """Give back, at the next round trip, in-progress entries this pool does not hold
        (what a fetch whose reply was lost leaves behind; also after a failover)."""
        with self._cv:
            self._reconcile = True
            self._woken = True
            self._cv.notify()

    def wake(self, name: bytes | None = None) -> None:
        """Fetch soon; ``name`` (a wake message) is a job name whose queue got jobs."""
        with self._cv:
            self._woken = True
            i = self._index.get(name) if name is not None else None
            if i is not None:
                self._empty.discard(i)
                if self._unregistered is not None:
                    # A wake to every pool for this name: an enqueue found no registered pool
                    # there (or it came from elsewhere); registering again costs one ZADD.
                    self._unregistered.add(i)
            else:  # a due message, a reconnect, a drain: read the due time again too
                self._due_stale = True
                self._due_each, self._due_queue = (0.0, 0.0), None
            if name is None:
                # (Re)subscribed: an enqueue meanwhile found us deaf and dropped us.
                self._unregistered = None
            self._cv.notify()

    def wake_direct(self, name: bytes) -> bool:
        """An enqueue woke this pool alone (it was registered idle for ``name``).

        Returns False when this pool cannot fetch now (quiet, or the slots of this name's
        kind filled since it registered; a mixed pool stays registered while the other
        kind has room): the caller passes the wake on to every pool instead.
        """
        with self._cv:
            if self._quiet or self._stopping:
                return False
            busy = self._inflight - len(self._done)
            depth = self._depth()
            i = self._index.get(name)
            split = self._split_now(busy, depth)
            if split is None:
                room = self._concurrency + depth - busy
            else:  # a mixed pool: room for this name's kind (registered while the other's was free)
                room = split[1] if i is not None and i + 1 in self._async_pos else split[0]
            if room <= 0:
                return False
            self._woken = True
            if i is not None:
                self._empty.discard(i)
            self._cv.notify()
            return True

    def poke(self) -> None:
        """Look at the timers again (this pool just became the promoter: its due timer
        loses FOLLOWER_GRACE); no round trip unless one is due."""
        with self._cv:
            self._cv.notify()

    def set_quiet(self, quiet: bool = True) -> None:
        with self._cv:
            self._quiet = quiet
            self._unregistered = None  # a quiet pool leaves the idle registry (runtime.quiet)
            self._woken = True
            self._cv.notify()

    def request_stop(self) -> None:
        """Stop after acking what is done; running jobs are the runtime's business."""
        with self._cv:
            self._quiet = True
            self._stopping = True
            self._cv.notify()

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def quiet(self) -> bool:
        return self._quiet

    def idle(self) -> bool:
        """Nothing taken and not acked, and the last fetch found nothing."""
        with self._cv:
            # Not while a round trip is out: jobs it took are off their queue but not
            # yet counted in _inflight (drain would see empty queues and nothing held).
            return (self._inflight == 0 and not self._done and self._last_empty and not self._woken
                    and not self._in_round_trip)

    def held_fields(self) -> set[str]:
        with self._cv:
            return set(self._held)

    # -- the loop ---------------------------------------------------------------------
    def _depth(self, slots: int | None = None) -> int:
        """How many jobs beyond its threads this pool may hold now (0: no prefetch)."""
        if not self._prefetch or self._completions < self._no_prefetch_until:
            return 0
        assert self._job_seconds is not None
        avg = self._job_seconds()
        if avg == float("inf"):
            return 0
        n = self._concurrency if slots is None else slots
        return min(n, int(n * PREFETCH_WINDOW / max(avg, 1e-6)))

    def _split_now(self, busy: int, depth: int) -> tuple[int, int] | None:
        """A mixed pool's room per kind now (sync: free threads and their prefetch;
        async: free async slots), or None for a pool of one kind.  Under the lock."""
        if self._split is None:
            return None
        threads, slots, _ = self._split
        async_busy = len(self._async_held)
        sync_room = threads + (self._depth(threads) if depth else 0) - (busy - async_busy)
        return max(0, sync_room), max(0, slots - async_busy)

    def _has_work(self, split: tuple[int, int] | None) -> bool:
        """Whether a fetch now may find something: the last one did not come back short
        (one kind), or a kind with room had work left (mixed pools)."""
        if split is None:
            return not self._last_empty
        sync_empty, async_empty = self._kind_empty
        return (split[0] > 0 and not sync_empty) or (split[1] > 0 and not async_empty)

    def run(self) -> None:
        while True:
            give_back = False
            with self._cv:
                while True:
                    if self._stopping and not self._done:
                        return
                    now = time.monotonic()
                    leading = self._leads()
                    busy = self._inflight - len(self._done)  # taken, unfinished: running or buffered
                    idle_threads = self._concurrency - busy
                    depth = self._depth()
                    room = self._concurrency + depth - busy
                    split = self._split_now(busy, depth)
                    if split is not None:
                        room = min(room, split[0] + split[1])
                    can_fetch = (not self._quiet and room > 0 and
                                 (self._woken or self._has_work(split) or now >= self._next_poll
                                  or (leading and now >= self._due_at)))
                    buffered = self._pending() if self._pending is not None and idle_threads <= 0 else 0
                    if (can_fetch and 0 < idle_threads < self._batch_min and not self._last_empty
                            and not self._woken):
                        # Busy: let a few more threads finish so one round trip carries more.
                        if not self._batch_until:
                            self._batch_until = now + BATCH_DELAY
                        if now < self._batch_until:
                            self._waiting = True
                            self._notify_at = self._batch_min
                            self._cv.wait(self._batch_until - now)
                            self._waiting = False
                            self._notify_at = 1
                            continue
                    self._batch_until = 0.0
                    if can_fetch and idle_threads <= 0:
                        # Every thread has work: refill only when the buffer runs low, so a
                        # round trip carries the acks and takes of several jobs.
                        avg = self._job_seconds() if self._job_seconds is not None else 1.0
                        low = min(depth, max(1, depth // 4,
                                             int(self._rtt * self._concurrency / max(avg, 1e-6)) + 1))
                        can_fetch = buffered <= low and room >= max(1, depth // 2)
                    # The promoter promotes on time even with no room (quiet, or every slot
                    # taken): its promotion wakes idle pools for the jobs it moves.  With no
                    # room it still re-reads the due time when told it changed (a due
                    # message), or it would not know when to promote.
                    promote_only = (leading and not can_fetch and not self._stopping
                                    and (now >= self._due_at or self._due_stale))
                    go = can_fetch or promote_only
                    if not go and self._done:
                        # Plain successes ride the next fetch, bounded by ACK_WINDOW: the
                        # refill while the buffer keeps the threads busy, or the wake of a
                        # trickle (an idle pool's next job), so a trickled job costs two
                        # round trips (enqueue, fetch), not three.  Other outcomes, and
                        # acks of a stopping pool, go at once.
                        go = (self._quiet or not self._done_plain
                              or (not self._last_empty and (idle_threads > 0 or depth == 0))
                              or now - self._done_since >= ACK_WINDOW)
                    if go:
                        break
                    if (buffered > 0 and self._take_back is not None
                            and now - max(self._last_done_at, self._last_fetch_at) >= STALL_GIVE_BACK):
                        give_back = True
                        break
                    self._waiting = True
                    timeout: float | None = None
                    if not self._quiet and room > 0 and self._last_empty:
                        timeout = max(0.0, self._next_poll - now)
                    if self._done:
                        left = self._done_since + ACK_WINDOW - now
                        timeout = left if timeout is None else min(timeout, left)
                    if buffered > 0:
                        left = max(self._last_done_at, self._last_fetch_at) + STALL_GIVE_BACK - now
                        timeout = left if timeout is None else min(timeout, left)
                    if leading and self._due_at != float("inf"):
                        left = self._due_at - now
                        timeout = left if timeout is None else min(timeout, left)
                    self._cv.wait(None if timeout is None else max(0.0, timeout))
                    self._waiting = False
                if not give_back:
                    self._in_round_trip = True  # under the lock: see idle()
                    done, self._done = self._done, []
                    self._inflight -= len(done)
                    want = room if can_fetch else 0
                    if leading:
                        promote = (can_fetch or promote_only) and now >= self._due_at
                    else:  # a follower: only what is still due FOLLOWER_GRACE after its time
                        promote = can_fetch and self._overdue and now >= self._due_at + FOLLOWER_GRACE
                    # A fetch made only because the poll timer ran out finds jobs nobody
                    # announced (pushed by a non-forkq client).
                    polled = can_fetch and not self._woken and self._last_empty and not promote
                    # Only when it may have changed: a wake for a job name does not change
                    # it (one trickled job then costs one lean fetch, not three reads more).
                    report_due = (promote or promote_only or self._due_stale
                                  or now >= self._due_checked + DUE_REFRESH
                                  or (not leading and now >= self._due_at + FOLLOWER_GRACE))
                    if promote_only and report_due:
                        self._due_stale = False
                    if can_fetch:
                        self._woken = False
                        if report_due:
                            # Cleared when asked, not when answered: a due message that
                            # comes while this fetch is out makes the next one ask again.
                            self._due_stale = False
            if give_back:
                self._no_prefetch_until = self._completions + self._concurrency
                self.give_back_pending()
                continue
            try:
                self._round_trip(done, want, polled, promote, report_due, split if can_fetch else None,
                                 promote_only=promote_only)
            finally:
                with self._cv:
                    self._in_round_trip = False

    def _start(self) -> int:
        """The name a fetch tries first: the priority pick, moved on (cyclically, as the
        script itself would walk) past names the last fetches found empty.

        The order the script sees is the same as without the skip while that knowledge
        holds: a name's wake (its queue got jobs) clears it for that name, and it is
        all dropped every ``EMPTY_REFRESH`` (jobs pushed without a wake); the script
        still walks to a skipped name when the first ones do not fill the fetch.
        """
        start = self._first()
        empty = self._empty
        now = time.monotonic()
        if now >= self._empty_reset_at:
            empty.clear()
            self._empty_reset_at = now + EMPTY_REFRESH
            return start
        n = len(self._names)
        if start in empty and len(empty) < n:
            for step in range(1, n):
                i = (start + step) % n
                if i not in empty:
                    return i
        return start

    def give_back_pending(self) -> int:
        """Requeue, to the head of their queues, jobs taken but not started (prefetched).

        Called when every thread is stuck in long jobs (others may run them) and by a
        graceful stop (they must not wait for running jobs).  Returns how many.
        """
        if self._take_back is None:
            return 0
        with self._give_back_lock:
            items = self._take_back()
            if not items:
                return 0
            fields = {field for _, field, _ in items}
            with self._cv:
                self._inflight -= len(items)
                self._held.difference_update(fields)
                self._async_held.difference_update(fields)
            try:
                recover_inprogress(self._conn, self._keys, self._identity, self._config,
                                   only=fields, count_recovery=False)
            except RedisError as exc:
                # Still in our in-progress hash and no longer held: reconcile gives them back.
                log.warning("could not give back %d prefetched jobs (will retry): %s", len(items), exc)
                with self._cv:
                    self._reconcile = True
                    self._woken = True
                    self._cv.notify()
                return 0
            log.debug("gave back %d prefetched jobs nobody started", len(items))
            return len(items)

    def _round_trip(self, done: list[Done], want: int, polled: bool = False,
                    promote: bool = False, report_due: bool = True,
                    split: tuple[int, int] | None = None, promote_only: bool = False) -> None:
        keys = self._keys
        calls: list[scripts.Call] = []
        plain: list[str] = []
        settles: list[Settle] = []
        batch_plain: dict[str, list[str]] = {}
        for field, settle in done:
            if settle is None:
                plain.append(field)
            elif isinstance(settle, str):
                batch_plain.setdefault(settle, []).append(field)
            else:
                settles.append(settle)
        # Plain successes ride in the fetch call (one script call, one HDEL); the rest
        # (retry, dead, leases) need ack.lua.
        fetching = bool(want) or promote_only  # a fetch call (want 0: the due report only)
        merging = fetching and self._merge_acks
        merged: list[str] = plain if merging else []
        members: dict[str, list[str]] = batch_plain if merging else {}
        acking = bool(settles) or (bool(plain) and not merged) or (bool(batch_plain) and not members)
        if acking:
            calls.append(scripts.ack(keys, identity=self._identity,
                                     plain_done=[] if merged else plain, settles=settles,
                                     batch_plain={} if members else batch_plain,
                                     dead_cutoff=clock.now() - self._config.dead_max_age,
                                     dead_max=self._config.dead_max_jobs, allow_oom=self.allow_oom))
            # Result records (result_ttl) ride the same round trip, after the ack.
            kept = [s for s in settles if s.result is not None]
            if kept:
                calls.append(scripts.store_results(keys, kept))
        start = 0
        promote = promote and fetching
        zsets: list[str] = []
        report_due = report_due or promote
        if promote:
            # The fetch right after takes up to `want` of them: idle pools are woken for the rest.
            # A follower moves only what is due FOLLOWER_GRACE ago and more: in a steady
            # trickle some job is always due this very moment, and moving those would
            # race the promoter and read as its absence (a takeover by every pool).
            lag = 0.0 if self._leads() else FOLLOWER_GRACE
            zsets = self._zsets_due(time.monotonic())
            calls += [scripts.promote_due(keys, zset_key=z, limit=scheduler.PROMOTE_BATCH,
                                          identity=self._identity, room=want, lag=lag)
                      for z in zsets]
        register: set[int] | None = None
        if fetching:
            start = self._start()
            skip: list[int] = []
            with self._cv:
                # A poll re-registers everywhere: whatever was lost, it heals every interval.
                register = None if polled or self._unregistered is None else set(self._unregistered)
                if (self._last_empty and not polled and not promote and not self._async_pos
                        and len(self._empty) < len(self._names)):
                    # An idle pool woken for some names need not look at the ones it found
                    # empty since (any job pushed there with a wake named them: see wake);
                    # a poll looks at all, for pushes that announce nothing, and so does a
                    # promotion (this very round trip may fill any queue, with no wake).
                    # A mixed pool looks at all: it tells per kind what was found empty.
                    skip = sorted(self._empty)
                elif (promote and self._last_empty and not polled and not self._async_pos
                      and self._due_queue is not None):
                    # The promotion fills the queue of the job that was due (the due
                    # report named it): that one is looked at, the other empty ones
                    # share the one EXISTS, which sees it if the batch filled them too.
                    skip = sorted(self._empty - {self._due_queue})
            calls.append(self._plan.call(start=start, want=want, may_take_suspect=self._suspect is None,
                                         allow_oom=self.allow_oom, report_due=report_due,
                                         acks=merged, members=members, registered=self._registered,
                                         register=None if register is None else sorted(register),
                                         skip=skip,
                                         split=f"{split[0]}:{split[1]}:{self._async_pos_arg}" if split else ""))
        sent = time.monotonic()
        try:
            results = self._runner.run(calls)
        except RedisError as exc:
            self._on_error(exc, done, want)
            return
        if self._errors:
            log.warning("Redis is reachable again after %d failed round trips", self._errors)
            self._errors = 0
        self.rounds += 1
        self.last_progress = time.monotonic()
        if done:
            with self._cv:
                self._held.difference_update(f for f, _ in done)
                if self._suspect is not None and self._suspect not in self._held:
                    # Our suspect is settled: we may take the next one (and there may be
                    # some waiting at the head of a queue).
                    self._suspect = None
                    self._woken = True
        if acking:
            # Counted from what the script settled, so a batch re-sent after a lost
            # reply is not counted twice.
            processed, failed, fenced = results[0]
            self._stats.add(int(processed), int(failed))
            if fenced:
                self._on_fenced()
                return
        if fetching and results[-1][:1] == [b"fenced"]:
            self._on_fenced()
            return
        if merged or members:
            self._stats.add(int(results[-1][2]), 0)
        if self._reconcile:
            self._reconcile_inprogress()
        if not fetching:
            return
        received = time.monotonic()
        self._rtt += (received - sent - self._rtt) * 0.1
        if want:
            self._last_fetch_at = received
        fetched = results[-1]
        moved = more = False
        if promote:
            for zset, reply in zip(zsets, results[-1 - len(zsets):-1], strict=True):
                n_moved, full, bad = scheduler.promote_reply(reply)
                moved = moved or n_moved > 0
                more = more or full
                if bad:
                    self._bury(zset, bad)
            if moved and not self._leads():
                # Jobs still due FOLLOWER_GRACE after their time: the leader is not promoting.
                self._took_over_until = received + TAKEOVER
                log.info("no pool promoted due jobs on time: this pool does for %.0f s", TAKEOVER)
        if fetched[0] != b"-":  # not asked: the due time we know stands
            self._due_checked = received
            due_in = self._note_due(fetched[0], received)
            self._overdue = due_in is not None and due_in <= 0
            if due_in is None:
                self._due_at = float("inf")
            elif due_in > 0:
                self._due_at = received + due_in + DUE_MARGIN
            elif promote:
                # Due now: promote in the next round trip; at once if this one moved jobs
                # (a burst drains at fetch speed), a little later if another pool is on it.
                if moved or more:
                    self._due_at = received
                    if more and not self._leads():
                        self._due_at -= FOLLOWER_GRACE  # a follower on a burst goes on at once
                elif self._leads():
                    self._due_at = received + MIN_POLL_GAP
                else:
                    # A follower that found nothing left behind: it looks again when this
                    # job has been due FOLLOWER_GRACE (never sooner than MIN_POLL_GAP).
                    self._due_at = max(received + due_in + DUE_MARGIN,
                                       received + MIN_POLL_GAP - FOLLOWER_GRACE)
            elif not self._leads():
                # A follower: when it was due (it promotes FOLLOWER_GRACE after that).
                self._due_at = received + due_in
            else:
                # Due now and not promoted in this round trip: never push the promotion
                # later (a busy pool's round trips come faster than MIN_POLL_GAP, and
                # resetting it each time starved promotion until the housekeeper's beat).
                self._due_at = min(self._due_at, received)
        if not want:
            return  # a promoter's promotion without a fetch: nothing taken, nothing to note
        # Names found empty are not tried first next time (see _start); names that
        # gave jobs are known not to be.
        empty = self._empty
        empty_now = [int(i) - 1 for i in fetched[3].split(b",")] if fetched[3] else []
        empty.update(empty_now)
        if self._async_pos:
            # Per kind: did every queue of it come back empty (names the call did not
            # reach count as having work: at worst one fetch more).
            found_empty = {i + 1 for i in empty_now}
            n_names = len(self._names)
            self._kind_empty = (
                all(p in found_empty for p in range(1, n_names + 1) if p not in self._async_pos),
                all(p in found_empty for p in self._async_pos))
        if fetched[5]:
            # A batch finished in this call and its callback made a queue non-empty:
            # the fetch script does not publish, so the wake goes from here (rare).
            self._relay_wake({q.decode() for q in fetched[5].split(b",")})
        n = (len(fetched) - 6) // 3
        if n:
            submit = self._submit
            names = self._names
            guards: list[tuple[str, str]] = []
            fields = [f.decode() for f in fetched[7::3]]
            with self._cv:
                self._inflight += n
                self._held.update(fields)
                if self._async_pos:
                    self._async_held.update(fields[k] for k, j in enumerate(range(6, len(fetched), 3))
                                            if fetched[j] in self._async_pos)
            for k, j in enumerate(range(6, len(fetched), 3)):
                empty.discard(fetched[j] - 1)
                payload = fetched[j + 2]
                if b'"recovered"' in payload or b'"unique"' in payload:
                    # Rare: only such payloads pay a decode here (the executor decodes anyway).
                    self._note_special(payload, fields[k], guards)
                submit((names[fetched[j] - 1], fields[k], payload))
            if guards:
                self._release_unique(guards)
            if polled:
                self._relay_wake({names[fetched[j] - 1] for j in range(6, len(fetched), 3)})
        with self._cv:
            if n < want:
                # Registered now under every name it left empty (approximated here by the
                # empty ones and those it took from) that it asked for.
                drained = set(empty_now)
                drained.update(fetched[j] - 1 for j in range(6, len(fetched), 3))
                asked = set(range(len(self._names))) if register is None else register
                self._unregistered = asked - drained
            elif self._registered:
                self._unregistered = None  # the script took it out of every registry
            self._last_empty = n < want
            self._registered = self._last_empty
            if self._last_empty:
                # Sleep until the poll fallback, or exactly until the next scheduled/retry
                # job is due.  Jittered, so the pools of a cluster poll at different moments.
                poll_at = received + max(MIN_POLL_GAP, self._config.idle_poll_interval
                                         * random.uniform(0.75, 1.25))
                # A rate-limited name (rate_limit) said when it may start its next job.
                rate_at = received + max(0.0, float(fetched[4])) + DUE_MARGIN if fetched[4] else poll_at
                due_at = self._due_at + (0.0 if self._leads() else FOLLOWER_GRACE)
                self._next_poll = min(poll_at, due_at, rate_at)

    def _zsets_due(self, now: float) -> list[str]:
        """The zsets a promotion now calls: those whose earliest job is due (or not known)."""
        zsets = [z for z, at in zip((self._keys.schedule, self._keys.retry), self._due_each, strict=True)
                 if at <= now + DUE_MARGIN]
        return zsets or [self._keys.schedule, self._keys.retry]

    def _note_due(self, report: bytes, received: float) -> float | None:
        """Read fetch.lua's due report ("due_in|schedule's|retry's|queue", or "" when
        neither has a job); return due_in, the earliest of the two."""
        if not report:
            self._due_each, self._due_queue = (float("inf"), float("inf")), None
            return None
        head, sched, retry, queue = report.split(b"|", 3)
        self._due_each = (received + float(sched) if sched else float("inf"),
                          received + float(retry) if retry else float("inf"))
        self._due_queue = self._index.get(queue) if queue else None
        return float(head)

    def _bury(self, zset: str, members: list[bytes]) -> None:
        """Due entries that are not jobs go to dead (rare: written by hand or a foreign client)."""
        try:
            scheduler.bury_bad(self._conn, self._keys, zset, members)
        except RedisError as exc:
            log.warning("could not move %d malformed scheduled entries to dead: %s", len(members), exc)

    def close(self) -> None:
        self._runner.close()

    def _on_fenced(self) -> None:
        """A reaper claimed this pool while it was frozen: its jobs run elsewhere now.

        Nothing more is taken or acked; the owner (a prefork child exits at once,
        an in-process pool stops fetching) is told through ``on_fenced``.
        """
        if self.fenced:
            return
        self.fenced = True
        self._quiet = True
        log.error("this pool (%s) was reaped by another process while it was not running "
                  "(frozen?); its jobs were requeued, so it stops now", self._identity)
        if self.on_fenced is not None:
            self.on_fenced()

    def _note_special(self, payload: bytes, field: str, guards: list[tuple[str, str]]) -> None:
        """A taken job that is a suspect (see fetch.lua) or holds a unique guard."""
        try:
            data = jobcodec.decode(payload)
        except jobcodec.MalformedPayload:
            return  # the executor buries it
        if jobcodec.recovery_count(data) >= scripts.SUSPECT_AFTER:
            self._suspect = field
        guard = jobcodec.unique_guard_of(data, self._keys)
        if guard:
            guards.append((guard, data["jid"]))

    def _release_unique(self, guards: list[tuple[str, str]]) -> None:
        """A unique job's guard goes when a worker takes it (gocraft's semantics)."""
        try:
            self._runner.run([scripts.release_unique(guards)])
        except RedisError as exc:
            log.warning("could not release unique guards (they expire by TTL): %s", exc)

    def _relay_wake(self, names: set[str]) -> None:
        """Our poll found jobs that no enqueue announced (a Sidekiq client's LPUSH):
        wake the other pools too, so a burst of them is not left to one pool."""
        try:
            pipe = self._conn.pipeline(transaction=False)
            sharded = sharded_pubsub(self._conn)
            for name in names:
                publish(pipe, sharded, self._keys.wake_channel, name)
            pipe.execute()
        except RedisError as exc:
            log.debug("could not relay a wake: %s", exc)

    def _on_error(self, exc: RedisError, done: list[Done], want: int) -> None:
        with self._cv:
            # Keep the acks for the next round; they are idempotent (HDEL-guarded).
            self._done[:0] = done
            self._inflight += len(done)
            self._woken = True
            self._due_stale = True
            self._due_each, self._due_queue = (0.0, 0.0), None
        if want:
            # A fetch may have run with its reply lost: its jobs sit in our
            # in-progress hash; give back whatever we do not hold once Redis answers.
            self._reconcile = True
        self._errors += 1
        delay = capped_exponential(self._errors + 1, base=0.05, cap=5.0)
        if self._errors == 1:
            log.warning("Redis round trip failed (%s); retrying with backoff", exc)
        else:
            log.debug("Redis round trip failed again (%s); next try in %.2fs", exc, delay)
        time.sleep(delay)

    def _reconcile_inprogress(self) -> None:
        try:
            requeued, dead = recover_inprogress(self._conn, self._keys, self._identity, self._config,
                                                keep=self.held_fields(), count_recovery=False)
        except RedisError as exc:
            log.warning("reconcile after a lost reply failed, will retry: %s", exc)
            return
        self._reconcile = False
        if requeued or dead:
            log.warning("gave back %d jobs taken by a fetch whose reply was lost", requeued + dead)
