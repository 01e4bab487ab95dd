"""The prefork master (arbiter), modelled on gunicorn's.

(Over 400 lines on purpose: the loop, the signal handlers and the bookkeeping of
children they act on read best in one place, as in gunicorn's ``arbiter.py``.
What is not the loop's lives elsewhere: Redis work in ``recovery.py``, messages in
``messages.py``, the child's life in ``child.py``.)

The master imports the app (done by the CLI before it gets here), then forks
the children; it opens no Redis connection and starts no thread before the
first fork, and stays single-threaded for its whole life.  Signal handlers only
append the signal to a queue (and ``set_wakeup_fd`` wakes the ``select``); the
main loop dispatches ``handle_<name>``.

What it does in its loop:

* reads the children's report pipes (ready, status, recycle requests, errors);
* reaps children with ``waitpid(pid, WNOHANG)`` — per known pid, so it never
  steals the exit status of other subprocesses such as an embedded Redis;
* for every child that exited, for any reason, has the child's pool claimed and
  its in-progress jobs requeued at once (a job recovered more than
  ``max_recoveries`` times goes to dead as poison).  That Redis work, and the
  stale-pool reap at start, run in a short-lived helper process
  (``forkq/recovery.py``): this loop never waits on the network, and no socket
  is open in the master across a fork;
* kills a child that stopped reporting while stopped or idle (frozen), so its
  jobs are requeued before another host's reaper could hand them out;
* keeps the number of children at the target, respawning with backoff after
  boot failures; a child that keeps dying at boot stops the master (no fork bomb);
* rolls replacements one at a time (HUP, recycling): start the new child, wait
  until every active child is up, then SIGTERM the old one and wait for it;
* talks to systemd (READY, STATUS, STOPPING, RELOADING, WATCHDOG).
* with ``--metrics``, serves ``GET /metrics`` from a non-blocking socket in the same
  ``select`` (forkq/metrics.py): the children's per-job rows, summed; no thread.

Signals: TERM/INT/QUIT graceful stop (a second one: kill now, requeue, exit);
TSTP quiet; HUP reload the app's code and roll the children; TTIN/TTOU one
child more/less.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psutil
from setproctitle import setproctitle

from . import child as childmod
from . import messages, reaper
from .backoff import capped_exponential
from .config import SETTINGS, Config
from .connection import ConnectionSpec, redact
from .exits import EXIT_CHILD_BOOT, EXIT_FAILED, EXIT_OK, EXIT_REDIS
from .metrics import Gauges, MasterMetrics, MetricsError, MetricsServer
from .recovery import Recovery
from .registry import WorkerPool
from .systemd import Notifier

log = logging.getLogger("forkq.master")

EXIT_METRICS = EXIT_FAILED  # --metrics cannot be served (port in use, extra missing)

# After this many children in a row die before reporting ready, the master gives up.
MAX_BOOT_FAILURES = 5
# Time the master gives a child beyond the shutdown timeout before SIGKILL.
KILL_GRACE = 5.0
# A booting child counts as healthy for the watchdog this long.
BOOT_GRACE = 60.0
# Longest a rolling replacement waits for the new child before stopping the old one.
REPLACE_WAIT = 60.0
# Recycling (max jobs / max memory) leaves this gap after one replacement before the
# next: children that reach their limit together are replaced one after the other,
# not back to back (a HUP's rolling restart is not spaced).
RECYCLE_GAP = 1.0
STATUS_EVERY = 2.0
REPORT_STALE = 5.0
# How long, once stopping with no child left, the loop waits for the last releases.
FINAL_RELEASE_WAIT = 15.0
# A ready child that sent no status line (one a second) for this long and is not
# running (stopped by SIGSTOP or a debugger, or asleep using no CPU) is frozen or
# stuck: it is killed and its jobs requeued, before another host's reaper hands
# them out while it may still resume.  A child busy in C code holding the GIL uses
# CPU, so it is left alone.
STUCK_AFTER = 60.0

SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGTSTP, signal.SIGCHLD)
_NAMES: dict[int, str] = {signal.SIGHUP: "hup", signal.SIGQUIT: "quit", signal.SIGINT: "int",
          signal.SIGTERM: "term", signal.SIGTTIN: "ttin", signal.SIGTTOU: "ttou",
          signal.SIGTSTP: "tstp", signal.SIGCHLD: "chld"}


@dataclass
class ChildProc:
    pid: int
    index: int
    identity: str
    fd: int
    started: float
    reader: messages.LineReader = field(default_factory=messages.LineReader)
    ready: bool = False
    retiring: bool = False
    term_sent_at: float | None = None
    killed: bool = False
    busy: int = 0
    conc: int = 0
    done: int = 0
    ok: bool = True
    last_report: float = 0.0
    last_error: str | None = None
    redis_down: str | None = None
    starting: bool = False  # inside PoolRuntime.start(): it may have fetched jobs
    cpu_mark: tuple[float, float] | None = None  # (since, CPU seconds) while silent


class Master:
    def __init__(self, *, pool: WorkerPool, app: str, spec: ConnectionSpec, config: Config,
                 reload_app: Callable[[], WorkerPool] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.pool = pool
        self.app = app
        self.spec = spec
        self.config = config
        self.reload_app = reload_app
        self.notifier = notifier or Notifier()
        self.pid = os.getpid()
        self.target = config.processes
        self.children: dict[int, ChildProc] = {}
        self.sig_queue: deque[int] = deque()
        self.stopping = False
        self.quiet = False
        self.exit_code = EXIT_OK
        self.error: str | None = None
        self.boot_failures = 0
        self.next_spawn_at = 0.0
        self.any_ready = False
        self.announced_ready = False
        self.reloading = False
        self.startup_reap_done = False
        self.second_reap_at: float | None = None
        self.replace_queue: deque[int] = deque()
        self.replacing: tuple[int, float] | None = None
        self.recycle_pids: set[int] = set()
        self.next_recycle_at = 0.0
        # Redis work (releasing dead children's jobs, reaping stale pools) runs in
        # helper processes: this loop never waits on the network.
        self.recovery = Recovery(keys=pool.keys, spec=spec, config=config,
                                 reporters=lambda: self.pool.reporters)
        self.final_deadline: float | None = None
        self.oom_seen = _oom_kills()
        self.next_watchdog = 0.0
        self.next_status = 0.0
        self.last_status = ""
        self.last_title = ""
        self._wake_r = -1
        self._wake_w = -1
        self._redis_down_logged = 0.0
        self._redis_wait_logged = False
        self.started_at = time.monotonic()
        self.next_beat = 0.0  # the master beats for its children (_beat_children)
        pool.config = config
        # forkq --metrics (forkq/metrics.py): sums of the children's rows, served from this loop.
        self.metrics: MasterMetrics | None = None
        self.metrics_server: MetricsServer | None = None

    # -- entry ------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; return the process exit code."""
        if self.config.metrics and not self._start_metrics():
            return self.exit_code
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)
        log.info("forkq master %d: app %s (namespace %s, %d jobs), %d children x %d threads, "
                 "Redis %s", self.pid, self.app, self.pool.namespace, len(self.pool.jobs),
                 self.target, self.config.concurrency, self.spec.describe())
        if threading.active_count() > 1:
            # Threads do not survive fork: whatever they do would silently stop in children.
            log.warning("the app started %d thread(s) at import (%s); they do not run in the "
                        "children: start them in a job or a reporter instead",
                        threading.active_count() - 1,
                        ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread()))
        self._title()
        try:
            while True:
                self._manage_children()
                if self.stopping and not self.children and self._releases_settled():
                    break
                self._wait(self._timeout())
                self._dispatch_signals()
                self._reap()
                self._beat_children()
                self._step_recovery()
                self._check_frozen()
                self._step_replacement()
                self._step_stop()
                self._systemd()
                self._title()
        finally:
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.notifier.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
        if self.error is None:
            log.info("forkq master %d: stopped", self.pid)
        return self.exit_code

    def _start_metrics(self) -> bool:
        """Bind ``--metrics`` before the first fork; False (with the error set) if it cannot."""
        from .metrics import check_available, exposition, parse_bind

        metrics = MasterMetrics(lambda: self.pool.jobs)
        try:
            check_available()
            host, port = parse_bind(self.config.metrics)
            self.metrics_server = MetricsServer(host, port, lambda: exposition(metrics, self._gauges))
        except (MetricsError, ValueError) as exc:
            self.error = str(exc)
            self.exit_code = EXIT_METRICS
            return False
        self.metrics = metrics
        log.info("metrics at http://%s:%d/metrics", *self.metrics_server.address)
        return True

    def _gauges(self) -> Gauges:
        live = [c for c in self.children.values() if c.ready]
        return Gauges(children=len(self.children), busy_threads=sum(c.busy for c in live),
                      threads=sum(c.conc for c in live))

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only record it: everything happens in the main loop (set_wakeup_fd wakes select).
        if len(self.sig_queue) < 10 or signum != signal.SIGCHLD:
            self.sig_queue.append(signum)

    # -- loop parts -------------------------------------------------------------------
    def _timeout(self) -> float:
        now = time.monotonic()
        t = 1.0
        if self.stopping or self.replacing or self.replace_queue or self.recovery.busy:
            t = 0.25
        if len(self._active()) < self.target and not self.stopping:
            t = min(t, max(0.0, self.next_spawn_at - now))
        if self.notifier.watchdog_interval:
            t = min(t, max(0.0, self.next_watchdog - now))
        if self.children and not self.stopping:
            t = min(t, max(0.0, self.next_beat - now))
        return t

    def _wait(self, timeout: float) -> None:
        fds = [self._wake_r] + [c.fd for c in self.children.values() if c.fd >= 0]
        if self.recovery.fileno() >= 0:
            fds.append(self.recovery.fileno())
        server = self.metrics_server
        wfds: list[int] = []
        if server is not None:
            server.expire()
            fds += server.read_fds()
            wfds = server.write_fds()
        try:
            readable, writable, _ = select.select(fds, wfds, [], timeout)
        except InterruptedError:
            return
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return
            raise
        for fd in writable:
            if server is not None:
                server.on_writable(fd)
        for fd in readable:
            if server is not None and server.owns(fd):
                server.on_readable(fd)
            elif fd == self.recovery.fileno():
                self.recovery.read()
            elif fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            else:
                for c in list(self.children.values()):
                    if c.fd == fd:
                        self._read_reports(c)

    def _dispatch_signals(self) -> None:
        while self.sig_queue:
            sig = self.sig_queue.popleft()
            handler = getattr(self, "handle_" + _NAMES.get(sig, ""), None)
            if handler is not None:
                handler()

    # -- signal handlers (run in the main loop) ---------------------------------------
    def handle_chld(self) -> None:
        """Reaping happens on every loop turn; the signal only wakes the loop."""

    def handle_term(self) -> None:
        self._begin_stop()

    handle_int = handle_term
    handle_quit = handle_term

    def handle_tstp(self) -> None:
        if self.stopping or self.quiet:
            return
        log.info("quiet: children stop taking new jobs (running ones finish)")
        self.quiet = True
        for c in self.children.values():
            self._kill(c, signal.SIGUSR1)

    def handle_ttin(self) -> None:
        if self.stopping:
            return
        self.target += 1
        log.info("TTIN: %d children", self.target)

    def handle_ttou(self) -> None:
        if self.stopping or self.target <= 1:
            return
        self.target -= 1
        log.info("TTOU: %d children", self.target)

    def handle_hup(self) -> None:
        if self.stopping:
            return
        if self.reload_app is not None:
            try:
                pool = self.reload_app()
            except Exception as exc:  # noqa: BLE001 - keep running the code we have
                log.error("HUP: reloading %s failed, children keep the running code: %s",
                          self.app, redact(str(exc)).splitlines()[0] if str(exc) else exc)
                return
            pool.config = replace(pool.config, **_process_fields(self.config))
            self.config = pool.config
            self.pool = pool
            self.recovery.config = self.config
        active = sorted(self._active(), key=lambda c: c.index)
        log.info("HUP: rolling restart of %d children", len(active))
        self.reloading = True
        self.notifier.notify("RELOADING=1", f"STATUS=rolling restart of {len(active)} children")
        for c in active:
            if c.pid not in self.replace_queue:
                self.replace_queue.append(c.pid)

    # -- children -----------------------------------------------------------------------
    def _active(self) -> list[ChildProc]:
        return [c for c in self.children.values() if not c.retiring]

    def _free_index(self) -> int:
        used = {c.index for c in self._active()}
        i = 1
        while i in used:
            i += 1
        return i

    def _manage_children(self) -> None:
        if self.stopping:
            return
        active = self._active()
        if len(active) < self.target and time.monotonic() >= self.next_spawn_at:
            for _ in range(self.target - len(active)):
                try:
                    self._spawn(self._free_index())
                except OSError as exc:  # EAGAIN/ENOMEM: out of processes or memory
                    log.error("cannot fork a child (%s); next try in 5s", exc)
                    self.next_spawn_at = time.monotonic() + 5.0
                    break
        elif len(active) > self.target and not self.replacing:
            victim = max(active, key=lambda c: c.index)
            log.info("stopping child %d (pid %d): %d children wanted", victim.index, victim.pid,
                     self.target)
            self._terminate(victim)

    def _spawn(self, index: int) -> ChildProc:
        nonce = os.urandom(6).hex()
        r, w = os.pipe2(os.O_CLOEXEC)
        close = [r, *self._own_fds()]
        plan = childmod.ChildPlan(
            index=index, nonce=nonce, pool=self.pool, spec=self.spec, config=self.config,
            app=self.pool.namespace, master_pid=self.pid, report_fd=w, close_fds=tuple(close),
            quiet=self.quiet)
        # Block signals across fork: the child must not run the master's handlers.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            os.close(r)
            os.close(w)
            raise
        if pid == 0:  # pragma: no cover - the child's life ends in os._exit
            signal.set_wakeup_fd(-1)
            childmod.run(plan)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(w)
        os.set_blocking(r, False)
        c = ChildProc(pid=pid, index=index, identity=childmod.identity_for(pid, nonce), fd=r,
                      started=time.monotonic())
        self.children[pid] = c
        log.debug("spawned child %d (pid %d)", index, pid)
        return c

    def _own_fds(self) -> list[int]:
        """The master's descriptors, which a forked process must close."""
        fds = [self._wake_r, self._wake_w] + [c.fd for c in self.children.values() if c.fd >= 0]
        for fd in (self.notifier.fileno(), self.recovery.fileno()):
            if fd >= 0:
                fds.append(fd)
        if self.metrics_server is not None:
            fds += self.metrics_server.fds()
        return fds

    def _kill(self, c: ChildProc, sig: int) -> None:
        try:
            os.kill(c.pid, sig)
        except ProcessLookupError:
            pass

    def _terminate(self, c: ChildProc) -> None:
        """Ask a child to stop gracefully (it requeues what it cannot finish)."""
        c.retiring = True
        if c.term_sent_at is None:
            c.term_sent_at = time.monotonic()
            self._kill(c, signal.SIGTERM)

    def _read_reports(self, c: ChildProc) -> None:
        while True:
            try:
                data = os.read(c.fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:  # EOF: the child is gone (reaped soon)
                os.close(c.fd)
                c.fd = -1
                break
            for msg in c.reader.feed(data):
                self._on_report(c, msg)

    def _on_report(self, c: ChildProc, msg: messages.Message) -> None:
        now = time.monotonic()
        if isinstance(msg, messages.Status):
            c.busy, c.conc, c.done, c.ok = msg.busy, msg.conc, msg.done, msg.ok
            c.last_report = now
        elif isinstance(msg, messages.JobRows):
            if self.metrics is not None:
                self.metrics.on_report(c.pid, msg.rows)
        elif isinstance(msg, messages.Ready):
            c.ready = True
            c.redis_down = None
            c.last_report = now
            self.boot_failures = 0
            self.any_ready = True
            log.info("child %d (pid %d) ready", c.index, c.pid)
        elif isinstance(msg, messages.Starting):
            c.starting = True
        elif isinstance(msg, messages.RedisRefused):
            c.starting = False
            self._fatal(EXIT_REDIS, msg.msg)
        elif isinstance(msg, messages.RedisDown):
            c.starting = False
            c.redis_down = msg.msg
            if not self.any_ready:
                self._wait_for_redis(c.redis_down)
            elif now - self._redis_down_logged > 30:
                self._redis_down_logged = now
                log.warning("child %d cannot start: %s (retrying)", c.index, c.redis_down)
        elif isinstance(msg, messages.BootError):
            c.last_error = msg.msg
        elif isinstance(msg, messages.Recycle):
            if not self.stopping and not c.retiring and c.pid not in self.replace_queue:
                log.info("recycling child %d (pid %d): %s", c.index, c.pid, msg.why)
                self.replace_queue.append(c.pid)
                self.recycle_pids.add(c.pid)
        elif isinstance(msg, messages.RemoteStop):
            if not self.stopping:
                log.warning("Web UI asked child %d (pid %d) to stop: stopping gracefully",
                            c.index, c.pid)
                self._begin_stop()
        elif isinstance(msg, messages.HardTimeout):
            log.error("child %d (pid %d): hard timeout of %s; replacing it", c.index, c.pid,
                      ", ".join(msg.jobs))

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                wpid, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status = pid, 0
            if wpid == 0:
                continue
            self._on_exit(self.children.pop(pid), status)

    def _on_exit(self, c: ChildProc, status: int) -> None:
        if c.fd >= 0:
            self._read_reports(c)
            if c.fd >= 0:
                os.close(c.fd)
                c.fd = -1
        if self.metrics is not None:
            self.metrics.on_exit(c.pid)  # its counts stay in the sums
        how = _describe_status(status)
        expected = c.retiring or self.stopping
        if expected:
            log.info("child %d (pid %d) %s", c.index, c.pid, how)
        elif c.ready:
            log.warning("child %d (pid %d) %s; requeueing its jobs and replacing it",
                        c.index, c.pid, how)
        # Whatever the reason, its in-progress jobs go back at once.  (A child that
        # never started its pool, or failed to reach Redis, took nothing.)
        if c.ready or c.starting:
            self.recovery.release(c.identity, f"child {c.index} (pid {c.pid})",
                                  blame=self._blame(c, status))
            self._step_recovery()
        if expected or c.ready:
            if not expected:
                self.next_spawn_at = time.monotonic() + 0.1
            return
        # Died before it said it was ready: a boot failure.
        self.boot_failures += 1
        reason = c.last_error or c.redis_down or how
        if c.redis_down and not self.any_ready:
            self._wait_for_redis(c.redis_down)
            if self.stopping:
                return
        if self.boot_failures >= MAX_BOOT_FAILURES:
            self._fatal(EXIT_CHILD_BOOT, f"children keep dying at boot ({self.boot_failures} in a "
                                         f"row); last: {reason}")
            return
        delay = capped_exponential(self.boot_failures, base=0.25, cap=10.0, jitter=0)
        log.error("child %d died at boot (%s); next try in %.2fs", c.index, reason, delay)
        self.next_spawn_at = time.monotonic() + delay

    def _blame(self, c: ChildProc, status: int) -> reaper.Blame:
        """How far a dead child's jobs are suspected of having killed it (poison detection).

        A child the master killed itself (frozen, past the stop timeout) was not killed
        by its jobs.  A SIGKILL from outside with no OOM kill on the machine since the
        last death is an operator's or a script's: counted apart, with a higher bar.
        Crashes, exits and OOM kills are the jobs' doing until proven otherwise.
        """
        oom = _oom_kills()
        new_oom, self.oom_seen = oom > self.oom_seen, max(oom, self.oom_seen)
        if c.killed:
            return "none"
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and not new_oom:
            return "kill"
        return "crash"

    def _wait_for_redis(self, reason: str) -> None:
        """No child ever reached Redis: keep them trying for ``redis_wait`` seconds, then give up."""
        waited = time.monotonic() - self.started_at
        if waited >= self.config.redis_wait:
            self._fatal(EXIT_REDIS, f"{reason} (gave up after {self.config.redis_wait:g}s)")
        elif not self._redis_wait_logged:
            self._redis_wait_logged = True
            log.warning("waiting for Redis at %s (up to %gs): %s", self.spec.describe(),
                        self.config.redis_wait, reason)

    def _fatal(self, code: int, message: str) -> None:
        if self.error is None:
            self.error = message
            self.exit_code = code
        self._begin_stop()

    # -- Redis work, off the loop (forkq/recovery.py) ----------------------------------------
    def _beat_children(self) -> None:
        """Every beat interval, have a helper refresh the beats and leases of live
        children that went silent.

        A child whose job holds the GIL in C code cannot beat itself, nor send its
        status reports (every second); its master knows it is alive (heartbeat.py),
        so the pool is not reaped as dead.  Children that report beat themselves,
        so no helper is forked for them.
        """
        now = time.monotonic()
        if now < self.next_beat or self.stopping:
            return
        interval = self.config.heartbeat_interval
        self.next_beat = now + interval
        silent_after = 3 * childmod.STATUS_EVERY  # reports missed: its threads may be blocked
        ids = [c.identity for c in self.children.values()
               if c.ready and not c.retiring and c.term_sent_at is None and not c.killed
               and c.last_report and now - c.last_report > silent_after]
        if ids:
            self.recovery.beat(ids, sorted(n for n, s in self.pool.jobs.items()
                                           if s.options.max_concurrency > 0),
                               group_leases=any(s.options.group_concurrency > 0
                                                for s in self.pool.jobs.values()))

    def _step_recovery(self) -> None:
        self.recovery.reap()
        try:
            self.recovery.step(close_fds=self._own_fds())
        except OSError:
            pass  # fork failed: logged, retried

    def _releases_settled(self) -> bool:
        """Stopping with no child left: wait (bounded) for the last releases to finish."""
        if not self.recovery.pending and self.recovery.helper is None:
            return True
        now = time.monotonic()
        if self.final_deadline is None:
            self.final_deadline = now + FINAL_RELEASE_WAIT
        if now >= self.final_deadline:
            log.error("giving up on requeueing the jobs of %s: the stale-pool reaper will",
                      ", ".join(self.recovery.pending.values()) or "the last children")
            return True
        return False

    def _startup_reap(self) -> None:
        """Once every child is up: recover pools of hosts that died while we were down.

        Pools that died just before this start are not stale yet; a second pass once
        they are (``stale_after`` later) recovers them without waiting for the
        children's periodic reaper.
        """
        if not self.startup_reap_done:
            self.second_reap_at = time.monotonic() + self.config.stale_after + random.uniform(0.5, 2.0)
        self.startup_reap_done = True
        self.recovery.reap_stale(exclude=[c.identity for c in self.children.values()])

    def _check_frozen(self) -> None:
        """Kill ready children that stopped reporting and are not running (see STUCK_AFTER)."""
        now = time.monotonic()
        frozen_after = self.config.frozen_after
        for c in self.children.values():
            if not c.ready or c.killed or c.term_sent_at is not None:
                continue
            silent = now - c.last_report
            if silent < frozen_after:
                c.cpu_mark = None
                continue
            try:
                proc = psutil.Process(c.pid)
                status = proc.status()
                cpu = sum(proc.cpu_times()[:2])
            except psutil.Error:
                continue
            stopped = status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
            if c.cpu_mark is None or c.cpu_mark[1] != cpu:
                c.cpu_mark = (now, cpu)
            idle_for = now - c.cpu_mark[0]
            if stopped or (silent >= STUCK_AFTER and idle_for >= STUCK_AFTER / 2):
                how = "is stopped (SIGSTOP?)" if stopped else "uses no CPU"
                log.warning("child %d (pid %d) sent no status for %.0fs and %s; killing it so "
                            "its jobs are requeued now", c.index, c.pid, silent, how)
                c.killed = True
                self._kill(c, signal.SIGKILL)

    # -- replacement and stop --------------------------------------------------------------
    def _step_replacement(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        if self.replacing is not None:
            old_pid, since = self.replacing
            old = self.children.get(old_pid)
            if old is None:
                self.replacing = None
                if old_pid in self.recycle_pids:
                    self.recycle_pids.discard(old_pid)
                    self.next_recycle_at = now + RECYCLE_GAP
            else:
                if old.term_sent_at is None:
                    active = self._active()
                    if (len(active) >= self.target and all(c.ready for c in active)) or \
                            now - since > REPLACE_WAIT:
                        self._terminate(old)
                return
        while self.replace_queue and self.replacing is None:
            if self.replace_queue[0] in self.recycle_pids and now < self.next_recycle_at:
                break
            pid = self.replace_queue.popleft()
            c = self.children.get(pid)
            if c is None or c.retiring:
                continue
            c.retiring = True  # no longer counted: its replacement starts now
            try:
                self._spawn(self._free_index())
            except OSError as exc:
                log.error("cannot fork a replacement for child %d (%s); it keeps running",
                          c.index, exc)
                c.retiring = False
                continue
            self.replacing = (pid, now)
        if self.reloading and self.replacing is None and not self.replace_queue:
            self.reloading = False
            log.info("rolling restart done")
            self.notifier.notify("READY=1")

    def _begin_stop(self) -> None:
        now = time.monotonic()
        if self.stopping:
            if self.error is None:
                log.warning("second stop signal: killing children now (their jobs are requeued)")
                for c in self.children.values():
                    c.killed = True
                    self._kill(c, signal.SIGKILL)
            return
        self.stopping = True
        if self.error is None:
            log.info("stopping: children finish running jobs (up to %.0fs)",
                     self.config.shutdown_timeout)
        self.notifier.notify("STOPPING=1")
        for c in self.children.values():
            self._terminate(c)
        self.next_status = now

    def _step_stop(self) -> None:
        now = time.monotonic()
        limit = self.config.shutdown_timeout + KILL_GRACE
        for c in self.children.values():
            if c.term_sent_at is not None and not c.killed and now - c.term_sent_at > limit:
                log.warning("child %d (pid %d) did not stop in %.0fs; killing it", c.index, c.pid,
                            limit)
                c.killed = True
                self._kill(c, signal.SIGKILL)

    # -- systemd and titles ---------------------------------------------------------------
    def _systemd(self) -> None:
        now = time.monotonic()
        active = self._active()
        if not self.announced_ready and not self.stopping and len(active) >= self.target and \
                all(c.ready for c in active):
            self.announced_ready = True
            log.info("all %d children are up", len(active))
            self.notifier.notify("READY=1", f"MAINPID={self.pid}")
            if not self.startup_reap_done:
                self._startup_reap()
        if self.second_reap_at is not None and now >= self.second_reap_at and not self.stopping:
            self.second_reap_at = None
            self._startup_reap()
        self.notifier.flush()
        if self.notifier.watchdog_interval and now >= self.next_watchdog:
            self.next_watchdog = now + self.notifier.watchdog_interval
            if self._healthy(now):
                self.notifier.notify("WATCHDOG=1")
        if self.notifier.enabled and now >= self.next_status:
            self.next_status = now + STATUS_EVERY
            status = self._status_text()
            if status != self.last_status:
                self.last_status = status
                self.notifier.notify(f"STATUS={status}")

    def _healthy(self, now: float) -> bool:
        """Every child shows progress (or is still in its boot window)."""
        active = self._active()
        if not active:
            return self.stopping
        for c in active:
            if not c.ready:
                if now - c.started > BOOT_GRACE:
                    return False
            elif not c.ok or now - c.last_report > REPORT_STALE:
                return False
        return True

    def _status_text(self) -> str:
        kids = list(self.children.values())
        busy = sum(c.busy for c in kids)
        conc = sum(c.conc or self.config.concurrency for c in kids)
        done = sum(c.done for c in kids)
        return f"{self._state()}: {len(kids)} children, {busy}/{conc} busy, {done} jobs done by these children"

    def _state(self) -> str:
        if self.stopping:
            return "stopping"
        if self.reloading:
            return "reloading"
        if self.quiet:
            return "quiet"
        if not self.announced_ready:
            return "booting"
        return "running"

    def _title(self) -> None:
        n = len(self.children)
        title = f"forkq master {self.pool.namespace} [{n} {'child' if n == 1 else 'children'}] {self._state()}"
        if title != self.last_title:
            self.last_title = title
            setproctitle(title)


def _oom_kills() -> int:
    """The kernel's count of OOM kills on this machine (Linux >= 4.13), else 0."""
    try:
        with open("/proc/vmstat", "rb") as f:
            for line in f:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _process_fields(config: Config) -> dict[str, Any]:
    """The fields the CLI and environment decide (kept when the app is reloaded)."""
    return {s.field: getattr(config, s.field) for s in SETTINGS
            if s.field is not None and (s.env is not None or s.flag is not None)}


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    if code == childmod.EXIT_HARD_TIMEOUT:
        return "exited after a hard timeout"
    if code == childmod.EXIT_FENCED:
        return "stopped: it was reaped elsewhere while frozen (fenced)"
    return f"exited with code {code}"
