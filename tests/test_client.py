"""forkq.Client against a real Redis: listings and pages, delete/retry with NotDeleted /
NotRetried, queues with latency, pause/unpause waking fetchers, heartbeats, observations
and stats."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
import redis
from helpers import Recorder, start
from redis_server import wait_for

import forkq
from forkq import job as jobcodec
from forkq.client import Client, DeadJob, RetryJob, ScheduledEntry
from forkq.keys import Keys

NS = "c"
K = Keys(NS)


def stored_job(name: str, args: dict | None = None, *, jid: str | None = None, fails: int = 0,
               error: str = "", queue: str | None = None, enqueued_at: float | None = None,
               **extra: object) -> bytes:
    """A job JSON as forkq stores it after ``fails`` failures."""
    data = jobcodec.build_payload(name, args, jid=jid, now=enqueued_at)
    if queue is not None:
        data["queue"] = queue
    if fails:
        data["retry_count"] = fails - 1
        data["error_class"] = "RuntimeError"
        data["error_message"] = error or "boom"
        data["failed_at"] = time.time()
    data.update(extra)
    return jobcodec.encode(data)


def jid(n: int) -> str:
    return f"{n:024x}"


@pytest.fixture
def client(redis_url: str):
    c = Client(redis_url, NS)
    yield c
    c.close()


# -- listings ------------------------------------------------------------------------------

def test_dead_jobs_come_in_pages_of_20_newest_first_with_the_total(client, r) -> None:
    base = 1_700_000_000.25
    for i in range(45):
        r.zadd(K.dead, {stored_job("mail", {"i": i}, jid=jid(i), fails=4, error=f"e{i}"): base + i})
    page1, total = client.dead_jobs(1)
    assert total == 45
    assert [d.id for d in page1] == [jid(i) for i in range(44, 24, -1)]
    first = page1[0]
    assert isinstance(first, DeadJob)
    assert first.died_at == base + 44
    assert (first.name, first.queue, first.args, first.fails) == ("mail", "mail", {"i": 44}, 4)
    assert (first.error_class, first.error_message, first.last_err) == ("RuntimeError", "e44", "e44")
    assert first.failed_at is not None
    assert orjson.loads(first.payload)["jid"] == jid(44)
    assert first.job.args == {"i": 44}
    page3, total3 = client.dead_jobs(3)
    assert total3 == 45 and [d.id for d in page3] == [jid(i) for i in range(4, -1, -1)]
    assert client.dead_jobs(4) == ([], 45)


def test_retry_and_scheduled_jobs_list_the_soonest_first(client, r, redis_url) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    later = enq.enqueue_in("report", 300, {"n": 1})
    sooner = enq.enqueue_in("report", 60, {"n": 2})
    scheduled, total = client.scheduled_jobs(1)
    assert total == 2
    assert [s.id for s in scheduled] == [sooner.job.id, later.job.id]
    assert isinstance(scheduled[0], ScheduledEntry)
    assert scheduled[0].run_at == pytest.approx(sooner.run_at)
    assert scheduled[0].args == {"n": 2} and scheduled[0].fails == 0 and scheduled[0].failed_at is None

    r.zadd(K.retry, {stored_job("sync", jid=jid(1), fails=2): 2000.0,
                     stored_job("sync", jid=jid(2), fails=1): 1000.0})
    retries, rtotal = client.retry_jobs()
    assert rtotal == 2
    assert [(x.id, x.retry_at, x.fails) for x in retries] == [(jid(2), 1000.0, 1), (jid(1), 2000.0, 2)]
    assert isinstance(retries[0], RetryJob)


def test_a_listing_shows_sidekiq_positional_args_and_survives_a_member_that_is_not_a_job(client, r) -> None:
    sidekiq = orjson.dumps({"class": "HardWorker", "queue": "default", "args": [1, "two"], "jid": jid(7),
                            "created_at": 1.0, "enqueued_at": 1.0, "retry_count": 0,
                            "error_message": "x", "error_class": "E", "failed_at": 2.0})
    r.zadd(K.dead, {sidekiq: 10.0, b"not json at all": 5.0})
    items, total = client.dead_jobs()
    assert total == 2
    assert items[0].name == "HardWorker" and items[0].queue == "default"
    assert items[0].positional_args == (1, "two") and items[0].args == {}
    assert items[1].id == "" and items[1].error_class == "MalformedPayload"
    assert items[1].payload == b"not json at all"


@pytest.mark.parametrize("page", [0, -1, 1.5, "2", True])
def test_a_page_that_is_not_a_whole_number_from_1_is_rejected(client, page) -> None:
    with pytest.raises(forkq.ConfigError, match="page"):
        client.dead_jobs(page)


# -- deleting ------------------------------------------------------------------------------

def test_delete_dead_job_removes_exactly_the_matching_entry(client, r) -> None:
    r.zadd(K.dead, {stored_job("a", jid=jid(1), fails=1): 100.5,
                    stored_job("a", jid=jid(2), fails=1): 100.5,
                    stored_job("a", jid=jid(3), fails=1): 200.0})
    client.delete_dead_job(100.5, jid(2))
    assert sorted(d.id for d in client.dead_jobs()[0]) == [jid(1), jid(3)]
    with pytest.raises(forkq.NotDeleted):
        client.delete_dead_job(100.5, jid(2))  # already gone
    with pytest.raises(forkq.NotDeleted):
        client.delete_dead_job(200.0, jid(1))  # right jid, wrong score
    assert client.dead_jobs()[1] == 2


def test_delete_dead_job_accepts_whole_seconds_like_gocraft_or_no_score(client, r) -> None:
    r.zadd(K.dead, {stored_job("a", jid=jid(1), fails=1): 100.75,
                    stored_job("a", jid=jid(2), fails=1): 300.25})
    client.delete_dead_job(100, jid(1))
    client.delete_dead_job(None, jid(2))
    assert client.dead_jobs() == ([], 0)
    with pytest.raises(forkq.NotDeleted):
        client.delete_dead_job(None, jid(2))


def test_delete_retry_job_and_not_deleted_when_nothing_matches(client, r) -> None:
    r.zadd(K.retry, {stored_job("a", jid=jid(1), fails=1): 50.0})
    with pytest.raises(forkq.NotDeleted):
        client.delete_retry_job(50.0, jid(9))
    client.delete_retry_job(50.0, jid(1))
    assert r.zcard(K.retry) == 0
    with pytest.raises(forkq.NotDeleted):
        client.delete_retry_job(50.0, jid(1))


def test_delete_scheduled_job_releases_its_unique_guard(client, redis_url, r) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    first = enq.enqueue_unique_in("digest", 600, {"user": 1})
    assert first is not None
    assert enq.enqueue_unique_in("digest", 600, {"user": 1}) is None
    client.delete_scheduled_job(first.run_at, first.job.id)
    assert r.zcard(K.schedule) == 0
    again = enq.enqueue_unique_in("digest", 600, {"user": 1})
    assert again is not None
    with pytest.raises(forkq.NotDeleted):
        client.delete_scheduled_job(first.run_at, first.job.id)


def test_delete_scheduled_job_leaves_a_guard_now_held_by_another_job(client, r) -> None:
    guard = K.unique("digest", '{"user":1}')
    r.zadd(K.schedule, {stored_job("digest", {"user": 1}, jid=jid(1), unique=True, unique_key=guard): 10.0})
    r.set(guard, jid(2))
    client.delete_scheduled_job(10.0, jid(1))
    assert r.get(guard) == jid(2).encode()


def test_delete_scheduled_job_never_deletes_a_key_outside_the_jobs_guards(client, r) -> None:
    r.set("precious", "x")
    r.zadd(K.schedule, {stored_job("digest", jid=jid(1), unique=True, unique_key="precious"): 10.0})
    r.set("precious", jid(1))
    client.delete_scheduled_job(10.0, jid(1))
    assert r.get("precious") == jid(1).encode()


def test_delete_all_dead_jobs_empties_the_set_and_counts(client, r) -> None:
    r.zadd(K.dead, {stored_job("a", jid=jid(i), fails=1): float(i) for i in range(5)})
    assert client.delete_all_dead_jobs() == 5
    assert client.dead_jobs() == ([], 0)
    assert client.delete_all_dead_jobs() == 0


# -- retrying ------------------------------------------------------------------------------

def test_retry_dead_job_requeues_at_the_end_with_failures_cleared_and_wakes_fetchers(client, r) -> None:
    r.zadd(K.dead, {stored_job("mail", {"to": "x"}, jid=jid(1), fails=4, recovered=2, unique=True,
                               unique_key=K.unique("mail", '{"to":"x"}')): 123.5})
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(K.wake_channel)
    wait_for(lambda: r.pubsub_numsub(K.wake_channel)[0][1] == 1, message="subscription")
    before = time.time()
    client.retry_dead_job(123.5, jid(1))
    assert r.zcard(K.dead) == 0
    assert r.sismember(K.queues, "mail")
    (raw,) = r.lrange(K.queue("mail"), 0, -1)
    data = jobcodec.decode(raw)
    assert data["jid"] == jid(1) and data["args"] == [{"to": "x"}]
    for cleared in ("retry_count", "error_class", "error_message", "failed_at", "recovered", "unique",
                    "unique_key"):
        assert cleared not in data
    assert data["enqueued_at"] >= before
    assert jobcodec.Job.from_data(data).fails == 0
    msg = wait_for(lambda: ps.get_message(timeout=0.1), message="wake message")
    assert msg["data"] == b"mail"
    ps.close()
    with pytest.raises(forkq.NotRetried):
        client.retry_dead_job(123.5, jid(1))


def test_retry_dead_job_goes_to_the_queue_field_then_the_class(client, r) -> None:
    r.lpush(K.queue("other"), stored_job("other"))
    r.zadd(K.dead, {stored_job("Worker", jid=jid(1), fails=1, queue="other"): 1.0,
                    stored_job("plain", jid=jid(2), fails=1, queue=""): 2.0})
    client.retry_dead_job(1.0, jid(1))
    client.retry_dead_job(2.0, jid(2))
    # Pushed on the left: the job already waiting runs first.
    assert [jobcodec.decode(x)["class"] for x in r.lrange(K.queue("other"), 0, -1)] == ["Worker", "other"]
    assert r.llen(K.queue("plain")) == 1


def test_retry_dead_job_refuses_a_payload_that_cannot_run(client, r) -> None:
    from forkq.retry import malformed_dead_entry

    entry = malformed_dead_entry(queue="q", raw=b"\xff garbage", reason="payload is not valid JSON")
    r.zadd(K.dead, {entry: 7.0})
    malformed_jid = jobcodec.decode(entry)["jid"]
    with pytest.raises(forkq.NotRetried, match="cannot be retried"):
        client.retry_dead_job(7.0, malformed_jid)
    with pytest.raises(forkq.NotRetried):
        client.retry_dead_job(7.0, jid(99))
    assert r.zcard(K.dead) == 1


def test_retry_all_dead_jobs_moves_every_runnable_job_and_leaves_the_rest(client, r) -> None:
    from forkq.retry import malformed_dead_entry

    r.zadd(K.dead, {malformed_dead_entry(queue="q", raw=b"x", reason="bad"): 0.5})
    r.zadd(K.dead, {stored_job("bulk", {"i": i}, jid=jid(i), fails=1): float(i + 1) for i in range(1203)})
    assert client.retry_all_dead_jobs() == 1203
    assert r.llen(K.queue("bulk")) == 1203
    assert r.zcard(K.dead) == 1
    assert client.retry_all_dead_jobs() == 0


def test_a_retried_dead_job_runs_again_in_a_pool(client, redis_url, fast_config, pools) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    attempts = Recorder()
    healthy = threading.Event()

    @pool.job(max_fails=1)
    def flaky(job: forkq.Job) -> None:
        attempts.add(job.fails)
        if not healthy.is_set():
            raise RuntimeError("downstream is down")

    start(pools, pool, redis_url, concurrency=2)
    enq = pool.enqueuer(redis_url)
    queued = enq.enqueue("flaky", {"n": 1})
    wait_for(lambda: client.dead_jobs()[1] == 1, message="job to die")
    (dead,), _ = client.dead_jobs()
    assert (dead.id, dead.fails, dead.error_message) == (queued.id, 1, "downstream is down")
    healthy.set()
    client.retry_dead_job(dead.died_at, dead.id)
    wait_for(lambda: len(attempts) == 2, message="retried job to run")
    pool.drain(10)
    assert attempts.snapshot() == [0, 0]
    assert client.dead_jobs()[1] == 0


# -- queues and pausing ------------------------------------------------------------------------

def test_queues_report_count_latency_of_the_oldest_job_and_paused(client, r, redis_url) -> None:
    old = time.time() - 30
    r.sadd(K.queues, "alpha", "beta", "empty")
    r.lpush(K.queue("alpha"), stored_job("alpha", enqueued_at=old))
    r.lpush(K.queue("alpha"), stored_job("alpha"))
    forkq.Enqueuer(redis_url, NS).enqueue("beta")
    client.pause("beta")
    qs = {q.job_name: q for q in client.queues()}
    assert [q.job_name for q in client.queues()] == ["alpha", "beta", "empty"]
    assert qs["alpha"].count == 2 and 29 <= qs["alpha"].latency < 3600
    assert qs["beta"].count == 1 and qs["beta"].paused and not qs["alpha"].paused
    assert (qs["empty"].count, qs["empty"].latency) == (0, 0.0)


def test_pause_keeps_workers_off_a_queue_and_unpause_wakes_them(client, redis_url, fast_config, pools, r) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    ran = Recorder()

    @pool.job
    def report(job: forkq.Job) -> None:
        ran.add(job.id)

    client.pause("report")
    assert client.is_paused("report")
    start(pools, pool, redis_url, concurrency=2)
    pool.enqueuer(redis_url).enqueue("report")
    pool.drain(10)  # returns: a paused queue counts as done
    assert len(ran) == 0 and r.llen(K.queue("report")) == 1
    client.unpause("report")
    assert not client.is_paused("report")
    wait_for(lambda: len(ran) == 1, message="job to run after unpause")


def test_unpause_publishes_the_job_name_on_the_wake_channel(client, r) -> None:
    client.pause("sleepy")
    assert r.exists(K.paused("sleepy"))
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(K.wake_channel)
    wait_for(lambda: r.pubsub_numsub(K.wake_channel)[0][1] == 1, message="subscription")
    client.unpause("sleepy")
    assert not r.exists(K.paused("sleepy"))
    msg = wait_for(lambda: ps.get_message(timeout=0.1), message="wake message")
    assert msg["data"] == b"sleepy"
    ps.close()


def test_pause_rejects_a_name_that_would_break_the_key_layout(client) -> None:
    with pytest.raises(forkq.ConfigError):
        client.pause("bad{name}")


# -- pools, observations, stats ----------------------------------------------------------------

def test_heartbeats_list_every_pool_with_gocraft_fields(client, redis_url, fast_config, pools) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job
    def b(job: forkq.Job) -> None: ...

    @pool.job
    def a(job: forkq.Job) -> None: ...

    start(pools, pool, redis_url, concurrency=12)
    (hb,) = client.worker_pool_heartbeats()
    rt = pool.runtime
    assert rt is not None
    assert hb.worker_pool_id == rt.identity
    assert hb.job_names == ("a", "b") and hb.concurrency == 12
    assert hb.host == rt.info.hostname and hb.pid == rt.info.pid
    assert hb.started_at <= hb.heartbeat_at <= time.time() + 1
    assert hb.worker_ids == tuple(f"{rt.identity}:{i}" for i in range(12))
    obs = client.worker_observations()
    assert [o.worker_id for o in obs] == list(hb.worker_ids)
    assert not any(o.is_busy for o in obs)
    pool.stop(timeout=2)
    assert client.worker_pool_heartbeats() == []


def test_an_observation_left_by_a_finished_job_is_not_shown_as_busy(client, r) -> None:
    ident = "host:1:abc"
    r.zadd(K.pools, {ident: time.time()})
    r.hset(K.pool(ident), mapping={"worker_pool_id": ident, "started_at": 1, "heartbeat_at": 2,
                                    "job_names": "x", "concurrency": 2, "host": "host", "pid": 1,
                                    "worker_ids": f"{ident}:0,{ident}:1"})
    payload = stored_job("x", {"k": 1}, jid=jid(5))
    r.hset(K.process_work(ident), "1", orjson.dumps({"queue": "x", "payload": payload.decode(),
                                                      "run_at": 3}))
    r.hset(K.worker(f"{ident}:1"), mapping={"job_name": "x", "job_id": jid(5), "started_at": 3,
                                             "args": '{"k":1}', "checkin": "half", "checkin_at": 4})
    r.hset(K.worker(f"{ident}:0"), mapping={"job_name": "x", "job_id": jid(4), "started_at": 1,
                                             "args": "{}", "checkin": "", "checkin_at": 0})
    # Live pool; only jid(5) is still in progress (jid(4) was acked).
    r.sadd(K.processes, ident)
    r.hset(K.process(ident), mapping={"busy": 2, "beat": time.time()})
    r.hset(K.inprogress(ident), jid(5), payload)
    idle, busy = client.worker_observations()
    assert (idle.worker_id, idle.is_busy, idle.job_id) == (f"{ident}:0", False, "")
    assert busy.is_busy and (busy.job_name, busy.job_id, busy.started_at) == ("x", jid(5), 3)
    assert (busy.args, busy.args_json, busy.checkin, busy.checkin_at) == ({"k": 1}, '{"k":1}', "half", 4)


def test_stats_count_sets_queues_and_only_live_processes(client, r, redis_url) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    enq.enqueue_many("one", [{}] * 3)
    enq.enqueue("two")
    enq.enqueue_in("later", 100)
    r.zadd(K.retry, {stored_job("a", jid=jid(1), fails=1): 1.0})
    r.zadd(K.dead, {stored_job("a", jid=jid(2), fails=1): 1.0, stored_job("a", jid=jid(3), fails=1): 2.0})
    r.set(K.stat_processed, 10)
    r.set(K.stat_failed, 3)
    r.set(K.stat_processed_day(K.today()), 4)
    r.set(K.stat_failed_day(K.today()), 1)
    r.sadd(K.processes, "live1", "live2", "gone")
    r.hset(K.process("live1"), mapping={"busy": 2, "beat": time.time()})
    r.hset(K.process("live2"), mapping={"busy": 1, "beat": time.time()})
    # busy counts what live pools hold in progress now (not the beat's stale count).
    r.hset(K.inprogress("live1"), mapping={jid(6): b"{}", jid(7) + "#2": b"{}"})
    r.hset(K.inprogress("live2"), mapping={jid(8): b"{}"})
    r.hset(K.inprogress("gone"), mapping={jid(9): b"{}"})
    s = client.stats()
    assert (s.processed, s.failed, s.processed_today, s.failed_today) == (10, 3, 4, 1)
    assert (s.enqueued, s.scheduled, s.retry, s.dead) == (4, 1, 1, 2)
    assert (s.busy, s.processes) == (3, 2)


def test_stats_of_an_empty_namespace_are_zero(client, r) -> None:
    r.set(Keys("elsewhere").stat_processed, 99)
    s = client.stats()
    assert (s.processed, s.failed, s.busy, s.enqueued, s.scheduled, s.retry, s.dead, s.processes) == (0,) * 8


def test_client_takes_a_redis_instance_even_one_that_decodes_responses(redis_server, redis_url) -> None:
    user = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    c = forkq.Client(user, NS)
    forkq.Enqueuer(redis_url, NS).enqueue("x", {"a": 1})
    assert [(q.job_name, q.count) for q in c.queues()] == [("x", 1)]
    assert c.describe() == f"127.0.0.1:{redis_server.port}"
    c.close()
    user.close()


def test_client_describe_hides_the_password() -> None:
    c = Client("redis://user:s3cret@127.0.0.1:1/0", NS)
    assert "s3cret" not in c.describe()
    c.close()


def test_retry_dead_job_requeues_one_copy_when_a_jid_is_stored_twice(client, r) -> None:
    r.zadd(K.dead, {stored_job("twice", {"v": 1}, jid=jid(1), fails=1): 10.0,
                    stored_job("twice", {"v": 2}, jid=jid(1), fails=1): 20.0})
    client.retry_dead_job(None, jid(1))
    (raw,) = r.lrange(K.queue("twice"), 0, -1)
    assert jobcodec.decode(raw)["args"] == [{"v": 2}]
    assert [d.died_at for d in client.dead_jobs()[0]] == [10.0]


def test_find_dead_job_searches_the_whole_set_by_jid(client, r) -> None:
    r.zadd(K.dead, {stored_job("a", jid=jid(i), fails=2): float(i) for i in range(1200)})
    found = client.find_dead_job(jid(777))
    assert found is not None and (found.id, found.died_at, found.fails) == (jid(777), 777.0, 2)
    assert client.find_dead_job(jid(5000)) is None


def test_concurrent_retries_of_one_dead_job_requeue_it_once(client, r, redis_url) -> None:
    r.zadd(K.dead, {stored_job("once", jid=jid(1), fails=1): 42.0})
    outcomes = Recorder()
    go = threading.Event()

    def retry() -> None:
        c = Client(redis_url, NS)
        go.wait(10)
        try:
            c.retry_dead_job(42.0, jid(1))
            outcomes.add("retried")
        except forkq.NotRetried:
            outcomes.add("not retried")
        finally:
            c.close()

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(30)
    assert sorted(outcomes.snapshot()) == ["not retried"] * 7 + ["retried"]
    assert r.llen(K.queue("once")) == 1 and r.zcard(K.dead) == 0
