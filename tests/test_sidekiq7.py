"""Sidekiq 7 interop, proven with the real thing: Sidekiq 7.3's unmodified sources
(``shared/sidekiq7`` beside the repository: its Ruby API through ``probe.rb``, its
Web UI through ``web.sh``, served over HTTP) read forkq's Redis in the plain layout
(``namespace=""``), and its Ruby client pushes jobs that forkq runs.

Sidekiq 7 and 8 dropped redis-namespace: they read ``queue:NAME``, ``processes``,
``stat:*``, ``j|…`` with no prefix, which is what forkq writes for the empty namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis_server import RedisServer, free_port, wait_for
from web_support import start_web

import forkq
from forkq.client import Client
from forkq.job_metrics import bucket_of
from forkq.keys import Keys

REPO = Path(__file__).resolve().parent.parent
TOOL = Path(__file__).resolve().parent / "sidekiq" / "sk7_tool.rb"
K = Keys("")
RUBY_TIMEOUT = 120


def _sidekiq7_dir() -> Path | None:
    """``shared/sidekiq7`` beside the repository (CI: a fresh clone with ../shared);
    a git worktree one level down (wt/NAME) looks one level further up."""
    env = os.environ.get("FORKQ_SIDEKIQ7_DIR")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "sidekiq7", REPO.parent.parent / "shared" / "sidekiq7"]
    for c in candidates:
        if (c / "probe.rb").is_file() and (c / "vendor" / "sidekiq" / "lib").is_dir():
            return c
    return None


def _problem() -> str | None:
    if shutil.which("ruby") is None:
        return "ruby is not installed (apt-get install ruby ruby-rack ruby-webrick)"
    if _sidekiq7_dir() is None:
        return (f"Sidekiq 7 sources not found at {REPO.parent / 'shared' / 'sidekiq7'} "
                "(set FORKQ_SIDEKIQ7_DIR)")
    return None


_PROBLEM = _problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")


def _run_ruby(args: list[str]) -> Any:
    proc = subprocess.run(["ruby", *args], capture_output=True, text=True, timeout=RUBY_TIMEOUT)
    if proc.returncode != 0:
        raise AssertionError(f"ruby {' '.join(args)} failed ({proc.returncode}): "
                             f"{proc.stdout[-1000:]} {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def probe(url: str) -> Any:
    sk7 = _sidekiq7_dir()
    assert sk7 is not None
    return _run_ruby([str(sk7 / "probe.rb"), url])


def sk7_tool(url: str, *args: str) -> Any:
    sk7 = _sidekiq7_dir()
    assert sk7 is not None
    return _run_ruby([str(TOOL), str(sk7 / "vendor"), url, *args])


# -- a forkq deployment in the plain layout, in a known state ---------------------------

@dataclass
class Scene:
    pool: forkq.WorkerPool
    identity: str
    release: threading.Event
    ids: dict[str, str]


@pytest.fixture
def scene(r: redis.Redis, redis_url: str, fast_config: forkq.Config,
          pools: list[forkq.WorkerPool]) -> Iterator[Scene]:
    """A live pool (namespace "", concurrency 3): 3 successes, one job in retry, one in
    dead, one running (blocked), two waiting on a queue nobody serves."""
    pool = forkq.WorkerPool("", config=fast_config)
    running = threading.Event()
    release = threading.Event()

    @pool.job
    def Ok(job: forkq.Job) -> None:  # noqa: N802 - Sidekiq-style class names
        time.sleep(0.03)

    @pool.job(backoff=lambda job: 3600)
    def Flaky(job: forkq.Job) -> None:  # noqa: N802
        raise KeyError("retry me")

    @pool.job(max_fails=1)
    def Doomed(job: forkq.Job) -> None:  # noqa: N802
        raise ValueError("to the dead")

    @pool.job
    def Blocker(job: forkq.Job) -> None:  # noqa: N802
        running.set()
        while not release.wait(0.01):
            pass

    enq = pool.enqueuer(redis_url)
    ids = {
        "Ok": enq.enqueue_many("Ok", [{"i": i} for i in range(3)])[0].id,
        "Flaky": enq.enqueue("Flaky", {"b": 2}).id,
        "Doomed": enq.enqueue("Doomed", {"a": 1}).id,
        "Blocker": enq.enqueue("Blocker", {"c": 3}).id,
    }
    for n in range(2):
        enq.enqueue("NobodyServes", {"n": n})
    pool.start(redis_url, concurrency=3)
    pools.append(pool)
    rt = pool.runtime
    assert rt is not None
    try:
        assert running.wait(10)
        wait_for(lambda: r.zcard(K.retry) == 1 and r.zcard(K.dead) == 1, timeout=10,
                 message="one job in retry, one in dead")
        wait_for(lambda: int(r.get(K.stat_processed) or 0) == 5
                 and r.hlen(K.process_work(rt.identity)) == 1
                 and r.exists(K.job_metrics(time.time())), timeout=10,
                 message="stats and metrics flushed, the running job published")
        yield Scene(pool=pool, identity=rt.identity, release=release, ids=ids)
    finally:
        release.set()


def test_plain_layout_has_no_prefix(scene: Scene, r: redis.Redis) -> None:
    names = {k.decode() for k in r.keys("*")}
    assert {"queues", "processes", "stat:processed", "stat:failed", "retry", "dead",
            "queue:NobodyServes", scene.identity, f"{scene.identity}:work"} <= names
    assert not [n for n in names if n.startswith("{")]


def test_plain_layout_requeues_a_running_job_at_shutdown(scene: Scene, r: redis.Redis) -> None:
    """ack.lua derives a job name from its queue key's length: with no prefix at all the
    running job still goes back to ``queue:Blocker`` (not a mangled name)."""
    requeued = scene.pool.runtime.stop(0.2) if scene.pool.runtime is not None else 0
    assert requeued == 1
    assert r.llen(K.queue("Blocker")) == 1
    assert orjson.loads(r.lindex(K.queue("Blocker"), 0))["jid"] == scene.ids["Blocker"]
    assert not r.exists(K.inprogress(scene.identity))


def test_sidekiq7_api_sees_forkq_queues_processes_sets_and_stats(scene: Scene, redis_url: str) -> None:
    out = probe(redis_url)
    assert out["sidekiq_version"].startswith("7.3")
    stats = out["stats"]
    assert (stats["processed"], stats["failed"], stats["enqueued"]) == (5, 2, 2)
    assert (stats["retry_size"], stats["dead_size"], stats["processes_size"], stats["workers_size"]) == (1, 1, 1, 1)
    assert out["queues"]["NobodyServes"]["size"] == 2
    assert 0 <= out["queues"]["NobodyServes"]["latency"] < 120
    [proc] = out["processes"]
    assert proc["identity"] == scene.identity and proc["busy"] == 1 and proc["concurrency"] == 3
    assert proc["version"] == f"forkq {forkq.__version__}"
    assert (out["retry_set_size"], out["dead_set_size"], out["work_set_size"]) == (1, 1, 1)


def test_sidekiq7_metrics_query_reads_forkq_per_minute_counts_and_histogram(
        scene: Scene, redis_url: str) -> None:
    out = sk7_tool(redis_url, "metrics", "Ok")
    assert out["top"]["Ok"]["p"] == 3 and out["top"]["Ok"].get("f", 0) == 0
    assert out["top"]["Flaky"]["p"] == 1 and out["top"]["Flaky"]["f"] == 1
    assert out["top"]["Doomed"]["f"] == 1
    # Three 30 ms sleeps: ms adds up to at least 90, every one lands in a bucket >= "45ms".
    assert out["job_totals"]["ms"] >= 90
    assert sum(out["histogram"]) == 3
    assert sum(out["histogram"][:bucket_of(30)]) == 0


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback test server
        assert resp.status == 200
        return resp.read().decode()


@pytest.fixture
def web_ui(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """Sidekiq 7's Web UI (web.sh: rackup + WEBrick/Puma) on a free port; stopped by pid."""
    sk7 = _sidekiq7_dir()
    assert sk7 is not None
    port = free_port()
    pidfile = tmp_path / "sk7.pid"
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["sh", str(sk7 / "web.sh"), redis_url, str(port)],
                            env={**os.environ, "SK7_PIDFILE": str(pidfile)},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"web.sh exited: {(tmp_path / 'web.log').read_text()[-2000:]}")
            try:
                _get(base + "/busy")
                return True
            except OSError:
                return False
        wait_for(up, timeout=90, interval=0.3, message="Sidekiq 7 Web UI up")
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_sidekiq7_web_ui_pages_render_forkq_data(scene: Scene, web_ui: str) -> None:
    busy = _get(web_ui + "/busy")
    host, pid = scene.identity.split(":")[:2]
    assert f"{host}:{pid}" in busy
    assert f"forkq {forkq.__version__}" in busy  # Busy shows a version other than its own
    assert "Blocker" in busy  # the running job, with its class
    queues = _get(web_ui + "/queues")
    assert "NobodyServes" in queues
    queue = _get(web_ui + "/queues/NobodyServes")
    # Both waiting jobs are listed with their arguments (Sidekiq shows the args JSON).
    assert queue.count("NobodyServes") >= 2
    assert '&quot;n&quot;=&gt;0' in queue or '&quot;n&quot;: 0' in queue or '"n"=>0' in queue, queue[-3000:]
    retries = _get(web_ui + "/retries")
    assert "Flaky" in retries and "retry me" in retries
    dead = _get(web_ui + "/morgue")
    assert "Doomed" in dead and "to the dead" in dead
    metrics = _get(web_ui + "/metrics")
    assert "Ok" in metrics and "Flaky" in metrics
    job_metrics = _get(web_ui + "/metrics/Ok")
    assert "Ok" in job_metrics


