"""Security: queue data never executes code; ACL users and TLS work end to end;
secrets from URLs never reach logs, error messages or reprs."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import Recorder
from redis_server import RedisServer, wait_for
from tls import CertBundle, TlsRedisServer, have_openssl, make_test_ca

import forkq
from forkq import reaper
from forkq.connection import ConnectionSpec, redact, validate_url
from forkq.keys import Keys

NS = "sec"
K = Keys(NS)
PACKAGE = Path(forkq.__file__).resolve().parent

# What a worker pool and a producer need, nothing more (docs/RELIABILITY.md).
# Keys and channels are limited to the namespace's hash tag; SCAN and INFO have no keys.
FORKQ_COMMANDS = (
    "+ping +hello +info +select "
    "+evalsha +script|load "
    "+get +set +del +exists +expire "
    "+hset +hget +hgetall +hdel +hmget +hexists "
    "+sadd +srem "
    "+llen +lpush +rpush +rpop "
    "+zadd +zrem +zscore +zcard +zrange +zrangebyscore +zremrangebyscore +zremrangebyrank +hkeys +time "
    "+incrby +scan +publish +subscribe +unsubscribe "
    # Sidekiq 7's job metrics (heartbeat) and the waker's CLIENT TRACKING (forkq/waker.py).
    "+hincrby +bitfield +lindex +client|id +client|tracking "
    # Job control: cancel.lua (scans and removes), cancel marks, Enqueuer.wait (BLPOP).
    "+lrange +lrem +ttl +zmscore +blpop"
)
# forkq.Client (admin pages, CLI verbs) reads a little more and uses WATCH/MULTI.
ADMIN_EXTRA = "+smembers +sismember +lindex +hmget +hkeys +zrevrange +zscan +multi +exec +discard"


def acl_line(user: str, password: str, namespace: str, admin: bool = False) -> list[str]:
    commands = FORKQ_COMMANDS.split() + (ADMIN_EXTRA.split() if admin else [])
    return [user, "reset", "on", f">{password}", f"~{{{namespace}}}:*", "resetchannels",
            f"&{{{namespace}}}:*", "&__redis__:invalidate", "-@all", *commands]


# -- queue data never executes code ----------------------------------------------------

FORBIDDEN_PY = [
    (r"\bimport\s+pickle\b|\bfrom\s+pickle\b|\bpickle\.", "pickle"),
    (r"\bcPickle\b|\b_pickle\b", "pickle"),
    (r"\bmarshal\b", "marshal"),
    (r"\bshelve\b", "shelve"),
    (r"(?<![\w.])eval\s*\(", "eval()"),
    (r"(?<![\w.])exec\s*\(", "exec()"),
    (r"\byaml\.(?:unsafe_)?load\s*\(|\bimport\s+yaml\b", "yaml.load"),
    (r"\bjsonpickle\b|\bdill\b|\bcloudpickle\b", "pickle-like"),
    (r"__import__\s*\(", "__import__()"),
    (r"shell\s*=\s*True", "shell=True"),
]


def test_package_source_has_no_code_executing_deserialisers() -> None:
    hits = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10, "package files not found"
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, what in FORBIDDEN_PY:
                if re.search(pattern, code):
                    hits.append(f"{path.relative_to(PACKAGE)}:{lineno}: {what}: {line.strip()}")
    assert hits == []


def test_lua_scripts_never_compile_strings() -> None:
    scripts = sorted((PACKAGE / "lua").glob("*.lua"))
    assert scripts
    for path in scripts:
        code = "\n".join(line.split("--", 1)[0] for line in path.read_text().splitlines())
        assert not re.search(r"\b(loadstring|load|dofile|loadfile)\s*\(", code), path.name


def test_the_grep_would_catch_a_pickle_import(tmp_path: Path) -> None:
    """The patterns above are live: they flag the usual spellings."""
    samples = ["import pickle", "data = pickle.loads(raw)", "eval(payload)", "exec(code)",
               "yaml.load(text)", "from marshal import loads", "subprocess.run(c, shell=True)"]
    for sample in samples:
        assert any(re.search(p, sample) for p, _ in FORBIDDEN_PY), sample
    assert not any(re.search(p, 'conn.execute_command("EVALSHA", sha)') for p, _ in FORBIDDEN_PY)


# -- ACL -------------------------------------------------------------------------------

@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", *acl_line("forkq", "w0rker-pw", NS))
    admin.execute_command("ACL", "SETUSER", *acl_line("forkqadmin", "adm1n-pw", NS, admin=True))
    # Same commands, but keys and channels of another namespace only.
    admin.execute_command("ACL", "SETUSER", *acl_line("intruder", "intruder-pw", "other"))
    admin.execute_command("ACL", "LOG", "RESET")
    yield server
    server.cleanup()


def test_acl_user_limited_to_the_namespace_runs_everything_end_to_end(acl_server, pools) -> None:
    url = f"redis://forkq:w0rker-pw@127.0.0.1:{acl_server.port}/0"
    cfg = forkq.Config(heartbeat_interval=0.3, idle_poll_interval=0.2, stale_after=3.0, lease_ttl=5.0)
    pool = forkq.WorkerPool(NS, config=cfg)
    seen = Recorder()
    failed_once: set[str] = set()
    release = threading.Event()

    @pool.job(max_concurrency=2, backoff=lambda job: 0.1)
    def work(job: forkq.Job) -> None:
        if job.arg_int("n") % 5 == 0 and job.id not in failed_once:
            failed_once.add(job.id)
            raise ValueError("first try fails")
        seen.add(job.id)

    @pool.job
    def slow(job: forkq.Job) -> None:
        release.wait(30)

    pool.periodically_enqueue("* * * * * *", "work")
    enq = pool.enqueuer(url)
    ids = {j.id for j in enq.enqueue_many("work", [{"n": i} for i in range(20)])}
    ids.add(enq.enqueue("work", {"n": 21}).id)
    ids.add(enq.enqueue_in("work", 0.3, {"n": 22}).job.id)
    unique = enq.enqueue_unique("work", {"n": 23})
    assert unique is not None
    ids.add(unique.id)
    enq.enqueue("slow")
    pool.start(url, concurrency=4)
    pools.append(pool)
    wait_for(lambda: ids <= set(seen.snapshot()), 20, message="every job, retries and scheduled included")
    wait_for(lambda: any(j.startswith("periodic:") for j in seen.snapshot()), 10, message="a periodic job")
    user = ConnectionSpec.of(url).connect()  # forkq's own connections send no CLIENT SETINFO
    reaper.reap_stale_pools(user, K, cfg)  # the reaper's SET NX lock, ZRANGEBYSCORE, SCAN
    # The admin user (worker rights + ADMIN_EXTRA) reads every page of the Client.
    client = forkq.Client(f"redis://forkqadmin:adm1n-pw@127.0.0.1:{acl_server.port}/0", NS)
    assert "work" in {q.job_name for q in client.queues()}
    client.stats()
    client.dead_jobs(1)
    client.retry_jobs(1)
    client.scheduled_jobs(1)
    client.worker_pool_heartbeats()
    client.worker_observations()
    client.pause("work")
    client.unpause("work")
    pool.stop(timeout=0.2)  # "slow" is still running: it is requeued under the ACL too
    release.set()
    admin = acl_server.client()
    assert admin.llen(K.queue("slow")) == 1
    denied = admin.execute_command("ACL", "LOG")
    assert denied == [], f"ACL denials: {denied}"


def test_acl_user_of_another_namespace_gets_a_clear_no_permission_error(acl_server) -> None:
    url = f"redis://intruder:intruder-pw@127.0.0.1:{acl_server.port}/0"
    with pytest.raises(forkq.EnqueueError, match="(?i)no permissions") as info:
        forkq.Enqueuer(url, NS).enqueue("work", {"n": 1})
    assert "intruder-pw" not in str(info.value)
    assert acl_server.client().dbsize() == 0


def test_acl_user_without_script_rights_is_refused_clearly(acl_server) -> None:
    admin = acl_server.client()
    admin.execute_command("ACL", "SETUSER", "reader", "on", ">reader-pw", "~*", "-@all", "+@read",
                          "+ping", "+hello", "+info")
    url = f"redis://reader:reader-pw@127.0.0.1:{acl_server.port}/0"
    with pytest.raises(forkq.EnqueueError, match="(?i)permission") as info:
        forkq.Enqueuer(url, NS).enqueue("work")
    assert "reader-pw" not in str(info.value)


def test_acl_command_list_covers_every_command_the_lua_scripts_call() -> None:
    """The recommended ACL line must grow with the scripts (Redis checks calls made from Lua)."""
    allowed = {c[1:].lower() for c in FORKQ_COMMANDS.split()}
    called = set()
    for path in (PACKAGE / "lua").glob("*.lua"):
        called |= {m.lower() for m in re.findall(r"redis\.p?call\(\s*'([A-Za-z]+)'", path.read_text())}
    assert called and called <= allowed, f"missing from the ACL line: {sorted(called - allowed)}"


# -- TLS -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertBundle:
    if not have_openssl():
        pytest.skip("openssl not installed")
    return make_test_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(certs: CertBundle) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(certs)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"redis-server without TLS support: {exc}")
    yield server
    server.cleanup()


def test_tls_enqueue_and_pool_run_end_to_end(tls_server, pools) -> None:
    url = tls_server.url
    assert url.startswith("rediss://")
    pool = forkq.WorkerPool(NS, config=forkq.Config(heartbeat_interval=0.3, idle_poll_interval=0.2))
    seen = Recorder()
    pool.register("secure", lambda job: seen.add(job.id))
    enq = pool.enqueuer(url)
    ids = {j.id for j in enq.enqueue_many("secure", [{"i": i} for i in range(200)])}
    pool.start(url, concurrency=4)
    pools.append(pool)
    ids.add(enq.enqueue("secure", {"late": True}).id)  # wakes the pool over the TLS pub/sub link
    wait_for(lambda: set(seen.snapshot()) == ids, 20, message="jobs over TLS")
    pool.drain(10)
    c = tls_server.client()
    assert c.zscore(K.pools, pool.runtime.identity) is not None  # type: ignore[union-attr]
    info = c.info("clients")
    assert info["connected_clients"] >= 3


def test_tls_with_an_untrusted_certificate_is_refused_clearly(tls_server, tmp_path) -> None:
    other = make_test_ca(tmp_path / "other", name="impostor")
    url = f"rediss://127.0.0.1:{tls_server.port}/0?ssl_ca_certs={other.ca_cert}"
    with pytest.raises(forkq.EnqueueError, match="(?i)certificate verify failed"):
        forkq.Enqueuer(url, NS).enqueue("secure")
    pool = forkq.WorkerPool(NS)
    pool.register("secure", lambda job: None)
    with pytest.raises(ConnectionError, match="(?i)certificate"):
        pool.start(url, concurrency=1)


def test_plain_connection_to_a_tls_port_is_refused_clearly(tls_server) -> None:
    url = f"redis://127.0.0.1:{tls_server.port}/0"
    enq = forkq.Enqueuer(url, NS, )
    with pytest.raises(forkq.EnqueueError, match="could not reach Redis"):
        enq.enqueue("secure")


# -- secrets ---------------------------------------------------------------------------

SECRET = "Pa55-w0rd-never-printed"


@pytest.fixture
def auth_server() -> Iterator[RedisServer]:
    server = RedisServer(extra=["--requirepass", SECRET], password=SECRET).start()
    yield server
    server.cleanup()


def test_secrets_stay_out_of_logs_and_errors_through_a_redis_restart(auth_server, pools, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://:{SECRET}@127.0.0.1:{auth_server.port}/0"
    pool = forkq.WorkerPool(NS, config=forkq.Config(heartbeat_interval=0.3, idle_poll_interval=0.2))
    seen = Recorder()
    pool.register("quiet", lambda job: seen.add(job.id))
    pool.start(url, concurrency=2)
    pools.append(pool)
    enq = pool.enqueuer(url)
    enq.enqueue("quiet")
    wait_for(lambda: len(seen) == 1, 10, message="first job")
    auth_server.stop()  # every thread now fails to reach Redis and logs it
    time.sleep(1.5)
    errors = []
    for call in (lambda: enq.enqueue("quiet"), lambda: forkq.Enqueuer(url, NS).enqueue("quiet")):
        with pytest.raises(forkq.EnqueueError) as info:
            call()
        errors.append(str(info.value) + repr(info.value))
    auth_server.start()
    wait_for(lambda: "reachable again" in caplog.text, 20, message="the pool to reconnect")
    enq.enqueue("quiet")
    wait_for(lambda: len(seen) == 2, 20, message="a job after the restart")
    assert "Redis round trip failed" in caplog.text
    assert SECRET not in caplog.text
    assert all(SECRET not in e for e in errors)
    assert SECRET not in repr(pool.runtime.spec)  # type: ignore[union-attr]


@pytest.mark.parametrize("url", [
    f"redis://user:{SECRET}@127.0.0.1:port/0",
    f"redis://:{SECRET}@[::1/0",
    f"http://:{SECRET}@127.0.0.1/0",
    f"redis://user:a@b{SECRET}@127.0.0.1:x/0",      # a password holding '@'
    f"redis://127.0.0.1:x/0?password={SECRET}",     # redis-py's query-string password
])
def test_bad_url_errors_never_echo_the_password(url: str) -> None:
    with pytest.raises(forkq.ConfigError) as info:
        validate_url(url)
    assert SECRET not in str(info.value)
    assert "***" in str(info.value)


def test_connection_spec_repr_and_description_hide_the_password() -> None:
    for value in (f"redis://user:{SECRET}@127.0.0.1:6379/0", f"rediss://127.0.0.1:6380/0?password={SECRET}",
                  redis.Redis(host="127.0.0.1", password=SECRET)):
        spec = ConnectionSpec.of(value)
        assert SECRET not in repr(spec) and SECRET not in spec.describe() and SECRET not in str(spec)


def test_redact_keeps_non_secret_text_intact() -> None:
    assert redact("see redis://127.0.0.1:6379/0 and mail a@b.c") == "see redis://127.0.0.1:6379/0 and mail a@b.c"
    assert redact("redis://u:pw@h/0?db=1") == "redis://u:***@h/0?db=1"


# -- the same through the real CLI (master + children) ------------------------------------

@pytest.mark.slow
def test_cli_with_an_acl_user_runs_jobs_and_hides_the_password_from_titles_and_logs(
        acl_server, tmp_path, forkqs) -> None:
    import psutil
    from procs import KEYS as MK
    from procs import enqueue, runs, start_forkq, wait_children_ready, write_jobs

    admin = acl_server.client()
    admin.execute_command("ACL", "SETUSER", *acl_line("tmworker", SECRET, MK.namespace))
    admin.execute_command("ACL", "SETUSER", "recorder", "on", ">rec-pw", "~test:*", "+@all")
    admin.execute_command("ACL", "LOG", "RESET")
    url = f"redis://tmworker:{SECRET}@127.0.0.1:{acl_server.port}/0"
    rec_url = f"redis://recorder:rec-pw@127.0.0.1:{acl_server.port}/0"
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, url, mod, ["-p", "2", "-c", "2"],
                    env={"TEST_REDIS_URL": rec_url})
    kids = wait_children_ready(f, admin, 2)
    jids = enqueue(url, "record", [{"i": i} for i in range(200)])
    try:
        # 60 s: a job whose own Redis call times out (redis-py 8's default socket
        # timeout is 5 s) runs again after its backoff (~16-26 s); it must not be lost.
        wait_for(lambda: set(jids) <= set(runs(admin)), 60,
                 message="jobs run by an ACL-limited CLI")
    except AssertionError as exc:
        missing = len(set(jids) - set(runs(admin)))
        raise AssertionError(f"{exc}; {missing} missing; ACL LOG: "
                             f"{admin.execute_command('ACL', 'LOG')[:3]}; log:\n{f.log()[-3000:]}") from None
    titles = []
    for pid in [f.pid, *f.child_pids()]:
        try:
            titles.append(" ".join(psutil.Process(pid).cmdline()))
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue  # a child being replaced right now
    assert len(titles) >= 3 and all(SECRET not in t for t in titles), titles
    os.kill(sorted(kids)[0], signal.SIGKILL)  # the master's reaping path under the ACL too
    wait_children_ready(f, admin, 2)
    assert f.stop() == 0
    assert SECRET not in f.log()
    assert admin.execute_command("ACL", "LOG") == []


@pytest.mark.slow
def test_cli_with_a_wrong_password_exits_non_zero_without_the_secret(auth_server, tmp_path) -> None:
    import subprocess
    import sys

    from procs import write_jobs

    mod = write_jobs(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    wrong = "Wr0ng-" + SECRET[::-1]
    proc = subprocess.run([sys.executable, "-m", "forkq", "-p", "1", "--redis",
                           f"redis://:{wrong}@127.0.0.1:{auth_server.port}/0", mod],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert wrong not in out and "Traceback" not in out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("forkq: error:")]
    assert len(errors) == 1 and re.search("(?i)password|credentials|auth", errors[0]), proc.stderr


@pytest.mark.slow
def test_cli_over_tls_runs_jobs_end_to_end(tls_server, tmp_path, forkqs) -> None:
    from procs import enqueue, runs, start_forkq, wait_children_ready, write_jobs

    mod = write_jobs(tmp_path)
    c = tls_server.client()
    f = start_forkq(forkqs, tmp_path, tls_server.url, mod, ["-p", "2", "-c", "2"])
    wait_children_ready(f, c, 2)
    jids = enqueue(tls_server.url, "record", [{"i": i} for i in range(200)])
    wait_for(lambda: set(jids) <= set(runs(c)), 30, message="jobs over TLS through the CLI")
    assert f.stop() == 0


def test_pool_started_by_a_user_without_rights_fails_at_start_clearly(acl_server, pools) -> None:
    pool = forkq.WorkerPool(NS)
    pool.register("work", lambda job: None)
    pools.append(pool)
    with pytest.raises((ConnectionError, forkq.ConfigError), match="(?i)permission"):
        pool.start(f"redis://intruder:intruder-pw@127.0.0.1:{acl_server.port}/0", concurrency=1)
