"""All of forkq's tunables in one frozen value, and the ONE table that feeds it.

Why a table: the same knob used to be read in four shapes (``Config``, the
master's options, hand-read environment variables in the CLI, the child's
plan), each with its own parsing and error text.  Now every knob is one
``Setting`` row: its ``Config`` field, its environment variable, its CLI flag,
its type/check and its help.  ``Config`` checks every field against its row
(whoever builds it: a user's ``WorkerPool(config=...)``, the CLI, a test), and
``Config.resolve`` layers defaults < the pool's config < environment < flags.
The master, the children and in-process pools all receive the same value.

To add a knob: add the field to ``Config`` and a row to ``SETTINGS``; the CLI
flag, the environment variable, ``--help`` and the checks follow.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .connection import DEFAULT_URL
from .errors import ConfigError

DAY = 24 * 3600
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, kw_only=True)
class Config:
    # Process model (CLI flags).
    concurrency: int = 10
    # async def jobs running at once per child, on its event loop, beside the threads.
    async_concurrency: int = 100
    processes: int = os.cpu_count() or 1
    redis_url: str = DEFAULT_URL
    shutdown_timeout: float = 25.0
    max_jobs_per_child: int = 0
    max_memory_per_child_mb: int = 0
    log_level: str = "INFO"
    # The host part of every pool identity (``host:pid:nonce``): "" means
    # $FORKQ_HOSTNAME, else the machine's name.  Containers sharing a hostname set it.
    hostname: str = ""
    # At start, how long the master keeps children trying an unreachable Redis.
    redis_wait: float = 30.0
    # Seconds a job may run past its hard timeout before its child is replaced.
    hard_timeout_grace: float = 5.0
    # Where ``--redis embedded`` keeps its data ("" = forkq.embedded's default).
    embedded_dir: str = ""
    # ``--metrics HOST:PORT``: the master serves Prometheus text at /metrics ("" = off).
    metrics: str = ""

    # Liveness.
    heartbeat_interval: float = 5.0
    # A pool whose beat is older than this (by Redis's clock) is presumed dead and
    # reaped: a whole host's jobs come back this long + about a second after its last
    # beat.  Three beats: one lost or late beat never makes a live pool look dead.
    stale_after: float = 15.0
    # Jobs with max_concurrency hold a lease this long; beats renew it.
    lease_ttl: float = 60.0
    # A job recovered from dead pools more than this many times goes to dead as poison.
    max_recoveries: int = 3
    # The master kills a child that sent no status for this long while stopped
    # (SIGSTOP, a debugger): well before a reaper elsewhere would hand its jobs out.
    frozen_after: float = 10.0

    # Fetching.
    # With nothing to do, a fetcher sleeps until a wake message (enqueue, requeue,
    # promotion, unpause, freed lease), until the next scheduled/retry job is due, or
    # this long at most (±25%): the fallback that notices jobs LPUSHed by clients that
    # do not publish a wake (Sidekiq's Ruby client); the pool that finds them wakes
    # the others.  Idle cost: one fetch per interval.
    idle_poll_interval: float = 10.0
    promote_batch: int = 200

    # Safety limits.
    max_payload_bytes: int = 1024 * 1024
    dead_max_jobs: int = 10_000
    dead_max_age: float = 180 * DAY
    unique_ttl: int = DAY

    def __post_init__(self) -> None:
        for s in SETTINGS:
            if s.field is not None:
                s.check_value(getattr(self, s.field))
        # One spelling downstream ("debug" and "DEBUG" are the same level).
        object.__setattr__(self, "log_level", self.log_level.upper())
        self._check_liveness()

    def _check_liveness(self) -> None:
        """Refuse beat/staleness/lease settings that cannot work, in one line.

        A lease that expires between two beats lets a job with ``max_concurrency``
        run more times at once than its limit; a pool judged stale within two beats
        is reaped (its jobs run twice) whenever one beat is late.
        """
        beat = self.heartbeat_interval
        if not beat > 0:
            raise ConfigError(f"heartbeat_interval must be > 0 seconds, got {beat!r}")
        if self.lease_ttl < 2 * beat:
            raise ConfigError(
                f"lease_ttl ({self.lease_ttl:g}s) must be at least twice heartbeat_interval ({beat:g}s): "
                "beats renew leases, and a lease that expires between two beats breaks max_concurrency")
        if self.stale_after < 2 * beat:
            raise ConfigError(
                f"stale_after ({self.stale_after:g}s) must be at least twice heartbeat_interval ({beat:g}s): "
                "a live pool whose beat is one interval late would be reaped and its jobs run twice")

    @classmethod
    def resolve(cls, base: Config | None = None, *, environ: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None) -> Config:
        """``base`` (or the defaults), then the environment's knobs, then flags (not None).

        ``flags`` maps field names to values already parsed by the CLI (argparse
        ran the same converters); an environment value that does not parse is a
        ``ConfigError`` naming the variable.
        """
        changes: dict[str, Any] = {}
        env = os.environ if environ is None else environ
        for s in SETTINGS:
            if s.field is None or s.env is None:
                continue
            raw = env.get(s.env)
            if raw:
                changes[s.field] = s.from_env(raw)
        for name, value in (flags or {}).items():
            if value is not None:
                changes[name] = value
        return replace(base or cls(), **changes)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

def number(kind: type[int] | type[float], *, minimum: float, what: str,
           exclusive: bool = False) -> Callable[[str], Any]:
    """A text converter for a finite ``kind`` >= (or >) ``minimum`` that says what it wanted.

    It raises ``argparse.ArgumentTypeError`` so argparse prints its usual
    "argument -c: expected ..." line; ``Setting.from_env`` turns it into a
    ``ConfigError`` naming the variable.
    """
    wanted = f"{what} {'>' if exclusive else '>='} {minimum:g}"

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    convert.__name__ = f"{kind.__name__} {'>' if exclusive else '>='} {minimum:g}"
    return convert


positive_int = number(int, minimum=1, what="a whole number")
non_negative_int = number(int, minimum=0, what="a whole number")
non_negative_seconds = number(float, minimum=0, what="a number of seconds")
positive_seconds = number(float, minimum=0, what="a number of seconds", exclusive=True)


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


def text(value: str) -> str:
    return value


def bind_text(text: str) -> str:
    """``--metrics HOST:PORT`` ("" = off), checked here so a bad value is a usage error."""
    if text:
        from .metrics import parse_bind

        try:
            parse_bind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def hostname_text(text: str) -> str:
    """A pool identity's host part: no ':' (the identity's separator), no spaces ("" = default)."""
    if ":" in text or any(c.isspace() for c in text) or len(text) > 255:
        raise argparse.ArgumentTypeError(f"hostname {text!r} must be without ':' or spaces")
    return text


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One knob: where it lives in ``Config``, how it is spelled outside, how it is checked."""

    field: str | None          # the Config field (None: a knob of the CLI only, e.g. namespace)
    env: str | None            # environment variable
    flag: str | None           # long CLI flag of the worker command
    parse: Callable[[str], Any]  # text -> value, raising argparse.ArgumentTypeError
    help: str
    short: str | None = None
    metavar: str | None = None

    def from_env(self, raw: str) -> Any:
        try:
            return self.parse(raw)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{self.env}={raw!r}: {exc}") from None

    def check_value(self, value: Any) -> None:
        """A value given in Python must pass the same check as its text form."""
        textual = self.parse in (text, hostname_text, log_level, bind_text)
        if isinstance(value, bool) or textual != isinstance(value, str):
            raise ConfigError(f"Config.{self.field}: invalid value {value!r}")
        try:
            parsed = self.parse(value if textual else str(value))
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"Config.{self.field}: {exc}") from None
        if parsed != (value.upper() if self.parse is log_level else value):
            raise ConfigError(f"Config.{self.field}: invalid value {value!r}")