def test_job_pushed_by_sidekiq7_ruby_client_starts_soon(
        r: redis.Redis, redis_url: str, pools: list[forkq.WorkerPool]) -> None:
    """Sidekiq's client only LPUSHes (no wake): forkq's waker makes an idle pool take it
    well before the 10 s idle poll."""
    pool = forkq.WorkerPool("")  # default Config: idle poll every 10 s
    started: dict[int, float] = {}
    lock = threading.Lock()

    @pool.job
    def Hello(job: forkq.Job) -> None:  # noqa: N802
        with lock:
            started[job.positional_args[0]] = time.time()

    pool.start(redis_url, concurrency=2)
    pools.append(pool)
    rt = pool.runtime
    assert rt is not None
    wait_for(lambda: rt.waker.mode != "", timeout=15, message="the waker serving")
    out = sk7_tool(redis_url, "push", "Hello", "5")
    wait_for(lambda: len(started) == 5, timeout=15, message="five Ruby-pushed jobs run")
    delays = [started[i] - t for i, t in enumerate(out["pushed_at"])]
    assert max(delays) < 3.0, delays


def test_sidekiq7_retry_now_runs_the_forkq_job_again_soon(
        r: redis.Redis, redis_url: str, pools: list[forkq.WorkerPool]) -> None:
    """What the Retries page's "Retry Now" calls (RetrySet#retry_all): a plain LPUSH
    forkq runs at once, not an hour later (its backoff) nor at the next idle poll."""
    pool = forkq.WorkerPool("")
    runs: list[float] = []

    @pool.job(backoff=lambda job: 3600)
    def Once(job: forkq.Job) -> None:  # noqa: N802
        runs.append(time.time())
        if len(runs) == 1:
            raise RuntimeError("first run fails")

    pool.enqueuer(redis_url).enqueue("Once", {"x": 1})
    pool.start(redis_url, concurrency=2)
    pools.append(pool)
    rt = pool.runtime
    assert rt is not None
    wait_for(lambda: r.zcard(K.retry) == 1 and rt.waker.mode != "", timeout=15,
             message="the job in retry, a waker serving")
    out = sk7_tool(redis_url, "retry_all")
    wait_for(lambda: len(runs) == 2, timeout=15, message="the retried job runs")
    assert runs[1] - out["retried_at"] < 3.0
    wait_for(lambda: r.zcard(K.retry) == 0 and int(r.get(K.stat_processed) or 0) == 2, timeout=10,
             message="retry set empty, both runs counted")


