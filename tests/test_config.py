"""One configuration: every knob is a row of ``forkq.config.SETTINGS``, checked the same way
whether it comes from Python, the environment or a flag, and used by master and children."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from redis_server import ROOT, wait_for

import forkq
from forkq import backoff, exits
from forkq.config import SETTINGS, Config
from forkq.errors import ConfigError

APP = '''
import forkq

pool = forkq.WorkerPool(namespace="cfg")


@pool.job
def noop(job):
    pass
'''


def run_forkq(tmp_path: Path, *argv: str, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    (tmp_path / "cfgapp.py").write_text(APP)
    full = {k: v for k, v in os.environ.items() if not k.startswith("FORKQ_")}
    full.pop("NOTIFY_SOCKET", None)
    full.update({"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "forkq", *argv], capture_output=True, text=True,
                          env=full, cwd=tmp_path, timeout=timeout)


def test_every_config_field_has_exactly_one_row_in_the_table() -> None:
    fields = [f.name for f in dataclasses.fields(Config)]
    rows = [s.field for s in SETTINGS if s.field is not None]
    assert sorted(rows) == sorted(fields) and len(rows) == len(set(rows))
    envs = [s.env for s in SETTINGS if s.env]
    assert len(envs) == len(set(envs)) and all(e.startswith("FORKQ_") for e in envs)


@pytest.mark.parametrize("bad", [
    {"concurrency": 0}, {"concurrency": "4"}, {"concurrency": 2.5}, {"processes": True},
    {"heartbeat_interval": 0}, {"stale_after": -1.0}, {"shutdown_timeout": float("nan")},
    {"log_level": "LOUD"}, {"max_jobs_per_child": -1}, {"redis_url": 6379},
    {"lease_ttl": float("inf")},
])
def test_a_bad_value_given_in_python_is_refused_by_the_same_check(bad: dict[str, object]) -> None:
    (name,) = bad
    with pytest.raises(ConfigError, match=name):
        Config(**bad)  # type: ignore[arg-type]


def test_good_values_pass_and_the_log_level_has_one_spelling() -> None:
    c = Config(concurrency=3, heartbeat_interval=0.3, shutdown_timeout=5, log_level="debug")
    assert (c.concurrency, c.heartbeat_interval, c.shutdown_timeout, c.log_level) == (3, 0.3, 5, "DEBUG")
    forkq.WorkerPool("x", config=c)


def test_flags_beat_the_environment_which_beats_the_pools_config() -> None:
    base = Config(concurrency=3, stale_after=19.0)
    env = {"FORKQ_CONCURRENCY": "5", "FORKQ_STALE_AFTER": "17.5", "FORKQ_HARD_TIMEOUT_GRACE": "2"}
    assert Config.resolve(base, environ={}).concurrency == 3
    got = Config.resolve(base, environ=env)
    assert (got.concurrency, got.stale_after, got.hard_timeout_grace) == (5, 17.5, 2.0)
    assert Config.resolve(base, environ=env, flags={"concurrency": 7, "processes": None}).concurrency == 7


@pytest.mark.parametrize("var, value", [("FORKQ_STALE_AFTER", "abc"), ("FORKQ_CONCURRENCY", "0"),
                                        ("FORKQ_REDIS_WAIT", "-1"), ("FORKQ_LOG_LEVEL", "chatty")])
def test_a_bad_environment_value_is_refused_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Config.resolve(None, environ={var: value})


@pytest.mark.parametrize("var, value", [("FORKQ_STALE_AFTER", "abc"), ("FORKQ_CONCURRENCY", "0"),
                                        ("FORKQ_HARD_TIMEOUT_GRACE", "-3")])
def test_the_worker_cli_refuses_a_bad_environment_value_in_one_line(tmp_path: Path, var: str,
                                                                  value: str) -> None:
    res = run_forkq(tmp_path, "cfgapp", env={var: value})
    assert res.returncode == exits.EXIT_USAGE
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("forkq: error: ") and var in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_help_lists_every_flag_and_environment_variable_of_the_table(tmp_path: Path) -> None:
    res = run_forkq(tmp_path, "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for s in SETTINGS:
        if s.flag and s.field is not None:
            assert s.flag in text, s.flag
        if s.env and s.field is not None:
            assert s.env in text, s.env


@pytest.fixture
def cfg_worker(tmp_path: Path, redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    (tmp_path / "cfgapp.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKQ_")}
    env.pop("NOTIFY_SOCKET", None)
    env.update({"PYTHONPATH": str(tmp_path), "FORKQ_REDIS_URL": redis_url,
                "FORKQ_CONCURRENCY": "3", "FORKQ_PROCESSES": "1", "FORKQ_HEARTBEAT_INTERVAL": "0.3"})
    proc = subprocess.Popen([sys.executable, "-m", "forkq", "cfgapp"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_environment_knobs_reach_the_master_and_its_children(cfg_worker: subprocess.Popen[bytes],
                                                             redis_url: str) -> None:
    def pools() -> list[dict[str, object]]:
        res = subprocess.run([sys.executable, "-m", "forkq", "pools", "--json", "-n", "cfg",
                              "--redis", redis_url], capture_output=True, text=True, timeout=30)
        return orjson.loads(res.stdout) if res.returncode == 0 else []

    (pool,) = wait_for(pools, timeout=30, message="the worker's one pool")
    assert pool["concurrency"] == 3


def test_one_backoff_doubles_up_to_its_cap_and_jitters_around_it() -> None:
    assert [backoff.capped_exponential(n, base=0.25, cap=10.0, jitter=0) for n in range(1, 9)] == [
        0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.capped_exponential(10_000, base=0.1, cap=5.0, jitter=0) == 5.0
    waits = [backoff.capped_exponential(4, base=0.1, cap=5.0) for _ in range(200)]
    assert all(0.4 - 1e-9 <= w <= 1.2 + 1e-9 for w in waits) and len(set(waits)) > 1


def test_no_module_writes_its_own_backoff_formula() -> None:
    pattern = re.compile(r"\b2\s*\*\*|delay\s*\*\s*2\b")
    offenders = [f"{p.name}:{i}" for p in sorted((ROOT / "forkq").glob("*.py"))
                 if p.name not in ("backoff.py", "retry.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_no_module_reads_a_forkq_environment_variable_by_hand() -> None:
    # Every FORKQ_* knob is read through forkq.config's table (env_value / Config.resolve).
    pattern = re.compile(r"""(environ\.get\(|getenv\()\s*["']FORKQ_|environ\[\s*["']FORKQ_\w+["']\s*\](?!\s*=)""")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "forkq").rglob("*.py"))
                 if p.name != "config.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    documented = {s.env for s in SETTINGS if s.env}
    used = set(re.findall(r"FORKQ_[A-Z_]+", " ".join(
        p.read_text() for p in (ROOT / "forkq").rglob("*.py") if p.name != "config.py")))
    assert used <= documented, used - documented
