"""The core engine against a real Redis: order, priorities, retries, dead, scheduling,
uniqueness, pausing, malformed input, middleware, batching and draining."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
import redis
from helpers import Recorder, start
from redis_server import wait_for

import forkq
from forkq import default_backoff
from forkq.keys import Keys

NS = "t"
K = Keys(NS)


def new_pool(config: forkq.Config) -> forkq.WorkerPool:
    return forkq.WorkerPool(NS, config=config)


def commandstat_calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def wait_beats(r: redis.Redis, identity: str, n: int, timeout: float) -> None:
    """Wait until the pool's heartbeat score changed ``n`` times (Redis-visible progress)."""
    last = r.zscore(K.pools, identity)
    for i in range(n):
        last = wait_for(lambda prev=last: (lambda s: s if s is not None and s != prev else None)(
            r.zscore(K.pools, identity)), timeout, interval=0.02, message=f"beat {i + 1} of {n}")


def subscribed(r: redis.Redis, n: int) -> bool:
    """At least ``n`` pools listen on the wake channel."""
    return dict(r.pubsub_numsub(K.wake_channel)).get(K.wake_channel.encode(), 0) >= n


def wait_scripts_idle(r: redis.Redis, window: float = 0.25, timeout: float = 10.0) -> None:
    """Wait until no script ran for ``window`` seconds: the pools fetched, found
    nothing and went to sleep (observed in Redis, not assumed after a fixed wait)."""
    state = {"calls": -1, "since": 0.0}

    def idle() -> bool:
        calls = commandstat_calls(r, "evalsha") + commandstat_calls(r, "eval")
        now = time.monotonic()
        if calls != state["calls"]:
            state["calls"], state["since"] = calls, now
            return False
        return now - state["since"] >= window

    wait_for(idle, timeout, interval=0.02, message="pools idle")


def test_jobs_of_one_queue_run_in_fifo_order(redis_url, fast_config, pools) -> None:
    pool = new_pool(fast_config)
    seen = Recorder()

    @pool.job
    def ordered(job: forkq.Job) -> None:
        seen.add(job.arg_int("i"))

    enq = pool.enqueuer(redis_url)
    for i in range(200):
        enq.enqueue("ordered", {"i": i})
    start(pools, pool, redis_url, concurrency=1)
    pool.drain(20)
    assert seen.snapshot() == list(range(200))


def test_busy_queues_share_work_in_the_ratio_of_their_priorities(redis_url, fast_config, pools) -> None:
    pool = new_pool(fast_config)
    seen = Recorder()

    @pool.job(priority=1)
    def low(job: forkq.Job) -> None:
        seen.add("low")

    @pool.job(priority=4)
    def high(job: forkq.Job) -> None:
        seen.add("high")

    enq = pool.enqueuer(redis_url)
    enq.enqueue_many("low", [{}] * 3000)
    enq.enqueue_many("high", [{}] * 3000)
    start(pools, pool, redis_url, concurrency=1)
    wait_for(lambda: len(seen) >= 1500, 30, message="1500 jobs")
    pool.stop(5)
    first = seen.snapshot()[:1500]
    ratio = first.count("high") / max(1, first.count("low"))
    assert 2.5 <= ratio <= 6.0, f"high:low = {ratio:.2f}, expected about 4"


def test_failed_job_is_retried_with_the_error_recorded(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)

    @pool.job(backoff=lambda job: 1000)
    def flaky(job: forkq.Job) -> None:
        raise ValueError("boom 42")

    enq = pool.enqueuer(redis_url)
    jid = enq.enqueue("flaky", {"x": 1}).id
    before = time.time()
    start(pools, pool, redis_url)
    entries = wait_for(lambda: r.zrange(K.retry, 0, -1, withscores=True), 10, message="retry entry")
    payload, score = entries[0]
    data = orjson.loads(payload)
    assert data["jid"] == jid and data["args"] == [{"x": 1}]
    assert data["error_class"] == "ValueError" and data["error_message"] == "boom 42"
    assert data["retry_count"] == 0 and data["failed_at"] >= before
    assert data["failed_at"] + 999 <= score <= data["failed_at"] + 1001
    assert r.hlen(K.inprogress(pool.runtime.identity)) == 0


