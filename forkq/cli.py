"""``forkq [options] MODULE[:ATTR]``: run the prefork master.  Also dispatches verbs.

A first word that names a verb is the verb: the admin verbs live in
``forkq.admin_cli``; ``forkq demo`` in ``forkq.demo``.  Everything else is the
``run`` path: import the app, find its ``WorkerPool``, build the effective
``Config`` (the pool's own config, then environment knobs, then flags, all
through ``forkq.config.SETTINGS``), and hand over to ``forkq.master.Master``.

Every failure the user can cause prints one line on stderr and exits with its
own code from ``forkq.exits`` (no traceback):

====  =================  ==========================================================
code  name               meaning
====  =================  ==========================================================
2     EXIT_USAGE         bad flag, bad value, bad environment knob, bad Redis URL
3     EXIT_IMPORT        the module could not be imported (missing, raised, syntax)
4     EXIT_NO_POOL       no WorkerPool found in it (or several and no ``:ATTR``), or no jobs
5     EXIT_REDIS         Redis unreachable at start (or the embedded server failed)
6     EXIT_CHILD_BOOT    children keep dying at boot
====  =================  ==========================================================

Until every child is up, the master's log lines are held: if the start fails,
the one error line is all that is printed (the held lines said the same thing
in more words); once the children are up they are written out in order.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import sysconfig
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from . import config as settings
from .admin_cli import VERBS as ADMIN_VERBS
from .command import CliError, Parser, UsageError, add_version, fail
from .config import Config, pool_hostname
from .connection import ConnectionSpec, validate_url
from .errors import ConfigError
from .exits import EXIT_IMPORT, EXIT_INTERRUPTED, EXIT_NO_POOL, EXIT_OK, EXIT_REDIS, EXIT_USAGE
from .registry import WorkerPool
from .systemd import Notifier

# The Config fields the worker command takes as flags, in --help order.
WORKER_FLAGS = ("concurrency", "async_concurrency", "processes", "redis_url", "shutdown_timeout", "redis_wait",
                "max_jobs_per_child", "max_memory_per_child_mb", "hostname", "metrics", "log_level")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="forkq",
        description="Run forkq workers: a master process forks children, each a thread pool.",
        epilog=(f"Verbs: forkq demo | {' | '.join(ADMIN_VERBS)} (forkq VERB --help). Signals to "
                "the master: TERM/INT stop gracefully, TSTP quiet, HUP reload code and restart "
                "children one by one, TTIN/TTOU one child more/less. Environment: "
                f"{settings.env_help()}. Exit codes: 2 usage, 3 import failed, 4 no WorkerPool, "
                "5 Redis unreachable, 6 children keep dying at boot."))
    add_version(p)
    p.add_argument("app", metavar="MODULE[:ATTR]",
                   help="module holding the WorkerPool (ATTR picks one if it has several)")
    settings.add_flags(p, WORKER_FLAGS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ADMIN_VERBS:
        from .admin_cli import main as admin_main

        return int(admin_main(args_list))
    if args_list and args_list[0] == "demo":
        from .demo import main as demo_main

        return demo_main(args_list[1:])
    try:
        try:
            args = build_parser().parse_args(args_list)
        except SystemExit as exc:  # --help, --version
            return int(exc.code or 0)
        return _run(args)
    except UsageError as exc:
        return fail("forkq", EXIT_USAGE, f"{exc} (see forkq --help)")
    except CliError as exc:
        return fail("forkq", exc.code, str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


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


# -- config and logging ------------------------------------------------------------------

def effective_config(base: Config, args: argparse.Namespace,
                     environ: dict[str, str] | os._Environ[str]) -> Config:
    """The pool's config, then environment knobs, then command-line flags (one table)."""
    try:
        return Config.resolve(base, environ=environ,
                              flags={name: getattr(args, name) for name in WORKER_FLAGS})
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


