"""``forkq --metrics HOST:PORT``: the master serves every child's figures, summed.

Prometheus across forked children is a known trap: each child has its own
registry and only one of them can own the port (counts 10-25x low), or the
children write per-pid files that nobody cleans.  forkq's master already hears
every child over its report pipe, so it is where the sums are made:

* **child side** (``JobMetrics``): each worker thread adds to its *own* row per
  job name (count, failed, duration sum, histogram buckets): no lock, one dict
  lookup and a few integer adds per job.  Once a second the child's main thread
  sums the threads' rows and sends, over the report pipe, the rows of the job
  names that changed (``messages.JobRows``), each row *cumulative
  since the child started*.  A report line lost (the non-blocking pipe was full)
  therefore costs nothing: the next one carries the totals.
* **master side** (``MasterMetrics``): keeps each live child's latest rows; when a
  child exits (for any reason, SIGKILL included) its last rows are folded into
  a "retired" total, so counters never go down across deaths and recycling.  A
  SIGKILLed child's jobs of its last second (at most ``STATUS_EVERY``) that it had
  not reported yet are not counted here; Redis's own counters (``stat:processed``)
  have the same window, and the jobs themselves are requeued, not lost.
* **the endpoint** (``MetricsServer``): a non-blocking listening socket served from
  the master's existing ``select`` loop, a tiny HTTP/1.0 responder for
  ``GET /metrics`` only, the body made by ``prometheus_client`` (its collector
  API and ``generate_latest``).  No thread: the master forks children, and a
  thread alive across ``fork`` (holding the logging lock, an allocator lock) can
  deadlock them; and the loop never waits on a scraper: reads and writes are
  non-blocking, a connection silent for ``IDLE_TIMEOUT`` is dropped.

Label values are bounded by the registered job names: a payload whose class no
handler has (another producer's) is counted under ``other``.
This module imports ``prometheus_client`` only to render a scrape.
"""

from __future__ import annotations

import bisect
import errno
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

log = logging.getLogger("forkq.metrics")

# prometheus_client's default buckets (seconds); +Inf is the last row slot.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                              2.5, 5.0, 7.5, 10.0)
# A row: [executions, failed, duration sum, bucket 0 .. bucket n-1, +Inf bucket]
# (bucket counts not cumulative).
ROW_LEN = 3 + len(BUCKETS) + 1
OTHER = "other"

# One report line stays below PIPE_BUF (4096 on Linux) so each os.write is atomic.
LINE_BUDGET = 3500
IDLE_TIMEOUT = 5.0
MAX_CONNECTIONS = 32
MAX_REQUEST = 8192


