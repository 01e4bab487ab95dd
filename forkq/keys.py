"""The one place that builds Redis key names (DESIGN.md §2).

Every key of a namespace starts with ``{ns}:`` so that all of them hash to one
Redis Cluster slot and every Lua script is cluster-safe.  The job-facing keys
follow Sidekiq's layout, so Sidekiq (configured with redis-namespace ``{ns}``)
reads and writes the same data.

The empty namespace ``""`` means no prefix at all: Sidekiq 7 and 8's own plain
layout (``queue:NAME``, ``processes``, ``stat:processed``...), since they dropped
redis-namespace.  Its keys share no hash tag, so it is refused on Redis Cluster
(``ConnectionSpec.for_namespace``).
"""

from __future__ import annotations

import time

from .errors import ConfigError

# Published on the wake channel (beside job names) when a job becomes the earliest due
# in schedule/retry: every fetcher re-arms its sleep.  Braces are forbidden in job
# names, so it never collides with one.
DUE_MESSAGE = "{due}"
# Published on the wake channel as CANCEL_MESSAGE + jid when a running job is cancelled
# (cancel.lua): the pool running it is told at once.
CANCEL_MESSAGE = "{cancel}"
# Published on the wake channel when a pool gives up the waker lock (it stops): the
# others try to take it at once, so the namespace is not left without its promoter of
# due jobs (fetcher.FOLLOWER_GRACE) until their next try.
WAKER_MESSAGE = "{waker}"

# Characters that would break the key layout or the hash tag.
_FORBIDDEN_NAME_CHARS = frozenset("{}\n\r\x00")


