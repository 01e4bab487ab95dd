"""Admin verbs of the ``forkq`` command: ``forkq stats``, ``forkq dead list``, ...

``forkq.cli`` hands any argv whose first word is one of ``VERBS`` to ``main``.
Every verb is a thin layer over ``forkq.Client``: aligned tables for people,
``--json`` for scripts.  A mistake (bad JSON, bad page, unknown jid, Redis down,
bad URL) prints ONE line on stderr and exits non-zero, never a traceback, and
never a password from a URL.

Exit codes: 0 ok, 1 the operation failed (Redis unreachable, nothing matched),
2 bad usage or input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, NoReturn, TextIO

import orjson
import redis

from .argtypes import non_negative_seconds, positive_int
from .client import Client, JobEntry
from .connection import DEFAULT_URL, redact
from .enqueue import Enqueuer
from .errors import ConfigError, EnqueueError, ForkqError, NotDeleted, NotRetried, PayloadTooLarge
from .job import Job

VERBS = ("stats", "queues", "enqueue", "dead", "retries", "scheduled", "pause", "unpause",
         "workers", "pools", "web")

# Short timeouts: an admin command against a dead server must fail fast, not hang.
CONNECT_TIMEOUT = 3.0
SOCKET_TIMEOUT = 10.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command line or input: exit 2."""