def test_retry_delays_follow_the_backoff_of_each_failure(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)
    delays: list[float] = []

    def backoff(job: forkq.Job) -> float:
        delays.append(job.fails)
        return 0.0 if job.fails < 3 else 500.0 * job.fails

    @pool.job(max_fails=5, backoff=backoff)
    def failing(job: forkq.Job) -> None:
        raise RuntimeError("no")

    pool.enqueuer(redis_url).enqueue("failing")
    start(pools, pool, redis_url)
    (payload, score), = wait_for(lambda: [e for e in r.zrange(K.retry, 0, -1, withscores=True)
                                          if e[1] > time.time() + 100], 15, message="3rd failure")
    data = orjson.loads(payload)
    assert delays == [1, 2, 3]
    assert data["retry_count"] == 2
    assert data["retried_at"] + 1499 <= score <= data["retried_at"] + 1501


def test_default_backoff_is_fails_to_the_fourth_plus_15_plus_jitter() -> None:
    class J:
        fails = 3

    samples = [default_backoff(J()) for _ in range(500)]
    assert min(samples) >= 3**4 + 15 and max(samples) <= 3**4 + 15 + 10 * 4
    assert len(set(samples)) > 10  # jitter really varies


def test_job_goes_to_dead_after_max_fails_with_error_fields(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)
    runs = Recorder()

    @pool.job(max_fails=3, backoff=lambda job: 0)
    def doomed(job: forkq.Job) -> None:
        runs.add(job.fails)
        raise KeyError("missing thing")

    jid = pool.enqueuer(redis_url).enqueue("doomed").id
    start(pools, pool, redis_url)
    dead = wait_for(lambda: r.zrange(K.dead, 0, -1), 15, message="dead entry")
    data = orjson.loads(dead[0])
    assert data["jid"] == jid and runs.snapshot() == [0, 1, 2]
    assert data["error_class"] == "KeyError" and "missing thing" in data["error_message"]
    assert data["retry_count"] == 2 and data["failed_at"] > 0
    assert r.zcard(K.retry) == 0


def test_skip_dead_drops_a_job_after_max_fails(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)
    runs = Recorder()

    @pool.job(max_fails=2, skip_dead=True, backoff=lambda job: 0)
    def dropped(job: forkq.Job) -> None:
        runs.add(1)
        raise ValueError("x")

    pool.enqueuer(redis_url).enqueue("dropped")
    start(pools, pool, redis_url)
    wait_for(lambda: len(runs) == 2, 10, message="two runs")
    pool.drain(10)
    wait_for(lambda: r.hlen(K.inprogress(pool.runtime.identity)) == 0, 5, message="acked")
    assert r.zcard(K.dead) == 0 and r.zcard(K.retry) == 0 and len(runs) == 2


def test_scheduled_job_runs_no_earlier_than_its_time(redis_url, fast_config, pools) -> None:
    pool = new_pool(fast_config)
    started = Recorder()

    @pool.job
    def later(job: forkq.Job) -> None:
        started.add(time.time())

    start(pools, pool, redis_url)
    sj = pool.enqueuer(redis_url).enqueue_in("later", 1.0)
    wait_for(lambda: len(started) == 1, 10, message="scheduled job run")
    assert started.snapshot()[0] >= sj.run_at


def test_unknown_job_names_are_promoted_to_their_queue_not_to_dead(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)

    @pool.job
    def known(job: forkq.Job) -> None: ...

    enq = forkq.Enqueuer(redis_url, NS)
    enq.enqueue_in("someone_elses_job", 0.1)
    enq.enqueue_in("known", 0.1)
    start(pools, pool, redis_url)
    wait_for(lambda: r.llen(K.queue("someone_elses_job")) == 1 and r.zcard(K.schedule) == 0, 10,
             message="both promoted")
    assert r.zcard(K.dead) == 0
    assert b"someone_elses_job" in r.smembers(K.queues)


