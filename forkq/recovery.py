"""The master's Redis work, done off its loop in short-lived helper processes.

The arbiter (``master.py``) must never wait on the network: a slow or stalled
Redis would stall signal handling and child reaping.  Yet the master is the one
that knows, at once, that a child died and which pool identity it had.  So the
loop only *records* what needs doing (release a dead child's pool, reap stale
pools at start) and this module forks a helper process that does it, while the
loop goes on.  The helper writes one line per finished task to a pipe the loop
selects on, and exits; the loop reaps it with ``WNOHANG`` like any child.

Why a process and not a thread: the master stays single-threaded for its whole
life (it forks children at any time, and a thread holding a lock at fork time is
how prefork servers deadlock), and a helper stuck on a dead socket can be killed.

Tasks that fail (Redis down) are retried with backoff by later helpers; one
helper runs at a time.  Poison jobs found while releasing are reported to the
app's reporters from the helper (``aborted(job, "poison")``, ``stopped(job)``).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError
from setproctitle import setproctitle

from . import heartbeat, reaper, scripts
from .backoff import capped_exponential
from .config import Config
from .connection import ConnectionSpec
from .job import Job
from .keys import Keys

log = logging.getLogger("forkq.recovery")

HELPER_TITLE = "forkq master-helper"
# A helper that has not finished by then is killed (its tasks are retried).
HELPER_DEADLINE = 60.0
SOCKET_TIMEOUT = 10.0


@dataclass
class _Helper:
    pid: int
    fd: int
    tasks: list[str]
    started: float
    buf: bytes = b""


@dataclass
class Recovery:
    """Pending Redis work of the master and the helper process doing it."""

    keys: Keys
    spec: ConnectionSpec
    config: Config
    reporters: Callable[[], Sequence[Any]]
    pending: dict[str, str] = field(default_factory=dict)   # identity -> description
    # Why each pending pool is gone, for the poison detector (see reaper.Blame).
    blame: dict[str, reaper.Blame] = field(default_factory=dict)
    reap_wanted: bool = False
    reap_exclude: tuple[str, ...] = ()
    # The master's beat for its live children (heartbeat.py says why), done here so
    # the loop never waits on Redis.
    beat_ids: tuple[str, ...] = ()
    leased_names: tuple[str, ...] = ()
    group_leases: bool = False  # the pool has names with group_concurrency
    beating: tuple[str, ...] = ()  # what the running helper beats for
    helper: _Helper | None = None
    failures: int = 0
    next_try: float = 0.0

    # -- what the loop records --------------------------------------------------------
    def release(self, identity: str, what: str, *, blame: reaper.Blame = "crash") -> None:
        """A child with this pool identity is gone: requeue its in-progress jobs.

        ``blame`` says how far its jobs are suspected of having killed it.
        """
        self.pending[identity] = what
        self.blame[identity] = blame
        self.next_try = 0.0

    def reap_stale(self, exclude: Sequence[str]) -> None:
        """Recover pools of hosts that died (heartbeats stale), except ``exclude``."""
        self.reap_wanted = True
        self.reap_exclude = tuple(exclude)
        self.next_try = 0.0

    def beat(self, identities: Sequence[str], leased_names: Sequence[str], *,
             group_leases: bool = False) -> None:
        """Refresh these live children's beats and leases (done by the next helper)."""
        self.beat_ids = tuple(identities)
        self.leased_names = tuple(leased_names)
        self.group_leases = group_leases

    @property
    def busy(self) -> bool:
        return bool(self.pending) or self.reap_wanted or self.helper is not None

    def fileno(self) -> int:
        return self.helper.fd if self.helper is not None else -1

    # -- driven by the loop (never blocks) ---------------------------------------------
    def step(self, *, close_fds: Sequence[int]) -> None:
        """Start a helper if there is work and none is running."""
        if self.helper is not None:
            if time.monotonic() - self.helper.started > HELPER_DEADLINE:
                log.warning("recovery helper %d is stuck; killing it (its work is retried)",
                            self.helper.pid)
                try:
                    os.kill(self.helper.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        if self.beat_ids and not (self.pending or self.reap_wanted):
            tasks = ["beat"]  # a beat is never held back by the backoff of failed releases
        elif not (self.pending or self.reap_wanted) or time.monotonic() < self.next_try:
            return
        else:
            tasks = ["release " + i for i in self.pending]
            if self.reap_wanted:
                tasks.append("reap")
            if self.beat_ids:
                tasks.append("beat")  # after the releases: a released pool is not re-beaten
        beat_ids = self.beat_ids
        self.beat_ids = ()
        self.beating = beat_ids
        self.helper = self._fork(tasks, close_fds)

    def read(self) -> None:
        """Read the helper's results (its pipe is readable)."""
        h = self.helper
        if h is None or h.fd < 0:
            return
        while True:
            try:
                data = os.read(h.fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                os.close(h.fd)
                h.fd = -1
                break
            h.buf += data
        *lines, h.buf = h.buf.split(b"\n")
        for line in lines:
            self._on_result(line)

    def reap(self) -> None:
        """Collect a finished helper; schedule a retry of what it did not do."""
        h = self.helper
        if h is None:
            return
        try:
            pid, _status = os.waitpid(h.pid, os.WNOHANG)
        except ChildProcessError:
            pid = h.pid
        if pid == 0:
            return
        self.read()
        if h.fd >= 0:
            os.close(h.fd)
        self.helper = None
        if self.pending or self.reap_wanted:
            self.failures += 1
            self.next_try = time.monotonic() + capped_exponential(self.failures, base=0.5, cap=30.0)
        else:
            self.failures = 0

    def _on_result(self, line: bytes) -> None:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if not isinstance(msg, dict):
            return
        if msg.get("t") == "released":
            self.pending.pop(str(msg.get("identity")), None)
            self.blame.pop(str(msg.get("identity")), None)
        elif msg.get("t") == "reaped":
            self.reap_wanted = False

    # -- the helper process ---------------------------------------------------------------
    def _fork(self, tasks: list[str], close_fds: Sequence[int]) -> _Helper:
        r, w = os.pipe2(os.O_CLOEXEC)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            os.close(r)
            os.close(w)
            log.error("cannot fork a recovery helper (%s); next try in 5s", exc)
            self.next_try = time.monotonic() + 5.0
            raise
        if pid == 0:  # pragma: no cover - ends in os._exit
            code = 1
            try:
                os.close(r)
                for fd in close_fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGTTIN,
                            signal.SIGTTOU, signal.SIGUSR1):
                    signal.signal(sig, signal.SIG_DFL)
                for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
                    signal.signal(sig, signal.SIG_IGN)  # the terminal's signals are the master's
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                setproctitle(f"{HELPER_TITLE} {self.keys.namespace}")
                code = self._run(tasks, w)
            except BaseException:  # noqa: BLE001 - last resort
                log.exception("recovery helper failed")
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(w)
        os.set_blocking(r, False)
        return _Helper(pid=pid, fd=r, tasks=tasks, started=time.monotonic())

    def _run(self, tasks: list[str], out: int) -> int:
        conn = self.spec.connect(socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=5)
        code = 0
        try:
            for task in tasks:
                kind, _, identity = task.partition(" ")
                try:
                    if kind == "beat":
                        heartbeat.beat_for(conn, self.keys, self.beating, leased_names=self.leased_names,
                                           lease_ttl=self.config.lease_ttl,
                                           allow_oom=scripts.supports_script_flags(conn),
                                           group_leases=self.group_leases)
                    elif kind == "release":
                        what = self.pending.get(identity, identity)
                        result = reaper.release_pool(
                            conn, self.keys, identity, self.config, on_poison=self._report_poison,
                            blame=self.blame.get(identity, "crash"))
                        if result is not None and result != (0, 0):
                            log.warning("%s: %d jobs requeued, %d to dead (poison)", what, *result)
                        _emit(out, {"t": "released", "identity": identity})
                    else:
                        reaped = reaper.reap_stale_pools(conn, self.keys, self.config,
                                                         exclude=self.reap_exclude,
                                                         on_poison=self._report_poison)
                        if reaped:
                            log.warning("recovered the jobs of %d dead pools", len(reaped))
                        _emit(out, {"t": "reaped", "n": len(reaped)})
                except RedisError as exc:
                    if kind == "beat":
                        log.warning("could not beat for the children (%s)", exc)
                        continue
                    code = 2
                    log.warning("could not %s yet (%s); it is retried",
                                "requeue the jobs of " + self.pending.get(identity, identity)
                                if kind == "release" else "reap stale pools", exc)
        finally:
            conn.close()
        return code

    def _report_poison(self, data: dict[str, Any]) -> None:
        """Reporters hear ``aborted(job, "poison")`` and ``stopped(job)`` for a job buried
        here (a dead child's, or a stale pool's on any host): the pool that ran it last
        died, so no one else can tell them.  Each call is guarded so that no reporter
        can stop the recovery."""
        job = Job.from_data(data)
        for reporter in self.reporters():
            for event, args in (("aborted", (job, "poison")), ("stopped", (job,))):
                handler = getattr(reporter, event, None)
                if not callable(handler):
                    continue
                try:
                    handler(*args)
                except Exception:
                    log.exception("reporter %r raised on %s; ignored", reporter, event)


def _emit(fd: int, msg: dict[str, Any]) -> None:
    os.write(fd, orjson.dumps(msg) + b"\n")