class Failed(Exception):
    """The operation could not be done: exit 1."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting (we want one line)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# ---------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------

def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def _ago(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s / 60:.1f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _clip(text: str, width: int = 60) -> str:
    one = " ".join(text.split())
    return one if len(one) <= width else one[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        line = "  ".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r))
        out.write(line.rstrip() + "\n")


def _json(value: Any, out: TextIO) -> None:
    out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")


def _args_text(entry: JobEntry) -> str:
    if entry.positional_args:
        return orjson.dumps(list(entry.positional_args)).decode()
    return orjson.dumps(entry.args).decode()


# ---------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------

def _parser(verb: str) -> _Parser:
    p = _Parser(prog=f"forkq {verb}", description=_DESCRIPTIONS[verb])
    p.add_argument("--redis", default=os.environ.get("FORKQ_REDIS_URL", DEFAULT_URL),
                   help="Redis URL (env FORKQ_REDIS_URL; default %(default)s; 'embedded' = the "
                        "embedded server's socket)")
    p.add_argument("-n", "--namespace", default=os.environ.get("FORKQ_NAMESPACE", "forkq"),
                   help="key namespace (env FORKQ_NAMESPACE; default %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    if verb == "enqueue":
        p.add_argument("name", help="job name")
        p.add_argument("args", nargs="?", default="{}", help="job arguments as a JSON object")
        p.add_argument("--in", dest="delay", type=non_negative_seconds, default=None, metavar="SECONDS",
                       help="schedule to run this many seconds from now")
        p.add_argument("--unique", action="store_true",
                       help="skip if the same name+args is already queued or scheduled")
    elif verb == "dead":
        p.add_argument("action", choices=("list", "retry", "delete"))
        p.add_argument("jid", nargs="?", help="job id (retry/delete)")
        p.add_argument("--all", action="store_true", help="every dead job (retry/delete)")
        p.add_argument("--page", type=positive_int, default=1, help="page of 20 (list)")
    elif verb in ("retries", "scheduled"):
        p.add_argument("--page", type=positive_int, default=1, help="page of 20")
    elif verb in ("pause", "unpause"):
        p.add_argument("name", help="job (queue) name")
    elif verb == "workers":
        p.add_argument("--busy", action="store_true", help="only workers running a job")
    return p


_DESCRIPTIONS = {
    "stats": "Sidekiq-style counters: processed, failed, busy, enqueued, scheduled, retry, dead.",
    "queues": "Queues with their length, latency and paused state.",
    "enqueue": "Enqueue a job: forkq enqueue NAME '{\"key\": \"value\"}' [--in SECONDS] [--unique].",
    "dead": "Dead jobs: dead list [--page N] | dead retry JID|--all | dead delete JID|--all.",
    "retries": "Jobs waiting to be retried, soonest first.",
    "scheduled": "Scheduled jobs, soonest first.",
    "pause": "Stop workers from taking jobs of NAME.",
    "unpause": "Let workers take jobs of NAME again.",
    "workers": "What every worker thread of every pool is doing.",
    "pools": "Live worker pools (one per child process) and their last heartbeat.",
}


# ---------------------------------------------------------------------------
# Verbs
# ---------------------------------------------------------------------------

def _stats(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    s = c.stats()
    if a.json:
        _json(asdict(s), out)
        return
    table(("stat", "value"), [(k, v) for k, v in asdict(s).items()], out)


def _queues(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    qs = c.queues()
    if a.json:
        _json([asdict(q) for q in qs], out)
        return
    if not qs:
        out.write("no queues\n")
        return
    table(("queue", "count", "latency", "paused"),
          [(q.job_name, q.count, _ago(q.latency) if q.count else "-", "yes" if q.paused else "no")
           for q in qs], out)


def _enqueue(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    try:
        args = orjson.loads(a.args)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"job arguments are not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise UsageError(f"job arguments must be a JSON object like '{{\"key\": 1}}', "
                         f"got a JSON {type(args).__name__}")
    enq = Enqueuer(c.connection, c.namespace)
    try:
        try:
            job, run_at = _put(enq, a, args)
        except EnqueueError as exc:
            # Report an unreachable server like every other verb does.
            if isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError)):
                raise exc.__cause__ from None
            raise
    finally:
        enq.close()
    if a.json:
        _json({"enqueued": job is not None, "name": a.name, "jid": job.id if job else None,
               "run_at": run_at}, out)
        return
    if job is None:
        out.write(f"not enqueued: a unique {a.name} job with these arguments is already waiting\n")
    elif run_at is not None:
        out.write(f"scheduled {a.name} {job.id} for {_when(run_at)}\n")
    else:
        out.write(f"enqueued {a.name} {job.id}\n")


def _put(enq: Enqueuer, a: argparse.Namespace, args: dict[str, Any]) -> tuple[Job | None, float | None]:
    if a.delay is not None:
        sj = (enq.enqueue_unique_in(a.name, a.delay, args) if a.unique
              else enq.enqueue_in(a.name, a.delay, args))
        return (sj.job, sj.run_at) if sj is not None else (None, None)
    return (enq.enqueue_unique(a.name, args) if a.unique else enq.enqueue(a.name, args)), None


def _entries(items: Sequence[JobEntry], total: int, page: int, when_label: str,
             when: Callable[[Any], float], show_error: bool, a: argparse.Namespace,
             out: TextIO) -> None:
    if a.json:
        _json({"page": page, "total": total, "items": [e.to_dict() for e in items]}, out)
        return
    if not items:
        out.write(f"nothing on page {page} (total {total})\n")
        return
    headers = [when_label, "jid", "name", "fails", "args"] + (["error"] if show_error else [])
    rows2 = []
    for e in items:
        row = [_when(when(e)), e.id or "?", e.name or "?", e.fails, _clip(_args_text(e), 40)]
        if show_error:
            err = f"{e.error_class}: {e.error_message}" if e.error_class else e.error_message
            row.append(_clip(err))
        rows2.append(row)
    table(headers, rows2, out)
    pages = max(1, -(-total // 20))
    out.write(f"page {page} of {pages}, {total} total\n")


def _dead(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    if a.action == "list":
        if a.jid or a.all:
            raise UsageError("dead list takes no JID or --all (use --page N)")
        items, total = c.dead_jobs(a.page)
        _entries(items, total, a.page, "died_at", lambda e: e.died_at, True, a, out)
        return
    if a.all == bool(a.jid):
        raise UsageError(f"dead {a.action} needs either a JID or --all")
    if a.action == "retry":
        if a.all:
            n = c.retry_all_dead_jobs()
            left = c.stats().dead
            result: dict[str, Any] = {"retried": n, "left": left}
            text = f"retried {n} dead jobs" + (f" ({left} could not be retried)" if left else "")
        else:
            c.retry_dead_job(None, a.jid)
            result, text = {"retried": 1, "jid": a.jid}, f"retried dead job {a.jid}"
    else:
        if a.all:
            n = c.delete_all_dead_jobs()
            result, text = {"deleted": n}, f"deleted {n} dead jobs"
        else:
            c.delete_dead_job(None, a.jid)
            result, text = {"deleted": 1, "jid": a.jid}, f"deleted dead job {a.jid}"
    if a.json:
        _json(result, out)
    else:
        out.write(text + "\n")


def _retries(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    items, total = c.retry_jobs(a.page)
    _entries(items, total, a.page, "retry_at", lambda e: e.retry_at, True, a, out)


def _scheduled(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    items, total = c.scheduled_jobs(a.page)
    _entries(items, total, a.page, "run_at", lambda e: e.run_at, False, a, out)


def _pause(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    c.pause(a.name)
    if a.json:
        _json({"paused": a.name}, out)
    else:
        out.write(f"paused {a.name}\n")


def _unpause(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    c.unpause(a.name)
    if a.json:
        _json({"unpaused": a.name}, out)
    else:
        out.write(f"unpaused {a.name}\n")


def _workers(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    obs = [o for o in c.worker_observations() if o.is_busy or not a.busy]
    if a.json:
        _json([asdict(o) for o in obs], out)
        return
    if not obs:
        out.write("no busy workers\n" if a.busy else "no workers\n")
        return
    now = time.time()
    table(("worker", "busy", "job", "jid", "running", "args", "checkin"),
          [(o.worker_id, "yes" if o.is_busy else "no", o.job_name or "-", o.job_id or "-",
            _ago(now - o.started_at) if o.is_busy else "-", _clip(o.args_json, 30) or "-",
            _clip(o.checkin, 40) or "-") for o in obs], out)


def _pools(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    hbs = c.worker_pool_heartbeats()
    if a.json:
        _json([asdict(h) for h in hbs], out)
        return
    if not hbs:
        out.write("no pools\n")
        return
    now = time.time()
    table(("pool", "host", "pid", "concurrency", "started", "beat", "jobs"),
          [(h.worker_pool_id, h.host, h.pid, h.concurrency, _when(h.started_at),
            _ago(now - h.heartbeat_at) + " ago" if h.heartbeat_at else "never",
            _clip(",".join(h.job_names), 50)) for h in hbs], out)


_HANDLERS: dict[str, Callable[[Client, argparse.Namespace, TextIO], None]] = {
    "stats": _stats, "queues": _queues, "enqueue": _enqueue, "dead": _dead, "retries": _retries,
    "scheduled": _scheduled, "pause": _pause, "unpause": _unpause, "workers": _workers,
    "pools": _pools,
}


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------

def _redis_url(value: str) -> str:
    if value == "embedded":
        from .embedded import EmbeddedRedis

        return EmbeddedRedis().url
    return value


def run(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """``main`` with explicit streams (testable without capturing sys.stdout)."""
    if not argv:
        err.write(f"forkq: error: no admin verb given (one of: {', '.join(VERBS)})\n")
        return EXIT_USAGE
    verb = argv[0]
    prog = f"forkq {verb}"
    if verb == "web":  # the dashboard (forkq.web, the 'web' extra) parses its own flags
        from .web.cli import run as web_run

        return web_run(argv[1:], out, err)
    if verb not in _HANDLERS:
        err.write(f"forkq: error: unknown verb {verb!r} (one of: {', '.join(VERBS)})\n")
        return EXIT_USAGE
    client: Client | None = None
    where = "Redis"
    try:
        try:
            a = _parser(verb).parse_args(list(argv[1:]))
        except SystemExit as exc:  # --help printed its text
            return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_OK
        client = Client(_redis_url(a.redis), a.namespace, socket_connect_timeout=CONNECT_TIMEOUT,
                        socket_timeout=SOCKET_TIMEOUT)
        where = client.describe()
        _HANDLERS[verb](client, a, out)
        return EXIT_OK
    except UsageError as exc:
        err.write(f"{prog}: error: {_one_line(str(exc))}\n")
        return EXIT_USAGE
    except (NotDeleted, NotRetried, Failed) as exc:
        err.write(f"{prog}: error: {_one_line(str(exc))}\n")
        return EXIT_FAILED
    except ForkqError as exc:  # ConfigError (bad name, URL, namespace), PayloadTooLarge, ...
        err.write(f"{prog}: error: {_one_line(str(exc))}\n")
        return EXIT_USAGE if isinstance(exc, (ConfigError, PayloadTooLarge)) else EXIT_FAILED
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        err.write(f"{prog}: error: cannot reach Redis at {where}: {_one_line(str(exc))}\n")
        return EXIT_FAILED
    except redis.RedisError as exc:
        err.write(f"{prog}: error: Redis at {where} refused: {_one_line(str(exc))}\n")
        return EXIT_FAILED
    except (ValueError, TypeError) as exc:  # e.g. redis-py rejecting URL options
        err.write(f"{prog}: error: {_one_line(str(exc))}\n")
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.write(f"{prog}: interrupted\n")
        return 130
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


def _one_line(text: str) -> str:
    return redact(" ".join(text.split())) or "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    """``forkq VERB ...``: argv[0] is the verb.  Returns the exit code."""
    return run(list(sys.argv[1:] if argv is None else argv), sys.stdout, sys.stderr)


__all__ = ["VERBS", "main", "run", "table"]


if __name__ == "__main__":
    sys.exit(main())