def test_unique_job_is_not_enqueued_twice_until_a_worker_takes_it(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)
    gate = threading.Event()
    seen = Recorder()

    @pool.job
    def once(job: forkq.Job) -> None:
        seen.add(job.id)
        gate.wait(10)

    enq = pool.enqueuer(redis_url)
    first = enq.enqueue_unique("once", {"a": 1, "b": 2})
    assert first is not None
    assert enq.enqueue_unique("once", {"b": 2, "a": 1}) is None  # same args, any key order
    assert enq.enqueue_unique("once", {"a": 2}) is not None       # other args
    assert r.llen(K.queue("once")) == 2
    start(pools, pool, redis_url, concurrency=1)
    wait_for(lambda: len(seen) == 1, 10, message="first unique job started")
    # Taken by a worker: the guard is gone, the same job may be enqueued again.
    assert wait_for(lambda: enq.enqueue_unique("once", {"a": 1, "b": 2}), 5, message="guard released")
    gate.set()
    pool.drain(10)


def test_unique_guard_lives_delay_plus_a_day(redis_url, r) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    sj = enq.enqueue_unique_in("report", 3600, {"day": "mon"})
    assert sj is not None and enq.enqueue_unique_in("report", 10, {"day": "mon"}) is None
    ttl = r.ttl(K.unique("report", '{"day":"mon"}'))
    assert 3600 + 86400 - 5 <= ttl <= 3600 + 86400
    assert r.zcard(K.schedule) == 1


def test_unique_by_key_ignores_args(redis_url, r) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    assert enq.enqueue_unique_by_key("sync", {"page": 1}, {"user": 7}) is not None
    assert enq.enqueue_unique_by_key("sync", {"page": 2}, {"user": 7}) is None
    assert enq.enqueue_unique_by_key("sync", {"page": 2}, {"user": 8}) is not None
    assert r.llen(K.queue("sync")) == 2


def test_failed_unique_job_in_retry_does_not_block_a_new_one(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)

    @pool.job(backoff=lambda job: 1000)
    def fragile(job: forkq.Job) -> None:
        raise ValueError("x")

    enq = pool.enqueuer(redis_url)
    assert enq.enqueue_unique("fragile", {"k": 1}) is not None
    start(pools, pool, redis_url)
    wait_for(lambda: r.zcard(K.retry) == 1, 10, message="retry")
    assert enq.enqueue_unique("fragile", {"k": 1}) is not None


def test_paused_queue_is_not_fetched_until_unpaused(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)
    seen = Recorder()

    @pool.job
    def pausable(job: forkq.Job) -> None:
        seen.add(1)

    @pool.job
    def other(job: forkq.Job) -> None:
        seen.add(2)

    r.set(K.paused("pausable"), 1)
    enq = pool.enqueuer(redis_url)
    enq.enqueue_many("pausable", [{}] * 5)
    start(pools, pool, redis_url)
    # Positive proof instead of a fixed wait: three sentinels on another queue, each
    # enqueued after the previous one ran, so three fetch rounds saw the paused jobs.
    for n in range(1, 4):
        enq.enqueue("other")
        wait_for(lambda n=n: seen.snapshot().count(2) == n, 5, message=f"sentinel {n} (other queue served)")
    assert 1 not in seen.snapshot() and r.llen(K.queue("pausable")) == 5
    r.delete(K.paused("pausable"))
    r.publish(K.wake_channel, "pausable")
    wait_for(lambda: seen.snapshot().count(1) == 5, 5, message="unpaused jobs")


@pytest.mark.parametrize("raw", [b"not json at all", b"[1,2,3]", b'{"no":"class"}', b'{"class":"bad","jid":"z","args":7}'])
def test_malformed_payload_goes_to_dead_and_the_queue_keeps_flowing(redis_url, fast_config, pools, r, raw) -> None:
    pool = new_pool(fast_config)
    seen = Recorder()

    @pool.job
    def solid(job: forkq.Job) -> None:
        seen.add(job.arg_int("n"))

    enq = pool.enqueuer(redis_url)
    enq.enqueue("solid", {"n": 1})
    r.lpush(K.queue("solid"), raw)
    enq.enqueue("solid", {"n": 2})
    start(pools, pool, redis_url, concurrency=1)
    wait_for(lambda: seen.snapshot() == [1, 2], 10, message="good jobs around the bad one")
    dead = wait_for(lambda: r.zrange(K.dead, 0, -1), 5, message="dead entry")
    entry = orjson.loads(dead[0])
    assert entry["error_class"] == "MalformedPayload" and entry["raw"] == raw.decode()
    assert entry["queue"] == "solid" and entry["error_message"]
    wait_for(lambda: r.hlen(K.inprogress(pool.runtime.identity)) == 0, 5, message="acked")


