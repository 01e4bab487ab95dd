"""Turning the user's ``redis`` argument into connections, and keeping secrets out of text.

A forked child must never reuse its parent's sockets, so what we keep is a
*spec* that can open fresh connections anywhere (``ConnectionSpec.connect``).

Three deployments (DESIGN.md §9):

* standalone: ``redis://``, ``rediss://``, ``unix://`` (redis-py's own connections);
* Sentinel: ``redis+sentinel://[user:pass@]h1:p1[,h2:p2]/SERVICE[/DB]``;
* Redis Cluster: ``redis+cluster://[user:pass@]h1:p1[,h2:p2]``.

forkq talks to exactly one server at a time in every deployment: the master
(Sentinel), or the owner of the namespace's one slot (Cluster: every key is
under ``{ns}``).  So instead of redis-py's Sentinel and Cluster clients (a
cluster client would not run our packed pipelines, and redis-py's Sentinel
connections follow the master only once the old one refuses writes) each
process keeps a *locator* per deployment: where the server is now, and a
generation number that changes when it moves.  A connection dials whatever the
locator says, and a connection opened under an older generation is closed
before its next write, so every connection of the process follows a move
before it writes to the old server again:

* Sentinel: a thread per process subscribes to ``+switch-master`` on the
  sentinels (the old master keeps accepting writes for seconds after the
  switch, and writes there are lost when it is demoted); READONLY and
  connection errors also make the locator ask the sentinels again.
* Cluster: ``MOVED`` names the new owner.  A redirected call (MOVED, ASK,
  TRYAGAIN, CLUSTERDOWN, READONLY) never ran, so it is re-sent after a short
  backoff: the ``Redirected`` error, which the connections' retry policy
  retries (worker connections retry nothing else).

(Over 400 lines on purpose: URL parsing and validation plus the per-process locators that follow a Sentinel master or a Cluster slot owner: one concern, the address of Redis.)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry

from .backoff import capped_exponential
from .errors import ConfigError

log = logging.getLogger("forkq.connection")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")

# URL query options forkq passes on to the connections; anything else is a typo
# (or an option of another client, like ``?cluster=true``) and a usage error.
_OPTIONS = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_read_size",
    "health_check_interval", "client_name", "username", "password", "protocol", "timeout",
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile",
    "ssl_password", "ssl_check_hostname", "ssl_min_version",
})
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
# How long a redirected call is retried (a slot migration or a failover in progress).
REDIRECT_RETRIES = 60
REDIRECT_BACKOFF_CAP = 0.25

_USERINFO = re.compile(r"([\w+]+://)([^:/@\s]*):([^\s/?#]*)@")
_QUERY_SECRET = re.compile(r"([?&](?:password|pass|pwd|sentinel_password|ssl_password)=)[^&#\s]*",
                           re.IGNORECASE)


def redact(text: str) -> str:
    """Hide passwords in any URL inside ``text`` (``redis://user:***@host``).

    The password may itself hold ``@`` (the last ``@`` of the authority ends it),
    and redis-py also accepts it as a ``?password=`` query parameter.
    """
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1\2:***@", text))


@dataclass(frozen=True, kw_only=True)
class Target:
    """A parsed Sentinel or Cluster deployment (standalone URLs stay redis-py's)."""

    kind: str  # "sentinel" | "cluster"
    nodes: tuple[tuple[str, int], ...]
    service: str = ""
    tls: bool = False
    # Keyword arguments of every data connection (auth, db, timeouts, TLS files).
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Keyword arguments of the connections to the sentinels.
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        nodes = ",".join(f"{h}:{p}" for h, p in self.nodes)
        scheme = ("rediss+" if self.tls else "redis+") + self.kind
        if self.kind == "sentinel":
            db = self.kwargs.get("db", 0)
            return f"{scheme}://{nodes}/{self.service}" + (f"/{db}" if db else "")
        return f"{scheme}://{nodes}"

    def key(self) -> tuple[Any, ...]:
        return (self.kind, self.nodes, self.service, self.tls,
                tuple(sorted((k, repr(v)) for k, v in self.kwargs.items())))


def _bad(url: str, why: str) -> ConfigError:
    return ConfigError(f"bad Redis URL {redact(url)!r}: {why}")


def _parse_nodes(url: str, hosts: str) -> tuple[tuple[str, int], ...]:
    nodes = []
    for part in hosts.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep:
            host, port = part.strip(), "26379" if "sentinel" in url.split("://")[0] else "6379"
        host = host.strip("[]")
        if not host:
            raise _bad(url, f"no host in {part!r}")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad(url, f"port {port!r} is not a number")
        nodes.append((host, int(port)))
    return tuple(nodes)


def parse_target(url: str) -> Target:
    """Parse a ``redis[s]+sentinel://`` or ``redis[s]+cluster://`` URL (ConfigError if bad)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES or "+" not in scheme:
        raise _bad(url, "not a Sentinel or Cluster URL")
    kind = scheme.split("+")[1]
    tls = scheme.startswith("rediss")
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        userinfo, hosts = "", authority
    if not hosts:
        raise _bad(url, "no host")
    nodes = _parse_nodes(url, hosts)
    kwargs: dict[str, Any] = {}
    sentinel_kwargs: dict[str, Any] = {}
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if colon:
            kwargs["password"] = unquote(password)
        if user:
            kwargs["username"] = unquote(user)
    service = ""
    segments = [s for s in path.split("/") if s]
    if kind == "sentinel":
        if not segments:
            raise _bad(url, "no service name (redis+sentinel://host:port/SERVICE[/DB])")
        service = unquote(segments[0])
        segments = segments[1:]
    if len(segments) > 1 or (kind == "cluster" and segments and segments[0] != "0"):
        raise _bad(url, "Redis Cluster has only database 0" if kind == "cluster"
                   else "path must be /SERVICE[/DB]")
    if segments:
        if not segments[0].isdigit():
            raise _bad(url, f"database {redact(segments[0])!r} is not a number")
        kwargs["db"] = int(segments[0])
    options = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)]
    known = _OPTIONS | (_SENTINEL_OPTIONS if kind == "sentinel" else frozenset())
    unknown = sorted({k for k, _ in options if k not in known})
    if unknown:
        raise _bad(url, f"unknown option(s) {', '.join(unknown)} (forkq knows: {', '.join(sorted(known))})")
    plain = [(k, v) for k, v in options if k not in _SENTINEL_OPTIONS]
    if plain:
        # redis-py's own URL parser converts the values (and rejects bad ones).
        probe = f"{'rediss' if tls else 'redis'}://127.0.0.1/?" + "&".join(f"{k}={quote(v)}" for k, v in plain)
        try:
            parsed = redis.connection.parse_url(probe)
        except ValueError as exc:
            raise _bad(url, redact(str(exc))) from None
        for k in ("host", "port", "connection_class"):
            parsed.pop(k, None)
        kwargs.update(parsed)
    if kind == "cluster" and kwargs.get("db"):
        raise _bad(url, "Redis Cluster has only database 0")
    for k, v in options:
        if k in _SENTINEL_OPTIONS:
            sentinel_kwargs[k.removeprefix("sentinel_")] = v
    return Target(kind=kind, nodes=nodes, service=service, tls=tls, kwargs=kwargs,
                  sentinel_kwargs=sentinel_kwargs)


def validate_url(url: str) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"Redis URL must be a string, got {type(url).__name__}")
    scheme = url.partition("://")[0]
    if "+" in scheme and scheme in _SCHEMES:
        parse_target(url)
        return url
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
    unknown = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)} - _OPTIONS)
    if unknown:
        # redis-py would pass them to the connection class: the child dies at boot.
        raise ConfigError(f"bad Redis URL {redact(url)!r}: unknown option(s) {', '.join(unknown)} "
                          f"(forkq knows: {', '.join(sorted(_OPTIONS))})")
    try:
        # Query options (socket_timeout=..., db=...) would otherwise fail only in a child at boot.
        redis.connection.parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL {redact(url)!r}: {redact(str(exc))}") from None
    return url


# ---------------------------------------------------------------------------
# Locators: where the one server of a deployment is, per process.
# ---------------------------------------------------------------------------

class Redirected(redis.ConnectionError):
    """The server did not run the call and said where (or when) to send it again."""


class Locator:
    """Where the server is now; ``generation`` changes when it moves."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.generation = 0
        self._addr: tuple[str, int] | None = None
        self._stale = True
        self._lock = threading.Lock()

    def describe(self) -> str:
        return self.target.describe()

    def address(self) -> tuple[str, int]:
        with self._lock:
            if self._addr is not None and not self._stale:
                return self._addr
        addr = self._discover()
        self.set(addr)
        return addr

    def set(self, addr: tuple[str, int]) -> None:
        with self._lock:
            self._stale = False
            if addr != self._addr:
                if self._addr is not None:
                    log.warning("%s: now at %s:%d (was %s:%d)", self.describe(), *addr, *self._addr)
                self._addr = addr
                self.generation += 1

    def invalidate(self) -> None:
        """Find the server again at the next connect (a connection failed)."""
        with self._lock:
            self._stale = True

    def redirect(self, exc: ResponseError) -> Redirected | None:
        if isinstance(exc, (ReadOnlyError, MasterDownError)):
            self.invalidate()
            self.address()  # so a retry dials the new server
            return Redirected(f"{self.describe()}: {exc} (finding the master again)")
        return None

    def _discover(self) -> tuple[str, int]:
        raise NotImplementedError

    def _probe(self, host: str, port: int, kwargs: dict[str, Any]) -> redis.Redis:
        opts = dict(kwargs)
        opts.pop("db", None)
        if self.target.tls:
            opts["ssl"] = True
            for k, v in self.target.kwargs.items():
                if k.startswith("ssl_"):
                    opts.setdefault(k, v)
        # No CLIENT SETINFO (see ConnectionSpec.connect): the documented ACL line lacks it.
        return redis.Redis(host=host, port=port, socket_timeout=1.0, socket_connect_timeout=1.0,
                           retry=Retry(NoBackoff(), 0), **{**_NO_SETINFO, **opts})


class SentinelLocator(Locator):
    """The master of ``service``, as the sentinels say; threads follow the failover.

    One thread per sentinel subscribes to its events (only the leader of a
    failover announces its steps).  ``+failover-state-send-slaveof-noone`` comes
    just before the replica is promoted: from then on a write to the old master
    may be lost, so connections stop writing (they wait in ``address``) until the
    sentinels name the new master (``+switch-master``), or ``SWITCH_WAIT`` passes
    (an aborted failover).
    """

    SWITCH_WAIT = 10.0
    CHANNELS = ("+switch-master", "+failover-state-send-slaveof-noone", "+failover-end",
                "-failover-abort-not-elected", "-failover-abort-slave-timeout",
                "-failover-abort-no-good-slave")

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._watching = False
        self._switch_from: tuple[str, int] | None = None
        self._switch_deadline = 0.0

    def address(self) -> tuple[str, int]:
        if not self._watching:
            with self._lock:
                if not self._watching:
                    self._watching = True
                    for node in self.target.nodes:
                        threading.Thread(target=self._watch, args=(node,), name="forkq-sentinel-watch",
                                         daemon=True).start()
        while True:
            with self._lock:
                if self._addr is not None and not self._stale:
                    return self._addr
                switching = self._switch_from
                if switching is not None and time.monotonic() > self._switch_deadline:
                    self._switch_from = switching = None
            addr = self._discover()
            if switching is not None and addr == switching:
                time.sleep(0.02)  # the sentinels still name the old master: hold the write
                continue
            self.set(addr)
            return addr

    def set(self, addr: tuple[str, int]) -> None:
        with self._lock:
            self._switch_from = None
        super().set(addr)

    def _switching(self) -> None:
        with self._lock:
            if self._addr is None or self._switch_from is not None:
                return
            self._switch_from = self._addr
            self._switch_deadline = time.monotonic() + self.SWITCH_WAIT
            self._stale = True
            self.generation += 1  # every connection re-dials (and waits) before its next write
        log.warning("%s: failover under way; holding writes until the new master is named",
                    self.describe())

    def _ask(self, host: str, port: int) -> tuple[str, int] | None:
        conn = self._probe(host, port, self.target.sentinel_kwargs)
        try:
            reply = conn.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.target.service)
        finally:
            conn.close()
        if not reply:
            return None
        return (reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0]), int(reply[1]))

    def _discover(self) -> tuple[str, int]:
        errors = []
        for host, port in self.target.nodes:
            try:
                addr = self._ask(host, port)
            except redis.RedisError as exc:
                errors.append(f"{host}:{port}: {exc}")
                continue
            if addr is not None:
                return addr
            errors.append(f"{host}:{port}: does not know service {self.target.service!r}")
        raise redis.ConnectionError(f"{self.describe()}: no sentinel named a master ({'; '.join(errors)})")

    def _on_event(self, channel: str, data: str) -> None:
        parts = data.split()
        if channel == "+switch-master":
            if len(parts) == 5 and parts[0] == self.target.service:
                self.set((parts[3], int(parts[4])))
            return
        # "<type> <name> <ip> <port> @ <master-name> <master-ip> <master-port>"
        if "@" not in parts or parts[parts.index("@") + 1:][:1] != [self.target.service]:
            return
        if channel == "+failover-state-send-slaveof-noone":
            self._switching()
        else:  # the failover ended or was aborted: ask the sentinels again
            with self._lock:
                self._switch_from = None
                self._stale = True

    def _watch(self, node: tuple[str, int]) -> None:
        """Subscribe to one sentinel's failover events, forever (daemon thread)."""
        host, port = node
        failures = 0
        while True:
            conn = self._probe(host, port, self.target.sentinel_kwargs)
            try:
                ps = conn.pubsub(ignore_subscribe_messages=True)
                ps.subscribe(*self.CHANNELS)
                failures = 0
                while True:
                    msg = ps.get_message(timeout=5.0)
                    if msg is None:
                        ps.ping()  # a dead sentinel shows up as an error here
                        continue
                    if msg.get("type") == "message":
                        self._on_event(msg["channel"].decode(), msg["data"].decode())
            except Exception as exc:  # noqa: BLE001 - the watcher must never die
                failures += 1
                if failures == 1:
                    log.debug("sentinel %s:%d watch lost (%s); resubscribing", host, port, exc)
                time.sleep(min(2.0, 0.05 * failures))
                # A switch may have happened while we were not subscribed.
                self.invalidate()
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001, S110
                    pass


