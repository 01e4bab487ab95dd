#!/usr/bin/env python
"""Profile forkq's hot path (no-op jobs, or a realistic body with --job): where the CPU goes, per job.

    python bench/profile.py [--n 300000] [--job noop|incr|sleep10incr] [--rate 100] [--out bench/results/profile]

Runs the real CLI (``python -m forkq -p 2 -c 10 bench.jobs``) over a backlog of
``--n`` no-op jobs on a private redis-server and reports:

* CPU per job of the forkq children (psutil user+sys) and of Redis (INFO cpu);
* Redis commands per job and µs per call of each command (INFO commandstats:
  the Lua scripts' inner commands are listed one by one);
* with py-spy installed (``pip install py-spy``): a sampling profile of every
  child, only samples holding the GIL (``child<i>-gil.raw``), summarised as the
  top functions and lines by own time, inclusive time, and per thread role.
  The raw files are collapsed stacks (flamegraph.pl / speedscope read them);
* the Redis ceiling on this machine from ``redis-benchmark`` (LPUSH/RPOP, with
  and without pipelining), for comparison with the per-job Redis cost.

The summary goes to stdout and ``<out>/profile.md``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_server import RedisServer  # noqa: E402

from bench.peers._counter import DONE_KEY, URL_ENV  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")


def summarise_raw(paths: list[Path], top: int = 25) -> list[str]:
    """Own/inclusive time per function and samples per thread from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    own_fn: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    lines = [ln for p in paths for ln in p.read_text(errors="replace").splitlines()]
    for line in lines:
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        # py-spy raw: "process (pid);thread (tid);outer (file);...;leaf (file)"
        thread = frames[1] if len(frames) > 1 and frames[1].startswith("thread") else "?"
        funcs = [f for f in frames if FRAME.match(f) and not f.startswith(("process ", "thread "))]
        threads[_thread_role(funcs)] += count
        if funcs:
            own[_short(funcs[-1])] += count
            own_fn[re.sub(r":\d+\)$", ")", _short(funcs[-1]))] += count
        for f in set(_short(f) for f in funcs):
            incl[f] += count
        del thread
    if not total:
        return ["(no samples)"]
    out = [f"samples: {total}", "", "by thread role (share of samples):", ""]
    for name, c in threads.most_common():
        out.append(f"  {100 * c / total:5.1f}%  {name}")
    out += ["", f"top {top} functions by own time:", ""]
    for name, c in own_fn.most_common(top):
        out.append(f"  {100 * c / total:5.1f}%  {name}")
    out += ["", f"top {top} lines by own time:", ""]
    for name, c in own.most_common(top):
        out.append(f"  {100 * c / total:5.1f}%  {name}")
    out += ["", f"top {top} by inclusive time:", ""]
    for name, c in incl.most_common(top):
        out.append(f"  {100 * c / total:5.1f}%  {name}")
    return out


def _short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    file = file.split("site-packages/")[-1].split("/work/main/")[-1]
    return f"{m.group('func')} ({file})"


