"""``forkq --metrics HOST:PORT``: real CLI masters and children, real Redis, real scrapes.

The scrapes are parsed with prometheus_client's own text parser; the counts are
compared with what the jobs themselves recorded in Redis.
"""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis_server import free_port, wait_for
from test_master import (
    FAST_ENV,
    KEYS,
    ForkqProc,
    enqueue,
    forkq_procs,
    start_forkq,
    wait_children_ready,
    write_jobs,
)

from forkq import messages
from forkq.metrics import JobMetrics, MasterMetrics, parse_bind

EXTRA = '''
@pool.job(max_fails=1, skip_dead=True)
def work(job):
    if job.arg_bool("fail"):
        R().hincrby("test:fails", job.id, 1)
        raise RuntimeError("asked to fail")
    R().hincrby("test:runs", job.id, 1)
'''


@pytest.fixture
def forkqs() -> Iterator[list[ForkqProc]]:
    yield from forkq_procs()


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {labels: value}} of one ``GET /metrics``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, body
        assert resp.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    finally:
        conn.close()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def summed(ports: list[int], name: str, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    return sum(scrape(p).get(name, {}).get(want, 0.0) for p in ports)


def job_counts(ports: list[int]) -> tuple[float, float, float]:
    """(processed, failed, histogram count) of job ``work`` summed over the masters."""
    return (summed(ports, "forkq_jobs_processed_total", job="work"),
            summed(ports, "forkq_jobs_failed_total", job="work"),
            summed(ports, "forkq_job_duration_seconds_count", job="work"))


def recorded(r: redis.Redis) -> tuple[int, int]:
    runs = sum(int(v) for v in r.hvals("test:runs"))
    fails = sum(int(v) for v in r.hvals("test:fails"))
    return runs, fails


def run_batch(redis_url: str, r: redis.Redis, n: int, start: int) -> None:
    """Enqueue ``n`` jobs (every 5th fails) and wait until each one has run."""
    before = recorded(r)
    enqueue(redis_url, "work", [{"i": i, "fail": i % 5 == 0} for i in range(start, start + n)])
    wait_for(lambda: sum(recorded(r)) >= sum(before) + n and r.llen(KEYS.queue("work")) == 0,
             timeout=60, interval=0.05, message=f"{n} jobs run")


def test_two_masters_of_two_children_report_every_job_run_across_a_sigkilled_child(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, EXTRA)
    ports = [free_port(), free_port()]
    masters = [start_forkq(forkqs, tmp_path, redis_url, mod,
                           ["-p", "2", "-c", "4", "--metrics", f"127.0.0.1:{port}"], tag=str(i))
               for i, port in enumerate(ports)]
    for f in masters:
        wait_children_ready(f, r, 2)

    run_batch(redis_url, r, 400, 0)
    runs, fails = recorded(r)
    assert (runs, fails) == (320, 80)
    # Children report once a second: wait for the sums to reach what Redis recorded.
    wait_for(lambda: job_counts(ports) == (400, 80, 400), timeout=20, interval=0.2,
             message=f"metrics summed to 400/80 (now {job_counts(ports)})")
    # Each master saw some of the jobs: the sum is really over both.
    per_master = [summed([p], "forkq_jobs_processed_total", job="work") for p in ports]
    assert all(v > 0 for v in per_master), per_master
    for p in ports:
        s = scrape(p)
        assert s["forkq_children"][()] == 2
        assert s["forkq_threads"][()] == 8
        assert 0 <= s["forkq_busy_threads"][()] <= 8
        assert s["forkq_job_duration_seconds_sum"][(("job", "work"),)] > 0

    # SIGKILL a child of the first master: what it reported stays counted.
    victim = sorted(masters[0].child_pids())[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in masters[0].child_pids() and len(masters[0].child_pids()) == 2,
             timeout=30, message="killed child replaced")
    wait_children_ready(masters[0], r, 2)
    assert job_counts(ports) == (400, 80, 400)
    assert scrape(ports[0])["forkq_children"][()] == 2

    run_batch(redis_url, r, 200, 400)
    assert recorded(r) == (480, 120)
    wait_for(lambda: job_counts(ports) == (600, 120, 600), timeout=20, interval=0.2,
             message=f"metrics summed to 600/120 (now {job_counts(ports)})")

    # A class no handler has (another producer's) is counted under one label value.
    r.lpush(KEYS.queue("work"), orjson.dumps({"jid": "f" * 24, "class": "Nope", "queue": "work",
                                              "args": [{}], "created_at": 1.0, "retry": True}))
    wait_for(lambda: summed(ports, "forkq_jobs_failed_total", job="other") >= 1, timeout=20,
             interval=0.2, message="unknown class counted under job=\"other\"")
    for p in ports:
        jobs = {dict(k).get("job") for k in scrape(p).get("forkq_jobs_processed_total", {})}
        assert jobs <= {"work", "other"}, jobs

    for f in masters:
        assert f.stop() == 0


def test_graceful_stop_of_a_child_loses_no_count(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                  forkqs: list[ForkqProc]) -> None:
    """TTOU stops one child gracefully: its final counts are sent before it exits."""
    mod = write_jobs(tmp_path, EXTRA)
    port = free_port()
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "2", "--metrics",
                                                       f"127.0.0.1:{port}"])
    wait_children_ready(f, r, 2)
    run_batch(redis_url, r, 100, 0)
    f.signal(signal.SIGTTOU)
    wait_for(lambda: len(f.child_pids()) == 1, timeout=30, message="one child left")
    wait_for(lambda: job_counts([port]) == (100, 20, 100), timeout=20, interval=0.2,
             message=f"100/20 counted (now {job_counts([port])})")
    assert scrape(port)["forkq_children"][()] == 1
    assert f.stop() == 0


