"""``sd_notify`` without libsystemd: one datagram per message to ``$NOTIFY_SOCKET``.

The master uses it to say READY=1 (every child up), STATUS=..., STOPPING=1,
RELOADING=1 and WATCHDOG=1 (only while every child shows progress).  Outside
systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op, so the master calls
it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("forkq.systemd")


class Notifier:
    """A datagram socket to systemd's notify socket, opened on first use."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET") or ""
        # "@name" is an abstract-namespace socket (leading NUL byte on Linux).
        self.address: str | None = ("\0" + addr[1:]) if addr.startswith("@") else (addr or None)
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._warned = False
        self._full = False
        self._pending: list[bytes] = []

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message; False if not sent.

        The send never blocks: the master's loop must not wait on the service manager.
        A receiver whose queue is full (Linux holds ``net.unix.max_dgram_qlen``
        datagrams, 10 by default, 512 under systemd) drops a ``WATCHDOG=1`` or
        ``STATUS=`` (the next one follows within a second), while a state change
        (``READY=1``, ``RELOADING=1``, ``STOPPING=1``) is kept, in order, and sent by
        the next call or :meth:`flush`.
        """
        if self.address is None:
            return False
        msg = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
        if self._pending and not self.flush():
            if self._full and _is_state_change(fields):
                self._pending.append(msg)
            return False
        if self._send(msg):
            return True
        if self._full and _is_state_change(fields):
            self._pending.append(msg)
        return False

    def flush(self) -> bool:
        """Send the state changes a full queue held back; True when none is left."""
        while self._pending:
            if not self._send(self._pending[0]):
                return False
            self._pending.pop(0)
        return True

    def _send(self, msg: bytes) -> bool:
        self._full = False
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg, socket.MSG_DONTWAIT, self.address)
            return True
        except BlockingIOError:
            self._full = True
            return False
        except OSError as exc:
            if not self._warned:
                # Not fatal: a service manager that stopped listening must not stop the jobs.
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._warned = True
            return False

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or 0 when no watchdog is set.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for.
    """
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return 0.0
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return 0.0
    try:
        value = int(usec)
    except ValueError:
        return 0.0
    return value / 1e6 / 2 if value > 0 else 0.0


_STATE_CHANGES = ("READY=", "RELOADING=", "STOPPING=")


def _is_state_change(fields: tuple[str, ...]) -> bool:
    return any(f.startswith(_STATE_CHANGES) for f in fields)
