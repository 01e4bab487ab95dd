"""``WorkerPool``: the registry users build at import time (no Redis connection yet).

The same object runs jobs in-process (``start``/``stop``/``drain``) and is what the
prefork master finds in the user's module and hands to every child.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, overload

import redis as redis_lib

from .config import Config
from .connection import ConnectionSpec
from .cron import parse_cron
from .enqueue import Enqueuer
from .errors import ConfigError
from .keys import Keys, validate_job_name
from .runtime import PoolRuntime
from .spec import Backoff, Handler, JobOptions, JobSpec, Middleware, PeriodicSpec

__all__ = ["Handler", "JobOptions", "JobSpec", "Middleware", "PeriodicSpec", "WorkerPool"]

@dataclass
class _Registry:
    jobs: dict[str, JobSpec] = field(default_factory=dict)
    middleware: list[Middleware] = field(default_factory=list)
    periodic: list[PeriodicSpec] = field(default_factory=list)
    reporters: list[Any] = field(default_factory=list)


class WorkerPool:
    """Registry of jobs, middleware, periodic schedules and reporters for a namespace."""

    def __init__(self, namespace: str = "forkq", *, config: Config | None = None) -> None:
        self.keys = Keys(namespace)
        self.namespace = namespace
        self.config = config or Config()
        self._reg = _Registry()
        self._runtime: PoolRuntime | None = None
        self._lock = threading.Lock()

    # -- registration -----------------------------------------------------------
    @overload
    def job(self, fn: Handler, /) -> Handler: ...

    @overload
    def job(self, name: str | None = None, /, *, priority: int = 1, max_fails: int = 4,
            skip_dead: bool = False, max_concurrency: int = 0, backoff: Backoff | None = None,
            timeout: float | None = None, rate_limit: str | None = None,
            result_ttl: int | None = None,
            group_concurrency: int = 0) -> Callable[[Handler], Handler]: ...

    def job(self, fn_or_name: Any = None, /, **options: Any) -> Any:
        """Register a handler: ``@pool.job``, ``@pool.job("name")`` or ``@pool.job(priority=5)``."""
        if callable(fn_or_name):
            self.register(fn_or_name.__name__, fn_or_name)
            return fn_or_name
        opts = JobOptions(**options)

        def decorate(fn: Handler) -> Handler:
            self.register(fn_or_name or fn.__name__, fn, opts)
            return fn

        return decorate

    def register(self, name: str, handler: Handler, options: JobOptions | None = None) -> None:
        validate_job_name(name)
        if not callable(handler):
            raise ConfigError(f"handler of job {name!r} is not callable")
        if name in self._reg.jobs:
            raise ConfigError(f"job {name!r} is registered twice")
        self._reg.jobs[name] = JobSpec(name=name, handler=handler, options=options or JobOptions())

    def middleware(self, fn: Middleware) -> Middleware:
        """Wrap jobs: ``fn(job, next)``; call ``next()`` to go on.  Registration order.

        A plain ``def`` middleware wraps the plain ``def`` jobs (it runs in their
        thread); an ``async def`` middleware (``await next()``) wraps the
        ``async def`` jobs on the event loop.  A plain middleware cannot wrap a
        coroutine's run without blocking the loop, so each kind wraps its own.
        """
        if not callable(fn):
            raise ConfigError("middleware must be callable: fn(job, next)")
        self._reg.middleware.append(fn)
        return fn

    def periodically_enqueue(self, spec: str, name: str, *, force: bool = False) -> None:
        """Enqueue ``name`` on a cron schedule with seconds as the FIRST field.

        A name with no handler in this pool is refused when the pool starts (the
        schedule would fill with jobs nobody runs), unless ``force=True`` says
        another pool runs it.
        """
        validate_job_name(name)
        parse_cron(spec)  # raises ConfigError on a bad spec, at registration
        self._reg.periodic.append(PeriodicSpec(spec=spec, name=name, force=force))

    def check(self) -> None:
        """Mistakes only visible once the whole module has registered (run before start)."""
        for p in self._reg.periodic:
            if p.name not in self._reg.jobs and not p.force:
                raise ConfigError(
                    f"periodic job {p.name!r} ({p.spec!r}) has no handler in this pool: register "
                    "it with @pool.job, or pass force=True if another pool runs it")

    def reporter(self, reporter: Any) -> Any:
        """Add an object with any of started/success/failure/aborted/stopped methods."""
        self._reg.reporters.append(reporter)
        return reporter

    # -- introspection -----------------------------------------------------------
    @property
    def jobs(self) -> dict[str, JobSpec]:
        return dict(self._reg.jobs)

    @property
    def middlewares(self) -> list[Middleware]:
        return list(self._reg.middleware)

    @property
    def periodic(self) -> list[PeriodicSpec]:
        return list(self._reg.periodic)

    @property
    def reporters(self) -> list[Any]:
        return list(self._reg.reporters)

    def enqueuer(self, redis: str | redis_lib.Redis | ConnectionSpec | None = None) -> Enqueuer:
        return Enqueuer(redis if redis is not None else self.config.redis_url, self.namespace,
                        config=self.config, known_jobs=self._reg.jobs)

    # -- running in-process -----------------------------------------------------
    def start(self, redis: str | redis_lib.Redis | ConnectionSpec | None = None, *,
              concurrency: int | None = None, identity: str | None = None) -> WorkerPool:
        """Start fetching and running jobs in background threads of this process."""
        if not self._reg.jobs:
            raise ConfigError("no jobs registered: add some with @pool.job before start()")
        self.check()
        with self._lock:
            if self._runtime is not None:
                raise ConfigError("pool already started")
            spec = ConnectionSpec.of(redis if redis is not None else self.config.redis_url).for_namespace(
                self.namespace)
            runtime = PoolRuntime(self, spec, identity=identity,
                                  concurrency=self.config.concurrency if concurrency is None else concurrency)
            try:
                runtime.start()
            except BaseException:
                runtime.close()  # a failed start leaves nothing open; start() may be called again
                raise
            self._runtime = runtime
        return self

    @property
    def runtime(self) -> PoolRuntime | None:
        return self._runtime

    def stop(self, timeout: float | None = None) -> None:
        """Stop fetching, wait up to ``timeout`` for running jobs, requeue the rest."""
        with self._lock:
            rt, self._runtime = self._runtime, None
        if rt is not None:
            rt.stop(self.config.shutdown_timeout if timeout is None else timeout)

    def drain(self, timeout: float | None = None) -> None:
        """Block until every registered queue is empty and nothing is running."""
        rt = self._runtime
        if rt is None:
            raise ConfigError("drain() needs a started pool: call start() first")
        rt.drain(timeout)

