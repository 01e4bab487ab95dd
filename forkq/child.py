"""One forked child: a ``PoolRuntime`` with fresh connections, obeying the master only.

The child's main thread never runs jobs.  It sleeps on a self-pipe (signals wake
it) and, a few times a second, does the cheap checks that need a process-wide
view: the master still alive, a job past its *hard* timeout, recycling limits
(jobs done, RSS), the process title.  Once a second it sends a status line to
the master over its report pipe (busy, jobs done, "shows progress"), which the
master uses for ``STATUS=`` and ``WATCHDOG=1``.

Signals: SIGTERM = stop gracefully (quiet, finish running jobs up to the
shutdown timeout, requeue the rest, exit 0); SIGUSR1 = quiet.  The terminal's
signals (INT from Ctrl-C, QUIT, TSTP, TTIN/TTOU, HUP) reach the whole process
group; children ignore them and wait for the master to say what to do.  The
child exits if the master dies (``PR_SET_PDEATHSIG`` plus a ``getppid`` check).

Report lines are JSON, one ``os.write`` each (atomic below PIPE_BUF); the
write end is non-blocking, so a master that stopped reading costs reports, never
a stuck child.

(Over 400 lines on purpose: a child's whole life (setup, boot, its loop, hard timeouts, fencing) is one sequence, easier to follow in one file.)
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import select
import signal
import sys
import time
from dataclasses import dataclass, replace
from typing import NoReturn

import psutil
import redis
from redis.exceptions import RedisError
from setproctitle import setproctitle

from . import clock, forked, messages, results, scripts
from .backoff import capped_exponential
from .config import Config, pool_hostname
from .connection import ConnectionSpec, redact
from .errors import RedisRefused
from .executor import RUNNING, Slot
from .job import Job, MalformedPayload, decode, group_of
from .metrics import OTHER, JobMetrics
from .registry import WorkerPool
from .retry import failure_settle
from .runtime import PoolRuntime
from .scripts import Settle
from .spec import JobOptions

log = logging.getLogger("forkq.child")

EXIT_OK = 0
EXIT_BOOT = 3           # could not build or start the pool (the reason was reported first)
EXIT_HARD_TIMEOUT = 4   # a job ignored its timeout; the master replaces this child
EXIT_FENCED = 5         # reaped by another process while frozen: stopped at once

TICK = 0.25
STATUS_EVERY = 1.0
MEMORY_EVERY = 2.0
RECYCLE_REPEAT = 30.0
# Jitter on --max-jobs-per-child: up to this fraction more, so children recycle apart.
JOBS_JITTER = 0.1

_PR_SET_PDEATHSIG = 1
_IGNORED = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN,
            signal.SIGTTOU)


def identity_for(pid: int, nonce: str) -> str:
    """A child's pool identity, Sidekiq-shaped (``host:pid:nonce``).

    The master picks the nonce before ``fork``; both sides then know the pid, so
    the master knows which in-progress hash to requeue when the child dies without
    the child having to tell it anything.
    """
    return f"{pool_hostname()}:{pid}:{nonce}"


@dataclass(frozen=True, kw_only=True)
class ChildPlan:
    """Everything a child needs, decided by the master before ``fork``."""

    index: int
    nonce: str
    pool: WorkerPool
    spec: ConnectionSpec
    config: Config
    app: str
    master_pid: int
    report_fd: int
    close_fds: tuple[int, ...]
    quiet: bool


def run(plan: ChildPlan) -> NoReturn:
    """The child's whole life after ``fork``; never returns into the master's stack."""
    code = EXIT_BOOT
    try:
        code = _Child(plan).main()
    except BaseException as exc:  # noqa: BLE001 - last resort: report, then exit
        try:
            log.exception("child %d crashed", plan.index)
            messages.send(plan.report_fd, messages.BootError(msg=_one_line(exc)))
        except BaseException:  # noqa: BLE001
            pass
    finally:
        _flush_logs()
        # os._exit: no atexit handlers and no finally blocks of the master's
        # stack (the CLI's embedded-Redis cleanup belongs to the master alone).
        os._exit(code)


def _flush_logs() -> None:
    """Before ``os._exit``: what was logged must reach the journal."""
    for h in logging.getLogger().handlers:
        try:
            h.flush()
        except Exception:  # noqa: BLE001
            pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": "))


def _set_pdeathsig(sig: int) -> None:
    """Linux: have the kernel send ``sig`` when the master dies (best effort elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _ignore(signum: int, frame: object) -> None:
    """A no-op handler, not SIG_IGN: an ignored disposition would leak into job subprocesses."""


class _Child:
    def __init__(self, plan: ChildPlan) -> None:
        self.plan = plan
        self._stop = False
        self._quiet = plan.quiet
        self._quiet_applied = False
        self._wake_r = -1
        self._last_title = ""
        self._ctl: redis.Redis | None = None
        self._jobs_limit = 0
        if plan.config.max_jobs_per_child > 0:
            self._jobs_limit = plan.config.max_jobs_per_child + random.randint(0, int(plan.config.max_jobs_per_child * JOBS_JITTER))
        self._proc = psutil.Process()

    # -- process setup ---------------------------------------------------------
    def _setup(self) -> None:
        plan = self.plan
        for fd in plan.close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        os.set_blocking(plan.report_fd, False)
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r = r
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        for sig in _IGNORED:
            signal.signal(sig, _ignore)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_quiet)
        # Signals were blocked by the master around fork; our handlers are in place now.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        _set_pdeathsig(signal.SIGTERM)
        if os.getppid() != plan.master_pid:  # the master died before prctl
            self._stop = True
        os.environ.pop("NOTIFY_SOCKET", None)  # only the master talks to systemd
        forked.protect_stdio()
        self._title("booting")

    def _on_term(self, signum: int, frame: object) -> None:
        self._stop = True

    def _on_quiet(self, signum: int, frame: object) -> None:
        self._quiet = True

    def _title(self, state: str) -> None:
        if state != self._last_title:
            self._last_title = state
            setproctitle(f"forkq child {self.plan.index} {self.plan.app} [{state}]")

    def send(self, msg: messages.Message) -> None:
        messages.send(self.plan.report_fd, msg)

    def _sleep(self, seconds: float) -> None:
        """Sleep until a signal arrives or ``seconds`` pass."""
        try:
            readable, _, _ = select.select([self._wake_r], [], [], seconds)
        except InterruptedError:
            return
        if readable:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except (BlockingIOError, OSError):
                pass

    # -- main -----------------------------------------------------------------------
    def main(self) -> int:
        self._setup()
        plan = self.plan
        identity = identity_for(os.getpid(), plan.nonce)
        try:
            rt = PoolRuntime(plan.pool, plan.spec, concurrency=plan.config.concurrency, identity=identity,
                             tag=plan.app, master_reaps=True)
        except Exception as exc:  # noqa: BLE001 - reported to the master, then exit
            self.send(messages.BootError(msg=_one_line(exc)))
            return EXIT_BOOT
        # Sidekiq Web UI "Stop" on this process: the whole service stops, via the master.
        rt.on_remote_stop = lambda: self.send(messages.RemoteStop())
        # Ready before the first fetch, not after start(): a job it takes at once
        # (a crash requeued to run next) can kill it before start() returns, and a
        # child that dies before its ready report counts as one that could not boot
        # (five in a row stop the service).
        rt.on_running = lambda: self.send(messages.Ready(identity=identity))
        rt.fetcher.on_fenced = self._fenced
        forked.install(rt.executor.job_mark)
        if self._quiet:
            rt.fetcher.set_quiet(True)  # born into a quiet master: never take a job
        attempt = 0
        if plan.config.metrics:  # forkq --metrics: per-job rows, sent with the status line
            rt.executor.metrics = JobMetrics(len(rt.executor.slots))
        while True:
            if self._stop:
                return EXIT_OK
            try:
                self.send(messages.Starting())
                rt.start()
                break
            except RedisRefused as exc:
                self.send(messages.RedisRefused(msg=redact(str(exc))))
                return EXIT_BOOT
            except ConnectionError as exc:
                # Redis is down: not this child's fault; keep trying until told to stop.
                self.send(messages.RedisDown(msg=redact(str(exc))))
                self._title("waiting for Redis")
                self._sleep(capped_exponential(attempt + 1, base=0.2, cap=5.0, jitter=0))
                attempt += 1
            except Exception as exc:  # noqa: BLE001 - reported to the master, then exit
                self.send(messages.BootError(msg=_one_line(exc)))
                return EXIT_BOOT
        try:
            return self._loop(rt)
        finally:
            if self._ctl is not None:
                self._ctl.close()

    def _fenced(self) -> None:
        """Reaped elsewhere while frozen: exit at once, without finishing any job (they run
        elsewhere now); the master requeues whatever this pool took since."""
        _flush_logs()
        os._exit(EXIT_FENCED)

    def _loop(self, rt: PoolRuntime) -> int:
        plan = self.plan
        slots = rt.executor.slots
        total = len(slots)
        next_status = 0.0
        next_memory = time.monotonic() + MEMORY_EVERY
        recycle_asked = -RECYCLE_REPEAT
        recycle_why: str | None = None
        while True:
            self._sleep(TICK)
            if self._stop:
                break
            forked.reopen_stdio()
            forked.reap_finished()
            if self._quiet and not self._quiet_applied:
                rt.quiet()
                self._quiet_applied = True
            if os.getppid() != plan.master_pid:
                log.warning("child %d: the master (pid %d) is gone; stopping", plan.index,
                            plan.master_pid)
                break
            overdue = self._overdue(slots, time.monotonic())
            if overdue:
                return self._hard_timeout(rt, overdue)
            mono = time.monotonic()
            if recycle_why is None:
                if self._jobs_limit and rt.stats.total_processed >= self._jobs_limit:
                    recycle_why = f"{rt.stats.total_processed} jobs done (limit {self._jobs_limit})"
                elif plan.config.max_memory_per_child_mb and mono >= next_memory:
                    next_memory = mono + MEMORY_EVERY
                    rss_mb = self._rss_mb()
                    if rss_mb > plan.config.max_memory_per_child_mb:
                        recycle_why = f"RSS {rss_mb} MB above {plan.config.max_memory_per_child_mb} MB"
            if recycle_why is not None and mono - recycle_asked >= RECYCLE_REPEAT:
                # The master recycles one child at a time: it starts a replacement,
                # then sends SIGTERM.  Until then this child keeps working.
                recycle_asked = mono
                self.send(messages.Recycle(why=recycle_why))
            busy = sum(1 for s in slots if s.state == RUNNING)
            self._title(("quiet, " if self._quiet_applied else "") + f"{busy}/{total} busy")
            if mono >= next_status:
                next_status = mono + STATUS_EVERY
                self.send(messages.Status(busy=busy, conc=total, done=rt.stats.total_processed,
                                          ok=self._shows_progress(rt, mono),
                                          quiet=self._quiet_applied))
                self._send_metrics(rt)
        self._title("stopping")
        rt.stop(plan.config.shutdown_timeout)
        self._send_metrics(rt)  # a graceful stop (recycling, HUP) loses no count
        return EXIT_OK

    def _send_metrics(self, rt: PoolRuntime) -> None:
        metrics = rt.executor.metrics
        if metrics is not None:
            for rows in metrics.changed_rows():
                self.send(messages.JobRows(rows=rows))

    def _rss_mb(self) -> int:
        try:
            return int(self._proc.memory_info().rss // (1024 * 1024))
        except psutil.Error:
            return 0

    def _shows_progress(self, rt: PoolRuntime, mono: float) -> bool:
        """Is this pool doing its work (for systemd's watchdog)?

        The fetcher makes a round trip at least every ``idle_poll_interval`` when
        idle and after every completion when busy; it only waits longer when every
        thread is running a job (those are bounded by the hard timeout) or when
        quiet.  The heartbeat must also be getting through to Redis.
        """
        cfg = self.plan.config
        window = max(10.0, 3 * cfg.idle_poll_interval + 5.0)
        fetcher = rt.fetcher
        fetching = (fetcher.quiet or mono - fetcher.last_progress < window
                    or fetcher.inflight >= rt.concurrency)
        beating = time.monotonic() - rt.heartbeat.last_beat_mono < max(15.0, 3 * cfg.heartbeat_interval)
        return bool(fetching and beating)

    # -- hard timeout -------------------------------------------------------------
    def _overdue(self, slots: list[Slot], now: float) -> list[tuple[Slot, str, str, bytes, float]]:
        """Slots past deadline + grace; ``now`` and deadlines are ``time.monotonic()``."""
        out = []
        for s in slots:
            deadline = s.deadline
            if s.state != RUNNING or not deadline:
                continue
            timeout = deadline - s.started_mono
            if now < deadline + max(self.plan.config.hard_timeout_grace, 0.5 * timeout):
                continue
            with s.lock:
                if s.state != RUNNING or s.deadline != deadline:
                    continue
                out.append((s, s.field, s.queue, s.payload, timeout))
        return out

    def _hard_timeout(self, rt: PoolRuntime, overdue: list[tuple[Slot, str, str, bytes, float]]) -> int:
        """A job kept running past its timeout + grace: fail it, then replace this process.

        A thread cannot be killed, so the process goes.  The stuck job fails with
        reason "timeout" and goes through retry like any failure; the other jobs
        get the shutdown timeout to finish and are requeued (not failed) if not.
        """
        plan = self.plan
        rt.fetcher.set_quiet(True)
        self._title("hard timeout, stopping")
        settles: list[Settle] = []
        names = []
        mono = time.monotonic()
        for _slot, field, qname, payload, timeout in overdue:
            try:
                data = decode(payload)
            except MalformedPayload:
                continue
            job = Job.from_data(data)
            spec = plan.pool.jobs.get(job.name)
            opts = spec.options if spec is not None else JobOptions()
            names.append(f"{job.name} {job.id}")
            if rt.executor.metrics is not None:  # its own thread is stuck and will never count it
                rt.executor.metrics.record(_slot.index, job.name if spec is not None else OTHER,
                                           mono - _slot.started_mono, True)
            message = (f"hard timeout: job still running {mono - _slot.deadline:.1f}s after "
                       f"its timeout of {timeout:g}s; its worker process was replaced")
            settle = failure_settle(
                field=field, name=qname if opts.max_concurrency > 0 else None, data=data,
                error_class="JobTimeout", error_message=message,
                max_fails=opts.max_fails, skip_dead=opts.skip_dead, backoff=opts.backoff, job=job)
            if opts.group_concurrency > 0 and (group := group_of(data)) is not None:
                settle = replace(settle, name=qname, group=group)  # drop its group lease
            if opts.result_ttl is not None:  # its result record, written with the ack below
                final = settle.op != "r"
                settle = replace(settle, jid=job.id, result_ttl=opts.result_ttl, result_final=final,
                                 result=results.record("dead" if final else "retrying",
                                                       error=f"JobTimeout: {message}"))
            settles.append(settle)
        log.error("child %d: %s ignored its timeout; failing it and replacing this process",
                  plan.index, ", ".join(names))
        if rt.reporters is not None:
            # The job's own thread is stuck and will never report its outcome.
            for slot, *_ in overdue:
                running = slot.job
                if running is not None:
                    rt.reporters.emit("aborted", running, "timeout")
                    rt.reporters.emit("stopped", running)
        self.send(messages.HardTimeout(jobs=tuple(names)))
        if settles:
            try:
                conn = self._control_conn()
                kept = [x for x in settles if x.result is not None]
                scripts.run(conn, [scripts.ack(
                    rt.keys, identity=rt.identity, plain_done=(), settles=settles,
                    dead_cutoff=clock.now() - plan.config.dead_max_age, dead_max=plan.config.dead_max_jobs),
                    *([scripts.store_results(rt.keys, kept)] if kept else [])])
                rt.stats.add(len(settles), len(settles))
            except RedisError as exc:
                # The master requeues whatever is left in our in-progress hash.
                log.error("could not record the timeout of %s: %s", ", ".join(names), exc)
        stuck = len(overdue)
        deadline = time.monotonic() + plan.config.shutdown_timeout
        while rt.fetcher.inflight > stuck and time.monotonic() < deadline and not self._stop:
            self._sleep(0.05)
        rt.stop(0)
        self._send_metrics(rt)
        return EXIT_HARD_TIMEOUT

    def _control_conn(self) -> redis.Redis:
        if self._ctl is None:
            self._ctl = self.plan.spec.connect()
        return self._ctl