class ClusterLocator(Locator):
    """The master that owns the slot of ``{namespace}`` (every key forkq writes)."""

    def __init__(self, target: Target, namespace: str) -> None:
        super().__init__(target)
        self.namespace = namespace
        self.slot = key_slot(("{" + namespace + "}").encode())

    def describe(self) -> str:
        return f"{self.target.describe()} (slot {self.slot} of namespace {self.namespace!r})"

    def _discover(self) -> tuple[str, int]:
        errors = []
        seeds = ([self._addr] if self._addr else []) + list(self.target.nodes)
        for host, port in seeds:
            conn = self._probe(host, port, self.target.kwargs)
            try:
                ranges = conn.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError as exc:
                errors.append(f"{host}:{port}: {exc}")
                continue
            finally:
                conn.close()
            for r in ranges:
                if int(r[0]) <= self.slot <= int(r[1]):
                    ip = r[2][0].decode() if isinstance(r[2][0], bytes) else str(r[2][0])
                    return (ip or host, int(r[2][1]))
            errors.append(f"{host}:{port}: no node serves slot {self.slot}")
        raise redis.ConnectionError(f"{self.describe()}: cannot find the slot's owner ({'; '.join(errors)})")

    def redirect(self, exc: ResponseError) -> Redirected | None:
        if isinstance(exc, MovedError):
            self.set((exc.host, int(exc.port)))
            return Redirected(f"{self.describe()}: {exc}")
        if isinstance(exc, (AskError, TryAgainError, ClusterDownError)):
            # Mid-migration (ASK/TRYAGAIN) or a failover in the cluster: wait, then ask again.
            self.invalidate()
            return Redirected(f"{self.describe()}: {exc}")
        return super().redirect(exc)


