"""Bad input of every kind gets a clear one-line error and loses nothing.

Cases already proved elsewhere are not repeated here (see docs/RELIABILITY.md):
malformed queue entries (tests/test_engine.py), unregistered class in a known
queue, bad job options and names at registration (tests/test_registry.py), bad
cron specs (tests/test_periodic.py), wrong argument types at the Job level
(tests/test_job.py), a 2 kB payload over a 1 kB limit, non-serialisable and
non-mapping args (tests/test_engine.py).
"""

from __future__ import annotations

import threading

import orjson
import pytest
import redis
from helpers import Recorder, start
from redis_server import wait_for

import forkq
from forkq.connection import ConnectionSpec, validate_url
from forkq.keys import Keys

NS = "bi"
K = Keys(NS)


def new_pool(config: forkq.Config) -> forkq.WorkerPool:
    return forkq.WorkerPool(NS, config=config)


def solid_pool(config: forkq.Config, seen: Recorder) -> forkq.WorkerPool:
    pool = new_pool(config)

    @pool.job
    def solid(job: forkq.Job) -> None:
        seen.add(job.arg_int("n"))
        job.arg_error()

    return pool


# -- queue entries pushed by another producer ------------------------------------------

@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "not valid JSON"),                                   # empty entry
    (b"\xff\xfe\x00garbage", "not valid JSON"),                # not UTF-8
    (b'"just a string"', "expected an object"),                # JSON scalar
    (b"null", "expected an object"),
    (b'{"jid": 5, "class": "solid", "args": []}', "'jid' is int 5"),   # jid of the wrong type
    (b'{"jid": "abc", "class": ["solid"], "args": []}', "'class' is list"),  # class of the wrong type
    (b"[" * 5000 + b"]" * 5000, "not valid JSON"),               # nesting deeper than any parser allows
])
def test_wrong_shaped_entry_goes_to_dead_with_its_reason_and_neighbours_run(
        redis_url, fast_config, pools, r, raw: bytes, reason: str) -> None:
    seen = Recorder()
    pool = solid_pool(fast_config, seen)
    enq = pool.enqueuer(redis_url)
    enq.enqueue("solid", {"n": 1})
    r.lpush(K.queue("solid"), raw)
    enq.enqueue("solid", {"n": 2})
    start(pools, pool, redis_url, concurrency=1)
    wait_for(lambda: seen.snapshot() == [1, 2], 10, message="good jobs around the bad one")
    dead = wait_for(lambda: r.zrange(K.dead, 0, -1), 5, message="dead entry")
    entry = orjson.loads(dead[0])
    assert entry["error_class"] == "MalformedPayload" and reason in entry["error_message"]
    assert "\n" not in entry["error_message"]
    assert entry["raw"] == raw.decode("utf-8", "backslashreplace")
    wait_for(lambda: r.hlen(K.inprogress(pool.runtime.identity)) == 0, 5, message="acked")


def test_wrong_arg_type_from_another_producer_retries_with_arg_error_recorded(
        redis_url, fast_config, pools, r) -> None:
    seen = Recorder()
    pool = solid_pool(fast_config, seen)
    # What a Ruby/other client might push: "n" as a string.
    r.lpush(K.queue("solid"), orjson.dumps({"jid": "f" * 24, "class": "solid", "queue": "solid",
                                            "args": [{"n": "seven"}]}))
    start(pools, pool, redis_url)
    entry = orjson.loads(wait_for(lambda: r.zrange(K.retry, 0, -1), 10, message="retry entry")[0])
    assert entry["jid"] == "f" * 24 and entry["error_class"] == "ArgError"
    assert entry["error_message"] == "argument 'n' is str 'seven', expected int"
    assert entry["args"] == [{"n": "seven"}] and entry["retry_count"] == 0


def test_jobs_pushed_for_a_name_no_pool_knows_stay_queued_untouched(redis_url, fast_config, pools, r) -> None:
    seen = Recorder()
    pool = solid_pool(fast_config, seen)
    other = forkq.Enqueuer(redis_url, NS)
    strangers = {j.id for j in other.enqueue_many("someone_elses_job", [{"i": i} for i in range(5)])}
    other.enqueue("solid", {"n": 3})
    start(pools, pool, redis_url)
    wait_for(lambda: seen.snapshot() == [3], 10, message="own job runs")
    pool.drain(10)
    left = {orjson.loads(p)["jid"] for p in r.lrange(K.queue("someone_elses_job"), 0, -1)}
    assert left == strangers and r.zcard(K.dead) == 0 and r.zcard(K.retry) == 0


