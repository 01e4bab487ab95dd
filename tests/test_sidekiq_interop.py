"""Sidekiq interop, proven with the real thing: Debian's ruby-sidekiq 6.4 and
ruby-redis-namespace read and write forkq's Redis (namespace ``{ns}``).

The Ruby side lives in tests/sidekiq/: ``sidekiq_tool.rb`` (Sidekiq's API: Stats,
ProcessSet, Workers, Queue, RetrySet, ScheduledSet, DeadSet, Client.push, retry)
and ``web_pages.rb`` (pages of Sidekiq's Web UI rendered as a Rack app).
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import Recorder
from redis_server import wait_for

import forkq
from forkq import scheduler
from forkq.keys import Keys

HERE = Path(__file__).resolve().parent / "sidekiq"
NS = "skq"
RUBY_NS = "{" + NS + "}"
K = Keys(NS)
RUBY_TIMEOUT = 120


def _ruby_problem() -> str | None:
    ruby = shutil.which("ruby")
    if ruby is None:
        return "ruby is not installed (apt-get install ruby ruby-sidekiq ruby-redis-namespace)"
    probe = subprocess.run([ruby, "-e", 'require "sidekiq/api"; require "redis-namespace"'],
                           capture_output=True, text=True, timeout=RUBY_TIMEOUT)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return ("Ruby Sidekiq is not available (apt-get install ruby-sidekiq ruby-redis-namespace): "
                + last)
    return None


_PROBLEM = _ruby_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")


def ruby(script: str, url: str, *args: str) -> Any:
    """Run one of the Ruby scripts; return its JSON output (fail the test on error)."""
    proc = subprocess.run(["ruby", str(HERE / script), url, RUBY_NS, *args],
                          capture_output=True, text=True, timeout=RUBY_TIMEOUT)
    if proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def sidekiq(url: str, *args: str) -> Any:
    return ruby("sidekiq_tool.rb", url, *args)


# -- a forkq deployment in a known state ---------------------------------------------------

@dataclass
class Scene:
    pool: forkq.WorkerPool
    identity: str
    release: threading.Event
    ids: dict[str, str]
    waiting: list[str]
    scheduled_at: float


@pytest.fixture
def scene(r: redis.Redis, redis_url: str, fast_config: forkq.Config,
          pools: list[forkq.WorkerPool]) -> Iterator[Scene]:
    """A live pool (concurrency 3) with: 3 successes, one job in retry, one in dead, one
    running (blocked), one scheduled an hour ahead, two waiting on a queue nobody serves."""
    pool = forkq.WorkerPool(NS, config=fast_config)
    running = threading.Event()
    release = threading.Event()

    @pool.job
    def ok(job: forkq.Job) -> None:
        pass

    @pool.job
    def flaky(job: forkq.Job) -> None:
        raise KeyError("retry me")

    @pool.job(max_fails=1)
    def doomed(job: forkq.Job) -> None:
        raise ValueError("to the dead")

    @pool.job
    def blocker(job: forkq.Job) -> None:
        running.set()
        while not release.wait(0.01):
            pass

    enq = pool.enqueuer(redis_url)
    ids = {
        "ok": enq.enqueue_many("ok", [{"i": i} for i in range(3)])[0].id,
        "flaky": enq.enqueue("flaky", {"b": 2}).id,
        "doomed": enq.enqueue("doomed", {"a": 1}).id,
        "blocker": enq.enqueue("blocker", {"c": 3}).id,
    }
    scheduled = enq.enqueue_in("ok", 3600, {"later": True})
    ids["scheduled"] = scheduled.job.id
    waiting = [enq.enqueue("nobody_serves", {"n": n}).id for n in range(2)]
    pool.start(redis_url, concurrency=3)
    pools.append(pool)
    rt = pool.runtime
    assert rt is not None
    try:
        assert running.wait(10)
        wait_for(lambda: r.zcard(K.retry) == 1 and r.zcard(K.dead) == 1, timeout=10,
                 message="one job in retry, one in dead")
        # A beat after all that: counters flushed, the running job in <identity>:workers.
        wait_for(lambda: int(r.get(K.stat_processed) or 0) == 5
                 and r.hlen(K.process_workers(rt.identity)) == 1, timeout=10,
                 message="stats flushed and the running job published")
        yield Scene(pool=pool, identity=rt.identity, release=release, ids=ids, waiting=waiting,
                    scheduled_at=scheduled.run_at)
    finally:
        release.set()


def test_sidekiq_stats_count_forkq_jobs_processes_and_sets(scene: Scene, redis_url: str) -> None:
    stats = sidekiq(redis_url, "read")["stats"]
    assert stats == {
        "processed": 5, "failed": 2, "processed_today": 5, "failed_today": 2,
        "enqueued": 2, "retry_size": 1, "dead_size": 1, "scheduled_size": 1,
        "processes_size": 1, "workers_size": 1,
        "queues": {"nobody_serves": 2, "ok": 0, "flaky": 0, "doomed": 0, "blocker": 0},
    }


def test_sidekiq_process_set_and_workers_show_a_live_forkq_pool_and_its_running_job(
        scene: Scene, redis_url: str) -> None:
    out = sidekiq(redis_url, "read")
    [proc] = out["processes"]
    assert proc["identity"] == scene.identity
    assert proc["pid"] == os.getpid()
    assert proc["concurrency"] == 3 and out["total_concurrency"] == 3
    assert proc["busy"] == 1
    assert proc["queues"] == ["blocker", "doomed", "flaky", "ok"]
    assert proc["stopping"] is False and proc["labels"] == ["forkq"]
    assert proc["rss"] > 0
    assert abs(proc["beat"] - time.time()) < 600 and proc["started_at"] <= proc["beat"]
    [work] = out["workers"]
    assert out["workers_size"] == 1
    assert work["process"] == scene.identity and work["queue"] == "blocker"
    payload = work["payload"]
    assert (payload["jid"], payload["class"], payload["args"]) == (scene.ids["blocker"], "blocker", [{"c": 3}])
    assert isinstance(work["run_at"], int)

    # A quiet pool (TSTP; running jobs finish, nothing new is taken) is "stopping" for Sidekiq.
    rt = scene.pool.runtime
    assert rt is not None
    rt.quiet()
    [quiet] = sidekiq(redis_url, "read")["processes"]
    assert (quiet["identity"], quiet["quiet"], quiet["stopping"]) == (scene.identity, "true", True)

    # Once the pool stops, Sidekiq sees no process and no work.
    scene.release.set()
    scene.pool.stop(timeout=5)
    after = sidekiq(redis_url, "read")
    assert after["processes"] == [] and after["workers"] == []
    assert after["stats"]["processes_size"] == 0 and after["stats"]["processed"] == 6


def test_sidekiq_queue_lists_forkq_jobs_with_class_args_jid_and_latency(
        scene: Scene, r: redis.Redis, redis_url: str) -> None:
    before = time.time()
    out = sidekiq(redis_url, "read")
    after = time.time()
    queues = {q["name"]: q for q in out["queues"]}
    assert set(queues) == {"nobody_serves", "ok", "flaky", "doomed", "blocker"}
    q = queues["nobody_serves"]
    assert q["size"] == 2
    # Sidekiq lists a queue newest first (LPUSH end).
    assert [j["jid"] for j in q["jobs"]] == scene.waiting[::-1]
    assert [j["class"] for j in q["jobs"]] == ["nobody_serves"] * 2
    assert [j["args"] for j in q["jobs"]] == [[{"n": 1}], [{"n": 0}]]
    # Latency is measured from the oldest job's enqueued_at, as Sidekiq does.
    oldest = orjson.loads(r.lindex(K.queue("nobody_serves"), -1))
    assert before <= oldest["enqueued_at"] + q["latency"] <= after
    assert queues["ok"]["size"] == 0 and queues["ok"]["latency"] == 0


def test_sidekiq_retry_scheduled_and_dead_sets_show_forkq_entries(scene: Scene, redis_url: str) -> None:
    out = sidekiq(redis_url, "read")
    [retry] = out["retry"]
    assert (retry["jid"], retry["class"], retry["queue"], retry["args"]) == (
        scene.ids["flaky"], "flaky", "flaky", [{"b": 2}])
    assert (retry["error_class"], retry["error_message"], retry["retry_count"]) == ("KeyError", "'retry me'", 0)
    assert retry["error"] is True and retry["at"] > time.time()
    [dead] = out["dead"]
    assert (dead["jid"], dead["class"], dead["args"]) == (scene.ids["doomed"], "doomed", [{"a": 1}])
    assert (dead["error_class"], dead["error_message"]) == ("ValueError", "to the dead")
    [sched] = out["scheduled"]
    assert (sched["jid"], sched["class"], sched["args"]) == (scene.ids["scheduled"], "ok", [{"later": True}])
    assert sched["at"] == pytest.approx(scene.scheduled_at) and sched["error"] is False


def test_sidekiq_web_ui_renders_forkq_data(scene: Scene, redis_url: str) -> None:
    paths = ["/", "/busy", "/queues", "/queues/nobody_serves", "/retries", "/scheduled", "/morgue",
             "/stats"]
    pages = ruby("web_pages.rb", redis_url, *paths)
    assert {p: pages[p]["status"] for p in paths} == {p: 200 for p in paths}
    busy = pages["/busy"]["body"]
    assert scene.identity.split(":")[0] in busy and scene.ids["blocker"] in busy
    assert "nobody_serves" in pages["/queues"]["body"]
    assert all(jid in pages["/queues/nobody_serves"]["body"] for jid in scene.waiting)
    assert scene.ids["flaky"] in pages["/retries"]["body"] and "KeyError" in pages["/retries"]["body"]
    assert scene.ids["doomed"] in pages["/morgue"]["body"] and "ValueError" in pages["/morgue"]["body"]
    assert scene.ids["scheduled"] in pages["/scheduled"]["body"]
    sidekiq_stats = json.loads(pages["/stats"]["body"])["sidekiq"]
    assert (sidekiq_stats["processed"], sidekiq_stats["failed"], sidekiq_stats["busy"],
            sidekiq_stats["processes"], sidekiq_stats["enqueued"]) == (5, 2, 1, 1, 2)


# -- Ruby writes, forkq runs ---------------------------------------------------------------

def test_job_pushed_by_sidekiq_client_is_run_by_forkq(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    seen = Recorder()

    @pool.job
    def forkq_job_name(job: forkq.Job) -> None:
        seen.add((job.id, job.args, job.positional_args))

    pool.start(redis_url, concurrency=2)
    pools.append(pool)
    # Sidekiq only LPUSHes (no wake message): forkq's idle poll finds the jobs.
    kw = sidekiq(redis_url, "push", "forkq_job_name", "forkq_job_name", '[{"k": 1}]')["jid"]
    pos = sidekiq(redis_url, "push", "forkq_job_name", "forkq_job_name", '[1, "two"]')["jid"]
    wait_for(lambda: len(seen) == 2, timeout=20, message="forkq to run both Sidekiq pushes")
    assert sorted(seen.snapshot()) == sorted([(kw, {"k": 1}, []), (pos, {}, [1, "two"])])
    pool.drain(10)
    assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0
    assert r.sismember(K.queues, "forkq_job_name")


def test_job_scheduled_by_sidekiq_client_runs_in_forkq_when_due(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    seen = Recorder()

    @pool.job
    def later(job: forkq.Job) -> None:
        seen.add((job.id, job.args))

    pool.start(redis_url, concurrency=2)
    pools.append(pool)
    jid = sidekiq(redis_url, "push_in", "1", "later", "later", '[{"k": 2}]')["jid"]
    [member] = r.zrange(K.schedule, 0, -1)  # Sidekiq wrote it to forkq's schedule set
    assert orjson.loads(member)["jid"] == jid
    wait_for(lambda: len(seen) == 1, timeout=20, message="forkq to promote and run the Sidekiq job")
    assert seen.snapshot() == [(jid, {"k": 2})]
    assert r.zcard(K.schedule) == 0


def test_retry_entry_retried_from_sidekiq_runs_again_in_forkq(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    attempts = Recorder()

    @pool.job
    def second_time_lucky(job: forkq.Job) -> None:
        attempts.add((job.id, job.fails))
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    job = pool.enqueuer(redis_url).enqueue("second_time_lucky", {"x": 1})
    pool.start(redis_url, concurrency=2)
    pools.append(pool)
    wait_for(lambda: r.zcard(K.retry) == 1, timeout=10, message="the failure in retry")
    # The backoff puts the retry >= 15 s ahead: only Sidekiq's "retry now" runs it sooner.
    assert sidekiq(redis_url, "retry", job.id) == {"retried": job.id}
    wait_for(lambda: len(attempts) == 2, timeout=20, message="the retried job to run in forkq")
    pool.drain(10)
    assert [jid for jid, _ in attempts.snapshot()] == [job.id, job.id]
    assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0
    assert r.hlen(K.inprogress(pool.runtime.identity)) == 0  # type: ignore[union-attr]


def test_dead_and_scheduled_entries_moved_by_sidekiq_run_in_forkq(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    runs = Recorder()

    @pool.job(max_fails=1)
    def once(job: forkq.Job) -> None:
        runs.add(job.id)
        if job.arg_bool("fail") and len([j for j in runs.snapshot() if j == job.id]) == 1:
            raise RuntimeError("dies the first time")

    enq = pool.enqueuer(redis_url)
    dying = enq.enqueue("once", {"fail": True})
    later = enq.enqueue_in("once", 3600, {"fail": False}).job
    pool.start(redis_url, concurrency=2)
    pools.append(pool)
    wait_for(lambda: r.zcard(K.dead) == 1, timeout=10, message="the job in dead")
    assert sidekiq(redis_url, "retry_dead", dying.id) == {"retried": dying.id}
    assert sidekiq(redis_url, "enqueue_scheduled", later.id) == {"enqueued": later.id}
    wait_for(lambda: len(runs) == 3, timeout=20, message="both moved jobs to run in forkq")
    pool.drain(10)
    assert sorted(runs.snapshot()) == sorted([dying.id, dying.id, later.id])
    assert r.zcard(K.dead) == 0 and r.zcard(K.schedule) == 0 and r.zcard(K.retry) == 0


def test_periodic_occurrences_show_in_sidekiq_scheduled_set_and_can_be_run_now(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    runs = Recorder()

    @pool.job
    def report(job: forkq.Job) -> None:
        runs.add(job.id)

    # Hourly, pre-scheduled two hours ahead (as a pool's housekeeper does with its horizon).
    pool.periodically_enqueue("0 0 * * * *", "report")
    assert scheduler.schedule_periodic(r, K, pool.periodic, now=time.time(), horizon=7200) >= 2
    pool.start(redis_url, concurrency=1)
    pools.append(pool)
    scheduled = sidekiq(redis_url, "read")["scheduled"]
    target = max(scheduled, key=lambda e: e["at"])  # >= 1 h away: cannot come due during the test
    hour = int(target["at"])
    assert hour % 3600 == 0 and target["class"] == "report"
    assert target["jid"] == f"periodic:report:{hour}"
    pages = ruby("web_pages.rb", redis_url, "/scheduled")
    assert pages["/scheduled"]["status"] == 200 and target["jid"] in pages["/scheduled"]["body"]
    # "Add to queue" from Sidekiq runs it now; the occurrence's guard keeps it from coming back.
    assert sidekiq(redis_url, "enqueue_scheduled", target["jid"]) == {"enqueued": target["jid"]}
    wait_for(lambda: target["jid"] in runs.snapshot(), timeout=20, message="the occurrence to run in forkq")
    assert scheduler.schedule_periodic(r, K, pool.periodic, now=time.time(), horizon=7200) == 0
    pool.drain(10)
    assert runs.snapshot().count(target["jid"]) == 1
    assert target["jid"] not in {orjson.loads(m)["jid"] for m in r.zrange(K.schedule, 0, -1)}


def test_sidekiq_deletes_a_forkq_job_from_a_queue(r: redis.Redis, redis_url: str) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    keep, drop = enq.enqueue("idle_q", {"n": 1}), enq.enqueue("idle_q", {"n": 2})
    assert sidekiq(redis_url, "delete_queue_job", "idle_q", drop.id) == {"deleted": True}
    assert [orjson.loads(p)["jid"] for p in r.lrange(K.queue("idle_q"), 0, -1)] == [keep.id]


# -- the Web UI served over HTTP by rackup, with the config.ru of docs/SIDEKIQ.md ----------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def web_ui(redis_url: str) -> Iterator[str]:
    rackup = shutil.which("rackup")
    if rackup is None:
        pytest.skip("rackup is not installed (apt-get install ruby-rack ruby-webrick)")
    port = _free_port()
    proc = subprocess.Popen([rackup, "-p", str(port), "-o", "127.0.0.1", str(HERE / "config.ru")],
                            env={**os.environ, "FORKQ_REDIS_URL": redis_url, "FORKQ_NAMESPACE": NS},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"rackup exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(base + "/stats", timeout=5) as res:
                return bool(res.status == 200)
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, interval=0.1, message="Sidekiq Web UI under rackup")
        yield base
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_retry_now_button_of_sidekiq_web_ui_runs_the_job_again_in_forkq(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool],
        web_ui: str) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    attempts = Recorder()

    @pool.job
    def web_retried(job: forkq.Job) -> None:
        attempts.add(job.id)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    job = pool.enqueuer(redis_url).enqueue("web_retried", {"x": 1})
    pool.start(redis_url, concurrency=2)
    pools.append(pool)
    wait_for(lambda: r.zcard(K.retry) == 1, timeout=10, message="the failure in retry")

    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    listing = browser.open(web_ui + "/retries", timeout=30).read().decode()
    assert job.id in listing and "RuntimeError" in listing
    [key] = set(re.findall(r'href="/retries/([^"/]+)"', listing))
    page = browser.open(f"{web_ui}/retries/{key}", timeout=30).read().decode()
    token = re.search(r"name='authenticity_token' value='([^']+)'", page)
    assert token is not None, "no CSRF token on the retry page"
    form = urllib.parse.urlencode({"authenticity_token": token.group(1), "retry": "Retry Now"}).encode()
    with browser.open(f"{web_ui}/retries/{key}", data=form, timeout=30) as res:
        assert res.status == 200  # redirected back to the retries listing
    wait_for(lambda: len(attempts) == 2, timeout=20, message="forkq to run the job the Web UI retried")
    pool.drain(10)
    assert attempts.snapshot() == [job.id, job.id]
    assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0