def sharded_pubsub(conn: redis.Redis | Any) -> bool:
    """Whether wakes go over sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``): on Redis Cluster.

    A classic ``PUBLISH`` in a cluster is copied to every node over the cluster bus;
    a sharded one stays on the shard that owns the channel's slot (the namespace's,
    ``{ns}:wake``).  ``conn`` is a client or one of its connections.
    """
    pool = getattr(conn, "connection_pool", None)
    if pool is not None:
        return isinstance(pool.connection_kwargs.get("locator"), ClusterLocator)
    return isinstance(getattr(conn, "locator", None), ClusterLocator)


def publish(pipe: Any, sharded: bool, channel: str, message: str) -> None:
    """Queue a wake on ``pipe`` (a pipeline or client): ``SPUBLISH`` on a cluster."""
    pipe.execute_command("SPUBLISH" if sharded else "PUBLISH", channel, message)


_NO_SETINFO: dict[str, Any] = (
    {"driver_info": None} if importlib.util.find_spec("redis.driver_info") is not None
    else {"lib_name": None, "lib_version": None})

_locators: dict[tuple[Any, ...], Locator] = {}
_locators_lock = threading.Lock()


def locator_for(target: Target, namespace: str | None) -> Locator:
    """This process's locator (a forked child builds its own: key includes the pid)."""
    if target.kind == "cluster" and not namespace:
        raise ConfigError(f"{target.describe()}: Redis Cluster needs a non-empty namespace "
                          "(all of a namespace's keys live in the slot of {namespace})")
    key = (os.getpid(), target.key(), namespace if target.kind == "cluster" else None)
    with _locators_lock:
        loc = _locators.get(key)
        if loc is None:
            loc = (ClusterLocator(target, namespace or "") if target.kind == "cluster"
                   else SentinelLocator(target))
            _locators[key] = loc
        return loc