SETTINGS: tuple[Setting, ...] = (
    Setting(field="concurrency", env="FORKQ_CONCURRENCY", flag="--concurrency", short="-c",
            parse=positive_int, help="threads per child (default 10)"),
    Setting(field="async_concurrency", env="FORKQ_ASYNC_CONCURRENCY", flag="--async-concurrency",
            parse=positive_int, metavar="N",
            help="async def jobs running at once per child, beside the threads (default 100)"),
    Setting(field="processes", env="FORKQ_PROCESSES", flag="--processes", short="-p",
            parse=positive_int, help="child processes (default: the number of CPUs)"),
    Setting(field="redis_url", env="FORKQ_REDIS_URL", flag="--redis", parse=text, metavar="URL",
            help="redis://, rediss:// or unix:// URL, or 'embedded' for a private server with "
                 f"its data on disk (default {DEFAULT_URL})"),
    Setting(field="shutdown_timeout", env="FORKQ_SHUTDOWN_TIMEOUT", flag="--shutdown-timeout",
            parse=non_negative_seconds, metavar="SECONDS",
            help="on stop, how long running jobs may finish before being requeued (25)"),
    Setting(field="redis_wait", env="FORKQ_REDIS_WAIT", flag="--redis-wait",
            parse=non_negative_seconds, metavar="SECONDS",
            help="at start, how long to keep trying an unreachable Redis before exiting 5 (30)"),
    Setting(field="max_jobs_per_child", env="FORKQ_MAX_JOBS_PER_CHILD", flag="--max-jobs-per-child",
            parse=non_negative_int, metavar="N",
            help="recycle a child after about N jobs (+ up to 10%% jitter; 0 = never)"),
    Setting(field="max_memory_per_child_mb", env="FORKQ_MAX_MEMORY_PER_CHILD",
            flag="--max-memory-per-child", parse=non_negative_int, metavar="MB",
            help="recycle a child whose RSS is above MB (0 = never)"),
    Setting(field="log_level", env="FORKQ_LOG_LEVEL", flag="--log-level", parse=log_level,
            metavar="LEVEL", help="DEBUG, INFO (default), WARNING, ERROR or CRITICAL"),
    Setting(field="hostname", env="FORKQ_HOSTNAME", flag="--hostname", parse=hostname_text,
            metavar="NAME", help="host part of every pool identity, for containers sharing a "
                                 "hostname (default the machine's hostname)"),
    Setting(field="metrics", env="FORKQ_METRICS", flag="--metrics", parse=bind_text,
            metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics, the "
                                      "children's counts summed by the master (needs forkq[metrics])"),
    Setting(field="heartbeat_interval", env="FORKQ_HEARTBEAT_INTERVAL", flag=None,
            parse=positive_seconds, help="seconds between a pool's beats (5)"),
    Setting(field="stale_after", env="FORKQ_STALE_AFTER", flag=None, parse=positive_seconds,
            help="a pool silent this long is reaped (60)"),
    Setting(field="lease_ttl", env="FORKQ_LEASE_TTL", flag=None, parse=positive_seconds,
            help="max_concurrency lease lifetime, renewed by beats (60)"),
    Setting(field="idle_poll_interval", env="FORKQ_IDLE_POLL_INTERVAL", flag=None,
            parse=positive_seconds, help="longest idle sleep of a fetcher (10)"),
    Setting(field="frozen_after", env="FORKQ_FROZEN_AFTER", flag=None, parse=positive_seconds,
            help="a stopped child silent this long is killed and its jobs requeued (10)"),
    Setting(field="hard_timeout_grace", env="FORKQ_HARD_TIMEOUT_GRACE", flag=None,
            parse=positive_seconds,
            help="seconds a job may run past its timeout before its child is replaced (5)"),
    Setting(field="embedded_dir", env="FORKQ_EMBEDDED_DIR", flag=None, parse=text,
            help="data directory of --redis embedded"),
    Setting(field="max_recoveries", env=None, flag=None, parse=non_negative_int,
            help="recoveries after which a job is buried as poison (3)"),
    Setting(field="promote_batch", env=None, flag=None, parse=positive_int,
            help="due jobs promoted per round trip (200)"),
    Setting(field="max_payload_bytes", env=None, flag=None, parse=positive_int,
            help="largest job JSON accepted at enqueue"),
    Setting(field="dead_max_jobs", env=None, flag=None, parse=non_negative_int,
            help="dead set size cap"),
    Setting(field="dead_max_age", env=None, flag=None, parse=positive_seconds,
            help="dead entries older than this are trimmed"),
    Setting(field="unique_ttl", env=None, flag=None, parse=positive_int,
            help="lifetime of a unique job's guard (seconds)"),
    # Knobs of the admin verbs, the dashboard and tooling that are not Config fields.
    Setting(field=None, env="FORKQ_NAMESPACE", flag="--namespace", short="-n", parse=text,
            help="key namespace (default forkq)"),
    Setting(field=None, env="FORKQ_WAIT_REPLICAS", flag=None, parse=non_negative_int,
            help="replicas an Enqueuer waits for (WAIT) after each enqueue (0)"),
    Setting(field=None, env="FORKQ_OTEL", flag=None, parse=text,
            help="1 turns on forkq.otel's spans at import (needs forkq[otel])"),
    Setting(field=None, env="FORKQ_REDIS_SERVER", flag=None, parse=text,
            help="redis-server binary for --redis embedded"),
    Setting(field=None, env="FORKQ_WEB_BIND", flag="--bind", parse=text,
            help="where forkq web listens (HOST:PORT)"),
    Setting(field=None, env="FORKQ_WEB_PASSWORD", flag="--password", parse=text,
            help="forkq web's basic-auth password"),
    Setting(field=None, env="FORKQ_WEB_ROOT_PATH", flag="--root-path", parse=text,
            help="URL prefix of forkq web behind a reverse proxy"),
    Setting(field=None, env="FORKQ_WEB_SECRET", flag=None, parse=text,
            help="forkq web's session signing key (random per process if unset)"),
)

