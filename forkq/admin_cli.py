"""Admin verbs of the ``forkq`` command: ``forkq stats``, ``forkq dead list``, ...

``forkq.cli`` hands any argv whose first word is one of ``VERBS`` to ``main``.
Every verb is a thin layer over ``forkq.Client``: aligned tables for people,
``--json`` for scripts.  A mistake (bad JSON, bad page, unknown jid, Redis down,
bad URL) prints ONE line on stderr and exits non-zero, never a traceback, and
never a password from a URL.

Exit codes (``forkq.exits``): 0 ok, 1 the operation failed (nothing matched,
Redis refused it), 2 bad usage or input, 5 Redis unreachable.

A verb is one ``Verb`` row in ``_TABLE`` (name, description, its arguments, its
handler); ``VERBS`` and the dispatch follow from the table.

(Over 400 lines on purpose: the table of admin verbs and their small handlers; each verb is a few lines, split by verb it would be scattered.)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import orjson
import redis

from . import config as settings
from .batch import BatchStatus
from .client import Client, JobEntry, Queue
from .command import Parser, UsageError, add_version, one_line
from .connection import DEFAULT_URL
from .enqueue import Enqueuer
from .errors import ConfigError, EnqueueError, ForkqError, NotDeleted, NotRetried, PayloadTooLarge
from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REDIS, EXIT_USAGE
from .job import Job

# Short timeouts: an admin command against a dead server must fail fast, not hang.
CONNECT_TIMEOUT = 3.0
SOCKET_TIMEOUT = 10.0


class Failed(Exception):
    """The operation could not be done: exit 1."""


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
    table(("queue", "count", "latency", "paused", "served", "limits", "groups"),
          [(q.job_name, q.count, _ago(q.latency) if q.count else "-", "yes" if q.paused else "no",
            "yes" if q.served else "NO (no live pool)", q.limits_text, groups_text(q)) for q in qs], out)


def groups_text(q: Queue) -> str:
    """Fair groups with jobs waiting: ``3 (tenant-1: 1000, tenant-2: 10, ...)``, or ``-``."""
    if not q.groups:
        return "-"
    top = ", ".join(f"{g}: {n}" for g, n in q.largest_groups)
    more = ", ..." if q.groups > len(q.largest_groups) else ""
    return f"{q.groups} ({top}{more})"


def _batches_args(p: Parser) -> None:
    p.add_argument("bid", nargs="?", help="one batch's counts (default: the newest batches)")
    p.add_argument("--limit", type=int, default=20, help="how many of the newest batches (20)")


def _batches(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    if a.bid:
        one = c.batch(a.bid)
        if one is None:
            raise Failed(f"no batch {a.bid!r} (unknown, or finished more than 7 days ago)")
        found = [one]
    else:
        found = c.batches(max(1, a.limit))
    if a.json:
        _json([asdict(b) for b in found], out)
        return
    if not found:
        out.write("no batches\n")
        return
    table(("bid", "created", "total", "pending", "succeeded", "failures", "dead", "callbacks", "description"),
          [(b.bid, _ago(time.time() - b.created_at), b.total, b.pending, b.succeeded, b.failures, b.dead,
            _callbacks(b), b.description) for b in found], out)


def _callbacks(b: BatchStatus) -> str:
    parts = []
    for name, at in ((b.on_success, b.success_at), (b.on_complete, b.complete_at)):
        if name:
            parts.append(f"{name} ({'enqueued' if at else 'waiting'})")
    return ", ".join(parts) or "-"


def _check_known(c: Client, a: argparse.Namespace, what: str) -> None:
    """Refuse a name no live pool serves and no queue has seen (a typo?), unless --force."""
    if a.force or c.is_known_name(a.name):
        return
    served = sorted(c.served_names())
    hint = f"live pools serve: {', '.join(served)}" if served else "no live pool is running"
    raise Failed(f"unknown job name {a.name!r}: no live pool serves it and no queue of that name "
                 f"exists ({hint}); use --force to {what} anyway")


def _enqueue(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    try:
        args = orjson.loads(a.args)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"job arguments are not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise UsageError(f"job arguments must be a JSON object like '{{\"key\": 1}}', "
                         f"got a JSON {type(args).__name__}")
    _check_known(c, a, "enqueue it")
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
    if a.group is not None:
        if a.unique:
            raise UsageError("--group and --unique cannot be combined")
        if a.delay is not None:
            later = enq.enqueue_in(a.name, a.delay, args, group=a.group)
            return later.job, later.run_at
        return enq.enqueue(a.name, args, group=a.group), None
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


def _show(entry: JobEntry | None, when_label: str, when: float, what: str, jid: str,
          a: argparse.Namespace, out: TextIO) -> None:
    """One stored entry in full: its fields, its error and Sidekiq's ``error_backtrace``."""
    if entry is None:
        raise Failed(f"no {what} {jid!r}")
    if a.json:
        _json({**entry.to_dict(), when_label: when}, out)
        return
    rows: list[tuple[str, Any]] = [
        ("jid", entry.id or "?"), ("name", entry.name or "?"), ("queue", entry.queue or "-"),
        ("args", _args_text(entry)), ("fails", entry.fails),
        ("error", f"{entry.error_class}: {entry.error_message}" if entry.error_class
         else entry.error_message or "-"),
        ("failed_at", _when(entry.failed_at)), ("enqueued_at", _when(entry.enqueued_at)),
        (when_label, _when(when)),
    ]
    table(("field", "value"), rows, out)
    if entry.backtrace:
        out.write("backtrace (innermost first):\n")
        for line in entry.backtrace:
            out.write(f"  {line}\n")
    else:
        out.write("backtrace: none stored\n")


