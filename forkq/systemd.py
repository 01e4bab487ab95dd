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

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message; False if not sent."""
        if self.address is None:
            return False
        msg = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg, self.address)
            return True
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