class _Following:
    """Mixin for redis-py connections that dial the locator's server and follow it."""

    locator: Locator
    _generation: int
    _sock: Any
    host: str
    port: int

    def __init__(self, *args: Any, locator: Locator, **kwargs: Any) -> None:
        self.locator = locator
        self._generation = -1
        kwargs.setdefault("host", "0.0.0.0")  # noqa: S104 - replaced at every connect
        super().__init__(*args, **kwargs)

    def _connect(self) -> Any:
        self._generation = self.locator.generation
        self.host, self.port = self.locator.address()
        self._generation = self.locator.generation
        try:
            return super()._connect()  # type: ignore[misc]
        except OSError:
            self.locator.invalidate()
            raise

    def moved(self) -> bool:
        return self._sock is not None and self._generation != self.locator.generation

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self.moved():
            self.disconnect()  # type: ignore[attr-defined]
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def can_read(self, timeout: float = 0) -> bool:
        if self.moved():
            self.disconnect()  # type: ignore[attr-defined]
            raise redis.ConnectionError(f"{self.locator.describe()}: the server moved")
        return bool(super().can_read(timeout))  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ResponseError as exc:
            redirected = self.locator.redirect(exc)
            if redirected is None:
                raise
            raise redirected from exc
        except redis.ConnectionError:
            self.locator.invalidate()
            raise