STUCK = '''
@pool.job(timeout=1, max_fails=1, skip_dead=True)
def stuck(job):
    time.sleep(120)  # in C: only the hard timeout (the child is replaced) ends it
'''


def test_a_job_failed_by_the_hard_timeout_is_counted_before_its_child_exits(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, EXTRA + STUCK)
    port = free_port()
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2", "--shutdown-timeout",
                                                       "0.5", "--metrics", f"127.0.0.1:{port}"],
                    env={"FORKQ_HARD_TIMEOUT_GRACE": "1"})
    (pid,) = wait_children_ready(f, r, 1)
    enqueue(redis_url, "stuck", [{}])
    wait_for(lambda: f.child_pids() and pid not in f.child_pids(), timeout=30,
             message="child replaced after the hard timeout")
    s = scrape(port)
    assert s["forkq_jobs_failed_total"][(("job", "stuck"),)] == 1
    assert s["forkq_jobs_processed_total"][(("job", "stuck"),)] == 1
    assert s["forkq_job_duration_seconds_sum"][(("job", "stuck"),)] >= 1
    assert f.stop() == 0


def test_the_endpoint_answers_only_get_metrics(tmp_path: Path, redis_url: str, r: redis.Redis,
                                               forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, EXTRA)
    port = free_port()
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2", "--metrics",
                                                       f"127.0.0.1:{port}"])
    (pid,) = wait_children_ready(f, r, 1)
    # Only the master holds the listening socket (children close it after fork).
    assert [c.laddr.port for c in psutil.Process(f.pid).net_connections()
            if c.status == "LISTEN"] == [port]
    assert all(c.laddr.port != port for c in psutil.Process(pid).net_connections(kind="tcp4"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/nope")
    assert conn.getresponse().status == 404
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/metrics", body=b"x")
    assert conn.getresponse().status == 405
    conn.close()
    # A scraper that connects and says nothing does not stop the master serving others.
    silent = socket.create_connection(("127.0.0.1", port))
    try:
        assert scrape(port)["forkq_children"][()] == 1
    finally:
        silent.close()
    assert f.stop() == 0


def _cli(tmp_path: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **FAST_ENV, PYTHONPATH=str(tmp_path), TEST_REDIS_URL=redis_url)
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "forkq", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("value", ["9090", "localhost:", "host:http", "127.0.0.1:70000", ":9090"])
def test_bad_metrics_value_is_a_usage_error(tmp_path: Path, redis_url: str, value: str) -> None:
    mod = write_jobs(tmp_path, EXTRA)
    p = _cli(tmp_path, redis_url, "--metrics", value, "--redis", redis_url, mod)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forkq: error: argument --metrics: "), p.stderr


def test_metrics_port_in_use_is_one_line_and_no_child_starts(tmp_path: Path, redis_url: str,
                                                              r: redis.Redis) -> None:
    mod = write_jobs(tmp_path, EXTRA)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        p = _cli(tmp_path, redis_url, "--metrics", f"127.0.0.1:{port}", "--redis", redis_url, mod)
    finally:
        taken.close()
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last == f"forkq: error: --metrics cannot listen on 127.0.0.1:{port}: address already in use"
    assert "Traceback" not in p.stderr
    assert not r.smembers(KEYS.processes)


# -- the pieces, in process (their real inputs: rows as the child builds them) ------------
def test_rows_are_cumulative_and_only_changed_names_are_sent() -> None:
    m = JobMetrics(2)
    m.record(0, "a", 0.003, False)
    m.record(1, "a", 2.0, True)
    m.record(1, "b", 20.0, False)
    (rows,) = m.changed_rows()
    a = rows["a"]
    assert a[:2] == [2, 1] and a[2] == pytest.approx(2.003)
    assert a[3] == 1 and sum(a[3:]) == 2  # 0.003 s in the first bucket (le 0.005)
    assert rows["b"][-1] == 1  # 20 s: +Inf only
    assert m.changed_rows() == []  # nothing new: nothing sent
    m.record(0, "b", 0.1, False)
    (rows,) = m.changed_rows()
    assert list(rows) == ["b"] and rows["b"][0] == 2  # the total, not the delta


def test_many_names_are_split_into_lines_below_pipe_buf() -> None:
    m = JobMetrics(1)
    for i in range(300):
        m.record(0, f"job_with_a_longish_name_{i}" + "x" * (i % 7) * 100, 123456.789 * i, i % 2 == 0)
    chunks = m.changed_rows()
    assert len(chunks) > 1
    lines = [messages.encode(messages.JobRows(rows=c)) for c in chunks]
    assert all(len(line) < select.PIPE_BUF for line in lines)
    # What the master decodes is what was sent.
    decoded = messages.LineReader().feed(b"".join(lines))
    assert [d.rows for d in decoded if isinstance(d, messages.JobRows)] == chunks
    assert sum(len(c) for c in chunks) == 300


def test_master_keeps_the_counts_of_exited_children_and_bounds_labels() -> None:
    names = {"a"}
    mm = MasterMetrics(lambda: names)
    one = JobMetrics(1)
    one.record(0, "a", 0.1, False)
    one.record(0, "gone", 0.1, True)
    for rows in one.changed_rows():
        mm.on_report(101, rows)
    mm.on_report(101, {"a": ["bad"], "b": [1, 2]})  # malformed rows are ignored
    mm.on_exit(101)
    two = JobMetrics(1)
    two.record(0, "a", 0.1, True)
    for rows in two.changed_rows():
        mm.on_report(102, rows)
    totals = mm.totals()
    assert set(totals) == {"a", "other"}
    assert totals["a"][:2] == [2, 1]
    assert totals["other"][:2] == [1, 1]


def test_parse_bind() -> None:
    assert parse_bind("0.0.0.0:9090") == ("0.0.0.0", 9090)
    assert parse_bind("[::1]:9191") == ("::1", 9191)
    for bad in ("9090", ":1", "h:0", "h:x"):
        with pytest.raises(ValueError):
            parse_bind(bad)


def test_children_of_a_master_without_metrics_collect_nothing(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    """Off by default: the master listens on nothing."""
    mod = write_jobs(tmp_path, EXTRA)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    wait_children_ready(f, r, 1)
    run_batch(redis_url, r, 10, 0)
    assert not [c for c in psutil.Process(f.pid).net_connections() if c.status == "LISTEN"]
    assert f.stop() == 0
