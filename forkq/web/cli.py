"""``forkq web [--bind HOST:PORT] [-n NS] [--redis URL] [--read-only] [--password PW]``.

Serves the dashboard with uvicorn.  Every user mistake (missing extra, bad bind
address, unreachable Redis) prints one line on stderr and exits non-zero:
2 for usage (and the missing ``web`` extra), 1 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import importlib
import socket
import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO

from ..config import env_value
from ..connection import DEFAULT_URL, redact
from ..exits import EXIT_FAILED, EXIT_OK, EXIT_REDIS, EXIT_USAGE

DEFAULT_BIND = "127.0.0.1:7070"
_NEEDED = ("starlette", "jinja2", "uvicorn", "prometheus_client", "python_multipart", "itsdangerous")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[::1]:PORT`` or ``:PORT`` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise UsageError(f"--bind wants HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise UsageError(f"--bind port must be a number, got {port!r}") from None
    if not 0 < p < 65536:
        raise UsageError(f"--bind port must be 1-65535, got {p}")
    return host, p


def parser() -> _Parser:
    p = _Parser(prog="forkq web", description=(
        "forkq's dashboard: overview with live charts, busy processes, queues, scheduled, "
        "retries, dead and periodic jobs, with actions; Prometheus gauges at /metrics."))
    p.add_argument("--bind", default=env_value("FORKQ_WEB_BIND", DEFAULT_BIND),
                   metavar="HOST:PORT", help="where to listen (env FORKQ_WEB_BIND; default %(default)s)")
    p.add_argument("--redis", default=env_value("FORKQ_REDIS_URL", DEFAULT_URL), metavar="URL",
                   help="Redis URL (env FORKQ_REDIS_URL; default %(default)s)")
    p.add_argument("-n", "--namespace", default=env_value("FORKQ_NAMESPACE", "forkq"),
                   help="key namespace (env FORKQ_NAMESPACE; default %(default)s)")
    p.add_argument("--read-only", action="store_true",
                   help="show everything, allow no action (every POST is refused)")
    p.add_argument("--password", default=env_value("FORKQ_WEB_PASSWORD") or None,
                   help="require HTTP basic auth with this password, any user name "
                        "(env FORKQ_WEB_PASSWORD, which keeps it out of the process list)")
    p.add_argument("--root-path", default=env_value("FORKQ_WEB_ROOT_PATH", ""), metavar="PREFIX",
                   help="URL prefix a reverse proxy serves the dashboard under, e.g. /forkq "
                        "(env FORKQ_WEB_ROOT_PATH)")
    p.add_argument("--log-level", default="info", type=str.lower,
                   choices=["debug", "info", "warning", "error", "critical"])
    return p


def run(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    try:
        try:
            a = parser().parse_args(list(argv))
        except SystemExit as exc:  # --help
            return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_OK
        host, port = parse_bind(a.bind)
        if a.root_path and not a.root_path.startswith("/"):
            raise UsageError(f"--root-path must start with '/', got {a.root_path!r}")
    except UsageError as exc:
        err.write(f"forkq web: error: {_one_line(str(exc))}\n")
        return EXIT_USAGE
    missing = [m for m in _NEEDED if not _importable(m)]
    if missing:
        from . import MISSING_EXTRA

        err.write(f"forkq web: error: {MISSING_EXTRA}; missing: {', '.join(missing)}\n")
        return EXIT_USAGE

    import redis
    import uvicorn

    from ..client import Client
    from ..errors import ConfigError
    from .app import create_app

    try:
        if a.redis == "embedded":  # the embedded server's socket, as the other verbs
            from ..embedded import EmbeddedRedis

            a.redis = EmbeddedRedis().url
        probe = Client(a.redis, a.namespace, socket_connect_timeout=3.0, socket_timeout=5.0)
        where = probe.describe()
        try:
            probe.connection.ping()
        finally:
            probe.close()
        app = create_app(a.redis, a.namespace, read_only=a.read_only, password=a.password or None)
    except (ConfigError, ValueError, TypeError) as exc:
        err.write(f"forkq web: error: {_one_line(str(exc))}\n")
        return EXIT_USAGE
    except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
        err.write(f"forkq web: error: Redis at {where} refused: {_one_line(str(exc))}\n")
        return EXIT_FAILED
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        err.write(f"forkq web: error: cannot reach Redis at {where}: {_one_line(str(exc))}\n")
        return EXIT_REDIS
    except redis.RedisError as exc:
        err.write(f"forkq web: error: Redis at {where} refused: {_one_line(str(exc))}\n")
        return EXIT_FAILED
    # Bind here, not inside uvicorn: a port in use is then one line and exit 1.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        err.write(f"forkq web: error: cannot listen on {a.bind}: {_one_line(exc.strerror or str(exc))}\n")
        return EXIT_FAILED
    shown = f"[{host}]" if ":" in host else host
    out.write(f"forkq web: serving namespace {a.namespace!r} of {where} on "
              f"http://{shown}:{port}{a.root_path}/"
              f"{' (read-only)' if a.read_only else ''}{' (password)' if a.password else ''}\n")
    out.flush()
    config = uvicorn.Config(app, host=host, port=port, root_path=a.root_path, log_level=a.log_level,
                            proxy_headers=True, server_header=False, lifespan="on")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close()
    return EXIT_OK if server.started else EXIT_FAILED


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _one_line(text: str) -> str:
    return redact(" ".join(text.split())) or "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    return run(list(sys.argv[1:] if argv is None else argv), sys.stdout, sys.stderr)
