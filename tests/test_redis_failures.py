"""Redis misbehaving under a running pool: restarted (AOF on), frozen (SIGSTOP),
out of memory (noeviction), script cache flushed, read-only replica, wrong
password, unreachable.  Each test damages a real redis-server and checks that
every job whose enqueue was acknowledged still runs, and that no thread dies.

Jobs record their jid in a Redis set when they finish, so "lost" is measured in
Redis; executions are counted in the worker process (a recording client that
re-sends its write after a timeout must not count as a duplicate run).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator

import orjson
import pytest
import redis
from helpers import Recorder
from redis_server import RedisServer, wait_for

import forkq
from forkq import reaper
from forkq.keys import Keys

NS = "rf"
K = Keys(NS)
DONE = "test:done"       # set of jids that finished (outside the namespace on purpose)


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    """A private server with AOF on and fsync every second, as in production."""
    server = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "everysec"]).start()
    yield server
    server.cleanup()


@pytest.fixture
def private_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


def recording_pool(server: RedisServer, config: forkq.Config, runs: Recorder) -> forkq.WorkerPool:
    """A pool whose one job records its jid in Redis; a failed write fails the job (it retries)."""
    pool = forkq.WorkerPool(NS, config=config)
    rec = server.client()

    @pool.job(max_fails=1000, backoff=lambda job: 0.05)
    def record(job: forkq.Job) -> None:
        runs.add(job.id)
        time.sleep(0.001)
        rec.sadd(DONE, job.id)

    pool.register("gather", gather)
    return pool


class Producer(threading.Thread):
    """Enqueues batches until told to stop; remembers only the acknowledged jids."""

    def __init__(self, url: str, batch: int = 20, total: int = 3000) -> None:
        super().__init__(daemon=True)
        self.enq = forkq.Enqueuer(url, NS)
        self.batch = batch
        self.total = total
        self.acked: set[str] = set()
        self.refused = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while len(self.acked) < self.total:
            try:
                jobs = self.enq.enqueue_many("record", [{"i": i} for i in range(self.batch)])
            except forkq.EnqueueError as exc:
                self.refused += 1
                self.errors.append(str(exc))
                time.sleep(0.02)
                continue
            self.acked.update(j.id for j in jobs)
            time.sleep(0.005)


BARRIERS: dict[str, threading.Barrier] = {}
GATHERED = Recorder()


def gather(job: forkq.Job) -> None:
    """Waits until every thread slot of every pool holds one of these jobs."""
    BARRIERS[job.arg_str("b")].wait(30)
    GATHERED.add(job.id)


def every_slot_serves(url: str, pools: list[forkq.WorkerPool], concurrency: int = 4) -> bool:
    """Positive proof that no pool lost a thread or its fetcher (instead of reading the
    runtime's private thread lists): pools x concurrency jobs that only finish when all
    of them run at the same time."""
    n = len(pools) * concurrency
    name = f"b{len(BARRIERS)}"
    BARRIERS[name] = threading.Barrier(n)
    ids = {j.id for j in forkq.Enqueuer(url, NS).enqueue_many("gather", [{"b": name}] * n)}
    wait_for(lambda: ids <= set(GATHERED.snapshot()), 40, message=f"{n} jobs running at once (no slot lost)")
    return True


def settled(r: redis.Redis, pools: list[forkq.WorkerPool]) -> bool:
    """Nothing queued, scheduled for retry or held in progress by any pool."""
    if r.llen(K.queue("record")) or r.zcard(K.retry):
        return False
    return all(p.runtime is not None and r.hlen(K.inprogress(p.runtime.identity)) == 0 for p in pools)


def test_redis_restarts_mid_run_lose_no_acknowledged_job(aof_server, pools, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="forkq")
    cfg = forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2)
    runs = Recorder()
    for _ in range(2):
        pool = recording_pool(aof_server, cfg, runs)
        pool.start(aof_server.url, concurrency=4)
        pools.append(pool)
    producer = Producer(aof_server.url, total=3000)
    producer.start()
    r = aof_server.client()
    restarts = 0
    for n in range(1, 4):
        target = 200 * n
        wait_for(lambda c=r, t=target: c.scard(DONE) > t, 60, interval=0.05,
                 message="progress before a restart")
        aof_server.restart()
        restarts += 1
        r = aof_server.client()
    producer.join(120)
    assert not producer.is_alive(), "producer never got its 3000 acknowledged enqueues"
    done = wait_for(lambda: (lambda d: d if producer.acked <= d else None)(
        {m.decode() for m in r.smembers(DONE)}), 120, interval=0.2,
        message="every acknowledged job to finish")
    wait_for(lambda: settled(r, pools), 30, message="queues, retries and in-progress empty")
    lost = producer.acked - done
    assert lost == set()
    assert len(runs) >= len(done)
    assert every_slot_serves(aof_server.url, pools), "a pool thread died"
    text = caplog.text
    assert "Redis round trip failed" in text and "Redis is reachable again" in text
    # A job that is still wanted after the restarts runs promptly: the pools are serving.
    job = forkq.Enqueuer(aof_server.url, NS).enqueue("record")
    wait_for(lambda: r.sismember(DONE, job.id), 20, message="a fresh job after the restarts")
    print(f"\nRESTART: restarts={restarts} acked={len(producer.acked)} refused_batches={producer.refused} "
          f"done={len(done)} runs={len(runs)} duplicates={len(runs) - len(set(runs.snapshot()))} lost={len(lost)}")


@pytest.mark.slow
def test_redis_frozen_ten_seconds_then_resumed_reaps_no_live_pool(private_server, pools) -> None:
    cfg = forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2)
    runs = Recorder()
    for _ in range(2):
        pool = recording_pool(private_server, cfg, runs)
        pool.start(private_server.url, concurrency=4)
        pools.append(pool)
    r = private_server.client()
    enq = forkq.Enqueuer(private_server.url, NS)
    before = {j.id for j in enq.enqueue_many("record", [{}] * 400)}
    wait_for(lambda: r.scard(DONE) > 50, 30, message="work started")
    identities = {p.runtime.identity for p in pools}  # type: ignore[union-attr]
    private_server.signal(signal.SIGSTOP)
    try:
        time.sleep(10)
    finally:
        private_server.signal(signal.SIGCONT)
    # A reaper running right after the freeze (every pool's beat is ~10 s old)
    # must find nobody stale with the default stale window.
    assert reaper.reap_stale_pools(r, K, cfg) == []
    after = {j.id for j in enq.enqueue_many("record", [{}] * 400)}
    done = wait_for(lambda: (lambda d: d if (before | after) <= d else None)(
        {m.decode() for m in r.smembers(DONE)}), 60, interval=0.2, message="all jobs done after the freeze")
    wait_for(lambda: settled(r, pools), 30, message="nothing left in progress")
    live = {m.decode() for m in r.zrange(K.pools, 0, -1)}
    assert identities <= live, "a live pool was reaped"
    assert every_slot_serves(private_server.url, pools)
    print(f"\nFREEZE: jobs={len(before | after)} done={len(done)} runs={len(runs)} "
          f"duplicates={len(runs) - len(set(runs.snapshot()))} lost={len((before | after) - done)}")


def test_redis_at_maxmemory_refuses_enqueue_clearly_and_queued_jobs_still_run(private_server, pools) -> None:
    r = private_server.client()
    r.config_set("maxmemory-policy", "noeviction")
    pool = forkq.WorkerPool(NS, config=forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2))
    gate = threading.Event()
    seen = Recorder()

    @pool.job
    def held(job: forkq.Job) -> None:
        gate.wait(30)
        seen.add(job.id)

    pool.register("gather", gather)
    pool.start(private_server.url, concurrency=4)
    pools.append(pool)
    enq = pool.enqueuer(private_server.url)
    queued = {j.id for j in enq.enqueue_many("held", [{"pad": "x" * 200}] * 300)}
    wait_for(lambda: r.hlen(K.inprogress(pool.runtime.identity)) == 4, 10,  # type: ignore[union-attr]
             message="4 jobs taken")
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", str(used // 2))
    try:
        with pytest.raises(forkq.EnqueueError, match="out of memory") as info:
            enq.enqueue("held", {"late": True})
        assert "nothing was enqueued" in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(forkq.EnqueueError, match="OOM|maxmemory"):
            enq.enqueue_many("held", [{}] * 10)
        with pytest.raises(forkq.EnqueueError, match="OOM|maxmemory"):
            enq.enqueue_in("held", 5)
        assert r.llen(K.queue("held")) == 296
        gate.set()
        wait_for(lambda: set(seen.snapshot()) == queued, 60, message="every queued job to run under OOM")
        wait_for(lambda: r.hlen(K.inprogress(pool.runtime.identity)) == 0, 10,  # type: ignore[union-attr]
                 message="acks under OOM")
    finally:
        r.config_set("maxmemory", "0")
    job = enq.enqueue("held", {"after": True})
    wait_for(lambda: job.id in seen.snapshot(), 10, message="enqueue works again once memory is freed")
    assert len(seen) == 301
    assert every_slot_serves(private_server.url, pools)


def test_script_cache_flushed_mid_run_reloads_and_loses_nothing(private_server, pools) -> None:
    cfg = forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2)
    runs = Recorder()
    pool = recording_pool(private_server, cfg, runs)
    pool.start(private_server.url, concurrency=4)
    pools.append(pool)
    r = private_server.client()
    enq = forkq.Enqueuer(private_server.url, NS)
    acked: set[str] = set()
    for round_ in range(20):
        acked |= {j.id for j in enq.enqueue_many("record", [{"round": round_}] * 50)}
        r.script_flush()
        time.sleep(0.02)
    done = wait_for(lambda: (lambda d: d if acked <= d else None)(
        {m.decode() for m in r.smembers(DONE)}), 60, interval=0.1, message="all jobs done")
    wait_for(lambda: settled(r, pools), 10, message="nothing left in progress")
    assert len(done) == 1000 and r.zcard(K.dead) == 0
    assert every_slot_serves(private_server.url, pools)


def test_read_only_replica_refuses_enqueue_clearly_and_a_pool_on_it_takes_nothing(
        private_server, pools, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="forkq")
    replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(private_server.port)]).start()
    try:
        wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up", 20,
                 message="replica linked")
        enq = forkq.Enqueuer(replica.url, NS)
        with pytest.raises(forkq.EnqueueError, match="read-only replica") as info:
            enq.enqueue("anything", {"x": 1})
        assert "nothing was enqueued" in str(info.value) and "\n" not in str(info.value)
        queued = forkq.Enqueuer(private_server.url, NS).enqueue("anything", {"x": 2})
        wait_for(lambda: replica.client().llen(K.queue("anything")) == 1, 10, message="replicated")
        # A pool pointed at the replica (a failover may promote it) keeps trying and says why.
        pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=0.2))
        ran = Recorder()
        pool.register("anything", lambda job: ran.add(job.id))
        pool.start(replica.url, concurrency=1)
        pools.append(pool)
        wait_for(lambda: "read only replica" in caplog.text, 10, message="a warning naming the replica")
        assert len(ran) == 0
        assert private_server.client().lrange(K.queue("anything"), 0, -1) == [
            forkq.job.encode(queued.data)]
    finally:
        replica.cleanup()


def test_wrong_password_is_a_clear_error_without_the_secret() -> None:
    secret = "s3cr3t-Hunter2"
    server = RedisServer(extra=["--requirepass", "right-password"], password="right-password").start()
    try:
        url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        with pytest.raises(forkq.EnqueueError) as info:
            forkq.Enqueuer(url, NS).enqueue("x")
        message = str(info.value)
        assert secret not in message and secret not in repr(info.value)
        assert "password" in message.lower() or "auth" in message.lower()
        pool = forkq.WorkerPool(NS)
        pool.register("x", lambda job: None)
        with pytest.raises(ConnectionError) as cinfo:
            pool.start(url, concurrency=1)
        assert secret not in str(cinfo.value)
        assert f"127.0.0.1:{server.port}" in str(cinfo.value)
    finally:
        server.cleanup()


def test_pool_start_against_unreachable_redis_raises_a_clear_connection_error() -> None:
    pool = forkq.WorkerPool(NS)
    pool.register("x", lambda job: None)
    with pytest.raises(ConnectionError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0"):
        pool.start("redis://:pw@127.0.0.1:1/0", concurrency=1)
    assert pool.runtime is None or not pool.runtime.fetcher.is_alive()


@pytest.mark.slow
@pytest.mark.parametrize("given", ["url", "redis_client"])
def test_fetch_in_flight_while_redis_is_frozen_loses_no_job(private_server, pools, given: str) -> None:
    """The freeze outlasts the client's socket timeout while an ack+fetch is in flight.

    The timed-out round trip still runs when Redis resumes; the jobs it took must
    not be stranded in this pool's in-progress hash while the pool lives on.
    """
    pool = forkq.WorkerPool(NS, config=forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2))
    gate = threading.Event()
    seen = Recorder()

    @pool.job
    def gated(job: forkq.Job) -> None:
        gate.wait(60)
        seen.add(job.id)

    # A redis.Redis built by the user carries redis-py's default retry policy.
    pool.start(private_server.url if given == "url" else private_server.client(), concurrency=4)
    pools.append(pool)
    r = private_server.client()
    queued = {j.id for j in forkq.Enqueuer(private_server.url, NS).enqueue_many("gated", [{}] * 100)}
    identity = pool.runtime.identity  # type: ignore[union-attr]
    wait_for(lambda: r.hlen(K.inprogress(identity)) == 4, 10, message="4 jobs taken")
    private_server.signal(signal.SIGSTOP)
    try:
        gate.set()  # 4 jobs finish: the fetcher sends ack+fetch into the frozen server
        time.sleep(12)
    finally:
        private_server.signal(signal.SIGCONT)
    wait_for(lambda: queued <= set(seen.snapshot()), 60, interval=0.1,
             message="every job to run after the freeze")
    wait_for(lambda: r.hlen(K.inprogress(identity)) == 0, 10, message="in-progress empty")


@pytest.mark.slow
def test_redis_sigkilled_with_fsync_always_loses_no_acknowledged_job(pools) -> None:
    """The brutal variant: no graceful AOF flush.  With ``appendfsync always`` Redis
    promises every acknowledged write is on disk; forkq must not lose any either."""
    server = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "always"]).start()
    try:
        cfg = forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2)
        runs = Recorder()
        for _ in range(2):
            pool = recording_pool(server, cfg, runs)
            pool.start(server.url, concurrency=4)
            pools.append(pool)
        producer = Producer(server.url, total=2000)
        producer.start()
        r = server.client()
        for n in range(1, 3):
            wait_for(lambda c=r, t=300 * n: c.scard(DONE) > t, 60, interval=0.05, message="progress")
            server.signal(signal.SIGKILL)
            assert server.proc is not None
            server.proc.wait(10)
            server.proc = None
            server.start()
            r = server.client()
        producer.join(120)
        assert not producer.is_alive()
        done = wait_for(lambda: (lambda d: d if producer.acked <= d else None)(
            {m.decode() for m in r.smembers(DONE)}), 120, interval=0.2, message="acknowledged jobs done")
        wait_for(lambda: settled(r, pools), 30, message="nothing left in progress")
        assert every_slot_serves(server.url, pools)
        print(f"\nREDIS-SIGKILL: kills=2 acked={len(producer.acked)} done={len(done)} runs={len(runs)} "
              f"duplicates={len(runs) - len(set(runs.snapshot()))} lost={len(producer.acked - done)}")
    finally:
        server.cleanup()


ENQUEUE_CALLS = {
    "enqueue": lambda e: e.enqueue("x", {"a": 1}),
    "enqueue_many": lambda e: e.enqueue_many("x", [{"a": 1}]),
    "enqueue_in": lambda e: e.enqueue_in("x", 5, {"a": 1}),
    "enqueue_unique": lambda e: e.enqueue_unique("x", {"a": 1}),
    "enqueue_unique_in": lambda e: e.enqueue_unique_in("x", 5, {"a": 1}),
}


@pytest.mark.parametrize("call", sorted(ENQUEUE_CALLS))
def test_every_enqueue_call_reports_an_unreachable_redis_the_same_way(call: str) -> None:
    enq = forkq.Enqueuer("redis://:pw-xyz@127.0.0.1:1/0", NS)
    with pytest.raises(forkq.EnqueueError, match=r"^could not reach Redis at redis://127\.0\.0\.1:1/0: ") as info:
        ENQUEUE_CALLS[call](enq)
    assert "pw-xyz" not in str(info.value)


@pytest.fixture(scope="module")
def auth_only_server() -> Iterator[RedisServer]:
    server = RedisServer(extra=["--requirepass", "right-pw"], password="right-pw").start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def replica_server() -> Iterator[RedisServer]:
    primary = RedisServer().start()
    replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up", 20,
             message="replica linked")
    yield replica
    replica.cleanup()
    primary.cleanup()


@pytest.mark.parametrize("call", sorted(ENQUEUE_CALLS))
def test_every_enqueue_call_reports_a_wrong_password_as_refused_credentials(
        auth_only_server, call: str) -> None:
    enq = forkq.Enqueuer(f"redis://:wrong-pw@127.0.0.1:{auth_only_server.port}/0", NS)
    with pytest.raises(forkq.EnqueueError, match="refused the credentials") as info:
        ENQUEUE_CALLS[call](enq)
    assert "wrong-pw" not in str(info.value) and "right-pw" not in str(info.value)


@pytest.mark.parametrize("call", sorted(ENQUEUE_CALLS))
def test_every_enqueue_call_names_a_read_only_replica(replica_server, call: str) -> None:
    with pytest.raises(forkq.EnqueueError, match="read-only replica; nothing was enqueued"):
        ENQUEUE_CALLS[call](forkq.Enqueuer(replica_server.url, NS))


def test_client_connections_killed_twenty_times_mid_run_lose_nothing(private_server, pools) -> None:
    """Proxies, load balancers and failovers cut connections between and during commands."""
    cfg = forkq.Config(heartbeat_interval=0.3, idle_poll_interval=0.2)
    runs = Recorder()
    for _ in range(2):
        pool = recording_pool(private_server, cfg, runs)
        pool.start(private_server.url, concurrency=4)
        pools.append(pool)
    producer = Producer(private_server.url, total=5000)
    producer.start()
    admin = private_server.client()
    admin.client_setname("chaos-admin")
    kills = 0
    while kills < 20:  # while the producer pushes and the pools work
        time.sleep(0.1)
        # Every other client: pools' fetchers, beats, listeners, the producer, the recorders.
        kills += 1
        for c in admin.client_list():
            if c.get("name") != "chaos-admin":
                try:
                    admin.client_kill_filter(_id=c["id"])
                except redis.ResponseError:
                    pass
    producer.join(120)
    assert not producer.is_alive()
    done = wait_for(lambda: (lambda d: d if producer.acked <= d else None)(
        {m.decode() for m in admin.smembers(DONE)}), 120, interval=0.2, message="acknowledged jobs done")
    wait_for(lambda: settled(admin, pools), 30, message="nothing left in progress")
    assert every_slot_serves(private_server.url, pools)
    print(f"\nCLIENT-KILL: rounds={kills} acked={len(producer.acked)} done={len(done)} "
          f"duplicates={len(runs) - len(set(runs.snapshot()))} lost={len(producer.acked - done)}")


def test_idle_pool_whose_pubsub_connection_was_killed_still_wakes_on_enqueue(private_server, pools) -> None:
    pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=60.0, heartbeat_interval=0.5))
    seen = Recorder()
    pool.register("ping", lambda job: seen.add(job.id))
    pool.start(private_server.url, concurrency=2)
    pools.append(pool)
    admin = private_server.client()
    wait_for(lambda: admin.pubsub_numsub(K.wake_channel)[0][1] == 1, 10, message="listener subscribed")
    time.sleep(0.5)  # let the fetcher find nothing and go to sleep
    admin.client_kill_filter(_type="pubsub")
    wait_for(lambda: admin.pubsub_numsub(K.wake_channel)[0][1] == 1, 20, message="listener re-subscribed")
    job = forkq.Enqueuer(private_server.url, NS).enqueue("ping")
    wait_for(lambda: seen.snapshot() == [job.id], 20, message="the enqueue to wake the pool")


def test_live_pool_working_through_a_long_oom_is_not_reaped(private_server, pools) -> None:
    r = private_server.client()
    r.config_set("maxmemory-policy", "noeviction")
    cfg = forkq.Config(heartbeat_interval=0.3, idle_poll_interval=0.2, stale_after=2.0)
    pool = forkq.WorkerPool(NS, config=cfg)
    gate = threading.Event()
    pool.register("held", lambda job: gate.wait(30))
    pool.start(private_server.url, concurrency=2)
    pools.append(pool)
    identity = pool.runtime.identity  # type: ignore[union-attr]
    forkq.Enqueuer(private_server.url, NS).enqueue_many("held", [{}] * 2)
    wait_for(lambda: r.hlen(K.inprogress(identity)) == 2, 10, message="2 jobs taken")
    r.config_set("maxmemory", str(int(r.info("memory")["used_memory"]) // 2))
    try:
        time.sleep(cfg.stale_after + 1.0)  # the pool keeps running its jobs; its beats are refused
    finally:
        r.config_set("maxmemory", "0")
    try:
        assert reaper.reap_stale_pools(r, K, cfg) == [], "a live pool was reaped after an OOM"
        assert r.hlen(K.inprogress(identity)) == 2
    finally:
        gate.set()


def test_pool_can_be_started_once_redis_is_back_after_a_failed_start(private_server, pools) -> None:
    pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=0.2))
    seen = Recorder()
    pool.register("x", lambda job: seen.add(job.id))
    with pytest.raises(ConnectionError):
        pool.start("redis://127.0.0.1:1/0", concurrency=1)
    pool.start(private_server.url, concurrency=1)
    pools.append(pool)
    job = forkq.Enqueuer(private_server.url, NS).enqueue("x")
    wait_for(lambda: seen.snapshot() == [job.id], 10, message="the job after a second start")


def test_pool_stopped_while_redis_is_down_leaves_its_jobs_for_the_reaper(aof_server, pools) -> None:
    """Shutdown cannot requeue (Redis is gone): the jobs stay recorded in progress, and the
    stale reaper gives them back once Redis returns.  Nothing is lost, stop() returns."""
    cfg = forkq.Config(heartbeat_interval=0.3, idle_poll_interval=0.2, stale_after=2.0)
    pool = forkq.WorkerPool(NS, config=cfg)
    started = threading.Event()

    @pool.job
    def stuck(job: forkq.Job) -> None:
        started.set()
        time.sleep(30)

    job = forkq.Enqueuer(aof_server.url, NS).enqueue("stuck")
    pool.start(aof_server.url, concurrency=1)
    identity = pool.runtime.identity  # type: ignore[union-attr]
    assert started.wait(10)
    aof_server.signal(signal.SIGTERM)  # graceful: the AOF keeps the in-progress record
    assert aof_server.proc is not None
    aof_server.proc.wait(10)
    t0 = time.monotonic()
    pool.stop(timeout=0.2)
    stop_took = time.monotonic() - t0
    aof_server.proc = None
    aof_server.start()
    r = aof_server.client()
    assert r.hexists(K.inprogress(identity), job.id), "the job's in-progress record is gone"
    wait_for(lambda: (r.zscore(K.pools, identity) or 0) < time.time() - cfg.stale_after, 10,
             message="its beat to go stale")
    assert reaper.reap_stale_pools(r, K, cfg) == [identity]
    queued = [orjson.loads(p)["jid"] for p in r.lrange(K.queue("stuck"), 0, -1)]
    assert queued == [job.id]
    print(f"\nSTOP-WHILE-DOWN: stop() returned after {stop_took:.1f}s; job requeued by the reaper")


@pytest.mark.slow
def test_writes_paused_longer_than_the_socket_timeout_lose_nothing(private_server, pools) -> None:
    """``CLIENT PAUSE ... WRITE`` is what a Redis failover does; 7 s outlasts the 5 s timeout."""
    cfg = forkq.Config(heartbeat_interval=0.3, idle_poll_interval=0.2)
    runs = Recorder()
    for _ in range(2):
        pool = recording_pool(private_server, cfg, runs)
        pool.start(private_server.url, concurrency=4)
        pools.append(pool)
    producer = Producer(private_server.url, total=3000)
    producer.start()
    admin = private_server.client()
    wait_for(lambda: admin.scard(DONE) > 300, 30, message="progress before the pause")
    admin.execute_command("CLIENT", "PAUSE", "7000", "WRITE")
    producer.join(120)
    assert not producer.is_alive()
    done = wait_for(lambda: (lambda d: d if producer.acked <= d else None)(
        {m.decode() for m in admin.smembers(DONE)}), 120, interval=0.2, message="acknowledged jobs done")
    wait_for(lambda: settled(admin, pools), 30, message="nothing left in progress")
    assert every_slot_serves(private_server.url, pools)
    print(f"\nWRITE-PAUSE: acked={len(producer.acked)} done={len(done)} refused_batches={producer.refused} "
          f"duplicates={len(runs) - len(set(runs.snapshot()))} lost={len(producer.acked - done)}")
