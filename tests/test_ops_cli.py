"""What an operator sees from the ``forkq`` command, run as a real process against real Redis.

Each test names the finding it proves fixed (issue 10, the operator list).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import zlib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import orjson
import psutil
import pytest
import redis
from redis_server import ROOT, free_port, wait_for

from forkq import exits
from forkq import job as jobcodec
from forkq.keys import Keys

NS = "ops"
K = Keys(NS)

APP = '''
import os
import time

import redis

import forkq

pool = forkq.WorkerPool(namespace="ops")
_r = None


def R():
    global _r
    if _r is None:
        _r = redis.Redis.from_url(os.environ["TEST_REDIS_URL"])
    return _r


@pool.job
def block(job):
    """Record this run's start, then wait until the test says go."""
    R().rpush("test:starts", f"{job.id} {os.getpid()} {time.time()!r}")
    end = time.monotonic() + 60
    while time.monotonic() < end and not R().blpop(["test:go:" + job.id], timeout=1):
        pass
'''


def cli_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update({"FORKQ_NAMESPACE": NS, "FORKQ_REDIS_URL": redis_url, "TEST_REDIS_URL": redis_url,
                "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(extra)
    return env


def forkq_cmd(*argv: str, env: dict[str, str], cwd: Path | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(env)
    if cwd is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(cwd), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "forkq", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


class Worker:
    """``python -m forkq MODULE`` in its own session; stopped by pid even if the test fails."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *args: str) -> None:
        (tmp_path / "opsapp.py").write_text(APP)
        env = dict(env)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
        self.log_path = tmp_path / "worker.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "forkq", *args, "opsapp"], cwd=tmp_path,
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def start_worker(workers: list[Worker], tmp_path: Path, env: dict[str, str], *args: str) -> Worker:
    w = Worker(tmp_path, env, *args)
    workers.append(w)
    wait_for(lambda: "children are up" in w.log() or w.proc.poll() is not None, timeout=60,
             message="the worker's children to be up")
    assert w.proc.poll() is None, w.log()
    return w


def admin_json(env: dict[str, str], *argv: str) -> object:
    res = forkq_cmd(*argv, "--json", env=env)
    assert res.returncode == 0, res.stderr
    return orjson.loads(res.stdout)


def starts(r: redis.Redis) -> list[tuple[str, int, float]]:
    out = []
    for raw in r.lrange("test:starts", 0, -1):
        jid, pid, t = raw.decode().split()
        out.append((jid, int(pid), float(t)))
    return out


def one_error_line(res: subprocess.CompletedProcess[str], prefix: str) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in res.stderr
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


# -- live busy and running jobs -------------------------------------------------------------------

def test_stats_busy_is_live_while_every_thread_is_busy(tmp_path: Path, redis_url: str,
                                                       r: redis.Redis, workers: list[Worker]) -> None:
    # Beats every 30 s: a busy count written by beats would still say 0 long after the
    # jobs started (the finding: "busy 0 while every thread is busy").
    env = cli_env(redis_url, FORKQ_HEARTBEAT_INTERVAL="30", FORKQ_STALE_AFTER="120")
    start_worker(workers, tmp_path, env, "-p", "1", "-c", "3")
    jids = [orjson.loads(forkq_cmd("enqueue", "block", "{}", "--json", env=env).stdout)["jid"]
            for _ in range(3)]
    wait_for(lambda: len(starts(r)) == 3, timeout=30, message="three jobs running")
    stats = admin_json(env, "stats")
    assert isinstance(stats, dict) and stats["busy"] == 3 and stats["processes"] == 1
    table = forkq_cmd("stats", env=env).stdout
    assert re.search(r"^busy\s+3$", table, re.M), table
    for jid in jids:
        r.rpush("test:go:" + jid, 1)
    wait_for(lambda: admin_json(env, "stats")["busy"] == 0, timeout=30,  # type: ignore[index]
             message="busy back to 0 once the jobs are done")


def test_workers_busy_drops_a_finished_job_at_once(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                   workers: list[Worker]) -> None:
    env = cli_env(redis_url, FORKQ_HEARTBEAT_INTERVAL="5")
    start_worker(workers, tmp_path, env, "-p", "1", "-c", "2")
    jid = orjson.loads(forkq_cmd("enqueue", "block", "{}", "--json", env=env).stdout)["jid"]
    # Shown once a beat has observed it ...
    shown = wait_for(lambda: admin_json(env, "workers", "--busy"), timeout=30,
                     message="the running job in workers --busy")
    assert [o["job_id"] for o in shown] == [jid]  # type: ignore[index,union-attr]
    # ... and gone as soon as it is acked, not at the next beat (up to 5 s later).
    r.rpush("test:go:" + jid, 1)
    pool_id = shown[0]["worker_pool_id"]  # type: ignore[index]
    wait_for(lambda: not r.hlen(K.inprogress(pool_id)), timeout=30, message="the job to be acked")
    assert admin_json(env, "workers", "--busy") == []
    assert "no busy workers" in forkq_cmd("workers", "--busy", env=env).stdout


def test_workers_busy_shows_a_requeued_job_once_with_its_latest_start(
        tmp_path: Path, redis_url: str, r: redis.Redis, workers: list[Worker]) -> None:
    env = cli_env(redis_url, FORKQ_HEARTBEAT_INTERVAL="0.5")
    w = start_worker(workers, tmp_path, env, "-p", "1", "-c", "2")
    jid = orjson.loads(forkq_cmd("enqueue", "block", "{}", "--json", env=env).stdout)["jid"]
    wait_for(lambda: len(starts(r)) == 1, timeout=30, message="the first run")
    (_, first_pid, _) = starts(r)[0]
    wait_for(lambda: admin_json(env, "workers", "--busy"), timeout=30, message="first observation")
    os.kill(first_pid, signal.SIGKILL)
    wait_for(lambda: len(starts(r)) == 2, timeout=30, message="the second run in a new child")
    (_, second_pid, second_start) = starts(r)[1]
    assert second_pid != first_pid and second_pid in w.children()

    def observed_second_run() -> list[dict[str, object]] | None:
        obs = admin_json(env, "workers", "--busy")
        assert isinstance(obs, list)
        return obs if obs and all(f":{second_pid}:" in str(o["worker_id"]) for o in obs) else None

    obs = wait_for(observed_second_run, timeout=30, message="the second run observed")
    assert [o["job_id"] for o in obs] == [jid]
    # started_at is whole seconds: the second run's, not the first's.
    assert int(obs[0]["started_at"]) >= int(second_start)  # type: ignore[call-overload]
    r.rpush("test:go:" + jid, 1)


# -- unknown names --------------------------------------------------------------------------------

def test_enqueue_and_pause_refuse_an_unknown_name_unless_forced(redis_url: str, r: redis.Redis) -> None:
    env = cli_env(redis_url)
    res = forkq_cmd("enqueue", "nosuchjob", "{}", env=env)
    assert res.returncode == exits.EXIT_FAILED and res.stdout == ""
    line = one_error_line(res, "forkq enqueue: error: ")
    assert "unknown job name 'nosuchjob'" in line and "--force" in line
    assert r.llen(K.queue("nosuchjob")) == 0 and not r.exists(K.queues)
    res = forkq_cmd("pause", "nosuchname", env=env)
    assert res.returncode == exits.EXIT_FAILED and "--force" in one_error_line(res, "forkq pause: ")
    assert not r.exists(K.paused("nosuchname"))
    # --force does it anyway; then the queue exists, so the name is known.
    assert forkq_cmd("enqueue", "nosuchjob", "{}", "--force", env=env).returncode == 0
    assert r.llen(K.queue("nosuchjob")) == 1
    assert forkq_cmd("enqueue", "nosuchjob", "{}", env=env).returncode == 0
    assert forkq_cmd("pause", "nosuchname", "--force", env=env).returncode == 0
    assert r.exists(K.paused("nosuchname"))


def test_a_name_served_by_a_live_pool_is_known_and_queues_marks_unserved_ones(
        tmp_path: Path, redis_url: str, r: redis.Redis, workers: list[Worker]) -> None:
    env = cli_env(redis_url)
    assert forkq_cmd("enqueue", "orphan", "{}", "--force", env=env).returncode == 0
    start_worker(workers, tmp_path, env, "-p", "1", "-c", "1")
    # No queue "block" exists yet, but a live pool serves it: accepted without --force.
    res = forkq_cmd("pause", "block", env=env)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    res = forkq_cmd("enqueue", "block", "{}", env=env)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    queues = admin_json(env, "queues")
    assert isinstance(queues, list)
    assert {q["job_name"]: q["served"] for q in queues} == {"block": True, "orphan": False}
    text = forkq_cmd("queues", env=env).stdout
    # ... served, limits, groups
    assert re.search(r"^orphan .*NO \(no live pool\)  +-  +-$", text, re.M), text
    assert re.search(r"^block .* yes +-  +-$", text, re.M), text
    forkq_cmd("unpause", "block", env=env)
    r.delete(K.queue("block"))


# -- show JID with the backtrace ------------------------------------------------------------------

def stored(name: str, jid: str, backtrace: object) -> bytes:
    data = jobcodec.build_payload(name, {"k": 1}, jid=jid)
    data.update(retry_count=2, error_class="ValueError", error_message="bad input",
                failed_at=1_700_000_000.0, error_backtrace=backtrace)
    return jobcodec.encode(data)


def compressed(lines: list[str]) -> str:
    """Sidekiq 6.4+/7's stored form (job_retry.rb compress_backtrace)."""
    return base64.b64encode(zlib.compress(orjson.dumps(lines))).decode()


def test_dead_and_retries_show_print_the_entry_with_its_backtrace(redis_url: str, r: redis.Redis) -> None:
    env = cli_env(redis_url)
    lines = ["/srv/app/jobs.py:12:in `charge'", "/srv/app/lib.py:40:in `call'"]
    r.zadd(K.dead, {stored("charge", "a" * 24, compressed(lines)): 1_700_000_100.0})
    r.zadd(K.retry, {stored("charge", "b" * 24, ["raw.rb:1:in `x'"]): 1_700_000_200.0})
    res = forkq_cmd("dead", "show", "a" * 24, env=env)
    assert res.returncode == 0, res.stderr
    assert "ValueError: bad input" in res.stdout and "charge" in res.stdout
    assert all(f"  {ln}" in res.stdout for ln in lines)
    data = admin_json(env, "dead", "show", "a" * 24)
    assert isinstance(data, dict) and data["backtrace"] == lines and data["died_at"] == 1_700_000_100.0
    res = forkq_cmd("retries", "show", "b" * 24, env=env)
    assert res.returncode == 0 and "raw.rb:1:in `x'" in res.stdout, res.stderr
    # Unknown jid: one line, exit 1.
    res = forkq_cmd("retries", "show", "c" * 24, env=env)
    assert res.returncode == exits.EXIT_FAILED and "no retry job" in one_error_line(res, "forkq retries")
    # No JID: usage.
    res = forkq_cmd("dead", "show", env=env)
    assert res.returncode == exits.EXIT_USAGE and "JID" in one_error_line(res, "forkq dead")
    # Listing still works as before.
    assert forkq_cmd("retries", env=env).returncode == 0


# -- exit codes and start-up noise ----------------------------------------------------------------

@pytest.mark.parametrize("argv", [["stats"], ["queues"], ["dead", "list"], ["retries", "show", "x"],
                                  ["enqueue", "x", "{}"], ["workers", "--busy"]])
def test_admin_verbs_exit_5_on_an_unreachable_redis(argv: list[str]) -> None:
    url = f"redis://u:secret9@127.0.0.1:{free_port()}/0"
    res = forkq_cmd(*argv, "--redis", url, env=cli_env(url))
    assert res.returncode == exits.EXIT_REDIS
    line = one_error_line(res, f"forkq {argv[0]}: error: cannot reach Redis")
    assert "secret9" not in line


def test_worker_that_cannot_start_prints_only_its_error_line(tmp_path: Path) -> None:
    (tmp_path / "opsapp.py").write_text(APP)
    url = f"redis://127.0.0.1:{free_port()}/0"
    res = forkq_cmd("-p", "2", "--redis-wait", "1", "opsapp", env=cli_env(url), cwd=tmp_path)
    assert res.returncode == exits.EXIT_REDIS
    line = one_error_line(res, "forkq: error: cannot reach Redis")
    assert "gave up after 1s" in line


def test_worker_that_starts_writes_its_held_log_lines_in_order(tmp_path: Path, redis_url: str,
                                                              workers: list[Worker]) -> None:
    w = start_worker(workers, tmp_path, cli_env(redis_url), "-p", "2", "-c", "1")
    log = w.log()
    banner, up = log.index("forkq master"), log.index("all 2 children are up")
    assert banner < log.index("ready") < up
    w.stop()
    assert w.proc.returncode == 0 and "stopped" in w.log()


def test_debug_log_has_no_redis_py_noise(tmp_path: Path, redis_url: str, workers: list[Worker]) -> None:
    env = cli_env(redis_url, FORKQ_HEARTBEAT_INTERVAL="0.2")
    w = start_worker(workers, tmp_path, env, "-p", "1", "-c", "1", "--log-level", "debug")
    wait_for(lambda: w.log().count(" DEBUG ") >= 1 or len(w.log().splitlines()) > 3, timeout=10,
             message="some log lines")
    w.stop()
    log = w.log()
    assert "maintenance notifications" not in log
    assert not re.search(r"\] redis[.:]", log), log


def test_version_comes_from_the_package_metadata() -> None:
    res = subprocess.run([sys.executable, "-m", "forkq", "--version"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == f"forkq {metadata.version('forkq')}"
    res = subprocess.run([sys.executable, "-m", "forkq", "stats", "--version"], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == f"forkq {metadata.version('forkq')}"


# -- files a user of a clone reads ----------------------------------------------------------------

def test_readme_links_only_files_a_clone_has() -> None:
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) + re.findall(r"`((?:\.\./|docs/)[^`]+\.md)`", text)
    local = [t for t in targets if "://" not in t]
    assert local, "README has relative links"
    missing = [t for t in local if not (ROOT / t).resolve().is_relative_to(ROOT) or not (ROOT / t).exists()]
    assert missing == []


def test_unit_file_runs_the_virtualenvs_forkq() -> None:
    text = (ROOT / "scripts" / "forkq.service").read_text()
    exec_start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    binary = exec_start.removeprefix("ExecStart=").split()[0]
    assert binary.endswith("/.venv/bin/forkq") and "/usr/local/bin" not in text
    assert "virtualenv" in text


def test_test_script_never_stops_a_redis_it_did_not_start() -> None:
    text = (ROOT / "scripts" / "test.sh").read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert not re.search(r"service\s+redis|systemctl\s+stop|redis-cli.*shutdown", code)


@pytest.mark.slow
def test_building_the_package_prints_no_setuptools_warnings(tmp_path: Path) -> None:
    # A copy: pip builds a local directory in place (build/, *.egg-info).
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", "tests", "bench"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-v",
                          "-w", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    if res.returncode != 0 and "Could not find a version" in res.stdout + res.stderr:
        pytest.skip("no package index reachable for the build requirements")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "SetuptoolsDeprecationWarning" not in out and "absent from the `packages`" not in out
    import zipfile

    (wheel,) = tmp_path.glob("forkq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "forkq/lua/fetch.lua" in names and "forkq/py.typed" in names


def test_client_writes_several_keys_only_through_scripts() -> None:
    # The WATCH/MULTI retry loop of delete_scheduled_job is the delete_scheduled script now.
    text = (ROOT / "forkq" / "client.py").read_text()
    assert ".watch(" not in text and "WatchError" not in text


def test_a_failed_job_shows_its_traceback_in_retries_show(redis_url: str, r: redis.Redis) -> None:
    import forkq

    pool = forkq.WorkerPool(NS, config=forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2))

    def explode_on_purpose(job: forkq.Job) -> None:
        raise ValueError("exploded on purpose")

    pool.register("explode", explode_on_purpose)
    pool.start(redis_url, concurrency=1)
    try:
        jid = pool.enqueuer(redis_url).enqueue("explode").id
        wait_for(lambda: r.zcard(K.retry) == 1, timeout=30, message="the failure in retry")
    finally:
        pool.stop(timeout=5)
    res = forkq_cmd("retries", "show", jid, env=cli_env(redis_url))
    assert res.returncode == 0, res.stderr
    assert "ValueError: exploded on purpose" in res.stdout
    assert "in `explode_on_purpose'" in res.stdout and "test_ops_cli.py" in res.stdout