def test_two_entries_sharing_a_jid_both_run(redis_url, fast_config, pools, r) -> None:
    """A producer that reuses a jid pushes two jobs; both must run (nothing merged)."""
    pool = new_pool(fast_config)
    seen = Recorder()
    gate = threading.Event()

    @pool.job
    def twin(job: forkq.Job) -> None:
        seen.add(job.arg_int("n"))
        gate.wait(10)

    for n in (1, 2):
        r.lpush(K.queue("twin"), orjson.dumps({"jid": "d" * 24, "class": "twin", "args": [{"n": n}]}))
    start(pools, pool, redis_url, concurrency=2)
    wait_for(lambda: sorted(seen.snapshot()) == [1, 2], 10, message="both twins started")
    gate.set()
    pool.drain(10)
    wait_for(lambda: r.hlen(K.inprogress(pool.runtime.identity)) == 0, 5, message="acked")


def test_two_failing_entries_sharing_a_jid_both_reach_retry(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)
    barrier = threading.Barrier(2, timeout=10)

    @pool.job(backoff=lambda job: 1000)
    def twin_fail(job: forkq.Job) -> None:
        barrier.wait()
        raise ValueError(f"twin {job.arg_int('n')} failed")

    for n in (1, 2):
        r.lpush(K.queue("twin_fail"), orjson.dumps({"jid": "e" * 24, "class": "twin_fail", "args": [{"n": n}]}))
    start(pools, pool, redis_url, concurrency=2)
    wait_for(lambda: r.zcard(K.retry) >= 1, 10, message="a retry entry")
    pool.drain(10)
    assert r.zcard(K.retry) == 2, "one failing twin vanished"


# -- job names -------------------------------------------------------------------------

def test_job_name_with_unicode_spaces_and_colons_runs_end_to_end(redis_url, fast_config, pools, r) -> None:
    name = "envoyer l'e-mail 📨: tier:1 ü"
    pool = new_pool(fast_config)
    seen = Recorder()
    pool.register(name, lambda job: seen.add((job.name, job.arg_str("to"))))
    job = pool.enqueuer(redis_url).enqueue(name, {"to": "zoë@example.org"})
    start(pools, pool, redis_url)
    wait_for(lambda: seen.snapshot() == [(name, "zoë@example.org")], 10, message="odd name runs")
    assert name.encode() in r.smembers(K.queues)
    assert job.name == name


@pytest.mark.parametrize("call", ["enqueue", "enqueue_many", "enqueue_in", "enqueue_unique",
                                  "enqueue_unique_in", "enqueue_unique_by_key"])
def test_braces_in_a_job_name_are_rejected_by_every_enqueue_call(redis_url, r, call: str) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    args: dict[str, tuple] = {
        "enqueue": ({},), "enqueue_many": ([{}],), "enqueue_in": (5,), "enqueue_unique": ({},),
        "enqueue_unique_in": (5, {}), "enqueue_unique_by_key": ({}, "k"),
    }
    with pytest.raises(forkq.ConfigError, match="forbidden characters"):
        getattr(enq, call)("evil}{slot", *args[call])
    assert r.dbsize() == 0


@pytest.mark.parametrize("namespace", [None, 7, "a{b", "x}y", "line\nbreak"])
def test_bad_namespace_is_rejected_before_any_connection(namespace: object) -> None:
    with pytest.raises(forkq.ConfigError, match="namespace"):
        forkq.WorkerPool(namespace)  # type: ignore[arg-type]
    with pytest.raises(forkq.ConfigError, match="namespace"):
        forkq.Enqueuer("redis://127.0.0.1:1/0", namespace)  # type: ignore[arg-type]


def test_non_string_job_name_is_rejected(redis_url) -> None:
    with pytest.raises(forkq.ConfigError, match="job name"):
        forkq.Enqueuer(redis_url, NS).enqueue(123)  # type: ignore[arg-type]


# -- payload size and content ----------------------------------------------------------

def test_ten_megabyte_payload_is_refused_at_enqueue_and_nothing_is_written(redis_url, r) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    blob = "x" * (10 * 1024 * 1024)
    for call in (lambda: enq.enqueue("big", {"blob": blob}),
                 lambda: enq.enqueue_in("big", 10, {"blob": blob}),
                 lambda: enq.enqueue_unique("big", {"blob": blob}),
                 lambda: enq.enqueue_many("big", [{"i": 1}, {"blob": blob}])):
        with pytest.raises(forkq.PayloadTooLarge, match=r"limit is 1048576 \(Config.max_payload_bytes\)"):
            call()
    # Not even the small job of the batch, and no unique guard left to block a later try.
    assert r.dbsize() == 0


def test_payload_limit_is_configurable_and_a_big_job_then_runs(redis_url, pools) -> None:
    cfg = forkq.Config(max_payload_bytes=12 * 1024 * 1024, heartbeat_interval=0.5, idle_poll_interval=0.2)
    pool = forkq.WorkerPool(NS, config=cfg)
    seen = Recorder()
    pool.register("big", lambda job: seen.add(len(job.arg_str("blob"))))
    pool.enqueuer(redis_url).enqueue("big", {"blob": "y" * (10 * 1024 * 1024)})
    start(pools, pool, redis_url, concurrency=1)
    wait_for(lambda: seen.snapshot() == [10 * 1024 * 1024], 20, message="10 MB job ran")


@pytest.mark.parametrize(("args", "fragment"), [
    ({"n": 2**70}, "not JSON-serialisable"),           # integer beyond 64 bits
    ({"s": "\ud800"}, "not JSON-serialisable"),        # lone surrogate: not encodable UTF-8
    ({1: "non-string key"}, "not JSON-serialisable"),
    ({"when": {1, 2}}, "not JSON-serialisable"),       # a set
])
def test_unencodable_arguments_are_refused_at_enqueue(redis_url, r, args: dict, fragment: str) -> None:
    with pytest.raises(TypeError, match=fragment) as info:
        forkq.Enqueuer(redis_url, NS).enqueue("odd", args)
    assert "'odd'" in str(info.value)
    assert r.dbsize() == 0


# -- URLs and connections ----------------------------------------------------------------

@pytest.mark.parametrize(("url", "fragment"), [
    ("http://127.0.0.1:6379/0", "scheme must be one of"),
    ("localhost:6379", "scheme must be one of"),
    ("", "scheme must be one of"),
    ("redis://", "no host"),
    ("redis://127.0.0.1:port/0", "port is not a number"),
    ("redis://[::1/0", "bad Redis URL"),
    ("redis://127.0.0.1:6379/notanumber", "database 'notanumber' is not a number"),
    ("redis://127.0.0.1:6379/0?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
])
def test_bad_redis_url_is_a_config_error_naming_the_problem(url: str, fragment: str) -> None:
    with pytest.raises(forkq.ConfigError, match=fragment):
        validate_url(url)
    with pytest.raises(forkq.ConfigError, match=fragment):
        forkq.Enqueuer(url, NS)
    pool = forkq.WorkerPool(NS)
    pool.register("x", lambda job: None)
    with pytest.raises(forkq.ConfigError, match=fragment):
        pool.start(url, concurrency=1)


def test_bad_url_error_does_not_echo_the_password() -> None:
    with pytest.raises(forkq.ConfigError) as info:
        validate_url("redis://user:hunter2@127.0.0.1:notaport/0")
    assert "hunter2" not in str(info.value) and "user:***@" in str(info.value)


def test_redis_argument_of_the_wrong_type_is_a_config_error() -> None:
    with pytest.raises(forkq.ConfigError, match="URL or a redis.Redis"):
        ConnectionSpec.of(6379)  # type: ignore[arg-type]


def test_missing_unix_socket_is_a_clear_connection_error(tmp_path) -> None:
    url = f"unix://{tmp_path}/nope.sock"
    with pytest.raises(forkq.EnqueueError, match=f"could not reach Redis at {url}: "):
        forkq.Enqueuer(url, NS).enqueue("x")
    pool = forkq.WorkerPool(NS)
    pool.register("x", lambda job: None)
    with pytest.raises(ConnectionError, match="cannot reach Redis"):
        pool.start(url, concurrency=1)


def test_negative_concurrency_is_a_config_error(redis_url) -> None:
    pool = forkq.WorkerPool(NS)
    pool.register("x", lambda job: None)
    with pytest.raises(forkq.ConfigError, match="concurrency"):
        pool.start(redis_url, concurrency=-1)


def test_redis_client_in_decode_mode_is_accepted(redis_url, pools, fast_config) -> None:
    """A user's ``decode_responses=True`` client must not break forkq's bytes protocol."""
    user_client = redis.Redis.from_url(redis_url, decode_responses=True)
    pool = new_pool(fast_config)
    seen = Recorder()
    pool.register("plain", lambda job: seen.add(job.arg_str("s")))
    pool.enqueuer(user_client).enqueue("plain", {"s": "ok"})
    start(pools, pool, redis_url)
    wait_for(lambda: seen.snapshot() == ["ok"], 10, message="job via decode-mode client")


def test_zero_concurrency_is_a_config_error(redis_url, pools) -> None:
    pool = forkq.WorkerPool(NS)
    pool.register("x", lambda job: None)
    pools.append(pool)
    with pytest.raises(forkq.ConfigError, match="concurrency"):
        pool.start(redis_url, concurrency=0)


@pytest.mark.parametrize(("url", "fragment"), [
    ("redis://127.0.0.1:6379/notanumber", "is not a number"),
    ("redis://:Hidden-pw@127.0.0.1:6379/0?socket_timeout=abc", "socket_timeout"),
])
def test_cli_rejects_a_url_redis_py_would_misread_as_a_usage_error(tmp_path, url: str, fragment: str) -> None:
    """Before: db silently 0, or children dying at boot five times (exit 6) over a query typo."""
    import os
    import subprocess
    import sys

    (tmp_path / "tiny_jobs.py").write_text(
        "import forkq\npool = forkq.WorkerPool('bi')\npool.register('x', lambda job: None)\n")
    proc = subprocess.run([sys.executable, "-m", "forkq", "-p", "1", "--redis", url, "tiny_jobs"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("forkq: error:") and fragment in lines[0]
    assert "Hidden-pw" not in proc.stderr


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


@pytest.mark.parametrize("kind", ["system_exit", "keyboard_interrupt"])
def test_handler_raising_base_exceptions_is_retried_and_the_worker_survives(
        redis_url, fast_config, pools, r, kind: str) -> None:
    pool = new_pool(fast_config)
    seen = Recorder()
    exc: BaseException = SystemExit(3) if kind == "system_exit" else KeyboardInterrupt()

    @pool.job(backoff=lambda job: 1000)
    def bad(job: forkq.Job) -> None:
        raise exc

    pool.register("after", lambda job: seen.add(job.id))
    enq = pool.enqueuer(redis_url)
    enq.enqueue("bad")
    later = enq.enqueue("after")
    start(pools, pool, redis_url, concurrency=1)
    wait_for(lambda: seen.snapshot() == [later.id], 10, message="the next job on the same thread")
    entry = orjson.loads(wait_for(lambda: r.zrange(K.retry, 0, -1), 5, message="retry entry")[0])
    assert entry["error_class"] == type(exc).__name__


@pytest.mark.parametrize("kind", ["surrogates_in_message", "unprintable_exception"])
def test_handler_error_that_cannot_be_encoded_is_still_retried_and_frees_its_slot(
        redis_url, fast_config, pools, r, kind: str) -> None:
    pool = new_pool(fast_config)
    seen = Recorder()

    @pool.job(backoff=lambda job: 1000)
    def bad(job: forkq.Job) -> None:
        if kind == "surrogates_in_message":
            # A file name decoded with surrogateescape, as os.listdir() gives for non-UTF-8 bytes.
            raise ValueError("cannot open " + b"/data/\xff.csv".decode("utf-8", "surrogateescape"))
        raise _UnprintableError()

    pool.register("after", lambda job: seen.add(job.id))
    enq = pool.enqueuer(redis_url)
    bad_job = enq.enqueue("bad")
    later = enq.enqueue("after")
    start(pools, pool, redis_url, concurrency=1)
    wait_for(lambda: seen.snapshot() == [later.id], 5, message="the next job (the slot was given back)")
    entry = orjson.loads(wait_for(lambda: r.zrange(K.retry, 0, -1), 5, message="retry entry")[0])
    assert entry["jid"] == bad_job.id
    wait_for(lambda: r.hlen(K.inprogress(pool.runtime.identity)) == 0, 5, message="acked")


def test_checkin_with_undecodable_text_does_not_stop_the_heartbeat(redis_url, fast_config, pools, r) -> None:
    pool = new_pool(fast_config)
    gate = threading.Event()
    started = threading.Event()

    @pool.job
    def reading(job: forkq.Job) -> None:
        job.checkin("reading " + b"/data/\xff.csv".decode("utf-8", "surrogateescape"))
        started.set()
        gate.wait(10)

    pool.enqueuer(redis_url).enqueue("reading")
    start(pools, pool, redis_url, concurrency=1)
    try:
        assert started.wait(10)
        identity = pool.runtime.identity  # type: ignore[union-attr]
        # Two beats after the odd checkin (no fixed wait): the heartbeat kept going.
        last = r.zscore(K.pools, identity)
        for n in (1, 2):
            last = wait_for(lambda prev=last: (lambda s: s if s != prev else None)(r.zscore(K.pools, identity)),
                            4 * fast_config.heartbeat_interval + 2, message=f"heartbeat {n} while the job runs")
    finally:
        gate.set()


def test_names_that_are_not_valid_utf8_are_rejected_at_registration() -> None:
    odd = "report-" + b"\xff".decode("utf-8", "surrogateescape")
    with pytest.raises(forkq.ConfigError, match="UTF-8"):
        forkq.WorkerPool(NS).register(odd, lambda job: None)
    with pytest.raises(forkq.ConfigError, match="UTF-8"):
        forkq.WorkerPool(odd)
