"""``forkq [options] MODULE[:ATTR]``: run the prefork master.  Also dispatches verbs.

A first word that names a verb is the verb: the admin verbs live in
``forkq.admin_cli``; ``forkq demo`` in ``forkq.demo``.  Everything else is the
``run`` path: import the app, find its ``WorkerPool``, build the effective
``Config`` (the pool's own config, then environment knobs, then flags), and hand
over to ``forkq.master.Master``.

Every failure the user can cause prints one line on stderr and exits with its
own code (no traceback):

====  =================  ==========================================================
code  name               meaning
====  =================  ==========================================================
2     EXIT_USAGE         bad flag, bad value, bad environment knob, bad Redis URL
3     EXIT_IMPORT        the module could not be imported (missing, raised, syntax)
4     EXIT_NO_POOL       no WorkerPool found in it (or several and no ``:ATTR``), or no jobs
5     EXIT_REDIS         Redis unreachable at start (or the embedded server failed)
6     EXIT_CHILD_BOOT    children keep dying at boot
====  =================  ==========================================================

Environment knobs (mainly for tests and tuning; flags win where both exist):
``FORKQ_REDIS_URL``, ``FORKQ_HEARTBEAT_INTERVAL``, ``FORKQ_STALE_AFTER``,
``FORKQ_LEASE_TTL``, ``FORKQ_IDLE_POLL_INTERVAL`` (seconds, override the pool's
``Config``), ``FORKQ_HARD_TIMEOUT_GRACE`` (seconds a job may run past its timeout
before its child is replaced; default ``max(5, timeout/2)``), ``FORKQ_EMBEDDED_DIR``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import replace
from types import ModuleType
from typing import Any, NoReturn

from .argtypes import non_negative_int, non_negative_seconds, positive_int
from .config import Config, pool_hostname
from .connection import ConnectionSpec, redact, validate_url
from .errors import ConfigError
from .registry import WorkerPool

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_IMPORT = 3
EXIT_NO_POOL = 4
EXIT_REDIS = 5
EXIT_CHILD_BOOT = 6

ADMIN_VERBS = frozenset({"stats", "queues", "enqueue", "dead", "retries", "scheduled", "pause",
                         "unpause", "workers", "pools", "web"})

DEFAULT_HARD_TIMEOUT_GRACE = 5.0
_ENV_FLOATS = {
    "FORKQ_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "FORKQ_STALE_AFTER": "stale_after",
    "FORKQ_LEASE_TTL": "lease_ttl",
    "FORKQ_IDLE_POLL_INTERVAL": "idle_poll_interval",
    "FORKQ_FROZEN_AFTER": "frozen_after",
}


class UsageError(Exception):
    """A bad command line or environment value (exit 2)."""


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="forkq",
        description="Run forkq workers: a master process forks children, each a thread pool.",
        epilog=("Verbs: forkq demo | stats | queues | enqueue | dead | retries | scheduled | "
                "pause | unpause | workers | pools | web (forkq VERB --help). Signals to the master: "
                "TERM/INT stop gracefully, TSTP quiet, HUP reload code and restart children "
                "one by one, TTIN/TTOU one child more/less. Environment: FORKQ_REDIS_URL, "
                "FORKQ_LOG_LEVEL, FORKQ_EMBEDDED_DIR, and in seconds FORKQ_HEARTBEAT_INTERVAL, "
                "FORKQ_STALE_AFTER, FORKQ_LEASE_TTL, FORKQ_IDLE_POLL_INTERVAL, "
                "FORKQ_HARD_TIMEOUT_GRACE, FORKQ_REDIS_WAIT. Exit codes: 2 usage, 3 import failed, 4 no WorkerPool, "
                "5 Redis unreachable, 6 children keep dying at boot."))
    p.add_argument("app", metavar="MODULE[:ATTR]",
                   help="module holding the WorkerPool (ATTR picks one if it has several)")
    p.add_argument("-c", "--concurrency", type=positive_int, default=None,
                   help="threads per child (default: the pool's config, 10)")
    p.add_argument("-p", "--processes", type=positive_int, default=None,
                   help="child processes (default: the number of CPUs)")
    p.add_argument("--redis", default=None, metavar="URL",
                   help="redis://, rediss://, unix://, redis+sentinel://[user:pass@]h1:p1[,h2:p2]/SERVICE[/DB], "
                        "redis+cluster://[user:pass@]h1:p1[,h2:p2] (rediss+... for TLS) URL, "
                        "or 'embedded' for a private server "
                        "with its data on disk (env FORKQ_REDIS_URL; default "
                        "redis://127.0.0.1:6379/0)")
    p.add_argument("--shutdown-timeout", type=non_negative_seconds, default=None, metavar="SECONDS",
                   help="on stop, how long running jobs may finish before being requeued (25)")
    p.add_argument("--redis-wait", type=non_negative_seconds, default=None, metavar="SECONDS",
                   help="at start, how long to keep trying an unreachable Redis before exiting 5 "
                        "(env FORKQ_REDIS_WAIT; 30)")
    p.add_argument("--max-jobs-per-child", type=non_negative_int, default=None, metavar="N",
                   help="recycle a child after about N jobs (+ up to 10%% jitter; 0 = never)")
    p.add_argument("--max-memory-per-child", type=non_negative_int, default=None, metavar="MB",
                   help="recycle a child whose RSS is above MB (0 = never)")
    p.add_argument("--hostname", default=None, metavar="NAME",
                   help="host part of every pool identity, for containers sharing a hostname "
                        "(env FORKQ_HOSTNAME; default the machine's hostname)")
    p.add_argument("--log-level", default=None, type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                   help="logging level (default INFO)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ADMIN_VERBS:
        return _admin(args_list)
    if args_list and args_list[0] == "demo":
        from .demo import main as demo_main

        return demo_main(args_list[1:])
    try:
        try:
            args = build_parser().parse_args(args_list)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        return _run(args)
    except UsageError as exc:
        return _fail(EXIT_USAGE, f"{exc} (see forkq --help)")
    except CliError as exc:
        return _fail(exc.code, str(exc))
    except KeyboardInterrupt:
        return 130


def _fail(code: int, message: str) -> int:
    line = redact(" ".join(message.split()))
    print(f"forkq: error: {line}", file=sys.stderr)
    return code


def _admin(argv: list[str]) -> int:
    try:
        admin_cli = importlib.import_module("forkq.admin_cli")
    except ModuleNotFoundError as exc:
        if exc.name == "forkq.admin_cli":
            return _fail(EXIT_USAGE, f"'{argv[0]}' is not available in this build of forkq")
        raise
    return int(admin_cli.main(argv))


# -- the app ---------------------------------------------------------------------------

class AppLoader:
    """Imports the user's module and finds its WorkerPool; can re-import it for HUP.

    Reloading drops from ``sys.modules`` every module imported since the first
    load that does not live in the standard library or site-packages (so: the
    app's own code), then imports the app again.  Third-party libraries are not
    re-imported (C extensions cannot be).
    """

    def __init__(self, target: str) -> None:
        module, _, attr = target.partition(":")
        if not module or (":" in target and not attr):
            raise UsageError(f"expected MODULE or MODULE:ATTR, got {target!r}")
        self.target = target
        self.module_name = module
        self.attr = attr or None
        self._baseline = set(sys.modules)
        self._library_dirs = _library_dirs()

    def load(self) -> WorkerPool:
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(self.module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (self.module_name == exc.name or self.module_name.startswith(exc.name + ".")):
                raise CliError(EXIT_IMPORT, f"cannot import {self.module_name!r}: no module named "
                                            f"{exc.name!r} (is it on PYTHONPATH or in the current directory?)") from None
            raise CliError(EXIT_IMPORT, _import_failure(self.module_name, exc)) from None
        except BaseException as exc:  # noqa: BLE001 - anything the module raised at import
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise CliError(EXIT_IMPORT, _import_failure(self.module_name, exc)) from None
        return self._find_pool(module)

    def reload(self) -> WorkerPool:
        importlib.invalidate_caches()
        saved = {}
        for name in list(sys.modules):
            if name in self._baseline:
                continue
            mod = sys.modules.get(name)
            if mod is not None and self._is_library(mod):
                continue
            saved[name] = sys.modules.pop(name)
        try:
            return self.load()
        except CliError:
            # Put the running code back: a broken edit must not change anything.
            sys.modules.update(saved)
            raise

    def _is_library(self, mod: ModuleType) -> bool:
        path = getattr(mod, "__file__", None)
        if not path:
            return True
        path = os.path.realpath(path)
        return any(path.startswith(d) for d in self._library_dirs)

    def _find_pool(self, module: ModuleType) -> WorkerPool:
        if self.attr is not None:
            obj: Any = module
            for part in self.attr.split("."):
                if not hasattr(obj, part):
                    raise CliError(EXIT_NO_POOL, f"{self.module_name!r} has no attribute {self.attr!r}")
                obj = getattr(obj, part)
            if not isinstance(obj, WorkerPool):
                raise CliError(EXIT_NO_POOL, f"{self.target!r} is a {type(obj).__name__}, not a "
                                             "forkq.WorkerPool")
            pool = obj
        else:
            found = {name: v for name, v in vars(module).items() if isinstance(v, WorkerPool)}
            distinct = {id(v): v for v in found.values()}
            if not distinct:
                raise CliError(EXIT_NO_POOL, f"no forkq.WorkerPool in {self.module_name!r}: create "
                                             "one (pool = forkq.WorkerPool(namespace=...)) or name it "
                                             "with MODULE:ATTR")
            if len(distinct) > 1:
                raise CliError(EXIT_NO_POOL, f"{self.module_name!r} has several WorkerPools "
                                             f"({', '.join(sorted(found))}): pick one with MODULE:ATTR")
            pool = next(iter(distinct.values()))
        if not pool.jobs:
            raise CliError(EXIT_NO_POOL, f"the WorkerPool in {self.target!r} has no jobs: register "
                                         "some with @pool.job")
        return pool


def _library_dirs() -> list[str]:
    dirs = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            dirs.add(os.path.realpath(sysconfig.get_paths()[key]))
        except KeyError:
            pass
    try:
        import site

        dirs.update(os.path.realpath(d) for d in site.getsitepackages())
        dirs.add(os.path.realpath(site.getusersitepackages()))
    except (AttributeError, OSError):
        pass
    dirs.add(os.path.realpath(os.path.dirname(os.path.dirname(__file__))) + os.sep + "forkq")
    return sorted(d for d in dirs if d)


def _import_failure(module: str, exc: BaseException) -> str:
    where = ""
    if isinstance(exc, SyntaxError):
        where = f" ({exc.filename}:{exc.lineno})"
    else:
        # The user's line, not forkq's: the deepest frame outside the forkq package
        # (a bad cron spec is raised inside forkq, but the mistake is in the app).
        own = os.path.dirname(os.path.abspath(__file__)) + os.sep
        tb = exc.__traceback__
        last = None
        while tb is not None:
            if not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(own):
                last = tb
            tb = tb.tb_next
        if last is not None:
            where = f" ({last.tb_frame.f_code.co_filename}:{last.tb_lineno})"
    text = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return f"cannot import {module!r}: {detail}{where}"


# -- config ------------------------------------------------------------------------------

def effective_config(base: Config, args: argparse.Namespace, environ: dict[str, str] | os._Environ[str]) -> Config:
    """The pool's config, then environment knobs, then command-line flags."""
    changes: dict[str, Any] = {}
    for env, field in _ENV_FLOATS.items():
        raw = environ.get(env)
        if raw:
            changes[field] = _env_float(env, raw)
    flag_fields = {"concurrency": args.concurrency, "processes": args.processes,
                   "shutdown_timeout": args.shutdown_timeout,
                   "max_jobs_per_child": args.max_jobs_per_child,
                   "max_memory_per_child_mb": args.max_memory_per_child,
                   "log_level": args.log_level}
    changes.update({k: v for k, v in flag_fields.items() if v is not None})
    try:
        return replace(base, **changes)
    except ConfigError as exc:  # settings that cannot work together (Config._check_liveness)
        raise UsageError(str(exc)) from None


DEFAULT_REDIS_WAIT = 30.0


def redis_wait(args: argparse.Namespace, environ: dict[str, str] | os._Environ[str]) -> float:
    if args.redis_wait is not None:
        return float(args.redis_wait)
    raw = environ.get("FORKQ_REDIS_WAIT")
    return _env_float("FORKQ_REDIS_WAIT", raw) if raw else DEFAULT_REDIS_WAIT


def _env_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def hard_timeout_grace(environ: dict[str, str] | os._Environ[str]) -> float:
    raw = environ.get("FORKQ_HARD_TIMEOUT_GRACE")
    return _env_float("FORKQ_HARD_TIMEOUT_GRACE", raw) if raw else DEFAULT_HARD_TIMEOUT_GRACE


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
                        stream=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from .master import Master, MasterOptions

    loader = AppLoader(args.app)
    environ = os.environ
    setup_logging(args.log_level or environ.get("FORKQ_LOG_LEVEL") or "INFO")
    pool = loader.load()
    try:
        pool.check()
    except ConfigError as exc:
        raise CliError(EXIT_IMPORT, f"{loader.target}: {exc}") from None
    if args.hostname is not None:
        environ["FORKQ_HOSTNAME"] = args.hostname
    try:
        hostname = pool_hostname(pool.config.hostname)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    environ["FORKQ_HOSTNAME"] = hostname  # the master and its children build identities from it
    config = replace(effective_config(pool.config, args, environ), hostname=hostname)
    grace = hard_timeout_grace(environ)
    url = args.redis or environ.get("FORKQ_REDIS_URL") or config.redis_url
    embedded = None
    if url == "embedded":
        from pathlib import Path

        from .embedded import DEFAULT_DIR, EmbeddedRedis

        directory = Path(environ.get("FORKQ_EMBEDDED_DIR") or DEFAULT_DIR)
        try:
            embedded = EmbeddedRedis(directory=directory).start()
        except (ConfigError, OSError) as exc:
            raise CliError(EXIT_REDIS, f"embedded Redis: {exc}") from None
        url = embedded.url
        logging.getLogger("forkq.cli").info("embedded Redis at %s (data in %s)", url, directory)
    try:
        try:
            spec = ConnectionSpec(url=validate_url(url)).for_namespace(pool.namespace)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        config = replace(config, redis_url=url)
        master = Master(pool=pool, app=loader.target, spec=spec, config=config,
                        options=MasterOptions(processes=config.processes,
                                              concurrency=config.concurrency,
                                              max_jobs_per_child=config.max_jobs_per_child,
                                              max_memory_per_child_mb=config.max_memory_per_child_mb,
                                              hard_timeout_grace=grace,
                                              redis_wait=redis_wait(args, environ)),
                        reload_app=loader.reload)
        code = master.run()
        if code != EXIT_OK and master.error:
            print(f"forkq: error: {redact(' '.join(master.error.split()))}", file=sys.stderr)
        return code
    finally:
        if embedded is not None:
            embedded.stop()