def _thread_role(funcs: list[str]) -> str:
    text = ";".join(funcs)
    for marker, role in (("_loop (forkq/executor.py", "worker threads (executor._loop)"),
                         ("run (forkq/fetcher.py", "fetcher thread"),
                         ("_listen (forkq/runtime.py", "wake listener"),
                         ("_housekeep (forkq/runtime.py", "housekeeper"),
                         ("_flusher (bench/peers/_counter.py", "bench counter flusher")):
        if marker in text:
            return role
    return "other (main thread, start-up)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/profile.py")
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--job", default="noop", choices=("noop", "incr", "sleep10incr", "sleep100incr"),
                    help="the job body (bench/jobs.py): incr is one real INCR on its own connection")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=10)
    ap.add_argument("--names", type=int, default=0,
                    help="spread the jobs over this many job names (BENCH_NAMES)")
    ap.add_argument("--no-spy", action="store_true", help="measure only, no py-spy")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    server = RedisServer().start()
    r = server.client()
    env = dict(os.environ, PYTHONPATH=str(ROOT), BENCH_NAMES=str(a.names),
               **{URL_ENV: server.url, "FORKQ_REDIS_URL": server.url})
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    report: list[str] = [f"# forkq hot-path profile ({a.job} jobs), tree {rev or '?'}", ""]
    spies: list[subprocess.Popen[bytes]] = []
    master: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([sys.executable, "-m", "bench.peers.driver", "fill", "forkq", a.job, str(a.n),
                        "--names", str(a.names)],
                       check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        r.config_resetstat()
        info0 = r.info("all")
        logf = open(out / "forkq.log", "wb")  # noqa: SIM115
        master = subprocess.Popen([sys.executable, "-m", "forkq", "-p", str(a.processes), "-c",
                                   str(a.threads), "--redis", server.url, "bench.jobs"],
                                  cwd=ROOT, env=env, stdout=logf, stderr=logf, start_new_session=True)
        t0 = time.monotonic()
        kids: list[psutil.Process] = []
        while len(kids) < a.processes and time.monotonic() - t0 < 30:
            kids = psutil.Process(master.pid).children()
            time.sleep(0.01)
        pyspy = None if a.no_spy else shutil.which("py-spy")
        if pyspy:
            for i, kid in enumerate(kids):
                # --gil: only samples where this process's running thread holds the
                # GIL, i.e. where its CPU goes (the all-threads view is dominated by
                # threads blocked in C waits that py-spy cannot tell from work).
                cmd = [pyspy, "record", "-p", str(kid.pid), "-f", "raw", "-o",
                       str(out / f"child{i}-gil.raw"), "-r", str(a.rate), "-t", "-g"]
                spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        cpu0 = {k.pid: sum(k.cpu_times()[:2]) for k in kids}
        first = 0.0
        while True:
            v = int(r.get(DONE_KEY) or 0)
            if v and not first:
                first, c_first = time.monotonic(), v
                cpu0 = {k.pid: sum(k.cpu_times()[:2]) for k in kids}
            if v >= a.n:
                break
            if master.poll() is not None or time.monotonic() - t0 > 600:
                raise RuntimeError("forkq exited or took too long; see forkq.log")
            time.sleep(0.005)
        dt = time.monotonic() - first
        cpu1 = {k.pid: sum(k.cpu_times()[:2]) for k in kids}
        info1 = r.info("all")
        jobs = a.n - c_first
        child_cpu = sum(cpu1[p] - cpu0[p] for p in cpu0)
        redis_cpu = (info1["used_cpu_sys"] + info1["used_cpu_user"]
                     - info0["used_cpu_sys"] - info0["used_cpu_user"])
        report += [
            f"{a.n:,} jobs{f' over {a.names} job names' if a.names else ''}, "
            f"forkq -p {a.processes} -c {a.threads}"
            + (f", profiled by py-spy at {a.rate} Hz (slows the children a little)" if spies else ""),
            "",
            f"- throughput (steady): {jobs / dt:,.0f} jobs/s",
            f"- forkq children CPU: {1e6 * child_cpu / jobs:.1f} µs per job "
            f"({100 * child_cpu / dt / max(1, len(cpu0)):.0f}% of a core per child)",
            f"- Redis CPU: {1e6 * redis_cpu / a.n:.1f} µs per job "
            f"({100 * redis_cpu / dt:.0f}% of a core)",
            "",
            "Redis commands per job (INFO commandstats; Lua-internal commands counted one by one):",
            "",
            "| command | calls/job | µs/call | µs/job |",
            "|---|---:|---:|---:|",
        ]
        rows = []
        for k, v in info1.items():
            if not k.startswith("cmdstat_"):
                continue
            calls = v["calls"] - info0.get(k, {}).get("calls", 0)
            usec = v["usec"] - info0.get(k, {}).get("usec", 0)
            if calls:
                rows.append((k[8:], calls / a.n, usec / calls, usec / a.n))
        for name, cpj, upc, upj in sorted(rows, key=lambda x: -x[3]):
            if cpj >= 0.001:
                report.append(f"| {name} | {cpj:.3f} | {upc:.2f} | {upj:.2f} |")
        report.append("")
    finally:
        if master is not None and master.poll() is None:
            os.killpg(master.pid, signal.SIGTERM)
            try:
                master.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(master.pid, signal.SIGKILL)
                master.wait(10)
        for s in spies:
            try:
                s.wait(30)
            except subprocess.TimeoutExpired:
                s.send_signal(signal.SIGINT)
                s.wait(10)
    raws = sorted(out.glob("child*-gil.raw"))
    if raws:
        report += [f"## py-spy --gil, all children ({', '.join(p.name for p in raws)})", "",
                   "```", *summarise_raw(raws), "```", ""]
    bench_bin = shutil.which("redis-benchmark")
    if bench_bin:
        report += ["## Redis ceiling on this machine (redis-benchmark, 50 clients)", "", "```"]
        for extra in ([], ["-P", "16"]):
            res = subprocess.run([bench_bin, "-p", str(server.port), "-q", "-n", "200000", "-t",
                                  "lpush,rpop", *extra], capture_output=True, text=True)
            lines = [ln.split("\r")[-1].strip() for ln in res.stdout.splitlines()
                     if "requests per second" in ln]
            report += [f"{' '.join(extra) or 'no pipelining'}: {ln}" for ln in lines]
        report += ["```", ""]
    server.cleanup()
    text = "\n".join(report)
    (out / "profile.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