class StartupLog(logging.Filter):
    """Holds the master's log records until its children are up (see the module docstring).

    A filter on the stderr handler, not a handler of its own: the root logger keeps a
    plain ``StreamHandler`` (which ``forkq.forked`` moves off fds 0-2 in children).
    Only in the process that made it: a forked child writes straight through.
    """

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target
        self.holding = True
        self._held: list[logging.LogRecord] = []
        self._pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.holding and os.getpid() == self._pid:
            self._held.append(record)
            return False
        return True

    def write_out(self) -> None:
        """Write the held records out and stop holding (a forked child drops its copy)."""
        self.holding = False
        held, self._held = self._held, []
        if os.getpid() != self._pid:
            return
        for record in held:
            self.target.handle(record)

    def discard(self) -> None:
        self.holding = False
        self._held = []


class _ReadyNotifier(Notifier):
    """systemd's notifier that also releases the held start-up log at READY=1."""

    def __init__(self, startup: StartupLog | None) -> None:
        super().__init__()
        self._startup = startup

    def notify(self, *fields: str) -> bool:
        if self._startup is not None and "READY=1" in fields:
            self._startup.write_out()
        return super().notify(*fields)


def setup_logging(level: str, *, hold: bool = False) -> StartupLog | None:
    """forkq's log format on stderr; redis-py's own DEBUG chatter stays out of it.

    ``hold``: keep records until the caller releases or discards them (start-up).
    """
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    startup = StartupLog(stream) if hold and level.upper() != "DEBUG" else None
    if startup is not None:
        stream.addFilter(startup)
    root = logging.getLogger()
    root.addHandler(stream)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # redis-py logs "Failed to enable maintenance notifications" (and more) at DEBUG on
    # every connection: noise in forkq's DEBUG log, never forkq's problem.
    logging.getLogger("redis").setLevel(logging.WARNING)
    return startup


def _run(args: argparse.Namespace) -> int:
    from .master import Master

    loader = AppLoader(args.app)
    environ = os.environ
    early = effective_config(Config(), args, environ)
    startup = setup_logging(early.log_level, hold=True)
    try:
        code = _start(loader, args, environ, startup, Master)
    except BaseException:
        if startup is not None:
            startup.discard()
        raise
    if startup is not None:
        if code == EXIT_OK:
            startup.write_out()
        else:
            startup.discard()
    return code


def _start(loader: AppLoader, args: argparse.Namespace, environ: os._Environ[str],
           startup: StartupLog | None, master_cls: Any) -> int:
    pool = loader.load()
    try:
        pool.check()
    except ConfigError as exc:
        raise CliError(EXIT_IMPORT, f"{loader.target}: {exc}") from None
    config = effective_config(pool.config, args, environ)
    logging.getLogger().setLevel(getattr(logging, config.log_level, logging.INFO))
    if config.hostname:  # a flag or the pool's config: the same for master and children
        environ["FORKQ_HOSTNAME"] = config.hostname
    try:
        hostname = pool_hostname(config.hostname)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    environ["FORKQ_HOSTNAME"] = hostname  # the master and its children build identities from it
    config = Config.resolve(config, environ={}, flags={"hostname": hostname})
    url = config.redis_url
    embedded = None
    if url == "embedded":
        from pathlib import Path

        from .embedded import EmbeddedRedis, default_dir

        directory = Path(config.embedded_dir) if config.embedded_dir else default_dir()
        try:
            embedded = EmbeddedRedis(directory=directory).start()
        except (ConfigError, OSError) as exc:
            raise CliError(EXIT_REDIS, f"embedded Redis: {exc}") from None
        url = embedded.url
        logging.getLogger("forkq.cli").info("embedded Redis at %s (data in %s)", url, directory)
    try:
        try:
            spec = ConnectionSpec(url=validate_url(url)).for_namespace(pool.namespace)
            config = Config.resolve(config, environ={}, flags={"redis_url": url})
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        master = master_cls(pool=pool, app=loader.target, spec=spec, config=config,
                            reload_app=loader.reload, notifier=_ReadyNotifier(startup))
        code = int(master.run())
        if code != EXIT_OK and master.error:
            if startup is not None:
                startup.discard()
            fail("forkq", code, master.error)
        return code
    finally:
        if embedded is not None:
            embedded.stop()