class FollowingConnection(_Following, redis.Connection):
    pass


class FollowingSSLConnection(_Following, redis.SSLConnection):
    pass


class FollowRetry(Retry):
    """redis-py's retry, plus: a ``Redirected`` call is re-sent (it never ran) with backoff.

    ``retries`` applies to connection errors as before (0 for worker connections:
    a lost reply may hide a call that ran); redirects have their own budget.
    """

    def __init__(self, retries: int, redirects: int = REDIRECT_RETRIES) -> None:
        super().__init__(ExponentialBackoff(cap=1.0, base=0.05), retries)
        self._redirects = redirects

    def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any],
                        is_retryable: Callable[[Exception], bool] | None = None,
                        with_failure_count: bool = False) -> Any:
        redirects = 0
        failures = 0
        while True:
            try:
                return do()
            except Redirected as error:
                redirects += 1
                if with_failure_count:
                    fail(error, redirects)
                else:
                    fail(error)
                if redirects > self._redirects:
                    raise
                time.sleep(capped_exponential(redirects + 1, base=0.005, cap=REDIRECT_BACKOFF_CAP, jitter=0))
            except self._supported_errors as error:
                if is_retryable and not is_retryable(error):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                if failures > self._retries:
                    raise
                time.sleep(self._backoff.compute(failures))


