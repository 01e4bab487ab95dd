"""Async benchmark: 10 ms ``asyncio.sleep`` jobs, 1,000 in flight per worker process,
forkq (``-c 1 --async-concurrency 1000``, one child) against arq (``max_jobs``), saq
(``concurrency``) and taskiq (``--max-async-tasks``, Redis stream broker), one worker
process each, the same N and the same Redis.

    .venv/bin/python bench/async_bench.py [--n 20000] [--reps 3] [--systems forkq,arq,saq,taskiq]

This is workload ``l`` of bench/run.py, run alone (``python bench/run.py --workloads l``
runs the same thing beside the others): the same harness, so the same measures.  A
backlog of N jobs is filled first (not timed); the rate is from the first completion
to the last (start-up left out); completion is the shared counter every job bumps
(bench/peers/_counter.py).  Worker CPU is every process of the worker's tree over
that window; Redis commands and CPU are INFO deltas less the harness's own polls and
the counter's flushes.  The peers run from bench/.peers-venv/<peer>, created with the
pinned versions of ``bench.run.PEER_REQUIREMENTS`` on first use.  Every worker is
started in its own process group and stopped by it (TERM, then KILL after 5 s), and
every wait has a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402


def table(summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| system | jobs/s | % ideal | worker CPU ms/job | Redis cmds/job | Redis µs/job |",
             "|---|---:|---:|---:|---:|---:|"]
    ideal = run.IDEAL["l"]
    for system, s in summary.items():
        v = s.get("io_l") or {}
        if v.get("rate") is None:
            continue
        lines.append(f"| {system} | {run.fmt(v['rate'])} | {100 * v['rate'] / ideal:.0f}% | "
                     f"{run.fmt(v['worker_cpu_ms_per_job'], 3)} | "
                     f"{run.fmt(v['commands_per_job'], 2)} | "
                     f"{run.fmt(v['redis_cpu_us_per_job'], 1)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/async_bench.py", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=run.FULL_N["l"]["forkq"], help="jobs per run, every system")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (medians shown)")
    ap.add_argument("--systems", default="forkq,arq,saq,taskiq")
    ap.add_argument("--out", default=str(run.BENCH / "results" / "async"))
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in run.FULL_N["l"]]
    if bad:
        print(f"bench/async_bench.py: no async jobs for {', '.join(bad)}; choose from "
              f"{', '.join(run.FULL_N['l'])}", file=sys.stderr)
        return 2
    if args.n < 1 or args.reps < 1:
        print("bench/async_bench.py: --n and --reps must be at least 1", file=sys.stderr)
        return 2
    plan = run.Plan(quick=False, reps=args.reps, systems=systems, workloads=["l"],
                    idle_seconds=0.0, probes_idle=0, probes_load=0, load_rate=0.0, backlog=0,
                    scheduled=0, async_n=args.n)

    def log(msg: str) -> None:
        print(f"async_bench: {msg}", file=sys.stderr, flush=True)

    progress = run.Progress(1)
    b = run.Bench(argparse.Namespace(out=args.out), plan, progress)
    try:
        for peer in systems:
            if peer != "forkq":
                try:
                    b.vpy[peer] = run.ensure_peer_venv(peer, log)
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    b.results["failures"].append(f"{peer}: not installed: {exc}")
                    log(f"skipping {peer}: {str(exc).splitlines()[0]}")
        plan.systems = [s for s in systems if s == "forkq" or s in b.vpy]
        steps = run.steps_for(plan)
        progress.total = len(steps)
        for step, system, rep in steps:
            progress.step(f"{system} rep {rep + 1}")
            try:
                run.run_step(b, step, system, rep)
            except (RuntimeError, subprocess.TimeoutExpired, redis.RedisError) as exc:
                b.results["failures"].append(f"{system} rep {rep + 1}: {exc}")
                log(f"FAILED {system} rep {rep + 1}: {str(exc).splitlines()[0]}")
            progress.finish_step()
        progress.close()
        summary = run.summarize(b.results["runs"])
        redis_version = b.r.info("server").get("redis_version")
    finally:
        b.server.cleanup()
    rates: dict[str, list[int]] = {r["system"]: [] for r in b.results["runs"]}
    for r in b.results["runs"]:
        rates[r["system"]].append(round(r["rate"]))
    lines = [f"Async: 10 ms asyncio.sleep jobs, {run.ASYNC_PROCS} worker process × "
             f"{run.ASYNC_IN_FLIGHT:,} in flight, N = {args.n:,} per run, {args.reps} rep(s), "
             f"medians; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"Redis {redis_version}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
             f"Command: `python bench/async_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             "", *table(summary), "",
             "Per-rep jobs/s: " + "; ".join(f"{k} {v}" for k, v in rates.items())]
    if b.results["failures"]:
        lines += ["", "FAILURES:", *[f"- {f}" for f in b.results["failures"]]]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"summary": summary, **b.results}, indent=1,
                                                 default=str) + "\n")
    return 1 if b.results["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