class MetricsError(Exception):
    """``--metrics`` cannot be served (port in use, extra not installed)."""


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9090`` for IPv6) -> (host, port); ValueError with a reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected HOST:PORT with a numeric port, got {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {text!r}")
    return host, port


# -- child side ---------------------------------------------------------------------
class JobMetrics:
    """Per-thread rows, summed once a second by the child's main thread.

    Each worker thread writes only its own dict (``record`` with its slot index),
    so no lock is needed; the reader copies with ``list(d.items())`` (atomic under
    the GIL: str keys, no Python code runs) and tolerates a row caught mid-update
    (the next second's sum is whole: rows are cumulative).
    """

    def __init__(self, threads: int) -> None:
        self._rows: list[dict[str, list[float]]] = [{} for _ in range(threads)]
        self._sent: dict[str, list[float]] = {}

    def record(self, thread: int, name: str, seconds: float, failed: bool) -> None:
        rows = self._rows[thread]
        row = rows.get(name)
        if row is None:
            row = rows[name] = [0] * ROW_LEN
        row[0] += 1
        if failed:
            row[1] += 1
        row[2] += seconds
        row[3 + bisect.bisect_left(BUCKETS, seconds)] += 1

    def totals(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for rows in self._rows:
            for name, row in list(rows.items()):
                acc = out.get(name)
                if acc is None:
                    out[name] = list(row)
                else:
                    for i, v in enumerate(list(row)):
                        acc[i] += v
        return out

    def changed_rows(self) -> list[dict[str, list[float]]]:
        """The rows that changed since the last call (often none), in chunks that each
        fit one report line (``messages.JobRows``)."""
        changed = {n: r for n, r in self.totals().items() if self._sent.get(n) != r}
        chunks: list[dict[str, list[float]]] = []
        chunk: dict[str, list[float]] = {}
        size = 0
        for name, row in changed.items():
            self._sent[name] = row
            wire = [round(v, 6) if isinstance(v, float) else v for v in row]
            cost = len(orjson.dumps({name: wire}))
            if chunk and size + cost > LINE_BUDGET:
                chunks.append(chunk)
                chunk, size = {}, 0
            chunk[name] = wire
            size += cost
        if chunk:
            chunks.append(chunk)
        return chunks


# -- master side --------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Gauges:
    children: int
    busy_threads: int
    threads: int


class MasterMetrics:
    """Sums of every child's rows: live children's latest plus those of exited ones."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names
        self._live: dict[int, dict[str, list[float]]] = {}
        self._retired: dict[str, list[float]] = {}

    def on_report(self, pid: int, rows: Any) -> None:
        if not isinstance(rows, dict):
            return
        mine = self._live.setdefault(pid, {})
        for name, row in rows.items():
            if not (isinstance(row, list) and len(row) == ROW_LEN
                    and all(isinstance(v, (int, float)) and v >= 0 for v in row)):
                continue
            mine[str(name)] = row

    def on_exit(self, pid: int) -> None:
        rows = self._live.pop(pid, None)
        if rows:
            _add_into(self._retired, rows)

    def totals(self) -> dict[str, list[float]]:
        # Bounded labels: children report registered names (or "other"); a name a
        # reload removed, or anything else, is summed under "other" here.
        known = set(self._names())
        out: dict[str, list[float]] = {}
        for source in (self._retired, *self._live.values()):
            for name, row in source.items():
                _add_row(out, name if name in known else OTHER, row)
        return out


def _add_row(into: dict[str, list[float]], name: str, row: list[float]) -> None:
    acc = into.get(name)
    if acc is None:
        into[name] = list(row)
    else:
        for i, v in enumerate(row):
            acc[i] += v


def _add_into(into: dict[str, list[float]], rows: dict[str, list[float]]) -> None:
    for name, row in rows.items():
        _add_row(into, name, row)


class _Collector:
    """A ``prometheus_client`` custom collector over the master's sums."""

    def __init__(self, metrics: MasterMetrics, gauges: Callable[[], Gauges]) -> None:
        self._metrics = metrics
        self._gauges = gauges

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        processed = CounterMetricFamily(
            "forkq_jobs_processed", "Job executions that ended, failed ones included "
            "(Sidekiq's processed), summed over this master's children.", labels=["job"])
        failed = CounterMetricFamily("forkq_jobs_failed", "Job executions that failed.",
                                     labels=["job"])
        duration = HistogramMetricFamily("forkq_job_duration_seconds",
                                         "How long job executions ran.", labels=["job"])
        for name, row in sorted(self._metrics.totals().items()):
            processed.add_metric([name], row[0])
            failed.add_metric([name], row[1])
            cum = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*BUCKETS, float("inf")), row[3:], strict=True):
                cum += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cum))
            duration.add_metric([name], buckets, row[2])
        yield processed
        yield failed
        yield duration
        g = self._gauges()
        yield GaugeMetricFamily("forkq_busy_threads", "Worker threads running a job now.",
                                value=g.busy_threads)
        yield GaugeMetricFamily("forkq_threads", "Worker threads of the live children.",
                                value=g.threads)
        yield GaugeMetricFamily("forkq_children", "Live child processes of this master.",
                                value=g.children)