_BY_FIELD = {s.field: s for s in SETTINGS if s.field is not None}
_BY_ENV = {s.env: s for s in SETTINGS if s.env is not None}


def setting(field: str) -> Setting:
    return _BY_FIELD[field]


def env_value(env: str, default: str = "", environ: Mapping[str, str] | None = None) -> str:
    """A text knob read from the environment through the table (e.g. FORKQ_NAMESPACE)."""
    s = _BY_ENV[env]
    raw = (os.environ if environ is None else environ).get(env)
    return str(s.from_env(raw)) if raw else default


def add_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """Add the worker flags of these Config fields to ``parser`` (default None = not given)."""
    for name in names:
        s = _BY_FIELD[name]
        assert s.flag is not None, name
        opts = [s.short, s.flag] if s.short else [s.flag]
        env = f" (env {s.env})" if s.env else ""
        parser.add_argument(*opts, dest=name, type=s.parse, default=None, metavar=s.metavar,
                            help=s.help + env)


def env_help() -> str:
    """The environment variables of the table, for --help."""
    return ", ".join(s.env for s in SETTINGS if s.env)



def pool_hostname(configured: str = "") -> str:
    """The host part of pool identities: ``$FORKQ_HOSTNAME``, else ``Config.hostname``,
    else the machine's name (like every FORKQ_ variable, the environment wins).

    The master and its children compute a child's identity separately, so both
    read the same environment (the CLI resolves the name and sets it before forking).
    """
    name = env_value("FORKQ_HOSTNAME", "") or configured or socket.gethostname()
    if not name or ":" in name or any(c.isspace() for c in name) or len(name) > 255:
        raise ConfigError(f"hostname {name!r} must be non-empty, without ':' or spaces (FORKQ_HOSTNAME, --hostname)")
    return name
