"""Jobs pushed by a client that publishes no wake (Sidekiq's Ruby client, its Web UI's
"Retry Now"/"Add to queue": a plain LPUSH): how soon forkq starts them, and what the
waker that makes this fast costs while idle.

    .venv/bin/python bench/sidekiq_push.py [--pushes 200] [--idle 30]

Starts a private redis-server and ``forkq -p 2 -c 10 bench.sk7_jobs`` (namespace "",
default Config: the idle poll is 10 s), then
1. idle window: Redis commands/s per child over ``--idle`` seconds, counted with
   MONITOR (client-issued, and run inside Lua) and INFO (total_commands_processed);
2. ``--pushes`` jobs LPUSHed one by one (plain LPUSH + SADD, no PUBLISH) at random
   gaps of 50-300 ms: pickup latency from ``enqueued_at`` to the job's start, p50/p99/max.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_server import RedisServer, wait_for  # noqa: E402  (tests/redis_server.py)

from bench.peers._counter import LAT_KEY, URL_ENV  # noqa: E402
from bench.run import Monitor  # noqa: E402


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=200)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--children", type=int, default=2)
    a = ap.parse_args(argv)
    server = RedisServer().start()
    proc = None
    try:
        r = server.client()
        env = {**os.environ, URL_ENV: server.url, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "forkq", "-p", str(a.children), "-c", "10",
                                 "--redis", server.url, "--log-level", "WARNING", "bench.sk7_jobs"],
                                cwd=ROOT, env=env, start_new_session=True)
        wait_for(lambda: r.scard("processes") == a.children and r.exists("waker:lock"), timeout=60,
                 message="children up and a waker elected")
        time.sleep(5.0)  # start-up work settles (first fetches, reaper pass)
        i0 = r.info("all")
        mon = Monitor(server.port)
        t0 = time.monotonic()
        mon.read_until(t0 + a.idle)
        dt = time.monotonic() - t0
        mon.close()
        i1 = r.info("all")
        total = int(i1["total_commands_processed"]) - int(i0["total_commands_processed"]) - 2  # the INFOs
        idle = {
            "seconds": round(dt, 1), "children": a.children,
            "client_cmds_per_s_per_child": round(mon.client / dt / a.children, 3),
            "lua_cmds_per_s_per_child": round(mon.lua / dt / a.children, 3),
            "info_cmds_per_s_per_child": round(total / dt / a.children, 3),
            "client_cmds": mon.names,
        }
        r.delete(LAT_KEY)
        for i in range(a.pushes):
            now = time.time()
            payload = orjson.dumps({"class": "Probe", "queue": "Probe", "args": [i],
                                    "jid": os.urandom(12).hex(), "retry": True,
                                    "created_at": now, "enqueued_at": now})
            pipe = r.pipeline(transaction=True)  # what Sidekiq's client sends
            pipe.sadd("queues", "Probe")
            pipe.lpush("queue:Probe", payload)
            pipe.execute()
            time.sleep(random.uniform(0.05, 0.3))
        wait_for(lambda: r.llen(LAT_KEY) >= a.pushes, timeout=60, message="every push ran")
        lat = [float(x) for x in r.lrange(LAT_KEY, 0, -1)]
        out = {
            "idle": idle,
            "pickup_ms": {"n": len(lat), "p50": round(1000 * statistics.median(lat), 2),
                          "p99": round(1000 * _pct(lat, 0.99), 2), "max": round(1000 * max(lat), 2)},
            "waker_holder": (r.get("waker:lock") or b"").decode(),
        }
        print(json.dumps(out, indent=2))
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        server.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