def test_job_of_unregistered_class_in_a_known_queue_fails_clearly(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)

    @pool.job
    def host(job: forkq.Job) -> None: ...

    r.lpush(K.queue("host"), orjson.dumps({"jid": "a" * 24, "class": "Ghost", "queue": "host", "args": []}))
    start(pools, pool, redis_url)
    entry = orjson.loads(wait_for(lambda: r.zrange(K.retry, 0, -1), 10, message="retry")[0])
    assert entry["error_class"] == "UnknownJob" and "Ghost" in entry["error_message"]


def test_middleware_runs_in_registration_order_around_the_handler(redis_url, fast_config, pools) -> None:
    pool = new_pool(fast_config)
    trace = Recorder()

    @pool.middleware
    def outer(job, next):  # type: ignore[no-untyped-def]
        trace.add("outer>")
        result = next()
        trace.add("<outer")
        return result

    @pool.middleware
    def inner(job, next):  # type: ignore[no-untyped-def]
        trace.add("inner>")
        result = next()
        trace.add("<inner")
        return result

    @pool.job
    def wrapped(job: forkq.Job) -> None:
        trace.add("job")

    pool.enqueuer(redis_url).enqueue("wrapped")
    start(pools, pool, redis_url)
    pool.drain(10)
    assert trace.snapshot() == ["outer>", "inner>", "job", "<inner", "<outer"]


def test_middleware_that_skips_next_skips_the_job(redis_url, fast_config, pools) -> None:
    pool = new_pool(fast_config)
    ran = Recorder()
    pool.middleware(lambda job, next: None if job.args.get("skip") else next())

    @pool.job
    def maybe(job: forkq.Job) -> None:
        ran.add(job.args.get("skip"))

    enq = pool.enqueuer(redis_url)
    enq.enqueue("maybe", {"skip": True})
    enq.enqueue("maybe", {"skip": False})
    start(pools, pool, redis_url)
    pool.drain(10)
    assert ran.snapshot() == [False]


def test_enqueue_many_sends_ten_thousand_jobs_in_one_call(redis_url, r) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    enq.enqueue("warm")  # load the script first
    before = commandstat_calls(r, "evalsha")
    jobs = enq.enqueue_many("bulk", [{"i": i} for i in range(10_000)])
    assert commandstat_calls(r, "evalsha") - before == 1
    assert r.llen(K.queue("bulk")) == 10_000 and len({j.id for j in jobs}) == 10_000
    # Oldest first: the first job enqueued is the first taken (right end).
    assert orjson.loads(r.lindex(K.queue("bulk"), -1))["args"] == [{"i": 0}]


def test_drain_returns_when_every_job_has_run(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)
    seen = Recorder()

    @pool.job
    def a(job: forkq.Job) -> None:
        seen.add(job.id)

    @pool.job
    def b(job: forkq.Job) -> None:
        time.sleep(0.002)
        seen.add(job.id)

    enq = pool.enqueuer(redis_url)
    ids = {j.id for j in enq.enqueue_many("a", [{}] * 500)} | {j.id for j in enq.enqueue_many("b", [{}] * 100)}
    start(pools, pool, redis_url, concurrency=8)
    pool.drain(30)
    assert set(seen.snapshot()) == ids and len(seen) == 600
    assert r.llen(K.queue("a")) == 0 and r.llen(K.queue("b")) == 0


def test_idle_pool_sleeps_instead_of_polling(redis_url, pools, r) -> None:
    cfg = forkq.Config(idle_poll_interval=1.0, heartbeat_interval=5.0)
    pool = forkq.WorkerPool(NS, config=cfg)
    pool.register("idle", lambda job: None)
    start(pools, pool, redis_url, concurrency=4)
    wait_for(lambda: r.zscore(K.pools, pool.runtime.identity) is not None, 10, message="first beat")
    # Start-up is over (the waker took its lock and made its first look, whose
    # announcement may wake the pool once), and the pool is asleep: count from there.
    wait_for(lambda: r.exists(K.waker_lock), 10, message="the waker's lock taken")
    wait_scripts_idle(r)
    before = commandstat_calls(r, "evalsha")
    time.sleep(3.0)
    fetches = commandstat_calls(r, "evalsha") - before
    assert fetches <= 5, f"{fetches} fetches in 3 s of idleness"


