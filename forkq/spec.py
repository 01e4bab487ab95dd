"""What a pool is made of, as plain values: job options, specs, middleware, periodic specs.

A leaf module (it imports nothing of forkq's but errors), so the registry, the
executor, the scheduler and the runtime can all use these without importing
each other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config
    from .job import Job
    from .keys import Keys

Backoff = Callable[[Any], float]
Handler = Callable[["Job"], Any]
Middleware = Callable[["Job", Callable[[], Any]], Any]


_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "h": 3600.0, "hour": 3600.0}


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """``rate_limit="100/s"`` (also ``/m``, ``/h``): at most ``count`` starts per ``period``
    seconds across every pool on every host, as a GCRA in Redis (fetch.lua).

    Bursts: a limit per second may start up to ``count`` jobs at once after a quiet
    spell (a full bucket); per minute or hour, starts are spread evenly (a burst of
    one), so "10/m" means one every 6 s, not ten at the top of the minute.
    """

    count: float
    period: float
    spec: str

    @classmethod
    def parse(cls, spec: str) -> RateLimit:
        if not isinstance(spec, str):
            raise ConfigError(f"rate_limit must be a string like '100/s', got {spec!r}")
        count_text, sep, unit = spec.strip().partition("/")
        period = _PERIODS.get(unit.strip().lower())
        try:
            count = float(count_text)
        except ValueError:
            count = -1.0
        if not sep or period is None or not 0 < count < 1e9 or count != count:
            raise ConfigError(f"bad rate_limit {spec!r}: expected N/s, N/m or N/h with N > 0 "
                              "(e.g. '100/s', '30/m', '500/h')")
        return cls(count=count, period=period, spec=spec.strip())

    @property
    def interval(self) -> float:
        """Seconds between starts at the steady rate."""
        return self.period / self.count

    @property
    def burst(self) -> int:
        return max(1, int(self.count)) if self.period == 1.0 else 1

    def gcra(self) -> tuple[float, float]:
        """(interval, tolerance) as fetch.lua takes them."""
        return self.interval, (self.burst - 1) * self.interval


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """gocraft's JobOptions, plus a timeout.

    priority: 1..10000, relative weight when several queues have work.
    max_fails: failures before the job is dead (1 = dead at the first failure).
    skip_dead: drop instead of moving to the dead set after ``max_fails``.
    max_concurrency: cluster-wide cap of running jobs of this name (0 = none).
    backoff: ``fn(job) -> seconds`` before a retry (default: exponential with jitter).
    timeout: seconds before the job's thread gets ``JobTimeout`` (None = never).
    rate_limit: ``"N/s"``, ``"N/m"`` or ``"N/h"``: cluster-wide starts per period (None =
      none).  Jobs over it stay queued (not failed, not retried) and start when due.
    result_ttl: keep the job's state and JSON return value/error this many seconds
        (``Client.result``, ``Enqueuer.wait``); None = keep nothing, cost nothing.
    group_concurrency: cluster-wide cap of running jobs per fair group
        (``enqueue(..., group=...)``) of this name (0 = none); leases like max_concurrency.
    """

    priority: int = 1
    max_fails: int = 4
    skip_dead: bool = False
    max_concurrency: int = 0
    backoff: Backoff | None = None
    timeout: float | None = None
    rate_limit: str | None = None
    result_ttl: int | None = None
    group_concurrency: int = 0

    def __post_init__(self) -> None:
        if self.rate_limit is not None:
            RateLimit.parse(self.rate_limit)  # ConfigError now, at registration
        if not isinstance(self.priority, int) or not 1 <= self.priority <= 10000:
            raise ConfigError(f"priority must be an int from 1 to 10000, got {self.priority!r}")
        if not isinstance(self.max_fails, int) or self.max_fails < 1:
            raise ConfigError(f"max_fails must be an int >= 1, got {self.max_fails!r}")
        if not isinstance(self.max_concurrency, int) or self.max_concurrency < 0:
            raise ConfigError(f"max_concurrency must be an int >= 0, got {self.max_concurrency!r}")
        if (isinstance(self.group_concurrency, bool) or not isinstance(self.group_concurrency, int)
                or self.group_concurrency < 0):
            raise ConfigError(f"group_concurrency must be an int >= 0, got {self.group_concurrency!r}")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.result_ttl is not None and (isinstance(self.result_ttl, bool) or not isinstance(
                self.result_ttl, int) or self.result_ttl < 1):
            raise ConfigError(f"result_ttl must be a whole number of seconds >= 1, got {self.result_ttl!r}")
        if self.backoff is not None and not callable(self.backoff):
            raise ConfigError("backoff must be callable: fn(job) -> seconds")

    @property
    def rate(self) -> RateLimit | None:
        return RateLimit.parse(self.rate_limit) if self.rate_limit is not None else None


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    name: str
    handler: Handler
    options: JobOptions
    # An ``async def`` handler runs on the child's event loop (forkq.aio), not a thread.
    is_async: bool = field(default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", is_async_callable(self.handler))


def is_async_callable(fn: Any) -> bool:
    """An ``async def`` function, a partial of one, or an object whose ``__call__`` is one."""
    target = getattr(fn, "func", fn)  # functools.partial
    call = type(target).__call__ if not inspect.isroutine(target) else None
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


@dataclass(frozen=True, kw_only=True)
class PeriodicSpec:
    """``name`` enqueued on cron ``spec``; ``force``: even if this pool has no handler for it."""

    spec: str
    name: str
    force: bool = False


class PoolDefinition(Protocol):
    """What a running pool needs from its registry (``WorkerPool`` is the one implementation).

    The runtime depends on this, not on the registry, so the registry can build
    runtimes without the two modules knowing each other.
    """

    @property
    def keys(self) -> Keys: ...

    @property
    def config(self) -> Config: ...

    @property
    def jobs(self) -> dict[str, JobSpec]: ...

    @property
    def middlewares(self) -> list[Middleware]: ...

    @property
    def periodic(self) -> list[PeriodicSpec]: ...

    @property
    def reporters(self) -> list[Any]: ...
