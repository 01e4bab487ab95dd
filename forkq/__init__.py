"""forkq: fast, reliable Redis-backed background jobs.

Public names (DESIGN.md §1) are re-exported here; everything else is internal.
"""

from __future__ import annotations

from .batch import Batch, BatchStatus
from .config import Config
from .enqueue import Enqueuer, ScheduledJob
from .errors import (
    ArgError,
    ConfigError,
    EnqueueError,
    ForkqError,
    JobCancelled,
    JobTimeout,
    NotDeleted,
    NotRetried,
    PayloadTooLarge,
    Shutdown,
)
from .job import Job
from .registry import JobOptions, WorkerPool
from .reporters import Reporter
from .results import JobResult
from .retry import default_backoff

__version__ = "0.1.0"

__all__ = [
    "ArgError", "Batch", "BatchStatus", "Config", "ConfigError", "EnqueueError", "Enqueuer", "ForkqError", "Job",
    "JobCancelled", "JobResult",
    "JobOptions", "JobTimeout", "NotDeleted", "NotRetried", "PayloadTooLarge", "Reporter",
    "ScheduledJob", "Shutdown", "WorkerPool", "default_backoff", "__version__",
]


def __getattr__(name: str) -> object:
    # Client imports lazily so that producers and workers do not pay for it.
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'forkq' has no attribute {name!r}")
