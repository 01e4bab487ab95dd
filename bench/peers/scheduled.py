"""Scheduled-job lateness with each system's own schedule API (issue 9), producer side.

    python -m bench.peers.scheduled SYSTEM sample N   # N jobs one at a time, each due 0.1-0.5 s ahead
    python -m bench.peers.scheduled SYSTEM burst N    # N jobs all due at one instant

Run by bench/lateness_peers.py in the system's own interpreter (forkq's, or the
peer's virtualenv), with that system's workers already running.  Every job is the
benchmark's ``probe(t)`` task with ``t`` = its due time, so the probe records
start - due (``bench.peers._counter``, pushed to ``bench:lat``); forkq's probe
reads ``enqueued_at``, which for a scheduled job is its due time.  Producer and
workers run on this one host, so ``time.time()`` is one clock for all of them.

The APIs: forkq ``Enqueuer.enqueue_at``, huey ``task.schedule(args, delay=)``,
Dramatiq ``actor.send_with_options(args=, delay=ms)``, RQ ``Queue.enqueue_in``
(its worker-pool runs RQ's scheduler).  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import timedelta

import redis

from bench.peers._counter import LAT_KEY, URL_ENV


def scheduler(system: str, url: str) -> Callable[[float], object]:
    """A function that schedules one probe due at epoch ``due`` with the system's API."""
    if system == "forkq":
        from bench.jobs import NAMESPACE
        from forkq import Enqueuer
        enq = Enqueuer(url, NAMESPACE)
        return lambda due: enq.enqueue_at("probe", due)
    if system == "huey":
        from bench.peers import huey_tasks
        return lambda due: huey_tasks.probe.schedule(args=(due,), delay=max(0.0, due - time.time()))
    if system == "dramatiq":
        from bench.peers import dramatiq_tasks
        return lambda due: dramatiq_tasks.probe.send_with_options(
            args=(due,), delay=max(0, int(round((due - time.time()) * 1000))))
    if system == "rq":
        from rq import Queue

        from bench.peers import rq_tasks
        q = Queue("default", connection=redis.Redis.from_url(url))
        return lambda due: q.enqueue_in(timedelta(seconds=max(0.0, due - time.time())), rq_tasks.probe, due)
    raise SystemExit(f"no schedule API wired for {system!r}")


def wait_len(r: redis.Redis, n: int, timeout: float) -> int:
    end = time.monotonic() + timeout
    got = int(r.llen(LAT_KEY))
    while got < n and time.monotonic() < end:
        time.sleep(0.005)
        got = int(r.llen(LAT_KEY))
    return got


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("system")
    ap.add_argument("mode", choices=("sample", "burst"))
    ap.add_argument("n", type=int)
    ap.add_argument("--lead", type=float, default=0.0, help="burst: seconds from the first enqueue to the due time")
    a = ap.parse_args()
    url = os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0")
    r = redis.Redis.from_url(url)
    r.delete(LAT_KEY)
    schedule = scheduler(a.system, url)
    out: dict[str, object] = {"system": a.system, "mode": a.mode, "n": a.n}
    if a.mode == "sample":
        for i in range(a.n):
            schedule(time.time() + random.uniform(0.1, 0.5))
            if wait_len(r, i + 1, 15.0) < i + 1:
                out["missing"] = a.n - i
                break
    else:
        # One due time for all, far enough ahead for the slowest enqueue API here
        # (~2,500 jobs/s one call each); how much time was left is reported.
        due = time.time() + (a.lead if a.lead else 2.0 + a.n / 2500)
        for _ in range(a.n):
            schedule(due)
        out["enqueued_before_due_s"] = round(due - time.time(), 3)
        out["due"] = due
        got = wait_len(r, a.n, max(60.0, a.n / 50))
        if got < a.n:
            out["missing"] = a.n - got
    out["lateness"] = [float(x) for x in r.lrange(LAT_KEY, 0, -1)]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