def exposition(metrics: MasterMetrics, gauges: Callable[[], Gauges]) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics, gauges))
    return bytes(generate_latest(registry))


def check_available() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MetricsError("--metrics needs prometheus_client: pip install 'forkq[metrics]'") from None


# -- the endpoint -----------------------------------------------------------------------
class _Conn:
    __slots__ = ("sock", "inbuf", "out", "since")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.inbuf = b""
        self.out = b""
        self.since = now


class MetricsServer:
    """``GET /metrics`` on a non-blocking socket, driven by the master's ``select``."""

    def __init__(self, host: str, port: int, body: Callable[[], bytes]) -> None:
        self._body = body
        self._conns: dict[int, _Conn] = {}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise MetricsError(f"--metrics cannot listen on {host}:{port}: {why}") from None
        sock.setblocking(False)
        self._sock = sock
        self.address = sock.getsockname()[:2]

    def fds(self) -> list[int]:
        """Every descriptor of the server (a forked process must close them)."""
        return [self._sock.fileno(), *self._conns]

    def read_fds(self) -> list[int]:
        return [self._sock.fileno(), *(fd for fd, c in self._conns.items() if not c.out)]

    def write_fds(self) -> list[int]:
        return [fd for fd, c in self._conns.items() if c.out]

    def owns(self, fd: int) -> bool:
        return fd == self._sock.fileno() or fd in self._conns

    def on_readable(self, fd: int) -> None:
        now = time.monotonic()
        if fd == self._sock.fileno():
            self._accept(now)
            return
        c = self._conns.get(fd)
        if c is None:
            return
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        c.inbuf += data
        if b"\r\n\r\n" in c.inbuf or b"\n\n" in c.inbuf:
            c.out = self._respond(c.inbuf)
            self.on_writable(fd)
        elif len(c.inbuf) > MAX_REQUEST:
            c.out = _response(431, b"request too large\n")
            self.on_writable(fd)

    def on_writable(self, fd: int) -> None:
        c = self._conns.get(fd)
        if c is None:
            return
        try:
            sent = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        c.out = c.out[sent:]
        c.since = time.monotonic()
        if not c.out:
            self._drop(fd)  # HTTP/1.0: the response ends at close

    def expire(self) -> None:
        now = time.monotonic()
        for fd, c in list(self._conns.items()):
            if now - c.since > IDLE_TIMEOUT:
                self._drop(fd)

    def close(self) -> None:
        for fd in list(self._conns):
            self._drop(fd)
        self._sock.close()

    def _accept(self, now: float) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again next turn
                log.warning("metrics endpoint: accept failed: %s", exc)
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            self._conns[sock.fileno()] = _Conn(sock, now)

    def _drop(self, fd: int) -> None:
        c = self._conns.pop(fd, None)
        if c is not None:
            c.sock.close()

    def _respond(self, request: bytes) -> bytes:
        line = request.split(b"\n", 1)[0].strip().split()
        if len(line) < 2 or line[0] not in (b"GET", b"HEAD"):
            return _response(405, b"only GET /metrics\n")
        path = line[1].split(b"?", 1)[0]
        if path not in (b"/metrics", b"/metrics/"):
            return _response(404, b"not found: try /metrics\n")
        try:
            body = self._body()
        except Exception:  # noqa: BLE001 - a scrape must never stop the master
            log.exception("metrics endpoint: rendering failed")
            return _response(500, b"rendering failed\n")
        return _response(200, body, head_only=line[0] == b"HEAD")


CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_REASONS = {200: b"OK", 404: b"Not Found", 405: b"Method Not Allowed",
            431: b"Request Header Fields Too Large", 500: b"Internal Server Error"}


def _response(status: int, body: bytes, head_only: bool = False) -> bytes:
    ctype = CONTENT_TYPE if status == 200 else b"text/plain; charset=utf-8"
    head = (b"HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, _REASONS[status], ctype, len(body)))
    return head if head_only else head + body
