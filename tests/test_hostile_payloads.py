"""Payloads from other producers never crash, stall or hide anything (issue 10's findings).

Each test reproduces one finding on a real Redis, most through the real CLI,
and proves the fixed behaviour: bad entries end in ``dead`` with a reason,
good work keeps flowing, the master keeps running.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis
from helpers import Recorder, start
from redis_server import wait_for
from test_master import (
    KEYS,
    ForkqProc,
    identity_of,
    inprogress_total,
    live_identities,
    start_forkq,
    wait_children_ready,
    write_jobs,
)

import forkq
from forkq import job as jobcodec
from forkq.keys import Keys

NS = "hp"
K = Keys(NS)


def dead_entries(r: redis.Redis, keys: Keys = KEYS) -> list[dict]:
    return [orjson.loads(m) for m in r.zrange(keys.dead, 0, -1)]


def bad_payload(**fields: object) -> bytes:
    data = {"jid": jobcodec.new_jid(), "class": "record", "queue": "record", "args": [{}],
            "created_at": time.time(), "enqueued_at": time.time()}
    data.update(fields)
    return orjson.dumps(data)


# -- 1. a wrong-typed field in a dead child's in-progress job ---------------------------

def test_wrong_typed_recovered_field_of_a_dead_childs_job_goes_to_dead_and_the_master_lives(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    (pid,) = wait_children_ready(f, r, 1)
    ident = identity_of(r, pid)
    # What a pool holds when it took a job whose producer wrote "recovered": "abc".
    r.hset(KEYS.inprogress(ident), "bad1", bad_payload(recovered="abc"))
    os.kill(pid, signal.SIGKILL)
    entries = wait_for(lambda: dead_entries(r), 15, message="the malformed entry in dead")
    assert entries[0]["error_class"] == "MalformedPayload"
    assert "'recovered' is str 'abc'" in entries[0]["error_message"]
    assert '"recovered":"abc"' in entries[0]["raw"]
    wait_children_ready(f, r, 1)        # replaced, and the master is still there
    assert f.proc.poll() is None
    # And it still runs work.
    forkq.Enqueuer(redis_url, KEYS.namespace).enqueue("record", {})
    wait_for(lambda: r.hlen("test:runs") == 1, 15, message="a job after the recovery")


def test_restarted_master_recovers_an_orphan_with_a_wrong_typed_field_instead_of_crash_looping(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    # A pool that died with that job: no beat record, only its in-progress hash.
    r.hset(KEYS.inprogress("deadhost:1:abc"), "bad1", bad_payload(recovered="abc"))
    r.hset(KEYS.inprogress("deadhost:1:abc"), "good1", bad_payload())
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    wait_for(lambda: dead_entries(r), 20, message="the malformed orphan in dead")
    wait_for(lambda: r.hlen("test:runs") == 1, 20, message="the good orphan ran")
    assert f.proc.poll() is None
    assert r.hlen(KEYS.inprogress("deadhost:1:abc")) == 0


# -- 2. wrong-typed fields in queued jobs never stall a pool ----------------------------

@pytest.mark.parametrize("field", [
    {"enqueued_at": "yesterday"}, {"retry_count": "3"}, {"created_at": [1]},
    {"unique": "yes"}, {"queue": 7}, {"recovered": -2}, {"failed_at": -1.0},
])
def test_wrong_typed_fields_go_to_dead_and_every_thread_keeps_working(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list, field: dict) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    seen = Recorder()

    @pool.job
    def record(job: forkq.Job) -> None:
        seen.add(job.arg_int("n"))

    # As many bad entries as threads: each used to take a thread slot for good.
    for _ in range(4):
        r.lpush(K.queue("record"), bad_payload(**field))
    start(pools, pool, redis_url, concurrency=4)
    wait_for(lambda: r.zcard(K.dead) == 4, 10, message="4 bad entries in dead")
    enq = pool.enqueuer(redis_url)
    enq.enqueue_many("record", [{"n": i} for i in range(50)])
    wait_for(lambda: len(seen) == 50, 15, message="50 good jobs after the bad ones")
    name = next(iter(field))
    assert all(e["error_class"] == "MalformedPayload" and repr(name) in e["error_message"]
               for e in dead_entries(r, K))
    wait_for(lambda: r.hlen(K.inprogress(pool.runtime.identity)) == 0, 5, message="nothing held")


# -- 3. a unique job's recovery never makes a second copy -------------------------------

UNIQUE_JOBS = '''
@pool.job
def once(job):
    R().hincrby("test:starts", job.id, 1)
    _pause(job.arg_float("s"))
    R().hincrby("test:runs", job.id, 1)
'''


def test_killed_child_running_a_unique_job_does_not_leave_two_copies_queued(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, UNIQUE_JOBS)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "1"])
    (pid,) = wait_children_ready(f, r, 1)
    enq = forkq.Enqueuer(redis_url, KEYS.namespace)
    first = enq.enqueue_unique("once", {"s": 30})
    assert first is not None
    wait_for(lambda: r.hlen("test:starts") == 1, 10, message="the unique job running")
    # Its guard went when it started, so a second copy may queue (gocraft's semantics).
    assert enq.enqueue_unique("once", {"s": 30}) is not None
    assert r.llen(KEYS.queue("once")) == 1
    ident = identity_of(r, pid)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: ident not in live_identities(r), 10, message="the killed pool released")
    (pid2,) = wait_children_ready(f, r, 1)
    assert pid2 != pid
    wait_for(lambda: not r.exists(KEYS.inprogress(ident)), 10, message="the dead pool released")
    # The recovered copy either found the guard held by the queued copy and was
    # dropped, or (the new child took the queued copy first) retook the guard and
    # queued: never two copies waiting, never none.
    assert r.llen(KEYS.queue("once")) <= 1
    assert r.llen(KEYS.queue("once")) + inprogress_total(r) >= 1
    assert r.zcard(KEYS.dead) == 0


def test_recovered_unique_job_retakes_its_guard_when_no_copy_is_queued(
        redis_url: str, r: redis.Redis) -> None:
    from forkq import reaper

    cfg = forkq.Config()
    enq = forkq.Enqueuer(redis_url, NS)
    job = enq.enqueue_unique("solo", {"a": 1})
    assert job is not None
    payload = r.rpop(K.queue("solo"))
    guard = jobcodec.unique_guard_of(jobcodec.decode(payload), K)
    assert guard is not None
    r.delete(guard)                          # released when a worker took it
    r.hset(K.inprogress("gone:1:x"), job.id, payload)
    assert reaper.recover_inprogress(r, K, "gone:1:x", cfg) == (1, 0)
    assert r.llen(K.queue("solo")) == 1
    assert r.get(guard) == job.id.encode()   # guarded again while queued
    assert enq.enqueue_unique("solo", {"a": 1}) is None


def test_unique_key_outside_the_namespace_is_never_written(redis_url: str, r: redis.Redis) -> None:
    from forkq import reaper

    payload = bad_payload(**{"class": "solo", "queue": "solo", "unique": True,
                             "unique_key": "someone-else:important"})
    r.hset(K.inprogress("gone:1:y"), "j", payload)
    assert reaper.recover_inprogress(r, K, "gone:1:y", forkq.Config()) == (1, 0)
    assert not r.exists("someone-else:important")
    assert r.llen(K.queue("solo")) == 1


# -- 4. "recovered" inside args is not a suspect ----------------------------------------

def test_recovered_text_inside_args_does_not_serialise_jobs(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    running = [0]
    peak = [0]
    lock = threading.Lock()

    @pool.job
    def nap(job: forkq.Job) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1

    enq = pool.enqueuer(redis_url)
    enq.enqueue_many("nap", [{"recovered": 5} for _ in range(8)])
    start(pools, pool, redis_url, concurrency=8)
    wait_for(lambda: r.llen(K.queue("nap")) == 0 and running[0] == 0 and peak[0] > 0, 15,
             message="all 8 ran")
    assert peak[0] >= 4, f"jobs with 'recovered' in their args ran {peak[0]} at a time"


# -- 6. async handlers run for real; a coroutine that did not run is never a success ----

def test_async_def_handler_is_accepted_and_marked_async() -> None:
    pool = forkq.WorkerPool(NS)

    async def fetch_page(job: forkq.Job) -> None:  # pragma: no cover - run in test_aio.py
        pass

    pool.register("fetch_page", fetch_page)
    assert pool.jobs["fetch_page"].is_async


def test_handler_returning_a_coroutine_fails_instead_of_succeeding(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    async def real() -> None:  # pragma: no cover - never awaited
        pass

    @pool.job(max_fails=1)
    def wrapper(job: forkq.Job):  # type: ignore[no-untyped-def]
        return real()

    pool.enqueuer(redis_url).enqueue("wrapper", {})
    start(pools, pool, redis_url)
    (entry,) = wait_for(lambda: dead_entries(r, K), 10, message="the job in dead")
    assert entry["error_class"] == "TypeError" and "returned an awaitable" in entry["error_message"]
    assert r.get(K.stat_processed) in (None, b"1")


# -- failures are visible --------------------------------------------------------------

def test_failed_job_logs_a_warning_and_keeps_its_backtrace_in_the_retry_entry(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list,
        caplog: pytest.LogCaptureFixture) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    def deep_helper() -> None:
        raise ValueError("card declined")

    @pool.job
    def charge(job: forkq.Job) -> None:
        deep_helper()

    caplog.set_level(logging.WARNING, logger="forkq.executor")
    job = pool.enqueuer(redis_url).enqueue("charge", {"amount": 5})
    start(pools, pool, redis_url)
    (member,) = wait_for(lambda: r.zrange(K.retry, 0, -1), 10, message="the retry entry")
    data = jobcodec.decode(member)
    lines = jobcodec.backtrace_of(data)
    assert lines is not None and "deep_helper" in lines[0] and "charge" in lines[1]
    assert lines[0].startswith(__file__)
    warned = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert any("charge" in m and job.id in m and "ValueError: card declined" in m
               and "deep_helper" in m and "retry in" in m for m in warned), warned


def test_backtrace_is_stored_in_sidekiqs_compressed_form() -> None:
    import base64
    import zlib

    text = jobcodec.compress_backtrace(["a.py:1:in `f'", "b.py:2:in `g'"])
    assert orjson.loads(zlib.decompress(base64.b64decode(text))) == ["a.py:1:in `f'", "b.py:2:in `g'"]
    assert jobcodec.backtrace_of({"error_backtrace": text}) == ["a.py:1:in `f'", "b.py:2:in `g'"]
    assert jobcodec.backtrace_of({"error_backtrace": ["raw", "list"]}) == ["raw", "list"]
    assert jobcodec.backtrace_of({"error_backtrace": "not base64!"}) is None


# -- values JSON cannot carry are refused at enqueue ------------------------------------

@pytest.mark.parametrize(("args", "fragment"), [
    ({"f": float("nan")}, "nan"),
    ({"nested": [1, {"x": float("inf")}]}, "nested[1].x"),
    ({"when": datetime.datetime(2026, 1, 1)}, "datetime"),
    ({"day": datetime.date(2026, 1, 1)}, "date"),
    ({"s": {1, 2}}, "set"),
])
def test_values_json_cannot_carry_are_refused_at_enqueue_and_nothing_is_written(
        redis_url: str, r: redis.Redis, args: dict, fragment: str) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    with pytest.raises(TypeError, match="not JSON-serialisable") as info:
        enq.enqueue("x", args)
    assert fragment in str(info.value)
    assert r.llen(K.queue("x")) == 0


def test_null_values_still_enqueue() -> None:
    assert jobcodec.encode({"a": None, "b": [None, 1.5]}) == b'{"a":null,"b":[null,1.5]}'


def test_job_repr_is_bounded_for_huge_arguments() -> None:
    job = jobcodec.Job(name="big", id="j1", args={"blob": "x" * 600_000}, data={})
    assert len(repr(job)) < 400


def test_sidekiq_8_millisecond_timestamps_are_read_as_seconds() -> None:
    data = jobcodec.decode(orjson.dumps({"jid": "a", "class": "c", "args": [],
                                         "enqueued_at": 1_764_000_000_123}))
    assert jobcodec.Job.from_data(data).enqueued_at == pytest.approx(1_764_000_000.123)
    data = jobcodec.decode(orjson.dumps({"jid": "a", "class": "c", "args": [],
                                         "enqueued_at": 1_764_000_000.5}))
    assert jobcodec.Job.from_data(data).enqueued_at == 1_764_000_000.5


# -- operator mistakes -----------------------------------------------------------------

def test_periodic_job_with_no_handler_is_refused_at_start_unless_forced(
        redis_url: str, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job
    def real(job: forkq.Job) -> None:
        pass

    pool.periodically_enqueue("0 * * * * *", "nosuchjob")
    with pytest.raises(forkq.ConfigError, match="'nosuchjob'.*no handler"):
        pool.start(redis_url)
    forced = forkq.WorkerPool(NS + "2", config=fast_config)
    forced.register("real", real)
    forced.periodically_enqueue("0 * * * * *", "elsewhere", force=True)
    start(pools, forced, redis_url)


def test_bad_cron_spec_error_names_the_users_line(tmp_path: Path, redis_url: str) -> None:
    import subprocess

    (tmp_path / "badcron.py").write_text(
        "import forkq\npool = forkq.WorkerPool('bc')\n\n@pool.job\ndef t(job):\n    pass\n\n"
        "pool.periodically_enqueue('0 0 25 * * *', 't')\n")
    proc = subprocess.run([sys.executable, "-m", "forkq", "--redis", redis_url, "badcron"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 3
    line = proc.stderr.strip().splitlines()[-1]
    assert "hours field '25'" in line and "badcron.py:8" in line, proc.stderr
    assert "Traceback" not in proc.stderr


# -- 5. frozen children: noticed by the master, fenced if reaped elsewhere -------------

def test_frozen_child_is_killed_by_its_master_and_its_jobs_run_elsewhere(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, """
@pool.job
def slow_rec(job):
    R().hset("test:recovered", job.id, job.data.get("recovered") or 0)
    slow(job)
