"""Turning the user's ``redis`` argument into connections, and keeping secrets out of text.

A forked child must never reuse its parent's sockets, so what we keep is a
*spec* that can open fresh connections anywhere (``ConnectionSpec.connect``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ConfigError

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis", "rediss", "unix")


_USERINFO = re.compile(r"(\w+://)([^:/@\s]*):([^\s/?#]*)@")
_QUERY_SECRET = re.compile(r"([?&](?:password|pass|pwd)=)[^&#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide passwords in any URL inside ``text`` (``redis://user:***@host``).

    The password may itself hold ``@`` (the last ``@`` of the authority ends it),
    and redis-py also accepts it as a ``?password=`` query parameter.
    """
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1\2:***@", text))


def validate_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL {redact(url)!r}: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"bad Redis URL {redact(url)!r}: scheme must be one of {', '.join(s + '://' for s in _SCHEMES)}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"bad Redis URL {redact(url)!r}: no host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a non-numeric port
    except ValueError:
        raise ConfigError(f"bad Redis URL {redact(url)!r}: port is not a number") from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        # redis-py silently falls back to database 0 here: a typo would mix two apps' data.
        raise ConfigError(f"bad Redis URL {redact(url)!r}: database {redact(db)!r} is not a number")
    try:
        # Query options (socket_timeout=..., db=...) would otherwise fail only in a child at boot.
        redis.connection.parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL {redact(url)!r}: {redact(str(exc))}") from None
    return url


@dataclass(frozen=True, kw_only=True)
class ConnectionSpec:
    """How to open a connection: a URL, or the kwargs of a user's ``redis.Redis``."""

    url: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    connection_class: Any = None

    @classmethod
    def of(cls, value: str | redis.Redis | ConnectionSpec | None) -> ConnectionSpec:
        if isinstance(value, ConnectionSpec):
            return value
        if value is None:
            return cls(url=DEFAULT_URL)
        if isinstance(value, str):
            return cls(url=validate_url(value))
        if isinstance(value, redis.Redis):
            pool = value.connection_pool
            kw = dict(pool.connection_kwargs)
            kw.pop("decode_responses", None)
            return cls(kwargs=kw, connection_class=pool.connection_class)
        raise ConfigError(f"redis must be a URL or a redis.Redis, got {type(value).__name__}")

    def __repr__(self) -> str:
        # The dataclass repr would print the URL's password or the kwargs' one.
        return f"ConnectionSpec({self.describe()!r})"

    def connect_worker(self, **overrides: Any) -> redis.Redis:
        """A client for a pool's own threads: redis-py never re-sends a command by itself.

        redis-py retries a command whose reply was lost; a fetch sent twice would
        leave the first batch in the in-progress hash, unknown to the fetcher.
        forkq's loops retry with their own backoff and reconcile what they hold.
        """
        return self.connect(retry=Retry(NoBackoff(), 0), **overrides)

    def connect(self, **overrides: Any) -> redis.Redis:
        """A new client with its own pool; bytes responses (orjson reads bytes)."""
        opts: dict[str, Any] = {"decode_responses": False, "health_check_interval": 0}
        opts.update(overrides)
        if self.url is not None:
            return redis.Redis.from_url(self.url, **opts)
        kw = dict(self.kwargs)
        kw.update(opts)
        pool = redis.ConnectionPool(connection_class=self.connection_class or redis.Connection, **kw)
        return redis.Redis(connection_pool=pool)

    def describe(self) -> str:
        """Where this points, safe to print (no password)."""
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme == "unix":
                return f"unix://{parts.path}"
            netloc = parts.hostname or ""
            if parts.port:
                netloc += f":{parts.port}"
            return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        host = self.kwargs.get("host") or self.kwargs.get("path") or "?"
        port = self.kwargs.get("port")
        return f"{host}:{port}" if port else str(host)

