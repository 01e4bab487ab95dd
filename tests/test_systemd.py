"""sd_notify to a real datagram socket, and the unit file against systemd-analyze."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from procs import (
    ForkqProc,
    start_forkq,
    wait_children_ready,
    write_jobs,
)

from forkq.systemd import Notifier

UNIT = Path(__file__).resolve().parent.parent / "scripts" / "forkq.service"


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short path: unix socket paths are limited to ~107 bytes.
    d = tempfile.mkdtemp(prefix="fq-sd-", dir="/tmp")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.1)
    yield s, path
    s.close()
    shutil.rmtree(d, ignore_errors=True)


def receive(s: socket.socket, seconds: float) -> list[str]:
    """Every field of every message received in the next ``seconds``."""
    out: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out += s.recv(4096).decode().split("\n")
        except TimeoutError:
            pass
    return out


def receive_until(s: socket.socket, field: str, timeout: float) -> list[str]:
    got: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got += s.recv(4096).decode().split("\n")
        except TimeoutError:
            continue
        if any(f == field or f.startswith(field) for f in got):
            return got
    raise AssertionError(f"no {field!r} within {timeout}s; got {got}")


def test_notifier_sends_one_datagram_per_call(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_interval == 2.0
    assert n.notify("READY=1", "STATUS=two\nlines")
    assert s.recv(4096) == b"READY=1\nSTATUS=two lines"
    n.close()


@pytest.mark.timeout(30)
def test_a_full_notify_queue_never_blocks_and_keeps_state_changes_in_order(
        notify_socket: tuple[socket.socket, str]) -> None:
    # A receiver that does not read: Linux queues max_dgram_qlen datagrams, then a
    # blocking send would stop the master's loop (reports, reaping, signals).
    s, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    t0 = time.monotonic()
    sent = [n.notify("WATCHDOG=1") for _ in range(2000)]
    assert time.monotonic() - t0 < 5.0
    assert not all(sent), "the receiver's queue never filled; the test proves nothing"
    assert n.notify("READY=1", "MAINPID=1") is False
    assert n.notify("STOPPING=1") is False
    got = receive(s, 0.5)
    assert "READY=1" not in got and got.count("WATCHDOG=1") == sum(sent)
    assert n.flush()
    assert receive(s, 0.5) == ["READY=1", "MAINPID=1", "STOPPING=1"]
    n.close()


def test_notifier_without_notify_socket_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval == 0.0
    assert n.notify("READY=1") is False


def test_notifier_ignores_a_watchdog_meant_for_another_pid() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000",
                  "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_interval == 0.0
    assert n.notify("READY=1") is False  # the socket is not there: reported, not raised


def test_master_notifies_ready_status_watchdog_and_stopping(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc],
        notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "2"],
                    env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    got = receive_until(s, "READY=1", 30)
    assert f"MAINPID={f.pid}" in got
    kids = wait_children_ready(f, r, 2)
    got = receive(s, 3.0)
    assert got.count("WATCHDOG=1") >= 3
    assert any(x.startswith("STATUS=running: 2 children") for x in got + receive(s, 2.5))

    assert kids
    f.signal(signal.SIGTERM)
    receive_until(s, "STOPPING=1", 15)
    assert f.wait(30) == 0


@pytest.mark.slow
def test_watchdog_pings_stop_while_a_child_is_frozen(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc],
        notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "2"],
                    env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    kids = wait_children_ready(f, r, 2)
    # READY=1 says the master has read every child's ready report: a child that beats
    # in Redis but is stopped before its report reaches the master is still booting
    # (healthy for BOOT_GRACE), which is not what this test is about.
    receive_until(s, "READY=1", 30)
    receive_until(s, "WATCHDOG=1", 30)
    victim = sorted(kids)[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        # Pings go on at most a few seconds (until its last report is stale), then stop:
        # wait for a 2 s window without one (with pings every 0.5 s while healthy).
        end = time.monotonic() + 20
        silent = False
        while not silent and time.monotonic() < end:
            silent = "WATCHDOG=1" not in receive(s, 2.0)
        assert silent, "the master kept pinging the watchdog with a frozen child"
    finally:
        os.kill(victim, signal.SIGCONT)
    receive_until(s, "WATCHDOG=1", 20)
    assert f.stop() == 0


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    text = UNIT.read_text()
    for needed in ("Type=notify", "WatchdogSec=", "KillMode=mixed", "ExecReload=", "TimeoutStopSec="):
        assert needed in text
    stop = int(text.split("TimeoutStopSec=")[1].split()[0])
    exec_start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    shutdown = float(exec_start.split("--shutdown-timeout")[1].split()[0])
    assert stop > shutdown
    # verify insists that ExecStart's binary exists: point it at this machine's forkq.
    unit = tmp_path / "forkq.service"
    binary = exec_start.removeprefix("ExecStart=").split()[0]
    assert binary.startswith("/") and binary.endswith("/.venv/bin/forkq")  # the venv's forkq
    unit.write_text(text.replace(binary, f"{sys.executable} -m forkq"))
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines()
                if "forkq.service" in ln or "Unknown" in ln]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr
