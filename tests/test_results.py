"""Results and status by jid (forkq/results.py, store_results.lua): ``result_ttl``,
``Client.result`` and ``Enqueuer.wait``, against a real Redis and real pools."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import orjson
import pytest
import redis
from helpers import start
from redis_server import wait_for

import forkq
from forkq import admin_cli
from forkq.keys import Keys

NS = "rs"
K = Keys(NS)


def test_result_ttl_keeps_the_return_value_and_wait_blocks_until_the_end(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    gate = threading.Event()

    @pool.job(result_ttl=60)
    def add(job: forkq.Job) -> dict:
        gate.wait(20)
        return {"sum": job.arg_int("a") + job.arg_int("b")}

    @pool.job(result_ttl=60)
    async def aadd(job: forkq.Job) -> list:
        await asyncio.sleep(0.01)
        return [job.arg_int("a")]

    enq = pool.enqueuer(redis_url)
    job = enq.enqueue("add", {"a": 2, "b": 3})
    with forkq.Client(redis_url, NS) as c:
        assert c.result(job.id) == forkq.JobResult(jid=job.id, state="queued")
        start(pools, pool, redis_url)
        wait_for(lambda: c.result(job.id).state == "running", 10, message="running")  # type: ignore[union-attr]
        with pytest.raises(TimeoutError):
            enq.wait(job.id, timeout=0.2)
        got: list[forkq.JobResult] = []
        waiter = threading.Thread(target=lambda: got.append(enq.wait(job.id, timeout=20)))
        waiter.start()
        gate.set()
        waiter.join(25)
        assert got == [forkq.JobResult(jid=job.id, state="succeeded", result={"sum": 5})]
        assert c.result(job.id) == got[0]
        # A second waiter after the end returns at once.
        assert enq.wait(job.id, timeout=5).result == {"sum": 5}
        a = enq.enqueue("aadd", {"a": 7})
        assert enq.wait(a.id, timeout=20) == forkq.JobResult(jid=a.id, state="succeeded", result=[7])
        assert 0 < r.ttl(K.result(job.id)) <= 60
        assert c.result("no-such-jid") is None
    enq.close()


def test_results_across_retries_then_dead(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    attempts = [0]

    @pool.job(result_ttl=60, max_fails=2, backoff=lambda job: 0)
    def flaky(job: forkq.Job) -> None:
        attempts[0] += 1
        raise RuntimeError(f"attempt {attempts[0]}")

    enq = pool.enqueuer(redis_url)
    job = enq.enqueue("flaky", {})
    start(pools, pool, redis_url)
    res = enq.wait(job.id, timeout=30)
    assert res.state == "dead" and res.error == "RuntimeError: attempt 2"
    assert attempts[0] == 2
    enq.close()


def test_retrying_state_carries_the_last_error(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job(result_ttl=60, max_fails=5, backoff=lambda job: 3600)
    def later(job: forkq.Job) -> None:
        raise ValueError("not yet")

    job = pool.enqueuer(redis_url).enqueue("later", {})
    start(pools, pool, redis_url)
    with forkq.Client(redis_url, NS) as c:
        got = wait_for(lambda: (x := c.result(job.id)) and x.state == "retrying" and x, 10, message="retrying")
        assert got.error == "ValueError: not yet"
        assert c.cancel(job.id) is True
        assert c.result(job.id).state == "cancelled"  # type: ignore[union-attr]


def test_non_json_return_value_fails_the_job_with_a_clear_error(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job(result_ttl=60, max_fails=1)
    def gives_a_set(job: forkq.Job) -> set:
        return {1, 2}

    enq = pool.enqueuer(redis_url)
    job = enq.enqueue("gives_a_set", {})
    start(pools, pool, redis_url)
    res = enq.wait(job.id, timeout=20)
    assert res.state == "dead"
    assert res.error is not None and "ResultNotSerializable" in res.error and "set" in res.error
    enq.close()


def test_result_expires_after_its_ttl_and_jobs_without_one_write_nothing(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job(result_ttl=1)
    def brief(job: forkq.Job) -> int:
        return 1

    @pool.job
    def plain(job: forkq.Job) -> int:
        return 2

    enq = pool.enqueuer(redis_url)
    b = enq.enqueue("brief", {})
    p = enq.enqueue("plain", {})
    start(pools, pool, redis_url)
    assert enq.wait(b.id, timeout=20).result == 1
    wait_for(lambda: r.llen(K.queue("plain")) == 0 and not r.hlen(K.inprogress(pools[0].runtime.identity)),
             10, message="plain ran")
    assert r.exists(K.result(p.id), K.result_notify(p.id)) == 0
    with forkq.Client(redis_url, NS) as c:
        assert c.result(p.id) is None
        t0 = time.monotonic()
        wait_for(lambda: c.result(b.id) is None, 10, message="result expired")
        assert time.monotonic() - t0 < 10
    with pytest.raises(TimeoutError):
        enq.wait(b.id, timeout=0.1)
    enq.close()


def test_result_verb_prints_state_and_result_and_exits_one_when_unknown(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job(result_ttl=60)
    def answer(job: forkq.Job) -> dict:
        return {"n": 42}

    enq = pool.enqueuer(redis_url)
    job = enq.enqueue("answer", {})
    out, err = io.StringIO(), io.StringIO()
    assert admin_cli.run(["result", "--redis", redis_url, "-n", NS, job.id], out, err) == 0
    assert out.getvalue() == f"{job.id} queued\n"
    start(pools, pool, redis_url)
    enq.wait(job.id, timeout=20)
    enq.close()
    out, err = io.StringIO(), io.StringIO()
    assert admin_cli.run(["result", "--redis", redis_url, "-n", NS, "--json", job.id], out, err) == 0
    assert orjson.loads(out.getvalue()) == {"jid": job.id, "state": "succeeded", "result": {"n": 42},
                                            "error": None}
    out, err = io.StringIO(), io.StringIO()
    assert admin_cli.run(["result", "--redis", redis_url, "-n", NS, "nope"], out, err) == 1
    assert err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue()


def test_result_ttl_is_validated() -> None:
    with pytest.raises(forkq.ConfigError, match="result_ttl"):
        forkq.JobOptions(result_ttl=0)
    with pytest.raises(forkq.ConfigError, match="result_ttl"):
        forkq.JobOptions(result_ttl=1.5)  # type: ignore[arg-type]
