"""FORKQ_HOSTNAME / --hostname / Config.hostname: the host part of every pool identity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis
from redis_server import wait_for
from test_master import KEYS, ForkqProc, live_identities, write_jobs

import forkq
from forkq.keys import Keys


def test_config_hostname_and_env_name_the_pool(redis_url: str, r: redis.Redis, pools: list[forkq.WorkerPool],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORKQ_HOSTNAME", raising=False)
    pool = forkq.WorkerPool("hn", config=forkq.Config(hostname="box-a", heartbeat_interval=0.3))

    @pool.job
    def j(job: forkq.Job) -> None:
        pass

    pool.start(redis_url, concurrency=1)
    pools.append(pool)
    members = wait_for(lambda: r.smembers(Keys("hn").processes), message="a beat")
    assert all(m.decode().startswith("box-a:") for m in members), members
    pool.stop(timeout=2)
    monkeypatch.setenv("FORKQ_HOSTNAME", "from-env")
    assert forkq.config.pool_hostname("box-a") == "from-env"  # the environment wins
    monkeypatch.setenv("FORKQ_HOSTNAME", "bad:name")
    with pytest.raises(forkq.ConfigError, match="without ':'"):
        forkq.config.pool_hostname()


def test_cli_hostname_names_the_children_and_a_bad_one_is_a_usage_error(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    bad = subprocess.run([sys.executable, "-m", "forkq", "--hostname", "a b", "--redis", redis_url, mod],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "hostname 'a b'" in bad.stderr and "Traceback" not in bad.stderr
    f = ForkqProc(tmp_path, redis_url, mod, ["-p", "2", "-c", "2", "--hostname", "ct-7"])
    forkqs.append(f)
    ids = wait_for(lambda: len(live_identities(r)) == 2 and live_identities(r), timeout=30, message="2 children")
    assert all(i.startswith("ct-7:") for i in ids), ids
    # Sidekiq's process record shows the same host.
    assert all(b'"hostname":"ct-7"' in (r.hget(KEYS.process(i), "info") or b"") for i in ids), \
        [r.hget(KEYS.process(i), "info") for i in ids]
    f.signal(15)
    assert f.wait(30) == 0
