#!/usr/bin/env python
"""Many hosts, one Redis: what a fleet of masters costs the one server they share.

    python bench/hosts.py [--hosts 4] [--children 2] [--threads 10] [--reps 3]
                          [--workloads noop,sleep10] [--out DIR]

Issue 12: Redis is the one thing every host shares, so its CPU per job sets how many
jobs/s a whole fleet can run.  This starts ``--hosts`` real masters
(``python -m forkq -p CHILDREN -c THREADS bench.jobs``), each with its own
``FORKQ_HOSTNAME`` (``bench-host-1`` ...: the identity a separate machine would
have), against one redis-server, drains a backlog of N jobs enqueued beforehand, and
reports, as bench/run.py does for one host (its helpers are reused):

- jobs/s, from the first completion seen to the last;
- Redis commands per job (commands inside Lua scripts count one each, as in INFO
  commandstats; the harness's own INFO/GET/INCRBY are subtracted);
- Redis CPU per job (``used_cpu_sys + used_cpu_user``) and the Redis CPU fraction
  over the run;
- the jobs/s one Redis core allows: jobs/s / Redis CPU fraction (= 1 s / Redis CPU
  per job), the fleet's ceiling if Redis were the only limit.  The issue's goal for
  no-op jobs is >= 80,000/s per Redis core.

On a 2-core machine the workers and Redis share the cores, so jobs/s is the
machine's; the per-core figure is the one that scales.  Medians of ``--reps``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import BENCH, Bench, Plan, Progress, Workers, _cpu  # noqa: E402

WORKLOADS = {"noop": 200_000, "sleep10": 40_000}


def start_fleet(b: Bench, hosts: int, children: int, threads: int) -> Workers:
    fleet = [b.start_workers("forkq", children, threads, FORKQ_HOSTNAME=f"bench-host-{i + 1}")
             for i in range(hosts)]
    return Workers(system="forkq", procs=[p for w in fleet for p in w.procs],
                   started=min(w.started for w in fleet), log_path=fleet[0].log_path)


def run_one(b: Bench, kind: str, n: int, hosts: int, children: int, threads: int) -> dict[str, Any]:
    b.reset()
    b.driver("forkq", "fill", "forkq", kind, str(n))
    w = start_fleet(b, hosts, children, threads)
    marks: dict[str, Any] = {}

    def first() -> None:
        # From the first completion: start-up (imports, forks) is not the steady state.
        marks["s0"] = b.snapshot()
        marks["t0"] = time.monotonic()
        marks["cpu0"] = {p.pid: _cpu(p) for p in w.tree()}

    try:
        t_first, c_first, t_last, c = b.wait_count(n, max(120.0, n / 500), w, f"{kind} x{hosts} hosts",
                                                   on_first=first)
        s1 = b.snapshot()
        t1 = time.monotonic()
        cpu1 = {p.pid: _cpu(p) for p in w.tree()}
        identities = {m.decode().split(":")[0] for m in b.r.smembers("{bench}:processes")}
    finally:
        b.stop_workers(w)
    s0 = marks["s0"]
    jobs = max(1, c - c_first)
    cost = b.redis_cost(s0, s1, jobs)
    redis_frac = (s1["cpu"] - s0["cpu"]) / max(1e-9, t1 - marks["t0"])
    rate = (c - c_first) / max(1e-9, t_last - t_first)
    return {
        "kind": kind, "n": n, "hosts": hosts, "children": children, "threads": threads,
        "ok": c >= n, "done": c, "hostnames_seen": sorted(identities),
        "rate": rate,
        "commands_per_job": cost["commands_per_job"],
        "redis_cpu_us_per_job": cost["redis_cpu_us_per_job"],
        "redis_cpu_fraction": redis_frac,
        "jobs_per_redis_core": rate / redis_frac if redis_frac > 0 else None,
        "worker_cpu_ms_per_job": 1000 * sum(v - marks["cpu0"].get(pid, 0.0) for pid, v in cpu1.items()) / jobs,
        "cmdstat_per_job": cost["cmdstat_per_job"],
    }


KEYS = ("rate", "commands_per_job", "redis_cpu_us_per_job", "redis_cpu_fraction", "jobs_per_redis_core",
        "worker_cpu_ms_per_job")


def render(runs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# {meta['hosts']} masters x {meta['children']} children x {meta['threads']} threads, "
             f"one Redis ({meta['when']})", "",
             f"`{meta['command']}`; Redis {meta['redis']}, {meta['cpus']} CPUs shared by workers and "
             f"Redis; medians of {meta['reps']}. {meta['note']}".rstrip(), "",
             "| workload | N | jobs/s | Redis commands / job | Redis CPU / job | Redis CPU (of a core) "
             "| jobs/s one Redis core allows | worker CPU / job | runs ok |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in meta["workloads"]:
        rs = [r for r in runs if r["kind"] == kind]
        if not rs:
            continue
        m = {k: statistics.median([r[k] for r in rs if r[k] is not None] or [float("nan")]) for k in KEYS}
        lines.append(f"| {kind} | {rs[0]['n']:,} | {m['rate']:,.0f} | {m['commands_per_job']:.2f} "
                     f"| {m['redis_cpu_us_per_job']:.1f} µs | {100 * m['redis_cpu_fraction']:.0f}% "
                     f"| {m['jobs_per_redis_core']:,.0f} | {m['worker_cpu_ms_per_job']:.3f} ms "
                     f"| {sum(r['ok'] for r in rs)}/{len(rs)} |")
    lines += ["", "Per-command Redis calls per job (median run):", ""]
    for kind in meta["workloads"]:
        rs = sorted((r for r in runs if r["kind"] == kind), key=lambda r: r["redis_cpu_us_per_job"])
        if rs:
            mid = rs[len(rs) // 2]
            lines.append(f"- {kind} (hosts seen: {', '.join(mid['hostnames_seen'])}): "
                         + ", ".join(f"{k} {v}" for k, v in list(mid["cmdstat_per_job"].items())[:12]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/hosts.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--children", type=int, default=2)
    ap.add_argument("--threads", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--n", type=int, default=0, help="jobs per run (default: noop 200,000, sleep10 40,000)")
    ap.add_argument("--out", default=str(BENCH / "results" / "hosts"))
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    kinds = [k for k in args.workloads.split(",") if k]
    bad = [k for k in kinds if k not in WORKLOADS]
    if bad:
        print(f"bench/hosts.py: unknown workload(s) {', '.join(bad)}; choose from {', '.join(WORKLOADS)}",
              file=sys.stderr)
        return 2
    plan = Plan(quick=False, reps=args.reps, systems=["forkq"], workloads=[], idle_seconds=0.0,
                probes_idle=0, probes_load=0, load_rate=0.0, backlog=0, scheduled=0)
    b = Bench(args, plan, Progress(1))
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        for rep in range(args.reps):
            for kind in kinds:
                print(f"hosts: {kind} rep {rep + 1}", file=sys.stderr, flush=True)
                n = args.n or WORKLOADS[kind]
                try:
                    r = run_one(b, kind, n, args.hosts, args.children, args.threads)
                except RuntimeError as exc:
                    failures.append(f"{kind} rep {rep + 1}: {exc}")
                    continue
                r["rep"] = rep
                runs.append(r)
                if not r["ok"]:
                    failures.append(f"{kind} rep {rep + 1}: {r['done']}/{n} done")
        meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "command": "python bench/hosts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "redis": b.r.info("server").get("redis_version"), "cpus": os.cpu_count(),
                "reps": args.reps, "hosts": args.hosts, "children": args.children, "threads": args.threads,
                "workloads": kinds, "note": args.note}
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