def _needs_jid(a: argparse.Namespace, verb: str) -> str:
    if not a.jid:
        raise UsageError(f"{verb} {a.action} needs a JID")
    return str(a.jid)


def _dead(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    if a.action == "list":
        if a.jid or a.all:
            raise UsageError("dead list takes no JID or --all (use --page N)")
        items, total = c.dead_jobs(a.page)
        _entries(items, total, a.page, "died_at", lambda e: e.died_at, True, a, out)
        return
    if a.action == "show":
        jid = _needs_jid(a, "dead")
        entry = c.find_dead_job(jid)
        _show(entry, "died_at", entry.died_at if entry else 0.0, "dead job", jid, a, out)
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
    if a.action == "show":
        jid = _needs_jid(a, "retries")
        entry = c.find_retry_job(jid)
        _show(entry, "retry_at", entry.retry_at if entry else 0.0, "retry job", jid, a, out)
        return
    if a.jid:
        raise UsageError("retries list takes no JID (use --page N, or retries show JID)")
    items, total = c.retry_jobs(a.page)
    _entries(items, total, a.page, "retry_at", lambda e: e.retry_at, True, a, out)


def _scheduled(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    items, total = c.scheduled_jobs(a.page)
    _entries(items, total, a.page, "run_at", lambda e: e.run_at, False, a, out)


def _pause(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    _check_known(c, a, "pause it")
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


def _repair_groups(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    repaired = c.repair_groups(a.name)
    if a.json:
        _json({"name": a.name, "repaired": repaired}, out)
    elif repaired:
        out.write(f"gave {repaired} fair group{'s' if repaired != 1 else ''} of {a.name} "
                  "their turn back\n")
    else:
        out.write(f"every fair group of {a.name} has its turn (nothing to repair)\n")


def _cancel(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    if not c.cancel(a.jid):
        raise Failed(f"no queued, scheduled, retrying or running job {a.jid!r} (unknown or already finished)")
    if a.json:
        _json({"cancelled": a.jid}, out)
    else:
        out.write(f"cancelled {a.jid}\n")


def _result(c: Client, a: argparse.Namespace, out: TextIO) -> None:
    res = c.result(a.jid)
    if res is None:
        raise Failed(f"no job {a.jid!r} is waiting or running, and none kept a result (result_ttl)")
    if a.json:
        _json(asdict(res), out)
        return
    out.write(f"{res.jid} {res.state}\n")
    if res.result is not None:
        out.write(f"result: {orjson.dumps(res.result).decode()}\n")
    if res.error:
        out.write(f"error: {res.error}\n")


def _jid_args(p: Parser) -> None:
    p.add_argument("jid", help="the job's id")


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


# ---------------------------------------------------------------------------
# The verb table
# ---------------------------------------------------------------------------

def _no_args(p: Parser) -> None:
    pass


def _enqueue_args(p: Parser) -> None:
    p.add_argument("name", help="job name")
    p.add_argument("args", nargs="?", default="{}", help="job arguments as a JSON object")
    p.add_argument("--in", dest="delay", type=settings.non_negative_seconds, default=None,
                   metavar="SECONDS", help="schedule to run this many seconds from now")
    p.add_argument("--unique", action="store_true",
                   help="skip if the same name+args is already queued or scheduled")
    p.add_argument("--group", default=None, metavar="GROUP",
                   help="fair group (e.g. a tenant id): groups of a name are served round-robin")
    p.add_argument("--force", action="store_true",
                   help="enqueue even if no live pool serves NAME and no such queue exists")


def _dead_args(p: Parser) -> None:
    p.add_argument("action", choices=("list", "show", "retry", "delete"))
    p.add_argument("jid", nargs="?", help="job id (show/retry/delete)")
    p.add_argument("--all", action="store_true", help="every dead job (retry/delete)")
    p.add_argument("--page", type=settings.positive_int, default=1, help="page of 20 (list)")


def _retries_args(p: Parser) -> None:
    p.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    p.add_argument("jid", nargs="?", help="job id (show)")
    p.add_argument("--page", type=settings.positive_int, default=1, help="page of 20 (list)")


def _page_args(p: Parser) -> None:
    p.add_argument("--page", type=settings.positive_int, default=1, help="page of 20")


def _pause_args(p: Parser) -> None:
    p.add_argument("name", help="job (queue) name")
    p.add_argument("--force", action="store_true",
                   help="pause even if no live pool serves NAME and no such queue exists")


def _name_args(p: Parser) -> None:
    p.add_argument("name", help="job (queue) name")


def _workers_args(p: Parser) -> None:
    p.add_argument("--busy", action="store_true", help="only workers running a job")


Handler = Callable[[Client, argparse.Namespace, TextIO], None]
# A verb that parses its own flags and opens its own connections: (argv, out, err) -> exit code.
Command = Callable[[Sequence[str], TextIO, TextIO], int]


def _web(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    # The dashboard lives in the optional 'web' extra: imported only when asked for.
    from .web.cli import run as web_run

    return int(web_run(list(argv), out, err))


@dataclass(frozen=True, kw_only=True)
class Verb:
    """One admin verb: ``forkq NAME ...``; ``command`` instead of ``run`` for a self-parsing one."""

    name: str
    description: str
    run: Handler | None = None
    arguments: Callable[[Parser], None] = _no_args
    command: Command | None = None


_TABLE: tuple[Verb, ...] = (
    Verb(name="stats", run=_stats,
         description="Sidekiq-style counters: processed, failed, busy (live), enqueued, "
                     "scheduled, retry, dead."),
    Verb(name="queues", run=_queues,
         description="Queues with their length, latency, paused state and whether a live pool "
                     "serves them."),
    Verb(name="enqueue", run=_enqueue, arguments=_enqueue_args,
         description="Enqueue a job: forkq enqueue NAME '{\"key\": \"value\"}' [--in SECONDS] "
                     "[--unique] [--force]."),
    Verb(name="dead", run=_dead, arguments=_dead_args,
         description="Dead jobs: dead list [--page N] | dead show JID | dead retry JID|--all | "
                     "dead delete JID|--all."),
    Verb(name="retries", run=_retries, arguments=_retries_args,
         description="Jobs waiting to be retried, soonest first: retries [list] [--page N] | "
                     "retries show JID."),
    Verb(name="scheduled", run=_scheduled, arguments=_page_args,
         description="Scheduled jobs, soonest first."),
    Verb(name="pause", run=_pause, arguments=_pause_args,
         description="Stop workers from taking jobs of NAME."),
    Verb(name="unpause", run=_unpause, arguments=_name_args,
         description="Let workers take jobs of NAME again."),
    Verb(name="repair-groups", run=_repair_groups, arguments=_name_args,
         description="Give their turn back to fair groups of NAME whose entry in the queue was "
                     "deleted by hand (e.g. from Sidekiq's Web UI): such a group is never served "
                     "until then."),
    Verb(name="cancel", run=_cancel, arguments=_jid_args,
         description="Cancel job JID: a waiting one is removed, a running one is told to stop; "
                     "exits 1 if no such job is waiting or running."),
    Verb(name="result", run=_result, arguments=_jid_args,
         description="State of job JID (queued, scheduled, retrying, running, or kept: succeeded, "
                     "dead, cancelled) and its result/error; exits 1 if nothing is known."),
    Verb(name="workers", run=_workers, arguments=_workers_args,
         description="What every worker thread of every live pool is doing."),
    Verb(name="batches", run=_batches, arguments=_batches_args,
         description="Batches (Enqueuer.batch): forkq batches [BID] [--limit N]: counts of "
                     "pending, succeeded, failed and dead jobs, and their callbacks."),
    Verb(name="pools", run=_pools,
         description="Live worker pools (one per child process) and their last heartbeat."),
    Verb(name="web", command=_web, description="The web dashboard (the 'web' extra)."),
)
_BY_NAME = {v.name: v for v in _TABLE}
VERBS = tuple(v.name for v in _TABLE)


def _parser(verb: Verb) -> Parser:
    p = Parser(prog=f"forkq {verb.name}", description=verb.description)
    add_version(p)
    p.add_argument("--redis", default=settings.env_value("FORKQ_REDIS_URL", DEFAULT_URL),
                   help="Redis URL (env FORKQ_REDIS_URL; default %(default)s; 'embedded' = the "
                        "embedded server's socket)")
    p.add_argument("-n", "--namespace", default=settings.env_value("FORKQ_NAMESPACE", "forkq"),
                   help="key namespace (env FORKQ_NAMESPACE; default %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    verb.arguments(p)
    return p


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
    verb = _BY_NAME.get(argv[0])
    if verb is None:
        err.write(f"forkq: error: unknown verb {argv[0]!r} (one of: {', '.join(VERBS)})\n")
        return EXIT_USAGE
    if verb.command is not None:
        return verb.command(argv[1:], out, err)
    assert verb.run is not None, verb.name
    prog = f"forkq {verb.name}"
    client: Client | None = None
    where = "Redis"

    def failed(code: int, message: str) -> int:
        err.write(f"{prog}: error: {one_line(message)}\n")
        return code

    try:
        try:
            a = _parser(verb).parse_args(list(argv[1:]))
        except SystemExit as exc:  # --help / --version printed their text
            return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_OK
        client = Client(_redis_url(a.redis), a.namespace, socket_connect_timeout=CONNECT_TIMEOUT,
                        socket_timeout=SOCKET_TIMEOUT)
        where = client.describe()
        verb.run(client, a, out)
        return EXIT_OK
    except UsageError as exc:
        return failed(EXIT_USAGE, str(exc))
    except (NotDeleted, NotRetried, Failed) as exc:
        return failed(EXIT_FAILED, str(exc))
    except ForkqError as exc:  # ConfigError (bad name, URL, namespace), PayloadTooLarge, ...
        return failed(EXIT_USAGE if isinstance(exc, (ConfigError, PayloadTooLarge)) else EXIT_FAILED,
                      str(exc))
    except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
        return failed(EXIT_FAILED, f"Redis at {where} refused: {exc}")
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return failed(EXIT_REDIS, f"cannot reach Redis at {where}: {exc}")
    except redis.RedisError as exc:
        return failed(EXIT_FAILED, f"Redis at {where} refused: {exc}")
    except (ValueError, TypeError) as exc:  # e.g. redis-py rejecting URL options
        return failed(EXIT_USAGE, str(exc))
    except BrokenPipeError:
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


def main(argv: Sequence[str] | None = None) -> int:
    """``forkq VERB ...``: argv[0] is the verb.  Returns the exit code."""
    return run(list(sys.argv[1:] if argv is None else argv), sys.stdout, sys.stderr)


__all__ = ["VERBS", "Verb", "main", "run", "table"]


if __name__ == "__main__":
    sys.exit(main())
