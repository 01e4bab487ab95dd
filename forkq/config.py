"""All of forkq's tunables in one frozen value, with their defaults."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from .connection import DEFAULT_URL
from .errors import ConfigError

DAY = 24 * 3600


@dataclass(frozen=True, kw_only=True)
class Config:
    # Process model (CLI flags).
    concurrency: int = 10
    processes: int = os.cpu_count() or 1
    redis_url: str = DEFAULT_URL
    shutdown_timeout: float = 25.0
    max_jobs_per_child: int = 0
    max_memory_per_child_mb: int = 0
    log_level: str = "INFO"
    # The host part of every pool identity (``host:pid:nonce``): "" means
    # $FORKQ_HOSTNAME, else the machine's name.  Containers sharing a hostname set it.
    hostname: str = ""

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


def pool_hostname(configured: str = "") -> str:
    """The host part of pool identities: ``$FORKQ_HOSTNAME``, else ``Config.hostname``,
    else the machine's name (like every FORKQ_ variable, the environment wins).

    The master and its children compute a child's identity separately, so both
    read the same environment (the CLI resolves the name and sets it before forking).
    """
    name = os.environ.get("FORKQ_HOSTNAME") or configured or socket.gethostname()
    if not name or ":" in name or any(c.isspace() for c in name) or len(name) > 255:
        raise ConfigError(f"hostname {name!r} must be non-empty, without ':' or spaces (FORKQ_HOSTNAME, --hostname)")
    return name
