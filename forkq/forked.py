"""What a prefork child does about processes its jobs fork, and about jobs that close fds 0-2.

A job may call ``os.fork()`` (directly, or through ``multiprocessing``'s fork start
method).  Three things went wrong before this module:

* a forked process that returned from the job's function came back into forkq's
  worker loop, with Redis sockets shared with its parent, and hung there forever
  (it had no fetcher thread), outliving the whole tree;
* forked processes that exited were never waited for (zombies);
* a forked process whose parent died kept running.

``install()`` registers fork hooks in the forkq child.  In the forked process
(``after_in_child``) it records that this process is not the pool's, asks the
kernel to kill it when the forking thread's process dies (``PR_SET_PDEATHSIG``),
and tells the pool's process its pid and which job forked it, over a pipe.  The
executor calls :func:`leave_if_forked` right after a handler returns: a forked
process exits there instead of running forkq's code.  The child's main loop calls
:func:`reap_finished` a few times a second: it reaps (``waitpid(pid, WNOHANG)``)
only processes forked by a job that has *finished*, so a running job that waits
for its own children (``multiprocessing.Process.join``) is never robbed of the
exit status.  ``subprocess`` does not run fork hooks and is not affected.

``protect_stdio()`` keeps forkq's own log output off fds 0-2: the log handlers
write to a private duplicate of stderr, so a job that closes 0-2 (after which a
new Redis socket may get one of those numbers) cannot make forkq write log lines
into a Redis connection; ``reopen_stdio()`` puts ``/dev/null`` back on any of
0-2 a job closed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1

_owner_pid = 0
_forked = False     # set in a job's forked copy (a global read on the hot path)
_report_w = -1
_report_r = -1
# pid -> (thread ident that forked it, the job's start mark in that thread)
_tracked: dict[int, tuple[int, float]] = {}


def _no_mark(ident: int) -> float | None:
    return None


_job_mark: Callable[[int], float | None] = _no_mark


def install(job_mark: Callable[[int], float | None]) -> None:
    """Call once in the forkq child.  ``job_mark(thread_ident)`` returns a value that
    identifies the job that thread runs now (None when it runs none)."""
    global _owner_pid, _report_r, _report_w, _job_mark
    _owner_pid = os.getpid()
    _job_mark = job_mark
    _report_r, _report_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def is_forked() -> bool:
    """True in a process forked by a job (not the pool's own process)."""
    return _forked


def leave_if_forked(ok: bool) -> None:
    """A job's forked copy returned into forkq's code: end it here, never run forkq's loop."""
    if _forked:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        os._exit(0 if ok else 1)


def _after_fork_in_child() -> None:
    global _forked
    if _owner_pid == 0:
        return
    _forked = True
    if os.getppid() != _owner_pid:
        return  # a fork of a fork: only the pool's direct children are tracked
    _set_pdeathsig(signal.SIGKILL)
    mark = _job_mark(threading.get_ident())
    try:
        os.write(_report_w, f"{os.getpid()} {threading.get_ident()} {mark!r}\n".encode())
    except OSError:
        pass


def reap_finished() -> int:
    """Reap exited processes forked by jobs that have finished; return how many."""
    if _report_r < 0 or is_forked():
        return 0
    try:
        data = os.read(_report_r, 65536)
    except (BlockingIOError, OSError):
        data = b""
    for line in data.decode(errors="replace").splitlines():
        try:
            pid_s, ident_s, mark_s = line.split(" ", 2)
            _tracked[int(pid_s)] = (int(ident_s), float(mark_s) if mark_s != "None" else -1.0)
        except ValueError:
            continue
    reaped = 0
    for pid, (ident, mark) in list(_tracked.items()):
        current = _job_mark(ident)
        if current is not None and current == mark:
            continue  # the job that forked it still runs: it may wait for it itself
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid  # someone waited for it already
        if done:
            del _tracked[pid]
            reaped += 1
    return reaped


def _set_pdeathsig(sig: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def protect_stdio() -> None:
    """Point every log handler writing to fd 1 or 2 at a private duplicate (fd >= 3)."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if not isinstance(handler, logging.StreamHandler) or stream is None:
            continue
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        if fd in (1, 2):
            dup = os.dup(fd)
            os.set_inheritable(dup, False)
            handler.setStream(os.fdopen(dup, "w", buffering=1, encoding="utf-8",
                                        errors="backslashreplace"))


def reopen_stdio() -> None:
    """Put /dev/null on any of fds 0-2 that a job closed, before a socket takes it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