def test_enqueue_wakes_a_sleeping_pool_without_waiting_for_its_poll(redis_url, pools, r) -> None:
    cfg = forkq.Config(idle_poll_interval=60.0)
    pool = forkq.WorkerPool(NS, config=cfg)
    done = threading.Event()
    pool.register("ping", lambda job: done.set())
    start(pools, pool, redis_url)
    # Listening for wakes (it subscribes after its first empty fetch is under way).
    wait_for(lambda: subscribed(r, 1), 10, message="the pool subscribed to the wake channel")
    wait_scripts_idle(r)  # its fetch after subscribing found nothing: it sleeps for 60 s
    pool.enqueuer(redis_url).enqueue("ping")
    assert done.wait(10), "enqueue did not wake the idle fetcher"


def test_stop_requeues_jobs_that_do_not_finish_in_time(redis_url, fast_config, r) -> None:
    pool = new_pool(fast_config)
    started = threading.Event()

    @pool.job
    def stuck(job: forkq.Job) -> None:
        started.set()
        time.sleep(30)

    jid = pool.enqueuer(redis_url).enqueue("stuck").id
    pool.start(redis_url, concurrency=2)
    assert started.wait(10)
    identity = pool.runtime.identity
    pool.stop(timeout=0.3)
    queued = [orjson.loads(p)["jid"] for p in r.lrange(K.queue("stuck"), 0, -1)]
    assert queued == [jid]
    assert r.hlen(K.inprogress(identity)) == 0
    assert not r.sismember(K.processes, identity) and r.zscore(K.pools, identity) is None