""")
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"],
                    env={"FORKQ_FROZEN_AFTER": "2"})
    (pid,) = wait_children_ready(f, r, 1)
    (jid,) = forkq.Enqueuer(redis_url, KEYS.namespace).enqueue_many("slow_rec", [{"s": 1.0}])
    wait_for(lambda: r.hget("test:starts", jid.id) == b"1", 10, message="the job started")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: not psutil_exists(pid), 20, message="the frozen child killed")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    wait_for(lambda: r.hget("test:runs", jid.id) == b"1", 20, message="the job ran elsewhere")
    assert int(r.hget("test:pids", jid.id)) != pid
    assert "sent no status" in f.log() and "is stopped" in f.log()
    # The master killed it, not the job: the job is not counted towards poison.
    assert r.hget("test:recovered", jid.id) == b"0"


def test_child_reaped_elsewhere_while_frozen_stops_at_its_next_round_trip(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    from forkq import reaper

    mod = write_jobs(tmp_path)
    # The master would kill it first; here another host's reaper is faster.
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"],
                    env={"FORKQ_FROZEN_AFTER": "600"})
    (pid,) = wait_children_ready(f, r, 1)
    short, long_ = forkq.Enqueuer(redis_url, KEYS.namespace).enqueue_many(
        "slow", [{"s": 0.5}, {"s": 8.0}])
    wait_for(lambda: r.hlen("test:starts") == 2, 10, message="both jobs started")
    ident = identity_of(r, pid)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert reaper.release_pool(r, KEYS, ident, forkq.Config()) == (2, 0)
    finally:
        os.kill(pid, signal.SIGCONT)
    # Resumed: the short job's ack (or a fetch) meets the fence and the child exits
    # at once, without finishing the long job its new owner runs.
    wait_for(lambda: not psutil_exists(pid), 10, message="the fenced child gone")
    wait_for(lambda: r.hget("test:runs", long_.id) == b"1", 30, message="the long job ran once")
    assert int(r.hget("test:pids", long_.id)) != pid
    wait_for(lambda: r.hget("test:runs", short.id) is not None, 10, message="the short job ran")
    assert "fenced" in f.log()
    wait_for(lambda: inprogress_total(r) == 0, 10, message="nothing left in progress")


def psutil_exists(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- 7. processes forked by jobs; 8. jobs that close fds 0-2 ---------------------------

FORKING_JOBS = '''
@pool.job
def fork_and_return(job):
    pid = os.fork()
    if pid == 0:
        R.__globals__["_conns"].clear()          # the copy needs its own connection
        R().hset("test:forked", job.id, os.getpid())
        return                                   # back into forkq's code: must end here
    R().hincrby("test:runs", job.id, 1)


@pool.job
def fork_quick_exit(job):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    R().hset("test:forked", job.id, pid)         # never waited for by the job
    R().hincrby("test:runs", job.id, 1)


@pool.job
def fork_forever(job):
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(0.1)
    R().hset("test:forked", job.id, pid)
    R().hincrby("test:runs", job.id, 1)


@pool.job
def close_stdio(job):
    for fd in (0, 1, 2):
        os.close(fd)
    R().hincrby("test:runs", job.id, 1)


@pool.job(max_fails=1)
def fail_loudly(job):
    raise RuntimeError("visible failure " + job.id)
'''


def _gone(pid: int) -> bool:
    return not psutil_exists(pid) and not _zombie(pid)


def _zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_processes_forked_by_jobs_neither_hang_nor_stay_zombies_nor_outlive_the_child(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, FORKING_JOBS)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    (child,) = wait_children_ready(f, r, 1)
    enq = forkq.Enqueuer(redis_url, KEYS.namespace)
    back = enq.enqueue("fork_and_return", {})
    quick = enq.enqueue("fork_quick_exit", {})
    wait_for(lambda: r.hlen("test:runs") == 2 and r.hlen("test:forked") == 2, 10,
             message="both jobs ran and forked")
    copy_pid = int(r.hget("test:forked", back.id))
    quick_pid = int(r.hget("test:forked", quick.id))
    # The copy that returned into forkq's code ended there (it used to hang forever),
    # and the one that exited was waited for (it used to stay a zombie).
    wait_for(lambda: _gone(copy_pid), 10, message="the returned copy gone")
    wait_for(lambda: _gone(quick_pid), 10, message="the exited copy reaped")
    forever = enq.enqueue("fork_forever", {})
    wait_for(lambda: r.hget("test:forked", forever.id) is not None, 10, message="forked again")
    forever_pid = int(r.hget("test:forked", forever.id))
    assert psutil_exists(forever_pid)
    os.kill(child, signal.SIGKILL)
    # It dies with the process that forked it, instead of outliving the forkq tree.
    wait_for(lambda: _gone(forever_pid), 10, message="the forked process died with its parent")
    assert f.proc.poll() is None


def test_a_job_closing_fds_0_to_2_cannot_make_forkq_write_into_redis(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, FORKING_JOBS)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    wait_children_ready(f, r, 1)
    enq = forkq.Enqueuer(redis_url, KEYS.namespace)
    enq.enqueue("close_stdio", {})
    wait_for(lambda: r.hlen("test:runs") == 1, 10, message="the job that closes 0-2 ran")
    # New sockets now get the lowest free fds: make every forkq connection reconnect.
    r.client_kill_filter(_type="normal", skipme=True)
    failing = enq.enqueue("fail_loudly", {})
    good = enq.enqueue_many("record", [{} for _ in range(20)])
    wait_for(lambda: all(r.hexists("test:runs", j.id) for j in good), 20, message="good jobs")
    wait_for(lambda: r.zcard(KEYS.dead) == 1, 10, message="the failure in dead")
    # forkq's log line for the failure still reached stderr, not a Redis socket.
    wait_for(lambda: f"visible failure {failing.id}" in f.log(), 10, message="the WARNING line")
    assert "Protocol error" not in f.log()


# -- 9. innocent jobs are not buried as poison by outside SIGKILLs ----------------------

SELF_KILLING = '''
import signal as _signal


@pool.job
def kills_itself(job):
    R().hincrby("test:starts", job.id, 1)
    os.kill(os.getpid(), _signal.SIGKILL)
'''


@pytest.mark.slow
def test_innocent_unique_jobs_under_frequent_outside_sigkills_never_end_as_poison(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    import random

    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"],
                    env={"FORKQ_STALE_AFTER": "600", "FORKQ_LOG_LEVEL": "WARNING"})
    wait_children_ready(f, r, 2)
    enq = forkq.Enqueuer(redis_url, KEYS.namespace)
    jobs = [enq.enqueue_unique("slow", {"s": 0.3, "i": i}) for i in range(300)]
    want = {j.id for j in jobs if j is not None}
    rnd = random.Random(9)
    kills = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30 and len(set(runs_of(r)) & want) < len(want):
        kids = sorted(f.child_pids())
        if kids:
            try:
                os.kill(rnd.choice(kids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    wait_for(lambda: set(runs_of(r)) >= want, 120, message="every job completed")
    poison = [e for e in dead_entries(r) if e.get("error_class") == "Poison"]
    print(f"\nPOISON-UNDER-KILLS: jobs={len(want)} kills={kills} buried={len(poison)}")
    assert kills >= 50
    assert poison == []
    assert f.proc.poll() is None


def runs_of(r: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall("test:runs").items()}


def test_a_job_every_child_takes_at_boot_and_dies_of_is_not_a_boot_failure(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    """The job waits before the master starts, and is requeued to run next, so every
    child takes it in its first fetch, within its start.  Each death is the job's: five
    deaths counted as children that could not boot would stop the whole service (CI saw
    "children keep dying at boot (5 in a row)" when the ready report came after the
    first fetch)."""
    mod = write_jobs(tmp_path, SELF_KILLING)
    job = forkq.Enqueuer(redis_url, KEYS.namespace).enqueue("kills_itself", {})
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    (entry,) = wait_for(lambda: dead_entries(r), 90, message="the self-killing job buried")
    assert entry["jid"] == job.id and "SIGKILLed 10 times" in entry["error_message"]
    assert int(r.hget("test:starts", job.id)) == 10
    assert f.proc.poll() is None, f.log()
    assert "died at boot" not in f.log()
    wait_children_ready(f, r, 1)
    assert f.stop() == 0


def test_a_job_that_sigkills_its_own_child_still_ends_as_poison(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, SELF_KILLING)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    wait_children_ready(f, r, 1)
    job = forkq.Enqueuer(redis_url, KEYS.namespace).enqueue("kills_itself", {})
    (entry,) = wait_for(lambda: dead_entries(r), 90, message="the self-killing job buried")
    assert entry["jid"] == job.id and entry["error_class"] == "Poison"
    assert "SIGKILLed 10 times" in entry["error_message"]
    assert int(r.hget("test:starts", job.id)) == 10
    assert f.proc.poll() is None, f.log()
    assert "died at boot" not in f.log()
