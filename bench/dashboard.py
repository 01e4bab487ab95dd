"""Dashboard speed on a big dead set, and the screenshots in docs/.

    python bench/dashboard.py                     # 1,000,000 dead jobs: time the pages
    python bench/dashboard.py --dead 200000 --reps 50
    python bench/dashboard.py --screenshots docs  # PNGs of the main pages (headless Chromium)

Timing mode: starts its own redis-server on a free loopback port, makes ONE dead
entry the real way (a pool runs a failing job), then fills ``dead`` with
``--dead`` copies of that exact payload, each with its own jid and death time
(pipelined ZADDs: running a million failing jobs would only measure the
workers).  Then it starts the real ``forkq web`` process and times full HTTP
requests (server render + transfer, on loopback) of the Dead page (first, a
middle and the last page), the overview, /metrics and a search by jid, and
prints median / p95 / max in milliseconds.  The target: the Dead page in
< 200 ms at 1,000,000 dead jobs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import orjson  # noqa: E402
import redis  # noqa: E402
from redis_server import RedisServer, wait_for  # noqa: E402
from web_support import NS, Gate, produce, start_web  # noqa: E402

import forkq  # noqa: E402
from forkq.keys import Keys  # noqa: E402

K = Keys(NS)


def fill_dead(conn: redis.Redis, n: int) -> None:
    template = forkq.job.decode(conn.zrange(K.dead, 0, 0)[0])
    now = time.time()
    batch = 10_000
    for start in range(0, n, batch):
        pipe = conn.pipeline(transaction=False)
        members = {}
        for i in range(start, min(n, start + batch)):
            d = dict(template)
            d["jid"] = f"{i:024x}"
            d["args"] = [{"i": i, "user": f"user-{i % 5000}"}]
            d["failed_at"] = now - (n - i)
            members[orjson.dumps(d)] = now - (n - i)
        pipe.zadd(K.dead, members)
        pipe.execute()


def timed(url: str, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as r:
            r.read()
            assert r.status == 200
        out.append((time.perf_counter() - t) * 1000)
    return out


def bench(args: argparse.Namespace) -> int:
    cfg = forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2)
    server = RedisServer().start()
    web = None
    try:
        conn = server.client()
        produce(server.url, cfg, dead=1)
        t = time.perf_counter()
        fill_dead(conn, args.dead - 1)
        total = int(conn.zcard(K.dead))
        mem = conn.info("memory")["used_memory_human"]
        print(f"dead set: {total:,} entries (filled in {time.perf_counter() - t:.1f} s; Redis uses {mem})")
        web = start_web(server.url)
        base = web.url
        pages = -(-total // 25)
        mid_jid = f"{total // 2:024x}"
        cases = [
            ("Dead page 1", "/sets/dead"),
            (f"Dead page {pages // 2:,}", f"/sets/dead?page={pages // 2}"),
            (f"Dead page {pages:,} (last)", f"/sets/dead?page={pages}"),
            ("Overview", "/"),
            ("/metrics", "/metrics"),
            ("Dead search by jid (ZSCAN, bounded)", f"/sets/dead?q={mid_jid}"),
        ]
        timed(base + "/sets/dead", 3)  # warm-up: connections, template compilation
        print(f"\n{'request':42} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}  (n)")
        for label, path in cases:
            n = args.reps if "search" not in label else max(3, args.reps // 10)
            ms = sorted(timed(base + path, n))
            p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
            print(f"{label:42} {statistics.median(ms):10.1f} {p95:8.1f} {ms[-1]:8.1f}  ({n})")
        return 0
    finally:
        if web is not None:
            web.stop()
        server.cleanup()


def screenshots(args: argparse.Namespace) -> int:
    """Real workload (jobs running, failing, retrying, a periodic job), then a PNG per page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out = Path(args.screenshots)
    out.mkdir(parents=True, exist_ok=True)
    cfg = forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2)
    server = RedisServer().start()
    gate = Gate()
    pools: list[forkq.WorkerPool] = []
    web = None
    driver = None
    stop = threading.Event()
    try:
        conn = server.client()
        produce(server.url, cfg, dead=14, retries=6)
        enq = forkq.Enqueuer(server.url, NS)
        for i in range(5):
            enq.enqueue_in("send_report", 600 + 60 * i, {"report": f"weekly-{i}"})
        enq.close()
        work = forkq.WorkerPool(NS, config=cfg)
        work.register("send_email", lambda job: time.sleep(0.02))
        work.register("resize_image", lambda job: time.sleep(0.05))
        work.register("charge_card", gate.handler)

        def flaky(job: forkq.Job) -> None:
            if job.arg_int("n") % 7 == 0:
                raise RuntimeError("payment gateway timeout")

        work.register("sync_crm", flaky)
        work.register("nightly_cleanup", lambda job: None)
        work.periodically_enqueue("0 */2 * * * *", "nightly_cleanup")
        work.start(server.url, concurrency=6)
        pools.append(work)
        paused = Keys(NS).paused("resize_image")

        def feed() -> None:
            e = forkq.Enqueuer(server.url, NS)
            n = 0
            while not stop.is_set():
                e.enqueue_many("send_email", [{"to": f"user{n + i}@example.com"} for i in range(40)])
                e.enqueue_many("sync_crm", [{"n": n + i} for i in range(10)])
                e.enqueue_many("resize_image", [{"id": n + i} for i in range(8)])
                n += 40
                stop.wait(0.5)
            e.close()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        e = forkq.Enqueuer(server.url, NS)
        for i in range(3):
            e.enqueue("charge_card", {"order": 1000 + i, "amount_cents": 4999})
        e.close()
        wait_for(lambda: gate.started >= 3, timeout=20, message="running jobs")
        conn.set(paused, b"1")
        web = start_web(server.url)
        profile = tempfile.mkdtemp(prefix="forkq-shots-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--window-size=1400,1100", "--hide-scrollbars", f"--user-data-dir={profile}"):
            opts.add_argument(flag)
        driver = webdriver.Chrome(options=opts, service=Service(executable_path="/usr/bin/chromedriver"))
        def shot(name: str) -> None:
            height = int(driver.execute_script("return document.documentElement.scrollHeight"))
            driver.set_window_size(1400, max(700, min(2400, height)))
            time.sleep(0.5)
            driver.save_screenshot(str(out / f"dashboard-{name}.png"))

        driver.get(web.url + "/")
        time.sleep(args.live)  # live points accumulate (5 s poll)
        shot("overview")
        dead_key = conn.zrevrange(Keys(NS).dead, 0, 0, withscores=True)[0]
        jid = forkq.job.jid_of(dead_key[0])
        for name, path in (("busy", "/busy"), ("queues", "/queues"), ("dead", "/sets/dead"),
                           ("dead-job", f"/sets/dead/entry?key={dead_key[1]!r}-{jid}"),
                           ("retries", "/sets/retries")):
            driver.set_window_size(1400, 700)
            driver.get(web.url + path)
            shot(name)
        print(f"screenshots written to {out}/dashboard-*.png")
        return 0
    finally:
        stop.set()
        gate.event.set()
        if driver is not None:
            driver.quit()
        if web is not None:
            web.stop()
        for p in pools:
            p.stop(timeout=5)
        server.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/dashboard.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dead", type=int, default=1_000_000, help="dead entries (default 1,000,000)")
    ap.add_argument("--reps", type=int, default=30, help="requests per page (default 30)")
    ap.add_argument("--screenshots", metavar="DIR", help="write PNGs of the main pages to DIR")
    ap.add_argument("--live", type=float, default=40.0,
                    help="seconds the overview polls before its screenshot (default 40)")
    args = ap.parse_args(argv)
    os.environ.setdefault("FORKQ_LOG_LEVEL", "WARNING")
    return screenshots(args) if args.screenshots else bench(args)


if __name__ == "__main__":
    sys.exit(main())