def _target_of_client(value: Any) -> Target | None:
    """A ``Sentinel.master_for`` client or a ``RedisCluster``: the same deployment as a Target."""
    from redis.sentinel import SentinelConnectionPool

    pool = getattr(value, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        if not pool.is_master:
            raise ConfigError("redis: a Sentinel replica client (slave_for) cannot take writes; "
                              "use Sentinel.master_for or a redis+sentinel:// URL")
        kw = {k: v for k, v in pool.connection_kwargs.items()
              if k in ("username", "password", "db", "socket_timeout", "socket_connect_timeout",
                       "client_name", "protocol") and v is not None}
        sentinels = pool.sentinel_manager.sentinels
        nodes = tuple((s.connection_pool.connection_kwargs.get("host", "localhost"),
                       int(s.connection_pool.connection_kwargs.get("port", 26379))) for s in sentinels)
        skw = {k: v for k, v in sentinels[0].connection_pool.connection_kwargs.items()
               if k in ("username", "password") and v is not None} if sentinels else {}
        return Target(kind="sentinel", nodes=nodes, service=pool.service_name, kwargs=kw,
                      sentinel_kwargs=skw)
    from redis.cluster import RedisCluster

    if isinstance(value, RedisCluster):
        startup = value.nodes_manager.startup_nodes
        nodes = tuple((n.host, int(n.port)) for n in startup.values())
        ckw = value.nodes_manager.connection_kwargs
        kw = {k: v for k, v in ckw.items()
              if k in ("username", "password", "socket_timeout", "socket_connect_timeout",
                       "client_name") and v is not None}
        tls = bool(ckw.get("ssl")) or ckw.get("connection_class") is redis.SSLConnection
        return Target(kind="cluster", nodes=nodes, tls=tls, kwargs=kw)
    return None


@dataclass(frozen=True, kw_only=True)
class ConnectionSpec:
    """How to open a connection: a URL, or the kwargs of a user's ``redis.Redis``.

    ``namespace`` pins a Cluster deployment to the namespace's slot (set it with
    ``for_namespace``); a standalone or Sentinel spec ignores it.
    """

    url: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    connection_class: Any = None
    target: Target | None = None
    namespace: str | None = None

    def __post_init__(self) -> None:
        if self.target is None and self.url is not None and "+" in self.url.partition("://")[0]:
            object.__setattr__(self, "target", parse_target(self.url))

    @classmethod
    def of(cls, value: Any) -> ConnectionSpec:
        if isinstance(value, ConnectionSpec):
            return value
        if value is None:
            return cls(url=DEFAULT_URL)
        if isinstance(value, str):
            return cls(url=validate_url(value))
        target = _target_of_client(value)
        if target is not None:
            return cls(target=target)
        if isinstance(value, redis.Redis):
            pool = value.connection_pool
            loc = pool.connection_kwargs.get("locator")
            if isinstance(loc, Locator):  # a client forkq made (Client.connection)
                return cls(target=loc.target, namespace=getattr(loc, "namespace", None))
            kw = dict(pool.connection_kwargs)
            kw.pop("decode_responses", None)
            return cls(kwargs=kw, connection_class=pool.connection_class)
        raise ConfigError("redis must be a URL or a redis.Redis (a Sentinel.master_for client "
                          f"or a redis.cluster.RedisCluster too), got {type(value).__name__}")

    def for_namespace(self, namespace: str) -> ConnectionSpec:
        """The same spec pinned to ``namespace`` (Cluster: its slot's owner)."""
        if self.target is not None and self.target.kind == "cluster" and not namespace:
            raise ConfigError(f"{self.target.describe()}: Redis Cluster needs a non-empty namespace")
        return self if self.namespace == namespace else replace(self, namespace=namespace)

    @property
    def kind(self) -> str:
        return self.target.kind if self.target is not None else "standalone"

    def locator(self) -> Locator | None:
        """This process's locator of the server (None for standalone)."""
        if self.target is None:
            return None
        return locator_for(self.target, self.namespace)

    def __repr__(self) -> str:
        # The dataclass repr would print the URL's password or the kwargs' one.
        return f"ConnectionSpec({self.describe()!r})"

    def connect_worker(self, **overrides: Any) -> redis.Redis:
        """A client for a pool's own threads: redis-py never re-sends a command by itself.

        redis-py retries a command whose reply was lost; a fetch sent twice would
        leave the first batch in the in-progress hash, unknown to the fetcher.
        forkq's loops retry with their own backoff and reconcile what they hold.
        A redirected call (Sentinel/Cluster) never ran, so that one is re-sent.
        """
        if self.target is not None:
            return self.connect(retry=FollowRetry(0), **overrides)
        return self.connect(retry=Retry(NoBackoff(), 0), **overrides)

    def connect(self, **overrides: Any) -> redis.Redis:
        """A new client with its own pool; bytes responses (orjson reads bytes).

        No ``CLIENT SETINFO`` at connect (redis-py sends it to servers >= 7.2): one
        round trip less per connection, and the one documented ACL line works on
        Redis 7.0 (which does not know ``client|setinfo``) and Valkey 9.1 alike.
        """
        opts: dict[str, Any] = {"decode_responses": False, "health_check_interval": 0, **_NO_SETINFO}
        opts.update(overrides)
        if self.target is not None:
            loc = self.locator()
            assert loc is not None
            kw = dict(self.target.kwargs)
            kw.update(opts)
            kw.setdefault("retry", FollowRetry(1))
            cls = FollowingSSLConnection if self.target.tls else FollowingConnection
            pool = redis.ConnectionPool(connection_class=cls, locator=loc, **kw)
            return redis.Redis(connection_pool=pool)
        if self.url is not None:
            return redis.Redis.from_url(self.url, **opts)
        kw = dict(self.kwargs)
        kw.update(opts)
        pool = redis.ConnectionPool(connection_class=self.connection_class or redis.Connection, **kw)
        return redis.Redis(connection_pool=pool)

    def describe(self) -> str:
        """Where this points, safe to print (no password)."""
        if self.target is not None:
            return self.target.describe()
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