def _check_utf8(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {text!r} is not valid UTF-8 text") from None


def validate_namespace(namespace: str) -> str:
    """A namespace is any text without braces/newlines/NUL; "" is Sidekiq 7+'s plain layout."""
    if not isinstance(namespace, str):
        raise ConfigError(f"namespace must be a string, got {namespace!r}")
    _check_utf8("namespace", namespace)
    bad = _FORBIDDEN_NAME_CHARS.intersection(namespace)
    if bad:
        raise ConfigError(f"namespace {namespace!r} contains forbidden characters {sorted(bad)!r}")
    return namespace


def validate_job_name(name: str) -> str:
    """Job names become queue names and key parts; braces would move keys to another slot."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ConfigError(f"job name must be a non-empty string of at most 200 characters, got {name!r}")
    _check_utf8("job name", name)
    bad = _FORBIDDEN_NAME_CHARS.intersection(name)
    if bad:
        raise ConfigError(f"job name {name!r} contains forbidden characters {sorted(bad)!r}")
    return name


class Keys:
    """Key names of one namespace.  Cheap attribute access on the hot path."""

    __slots__ = (
        "namespace", "prefix", "queues", "schedule", "retry", "dead", "processes",
        "pools", "stat_processed", "stat_failed", "wake_channel", "reaper_lock", "waker_lock",
        "batches",
        "cancelled",
    )

    def __init__(self, namespace: str) -> None:
        self.namespace = validate_namespace(namespace)
        # "" = Sidekiq 7+'s plain layout, with no prefix (and no hash tag).
        self.prefix = "{" + namespace + "}:" if namespace else ""
        p = self.prefix
        self.queues = p + "queues"
        self.schedule = p + "schedule"
        self.retry = p + "retry"
        self.dead = p + "dead"
        self.processes = p + "processes"
        self.pools = p + "pools"
        self.stat_processed = p + "stat:processed"
        self.stat_failed = p + "stat:failed"
        self.wake_channel = p + "wake"
        self.reaper_lock = p + "reaper:lock"
        self.waker_lock = p + "waker:lock"
        # Batches (Enqueuer.batch): bid -> created-at, newest last.
        self.batches = p + "batches"
        # zset jid -> when: running jobs cancelled (cancel.lua), dropped if requeued.
        self.cancelled = p + "cancelled"

    @property
    def plain(self) -> bool:
        """True for the empty namespace: keys carry no prefix and no Cluster hash tag."""
        return not self.prefix

    # Per job name ---------------------------------------------------------
    def queue(self, name: str) -> str:
        return self.prefix + "queue:" + name

    def paused(self, name: str) -> str:
        return self.prefix + "paused:" + name

    def lease(self, name: str) -> str:
        return self.prefix + "lease:" + name

    def rate(self, name: str) -> str:
        """A rate-limited name's state (``rate_limit``): when its next job may start."""
        return self.prefix + "rate:" + name

    # Fair groups (``enqueue(name, args, group=...)``).  A group is never empty and holds
    # no ``{``, ``}`` or ``:`` (job.validate_group), so ``<name>:<group>`` is unambiguous
    # even for names with colons.  fetch.lua and promote_due.lua build the same names
    # from ``prefix`` (a group is data there); tests/test_groups.py checks they agree.
    def group_queue(self, name: str, group: str) -> str:
        """Ready jobs of one group of ``name`` (a list, LPUSH in, RPOP out, like a queue)."""
        return self.prefix + "gqueue:" + name + ":" + group

    def group_lease(self, name: str, group: str) -> str:
        """Running jobs of one group of a name with ``group_concurrency`` (zset, like lease:)."""
        return self.prefix + "glease:" + name + ":" + group

    def groups(self, name: str) -> str:
        """Set of the groups of ``name`` that have a token in ``queue:<name>`` or are parked."""
        return self.prefix + "groups:" + name

    def group_parked(self, name: str) -> str:
        """Zset group -> when to look again: groups at their ``group_concurrency`` cap,
        whose token was taken out of ``queue:<name>`` until a lease is released."""
        return self.prefix + "gparked:" + name

    def idle(self, name: str) -> str:
        """zset of pools idle for ``name`` (their identities): an enqueue wakes only as
        many of them as it has jobs (fetch.lua registers, enqueue.lua reads; a dead one is dropped)."""
        return self.prefix + "idle:" + name

    def pool_wake_prefix(self) -> str:
        """A pool's own wake channel is this prefix and its identity (see ``pool_wake``)."""
        return self.prefix + "wake:"

    def pool_wake(self, identity: str) -> str:
        """The channel on which an enqueue wakes this one idle pool (in ``{ns}``'s slot,
        as a Redis Cluster shard channel must be)."""
        return self.pool_wake_prefix() + identity

    def queue_prefix(self) -> str:
        """What a queue key is before its name (for scripts that move jobs of any name)."""
        return self.prefix + "queue:"

    @staticmethod
    def lease_member(identity: str, field: str) -> str:
        """A running job's member in ``lease:<name>``; scripts get ``lease_member(id, "")``
        as a prefix and append the field, so the format lives here only."""
        return identity + ":" + field

    def result(self, jid: str) -> str:
        """A job's state and result (forkq.results), kept ``result_ttl`` seconds."""
        return self.prefix + "result:" + jid

    def result_notify(self, jid: str) -> str:
        """List pushed once when a job with a result_ttl ends (``Enqueuer.wait`` BLPOPs it)."""
        return self.prefix + "result-notify:" + jid

    def unique(self, name: str, suffix: str) -> str:
        return self.prefix + "unique:" + name + ":" + suffix

    def batch(self, bid: str) -> str:
        """A batch's hash: counts (total, pending, succeeded, failures, dead), its
        callbacks' payloads and whether each has fired (see lua/batch_push.lua)."""
        return self.prefix + "batch:" + bid

    def periodic_guard(self, name: str, epoch: int) -> str:
        return self.prefix + "periodic:" + name + ":" + str(epoch)

    # Per pool identity ----------------------------------------------------
    def inprogress(self, identity: str) -> str:
        return self.prefix + "inprogress:" + identity

    def process(self, identity: str) -> str:
        """Sidekiq's per-process hash (``info``, ``busy``, ``beat``, ``quiet``, ``rss``)."""
        return self.prefix + identity

    def process_work(self, identity: str) -> str:
        return self.prefix + identity + ":work"

    def process_workers(self, identity: str) -> str:
        """Sidekiq 6.x reads ``<identity>:workers``; we write both names."""
        return self.prefix + identity + ":workers"

    def process_signals(self, identity: str) -> str:
        """Where Sidekiq's Web UI pushes ``TSTP`` (quiet) and ``TERM`` (stop) for a process."""
        return self.prefix + identity + "-signals"

    def inprogress_glob(self) -> str:
        """SCAN pattern of every pool's in-progress hash (the namespace's glob
        characters escaped, so a namespace like ``a*b`` matches only itself)."""
        return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.inprogress("")) + "*"

    def fence(self, identity: str) -> str:
        """Set when a pool is claimed by a reaper: the pool, if it was only frozen and
        resumes, must stop at its next round trip instead of running jobs now owned
        by others."""
        return self.prefix + "fence:" + identity

    def pool(self, identity: str) -> str:
        return self.prefix + "pool:" + identity

    def worker(self, worker_id: str) -> str:
        return self.prefix + "worker:" + worker_id

    # Stats ------------------------------------------------------------------
    def stat_processed_day(self, day: str) -> str:
        return self.prefix + "stat:processed:" + day

    def stat_failed_day(self, day: str) -> str:
        return self.prefix + "stat:failed:" + day

    def job_metrics(self, now: float) -> str:
        """Sidekiq 7's per-minute hash ``j|YYYYMMDD|H:M`` (UTC; fields ``<class>|p``/``|f``/``|ms``),
        read by its Metrics page (sidekiq/metrics/query.rb)."""
        t = time.gmtime(now)
        return f"{self.prefix}j|{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}|{t.tm_hour}:{t.tm_min}"

    def job_histogram(self, name: str, now: float) -> str:
        """Sidekiq 7's per-minute histogram of one job class, ``<class>-DD-HH:M`` (UTC):
        26 u16 BITFIELD counters (sidekiq/metrics/shared.rb)."""
        t = time.gmtime(now)
        return f"{self.prefix}{name}-{t.tm_mday:02d}-{t.tm_hour:02d}:{t.tm_min}"

    def web_history(self) -> str:
        """Hash minute-epoch -> JSON sample of the dashboard's per-minute series (forkq.web)."""
        return self.prefix + "web:history"

    @staticmethod
    def today(now: float | None = None) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


# Members and ids built from key parts ------------------------------------------------

def worker_id(identity: str, slot_index: int) -> str:
    """gocraft's worker id of one thread slot of a pool: ``<identity>:<n>``."""
    return f"{identity}:{slot_index}"


def worker_sort_key(wid: str) -> tuple[str, int]:
    """Sort worker ids numerically on their slot, so worker 10 follows worker 9."""
    head, _, tail = wid.rpartition(":")
    return (head, int(tail)) if tail.isdigit() else (wid, -1)


def field_holds_jid(field: str, jid: str) -> bool:
    """Whether an in-progress field (``fetch.lua``: the jid, or ``<jid>#<n>`` when that jid
    is already held) is the one of ``jid``."""
    if field == jid:
        return True
    return field.startswith(jid + "#") and field[len(jid) + 1:].isdigit()