def test_enqueue_rejects_bad_input_clearly(redis_url) -> None:
    enq = forkq.Enqueuer(redis_url, NS, config=forkq.Config(max_payload_bytes=1000))
    with pytest.raises(forkq.PayloadTooLarge, match="limit is 1000"):
        enq.enqueue("big", {"blob": "x" * 2000})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        enq.enqueue("odd", {"obj": object()})
    with pytest.raises(TypeError, match="mapping"):
        enq.enqueue("odd", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(forkq.ConfigError):
        enq.enqueue("bad{name}")


def test_enqueue_to_unreachable_redis_raises_enqueue_error() -> None:
    enq = forkq.Enqueuer("redis://127.0.0.1:1/0", NS)
    with pytest.raises(forkq.EnqueueError, match="could not reach Redis"):
        enq.enqueue("x")


def test_idle_pool_wakes_up_for_a_scheduled_job_without_polling(redis_url, pools) -> None:
    """The fetch script reports the next due time; an idle fetcher sleeps until then."""
    cfg = forkq.Config(idle_poll_interval=60.0)
    pool = forkq.WorkerPool(NS, config=cfg)
    ran = threading.Event()
    pool.register("soon", lambda job: ran.set())
    enq = pool.enqueuer(redis_url)
    sj = enq.enqueue_in("soon", 1.0)
    start(pools, pool, redis_url)
    assert ran.wait(15), "scheduled job did not run although its time came"
    assert time.time() >= sj.run_at


def test_workers_drain_queued_jobs_while_redis_is_out_of_memory(redis_url, fast_config, pools, r) -> None:
    """At maxmemory with noeviction, enqueues fail loudly but fetch/ack (allow-oom) go on."""
    if not forkq.scripts.supports_script_flags(r):
        pytest.skip("script flags (allow-oom) need Redis >= 7")
    pool = new_pool(fast_config)
    seen = Recorder()
    pool.register("fill", lambda job: seen.add(job.id))
    enq = pool.enqueuer(redis_url)
    enq.enqueue("fill")  # loads the enqueue script before memory is tight
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", used + 2_000_000)
    try:
        accepted = 1
        with pytest.raises(forkq.EnqueueError, match="OOM"):
            for _ in range(1000):
                enq.enqueue_many("fill", [{"pad": "x" * 200}] * 100)
                accepted += 100
        start(pools, pool, redis_url)
        wait_for(lambda: len(seen) == accepted, 30, message=f"{accepted} queued jobs to run at OOM")
        assert r.llen(K.queue("fill")) == 0
    finally:
        r.config_set("maxmemory", 0)


def test_observation_of_a_finished_job_is_removed_at_the_next_beat(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)
    gate = threading.Event()
    pool.register("observed", lambda job: gate.wait(10))
    start(pools, pool, redis_url, concurrency=2)
    pool.enqueuer(redis_url).enqueue("observed")
    wkeys = wait_for(lambda: r.keys(K.prefix + "worker:*"), 10, message="observation written")
    assert r.hget(wkeys[0], "job_name") == b"observed"
    gate.set()
    wait_for(lambda: not r.keys(K.prefix + "worker:*"), 10, message="observation removed")


def test_a_retried_unique_job_does_not_release_the_guard_of_a_newer_one(redis_url, fast_config, pools, r) -> None:
    """Guards are released compare-and-delete: only by the job whose jid they hold."""
    pool = new_pool(fast_config)
    seen = Recorder()
    pool.register("uniq", lambda job: seen.add(job.id))
    enq = pool.enqueuer(redis_url)
    old = enq.enqueue_unique("uniq", {"k": 1})
    assert old is not None
    guard = K.unique("uniq", '{"k":1}')
    # The old job's guard expired and a newer job with the same args holds it now.
    r.set(guard, "newer-jid")
    start(pools, pool, redis_url)
    wait_for(lambda: seen.snapshot() == [old.id], 10, message="old unique job run")
    pool.drain(5)
    assert r.get(guard) == b"newer-jid"


def test_sidekiq_web_ui_quiet_signal_stops_fetching(redis_url, fast_config, pools, r) -> None:
    """Sidekiq's Web UI LPUSHes TSTP to <identity>-signals; the next beat quiets the pool."""
    pool = new_pool(fast_config)
    seen = Recorder()
    pool.register("q", lambda job: seen.add(job.id))
    start(pools, pool, redis_url)
    identity = pool.runtime.identity
    r.lpush(K.process_signals(identity), "TSTP")
    wait_for(lambda: r.hget(K.process(identity), "quiet") == b"true", 10, message="quiet beat")
    pool.enqueuer(redis_url).enqueue("q")
    # No fixed wait: two more beats (each one after several idle polls) while quiet.
    wait_beats(r, identity, 2, timeout=10)
    assert len(seen) == 0 and r.llen(K.queue("q")) == 1
    assert r.llen(K.process_signals(identity)) == 0


def test_sidekiq_web_ui_stop_signal_calls_the_stop_hook(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)
    pool.register("q", lambda job: None)
    start(pools, pool, redis_url)
    stopped = threading.Event()
    pool.runtime.on_remote_stop = stopped.set
    r.lpush(K.process_signals(pool.runtime.identity), "TERM")
    assert stopped.wait(10)


def test_pool_whose_poll_finds_unannounced_jobs_wakes_the_others(redis_url, pools, r) -> None:
    """A Sidekiq client only LPUSHes; the first pool to poll relays a wake to the rest."""
    ran_by: dict[str, int] = {}
    lock = threading.Lock()

    def make(tag: str, poll: float) -> forkq.WorkerPool:
        pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=poll))

        def slow(job: forkq.Job) -> None:
            time.sleep(0.05)
            with lock:
                ran_by[tag] = ran_by.get(tag, 0) + 1

        pool.register("foreign", slow)
        return pool

    start(pools, make("sleepy", 60.0), redis_url, concurrency=2)
    wait_for(lambda: subscribed(r, 1), 10, message="the sleepy pool listens for wakes")
    wait_scripts_idle(r)  # the sleepy pool found nothing and sleeps for a minute
    start(pools, make("poller", 0.3), redis_url, concurrency=2)
    wait_for(lambda: subscribed(r, 2), 10, message="the polling pool listens for wakes")
    job = forkq.job.build_payload("foreign", {})
    for _ in range(40):  # as Sidekiq::Client.push does: LPUSH, no PUBLISH
        job["jid"] = forkq.job.new_jid()
        r.lpush(K.queue("foreign"), orjson.dumps(job))
    wait_for(lambda: sum(ran_by.values()) == 40, 20, message="40 foreign jobs")
    assert ran_by.get("sleepy", 0) > 0, ran_by