def test_sidekiq8_millisecond_timestamps_give_true_latency(r: redis.Redis, redis_url: str) -> None:
    """Sidekiq 8 writes created_at/enqueued_at as integer milliseconds."""
    client = Client(redis_url, "")
    client.pause("Later")
    now_ms = int(time.time() * 1000) - 5000
    r.sadd(K.queues, "Later")
    r.lpush(K.queue("Later"), orjson.dumps({"class": "Later", "queue": "Later", "args": [1],
                                            "jid": "a" * 24, "created_at": now_ms,
                                            "enqueued_at": now_ms}))
    [q] = [q for q in client.queues() if q.job_name == "Later"]
    assert 4.0 <= q.latency < 60.0, q.latency


def test_plain_layout_is_refused_on_a_real_redis_cluster(tmp_path: Path) -> None:
    """A one-node Redis Cluster (all slots on it): namespace "" is refused with a clear
    ConfigError by the Client, the Enqueuer and a pool; a ``{ns}`` namespace works."""
    # An explicit bus port: the default (port + 10000) does not exist for ports above 55535.
    node = RedisServer(extra=["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                              "--cluster-config-file", str(tmp_path / "nodes.conf")]).start()
    try:
        c = node.client()
        c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        wait_for(lambda: b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO"),
                 timeout=30, message="the one-node cluster ok")
        c.close()
        url = f"redis+cluster://127.0.0.1:{node.port}"
        with pytest.raises(forkq.ConfigError, match="Cluster needs a non-empty namespace"):
            Client(url, "")
        with pytest.raises(forkq.ConfigError, match="Cluster needs a non-empty namespace"):
            forkq.Enqueuer(url, "")
        pool = forkq.WorkerPool("")
        pool.register("Hello", lambda job: None)
        with pytest.raises(forkq.ConfigError, match="Cluster needs a non-empty namespace"):
            pool.start(url, concurrency=1)
        with Client(url, "ns") as ok:
            assert ok.queues() == []
    finally:
        node.cleanup()


def test_admin_cli_and_forkq_web_read_the_plain_layout(scene: Scene, redis_url: str) -> None:
    """``-n ""`` selects the plain layout in the admin verbs and in ``forkq web``."""
    proc = subprocess.run([sys.executable, "-m", "forkq", "stats", "--redis", redis_url, "-n", "", "--json"],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["processed"] == 5 and stats["failed"] == 2, stats
    web = start_web(redis_url, namespace="")
    try:
        queues = _get(web.url + "/queues")
        assert "NobodyServes" in queues
        busy = _get(web.url + "/busy")
        assert "Blocker" in busy
    finally:
        web.stop()


# What a worker needed before these features (the ACL line before Sidekiq 7 support):
# no HINCRBY/BITFIELD (job metrics), no CLIENT (tracking), no __redis__:invalidate channel.
OLD_ACL = ("+ping +hello +info +select +evalsha +script|load +get +set +del +exists +expire "
           "+hset +hgetall +hdel +hmget +hexists +sadd +srem +llen +lpush +rpush +rpop +zadd +zrem "
           "+zscore +zcard +zrange +zrangebyscore +zremrangebyscore +zremrangebyrank +hkeys +time "
           "+incrby +scan "
           "+publish +subscribe +unsubscribe").split()


def test_an_older_acl_line_keeps_the_pool_alive_and_the_waker_polls(
        pools: list[forkq.WorkerPool], caplog: pytest.LogCaptureFixture) -> None:
    """Upgrading forkq under an ACL written for the old command list: the beat (which
    keeps the pool alive) still succeeds, the refused metrics are reported once, and the
    waker falls back to polling, so a plain LPUSH still starts within seconds."""
    server = RedisServer().start()
    try:
        admin = server.client()
        admin.execute_command("ACL", "SETUSER", "old", "reset", "on", ">old-pw", "~{acl}:*",
                              "resetchannels", "&{acl}:*", "-@all", *OLD_ACL)
        url = f"redis://old:old-pw@127.0.0.1:{server.port}/0"
        keys = Keys("acl")
        pool = forkq.WorkerPool("acl", config=forkq.Config(heartbeat_interval=0.3))
        started: list[float] = []

        @pool.job
        def Hello(job: forkq.Job) -> None:  # noqa: N802
            started.append(time.time())

        caplog.set_level("WARNING", logger="forkq.heartbeat")
        pool.start(url, concurrency=2)
        pools.append(pool)
        rt = pool.runtime
        assert rt is not None
        wait_for(lambda: rt.waker.mode == "polling", timeout=20, message="the waker polling")
        t = time.time()
        admin.lpush(keys.queue("Hello"), orjson.dumps({"class": "Hello", "queue": "Hello", "args": [],
                                                       "jid": "b" * 24, "created_at": t, "enqueued_at": t}))
        wait_for(lambda: len(started) == 1, timeout=15, message="the plain LPUSH runs")
        assert started[0] - t < 3.0
        beat0 = float(admin.hget(keys.process(rt.identity), "beat") or 0)
        wait_for(lambda: float(admin.hget(keys.process(rt.identity), "beat") or 0) > beat0 + 0.5,
                 timeout=10, message="beats go on after the metrics were refused")
        assert admin.sismember(keys.processes, rt.identity)
        refused = [rec for rec in caplog.records if "metrics are not written" in rec.getMessage()]
        assert len(refused) == 1
    finally:
        for p in pools:
            p.stop(timeout=2)
        pools.clear()
        server.cleanup()
