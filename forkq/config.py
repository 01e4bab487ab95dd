"""All of forkq's tunables in one frozen value, with their defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .connection import DEFAULT_URL

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

    # Liveness.
    heartbeat_interval: float = 5.0
    # A pool whose beat is older than this is presumed dead and reaped.
    stale_after: float = 60.0
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
