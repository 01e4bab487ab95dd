#!/usr/bin/env python
"""Many children, a trickle of jobs: what each job costs Redis when most pools are idle.

    python bench/trickle.py [--reps 3] [--only forkq,huey,dramatiq] [--procs 16]
                            [--threads 4] [--rate 200] [--seconds 30] [--delay 0] [--out DIR]

Issue 12: with ``forkq -p 16 -c 4`` and 200 enqueues/s, every enqueue to an empty
queue used to PUBLISH a wake that every idle pool answered with a fetch (up to 16
fetches per job).  Now idle pools register in ``idle:<name>`` and an enqueue wakes
only as many as it has jobs (forkq/lua/enqueue.lua).

Each system runs its workers with the same processes x threads (forkq ``-p P -c T``,
huey P consumers ``-w T``, Dramatiq ``-p P -t T``; bench/run.py starts them), the
producer (``bench/peers/driver.py trickle``, the system's own one-job-per-call API in
its own interpreter) sends a latency probe every 1/rate s for ``seconds``, and the
run reports, from the first probe sent to the last one started:

- Redis commands per job, every command counted (those run inside Lua scripts too,
  as INFO commandstats counts them), the producer's enqueue included, less the
  harness's own (INFO, GET polls, the benchmark counter's INCRBY and RPUSH of
  latencies); the idle traffic of the window (beats, polls) is in it: it is what a
  trickle costs;
- script calls (EVALSHA/EVAL) per job, the round trips that carry those commands;
- Redis CPU per job (``used_cpu_sys + used_cpu_user`` deltas);
- worker CPU per job (psutil, every process of the workers' tree);
- pickup latency (start - enqueue, one host's clock) p50 and p99.

``--delay S``: a scheduled trickle instead: each probe is scheduled S seconds ahead
through the system's own scheduled API (forkq ``enqueue_in``, huey
``schedule(delay=)``, Dramatiq ``send_with_options(delay=)``), so each job is also
promoted; the latency is then start minus due time.  Before one promoter per
namespace (forkq/fetcher.py, FOLLOWER_GRACE), every idle pool woke at each due time.

Medians of ``--reps`` repetitions; every repetition is in ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers._counter import LAT_KEY  # noqa: E402
from bench.run import BENCH, Bench, Plan, Progress, _cpu, ensure_peer_venv, pct  # noqa: E402

SYSTEMS = ("forkq", "huey", "dramatiq")


def run_one(b: Bench, system: str, procs: int, threads: int, rate: float, seconds: float,
            delay: float = 0.0) -> dict[str, Any]:
    b.reset()
    w = b.start_workers(system, procs, threads)
    try:
        b.warm_up(system, w, timeout=120.0)
        # Every pool has fetched, found nothing and gone idle (forkq: registered).
        time.sleep(3.0)
        b.r.delete(LAT_KEY)
        base = b.count()
        s0 = b.snapshot()
        cpu0 = {p.pid: _cpu(p) for p in w.tree()}
        t0 = time.monotonic()
        res = b.driver(system, "trickle", system, "--rate", str(rate), "--seconds", str(seconds),
                       "--timeout", str(30.0 + delay), "--delay", str(delay),
                       timeout=seconds + delay + 120)
        n = int(res["sent"])
        b.wait_count(base + n, 30.0 + delay, w, f"{system} trickle")
        dt = time.monotonic() - t0
        s1 = b.snapshot()
        cpu1 = {p.pid: _cpu(p) for p in w.tree()}
    finally:
        b.stop_workers(w)
    done = b.count() - base
    cost = b.redis_cost(s0, s1, max(1, n))
    # The counter's flushes each carry an INCRBY (subtracted by redis_cost) and, as every
    # job here is a probe, an RPUSH of latencies: the harness's, not the system's.
    flushes = s1["cmdstat"].get("incrby", 0) - s0["cmdstat"].get("incrby", 0)
    per_cmd = dict(cost["cmdstat_per_job"])
    if "rpush" in per_cmd:
        per_cmd["rpush"] = round(max(0.0, per_cmd["rpush"] - flushes / max(1, n)), 3)
    lat = sorted(x * 1000 for x in res["latencies"])
    scripts = sum(v for k, v in per_cmd.items() if k in ("evalsha", "eval"))
    return {
        "system": system, "processes": procs, "threads": threads, "rate": rate, "seconds": seconds,
        "delay": delay,
        "sent": n, "done": done, "ok": done >= n and not res["timeouts"],
        "send_seconds": res["send_seconds"], "window_seconds": dt,
        "commands_per_job": cost["commands_per_job"] - flushes / max(1, n),
        "script_calls_per_job": scripts,
        "redis_cpu_us_per_job": cost["redis_cpu_us_per_job"],
        "redis_cpu_pct": 100 * (s1["cpu"] - s0["cpu"]) / dt,
        "worker_cpu_ms_per_job": 1000 * sum(v - cpu0.get(pid, 0.0) for pid, v in cpu1.items()) / max(1, n),
        "pickup_p50_ms": pct(lat, 50) if lat else None,
        "pickup_p99_ms": pct(lat, 99) if lat else None,
        "pickup_max_ms": lat[-1] if lat else None,
        "cmdstat_per_job": per_cmd,
    }


KEYS = ("commands_per_job", "script_calls_per_job", "redis_cpu_us_per_job", "worker_cpu_ms_per_job",
        "pickup_p50_ms", "pickup_p99_ms", "pickup_max_ms")


def render(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    what = (f"Scheduled trickle: {meta['rate']:.0f} jobs/s, each due {meta['delay']:g} s after its enqueue,"
            if meta.get("delay") else f"Trickle: {meta['rate']:.0f} enqueues/s")
    pickup = "start − due" if meta.get("delay") else "pickup"
    lines = [f"# {what} for {meta['seconds']:.0f} s into "
             f"{meta['procs']} processes x {meta['threads']} threads ({meta['when']})", "",
             f"`{meta['command']}`; Redis {meta['redis']}, {meta['cpus']} CPUs; medians of "
             f"{meta['reps']} (all repetitions in results.json). {meta['note']}".rstrip(), "",
             "| system | Redis commands / job | script calls / job | Redis CPU / job | worker CPU / job "
             f"| {pickup} p50 | {pickup} p99 | max | runs ok |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for system in meta["systems"]:
        rs = [r for r in runs if r["system"] == system]
        if not rs:
            continue
        m = {k: statistics.median([r[k] for r in rs if r[k] is not None] or [float("nan")]) for k in KEYS}
        lines.append(f"| {system} | {m['commands_per_job']:.2f} | {m['script_calls_per_job']:.2f} "
                     f"| {m['redis_cpu_us_per_job']:.0f} µs | {m['worker_cpu_ms_per_job']:.2f} ms "
                     f"| {m['pickup_p50_ms']:.2f} ms | {m['pickup_p99_ms']:.2f} ms "
                     f"| {m['pickup_max_ms']:.1f} ms | {sum(r['ok'] for r in rs)}/{len(rs)} |")
    lines.append("")
    lines.append("Per-command Redis calls per job (median run of each system):")
    lines.append("")
    for system in meta["systems"]:
        rs = sorted((r for r in runs if r["system"] == system), key=lambda r: r["commands_per_job"])
        if rs:
            mid = rs[len(rs) // 2]["cmdstat_per_job"]
            lines.append(f"- {system}: " + ", ".join(f"{k} {v}" for k, v in list(mid.items())[:12]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/trickle.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SYSTEMS))
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--delay", type=float, default=0.0,
                    help="a scheduled trickle: each job due this many seconds after its enqueue")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None, help="default bench/results/trickle (or trickle-scheduled)")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(BENCH / "results" / ("trickle-scheduled" if args.delay else "trickle"))
    systems = [s for s in SYSTEMS if s in args.only.split(",")]
    plan = Plan(quick=False, reps=args.reps, systems=systems, workloads=[], idle_seconds=0.0,
                probes_idle=0, probes_load=0, load_rate=0.0, backlog=0, scheduled=0)
    b = Bench(args, plan, Progress(1))
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        for s in systems:
            if s != "forkq":
                b.vpy[s] = ensure_peer_venv(s, lambda m: print(f"trickle: {m}", file=sys.stderr))
        for rep in range(args.reps):
            for s in systems:  # interleaved: machine noise spreads over every system
                print(f"trickle: {s} rep {rep + 1}", file=sys.stderr, flush=True)
                try:
                    r = run_one(b, s, args.procs, args.threads, args.rate, args.seconds, args.delay)
                except RuntimeError as exc:
                    failures.append(f"{s} rep {rep + 1}: {exc}")
                    continue
                r["rep"] = rep
                runs.append(r)
                if not r["ok"]:
                    failures.append(f"{s} rep {rep + 1}: {r['done']}/{r['sent']} done")
        meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "command": "python bench/trickle.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "redis": b.r.info("server").get("redis_version"), "cpus": __import__("os").cpu_count(),
                "reps": args.reps, "procs": args.procs, "threads": args.threads, "rate": args.rate,
                "seconds": args.seconds, "delay": args.delay, "systems": systems, "note": args.note}
        text = render(runs, meta)
        if failures:
            text += "\nFAILURES:\n" + "\n".join(f"- {f}" for f in failures) + "\n"
        print(text)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(text)
        (out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs, "failures": failures},
                                                     indent=1) + "\n")
    finally:
        b.server.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
