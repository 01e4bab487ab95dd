"""Producer-side steps of the benchmark, run as a subprocess in the system's interpreter.

    python -m bench.peers.driver fill SYSTEM KIND N [--names K] [--schedule S]
    python -m bench.peers.driver rate SYSTEM single|bulk N
    python -m bench.peers.driver schedule-rate SYSTEM single|bulk N
    python -m bench.peers.driver latency SYSTEM idle|load --probes K [--load-rate R]
    python -m bench.peers.driver trickle SYSTEM --rate R --seconds S

Each prints one JSON object on stdout.  The harness (bench/run.py) runs it with
forkq's interpreter for forkq and with the peers' virtualenv for the peers, so
the producer code of every system runs under the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import redis

from bench.peers import producers
from bench.peers._counter import LAT_KEY, URL_ENV


def _url() -> str:
    return os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0")


def cmd_fill(a: argparse.Namespace) -> dict[str, object]:
    p = producers.make(a.system, _url())
    t0 = time.perf_counter()
    if a.schedule:
        assert isinstance(p, producers.ForkqProducer)
        p.schedule(a.schedule, 3600.0)
    p.fill(a.kind, a.n, a.names)
    dt = time.perf_counter() - t0
    p.close()
    return {"seconds": dt}


def cmd_rate(a: argparse.Namespace) -> dict[str, object]:
    p = producers.make(a.system, _url())
    if a.mode == "bulk" and not p.has_bulk:
        return {"rate": None, "note": "no bulk enqueue API"}
    # Warm up connections and script caches outside the timed part.
    p.send("noop")
    t0 = time.perf_counter()
    if a.mode == "single":
        send = p.send
        for _ in range(a.n):
            send("noop")
    else:
        p.send_many("noop", a.n)
    dt = time.perf_counter() - t0
    p.close()
    return {"rate": a.n / dt, "n": a.n, "seconds": dt}


def cmd_schedule_rate(a: argparse.Namespace) -> dict[str, object]:
    """Scheduled enqueues per second (each job due in an hour: nothing runs)."""
    p = producers.make(a.system, _url())
    if a.mode == "bulk" and not p.has_bulk_schedule:
        p.close()
        return {"rate": None, "note": "no bulk scheduled-enqueue API"}
    p.send_in(3600.0)  # warm up connections and script caches outside the timed part
    t0 = time.perf_counter()
    if a.mode == "single":
        for _ in range(a.n):
            p.send_in(3600.0)
    else:
        p.send_in_many(3600.0, a.n)
    dt = time.perf_counter() - t0
    p.close()
    return {"rate": a.n / dt, "n": a.n, "seconds": dt}


def cmd_latency(a: argparse.Namespace) -> dict[str, object]:
    p = producers.make(a.system, _url())
    r = redis.Redis.from_url(_url())
    base = r.llen(LAT_KEY)
    timeouts = 0
    if a.mode == "idle":
        # One probe at a time, each after the previous one started: nothing else
        # is queued or running, the workers are idle and waiting.
        for i in range(a.probes):
            p.send("probe")
            end = time.monotonic() + a.timeout
            while r.llen(LAT_KEY) < base + i + 1:
                if time.monotonic() > end:
                    timeouts += 1
                    break
                time.sleep(0.0005)
            time.sleep(0.005)
    else:
        # Loaded: a steady stream of 10 ms jobs at ``load_rate``/s (well under the
        # capacity of the worker slots) with a probe every ``gap`` seconds.
        gap = 0.02
        t0 = time.monotonic()
        sent_load = 0
        sent_probe = 0
        while sent_probe < a.probes:
            now = time.monotonic()
            due_load = int((now - t0) * a.load_rate)
            while sent_load < due_load:
                p.send("sleep10")
                sent_load += 1
            if now >= t0 + sent_probe * gap:
                p.send("probe")
                sent_probe += 1
            time.sleep(0.001)
        end = time.monotonic() + a.timeout * 5
        while r.llen(LAT_KEY) < base + a.probes and time.monotonic() < end:
            time.sleep(0.01)
        timeouts = max(0, base + a.probes - r.llen(LAT_KEY))
    lat = [float(x) for x in r.lrange(LAT_KEY, base, -1)]
    p.close()
    return {"latencies": lat, "timeouts": timeouts}


def cmd_trickle(a: argparse.Namespace) -> dict[str, object]:
    """Probes at a steady ``rate``/s for ``seconds`` (bench/trickle.py), one call each,
    paced on the monotonic clock; then wait until every probe has started."""
    p = producers.make(a.system, _url())
    r = redis.Redis.from_url(_url())
    base = r.llen(LAT_KEY)
    n = int(a.rate * a.seconds)
    t0 = time.monotonic()
    for i in range(n):
        wait = t0 + i / a.rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if a.delay:
            p.send_probe_in(a.delay)
        else:
            p.send("probe")
    sent_for = time.monotonic() - t0
    end = time.monotonic() + a.timeout
    while r.llen(LAT_KEY) < base + n and time.monotonic() < end:
        time.sleep(0.01)
    lat = [float(x) for x in r.lrange(LAT_KEY, base, -1)]
    p.close()
    return {"latencies": lat, "sent": n, "send_seconds": sent_for, "timeouts": max(0, n - len(lat))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.peers.driver")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fill")
    f.add_argument("system")
    f.add_argument("kind", choices=producers.KINDS)
    f.add_argument("n", type=int)
    f.add_argument("--names", type=int, default=0)
    f.add_argument("--schedule", type=int, default=0)
    r = sub.add_parser("rate")
    r.add_argument("system")
    r.add_argument("mode", choices=("single", "bulk"))
    r.add_argument("n", type=int)
    sr = sub.add_parser("schedule-rate")
    sr.add_argument("system")
    sr.add_argument("mode", choices=("single", "bulk"))
    sr.add_argument("n", type=int)
    lt = sub.add_parser("latency")
    lt.add_argument("system")
    lt.add_argument("mode", choices=("idle", "load"))
    lt.add_argument("--probes", type=int, default=100)
    lt.add_argument("--load-rate", type=float, default=400.0)
    lt.add_argument("--timeout", type=float, default=3.0)
    tr = sub.add_parser("trickle")
    tr.add_argument("system")
    tr.add_argument("--rate", type=float, default=200.0)
    tr.add_argument("--seconds", type=float, default=30.0)
    tr.add_argument("--timeout", type=float, default=30.0)
    tr.add_argument("--delay", type=float, default=0.0,
                    help="schedule each probe this many seconds ahead (its own scheduled API)")
    a = ap.parse_args(argv)
    out = {"fill": cmd_fill, "rate": cmd_rate, "schedule-rate": cmd_schedule_rate,
           "latency": cmd_latency, "trickle": cmd_trickle}[a.cmd](a)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
