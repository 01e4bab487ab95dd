"""Redis Sentinel: URLs, every connection following the master, and failover mid-run.

Real servers on loopback (tests/ha_servers.py): one master, one replica, three
sentinels.  The failover test runs forkq through the CLI (``-p 2 -c 4``) with the
jobs recording their completions on a *separate* standalone Redis (the
``redis_url`` fixture), so what ran is known whatever happens to the data set
behind Sentinel.  The figures it prints with ``-s`` are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from ha_servers import SERVICE, SentinelSet
from redis.sentinel import Sentinel
from redis_server import wait_for
from test_master import ForkqProc

import forkq
from forkq.connection import ConnectionSpec, parse_target, validate_url
from forkq.keys import Keys

NS = "ha"
KEYS = Keys(NS)


# -- URLs (no server needed) ------------------------------------------------------------

def test_sentinel_url_names_sentinels_service_and_db_never_the_password() -> None:
    url = "redis+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2:26380/mymaster/3?socket_timeout=2"
    spec = ConnectionSpec.of(url)
    assert spec.describe() == "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster/3"
    assert "s3cret" not in repr(spec)
    t = parse_target(url)
    assert t.nodes == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert t.service == "mymaster" and t.kwargs["db"] == 3 and t.kwargs["socket_timeout"] == 2.0
    assert t.kwargs["password"] == "s3cret" and t.kwargs["username"] == "app"
    tls = parse_target("rediss+sentinel://h:1/svc?sentinel_password=x&ssl_cert_reqs=none")
    assert tls.tls and tls.sentinel_kwargs == {"password": "x"} and tls.kwargs["ssl_cert_reqs"] == "none"


@pytest.mark.parametrize(("url", "why"), [
    ("redis+sentinel://h:26379", "no service name"),
    ("redis+sentinel://h:26379/svc/x", "is not a number"),
    ("redis+sentinel://h:abc/svc", "port 'abc' is not a number"),
    ("redis+sentinel://u:hunter2@h:1/svc?cluster=true", "unknown option"),
    ("redis://u:hunter2@h:1/0?cluster=true", "unknown option"),
])
def test_bad_sentinel_urls_are_config_errors_without_the_password(url: str, why: str) -> None:
    with pytest.raises(forkq.ConfigError, match=why) as info:
        validate_url(url)
    assert "hunter2" not in str(info.value)


def test_unknown_url_option_is_a_usage_error_exit_2(tmp_path: Path) -> None:
    (tmp_path / "noapp.py").write_text(
        "import forkq\npool = forkq.WorkerPool(namespace='x')\n\n@pool.job\ndef j(job):\n    pass\n")
    p = subprocess.run([sys.executable, "-m", "forkq", "--redis", "redis://u:hunter2@127.0.0.1:1/0?cluster=true",
                        "noapp"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2, p.stderr
    assert "unknown option(s) cluster" in p.stderr and "hunter2" not in p.stderr
    assert "Traceback" not in p.stderr


# -- a live Sentinel set ------------------------------------------------------------------

@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    s = SentinelSet().start()
    yield s
    s.cleanup()


@pytest.fixture
def sset(sentinels: SentinelSet) -> Iterator[SentinelSet]:
    sentinels.wait_settled()
    sentinels.master().client().flushall()
    yield sentinels


def test_enqueuer_client_and_pool_find_the_master_through_the_sentinels(sset: SentinelSet) -> None:
    done = threading.Event()
    pool = forkq.WorkerPool(namespace=NS, config=forkq.Config(idle_poll_interval=0.2))

    @pool.job
    def hello(job: forkq.Job) -> None:
        done.set()

    e = forkq.Enqueuer(sset.url, NS, wait_replicas=1)
    try:
        e.enqueue("hello")
        assert sset.master().client().llen(KEYS.queue("hello")) == 1
        c = forkq.Client(sset.url, NS)
        assert c.describe() == sset.url.replace("/0", "")  # db 0 is not printed
        assert c.queues()[0].count == 1
        pool.start(sset.url, concurrency=2)
        try:
            assert done.wait(15), "the job did not run"
        finally:
            pool.stop(timeout=5)
        assert c.queues()[0].count == 0
    finally:
        e.close()


def test_enqueue_with_more_replicas_than_confirm_says_may_or_may_not(sset: SentinelSet) -> None:
    e = forkq.Enqueuer(sset.url, NS, wait_replicas=2, wait_timeout=0.2)
    try:
        with pytest.raises(forkq.EnqueueError, match="may or may not be enqueued.*1 of 2 replicas"):
            e.enqueue("x")
        with pytest.raises(forkq.EnqueueError, match="may or may not"):
            e.enqueue_in("x", 30)
    finally:
        e.close()


def test_a_sentinel_master_for_client_is_accepted(sset: SentinelSet) -> None:
    s = Sentinel([("127.0.0.1", n.port) for n in sset.sentinels])
    spec = ConnectionSpec.of(s.master_for(SERVICE))
    assert spec.kind == "sentinel" and spec.describe().endswith(f"/{SERVICE}")
    e = forkq.Enqueuer(s.master_for(SERVICE), NS)
    try:
        e.enqueue("y")
    finally:
        e.close()
    assert sset.master().client().llen(KEYS.queue("y")) == 1
    with pytest.raises(forkq.ConfigError, match="replica client"):
        ConnectionSpec.of(s.slave_for(SERVICE))


# -- failover with work flowing -------------------------------------------------------------

JOBS = '''
import os
import time

import redis

import forkq

pool = forkq.WorkerPool(namespace="{ns}")
pool.periodically_enqueue("* * * * * *", "tick")
_conns = {{}}


def R():
    c = _conns.get(os.getpid())
    if c is None:
        c = _conns[os.getpid()] = redis.Redis.from_url(os.environ["RESULTS_URL"])
    return c


@pool.job
def work(job):
    time.sleep(0.01)
    p = R().pipeline(transaction=False)
    p.hincrby("test:runs", job.id, 1)
    p.hsetnx("test:done_at", job.id, repr(time.time()))
    p.execute()


@pool.job
def tick(job):
    R().hincrby("test:ticks", job.id, 1)
'''


class Producer(threading.Thread):
    """Enqueues ``work`` jobs one at a time with wait_replicas=1 until stopped.

    With one replica, enqueues after the switch fail ("may or may not") until the
    old master is demoted and resyncs as the new master's replica.
    """

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acked: list[tuple[str, float]] = []
        self.uncertain = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        e = forkq.Enqueuer(self.url, NS, wait_replicas=1, wait_timeout=1.0)
        try:
            while not self.stop_flag.is_set():
                try:
                    j = e.enqueue("work")
                    self.acked.append((j.id, time.time()))
                except forkq.EnqueueError:
                    self.uncertain += 1
                time.sleep(0.004)
        finally:
            e.close()


def _runs(r: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(key).items()}


@pytest.mark.slow
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_failover_mid_run_loses_no_acknowledged_job(attempt: int, sset: SentinelSet, tmp_path: Path,
                                                    redis_url: str, r: redis.Redis,
                                                    forkqs: list[ForkqProc]) -> None:
    (tmp_path / "hajobs.py").write_text(JOBS.format(ns=NS))
    f = ForkqProc(tmp_path, sset.url, "hajobs", ["-p", "2", "-c", "4"],
                  env={"RESULTS_URL": redis_url, "FORKQ_LOG_LEVEL": "WARNING"})
    forkqs.append(f)
    prod = Producer(sset.url)
    prod.start()
    switches = sset.watch_switches()
    try:
        wait_for(lambda: f.proc.poll() is None and r.hlen("test:runs") >= 300, timeout=60, interval=0.05,
                 message="work flowing")
        t_failover = time.time()
        old, new = sset.failover()
        t_switched = time.time()
        # Work resumes: a job enqueued now (no WAIT: the new master has no replica until
        # the old one is demoted and resynced) runs on the new master.
        marker = forkq.Enqueuer(sset.url, NS, wait_replicas=0)
        try:
            marker_jid = marker.enqueue("work").id
        finally:
            marker.close()
        wait_for(lambda: r.hexists("test:done_at", marker_jid), timeout=60, message="work resumes")
        done_at = float(r.hget("test:done_at", marker_jid))
        # From when the sentinels last moved the master: Sentinel itself sometimes
        # fails over once more on its own right after a forced failover (a sentinel
        # with a stale role report demotes the new master), and no client can write
        # while no server is master.
        resume = done_at - max(t_switched, switches.last_before(done_at) or 0.0)
        wait_for(lambda: f.proc.poll() is None and any(
            t > t_switched for _, t in prod.acked[-50:]), timeout=30, message="enqueues resume")
        time.sleep(2.0)  # keep work flowing on the new master for a while
    finally:
        prod.stop_flag.set()
        prod.join(30)
        switches.stop()
    acked = [j for j, _ in prod.acked]
    new_master = sset.master().client()  # ours, or the one the sentinels moved to after it

    def settled() -> bool:
        assert f.proc.poll() is None, f.log()[-3000:]
        got = r.hgetall("test:runs")
        return all(j.encode() in got for j in acked)

    wait_for(settled, timeout=90, interval=0.2, message=f"{len(acked)} acknowledged jobs done")
    runs = _runs(r, "test:runs")
    lost = [j for j in acked if j not in runs]
    dups = sum(n - 1 for n in runs.values() if n > 1)
    # Nothing left in progress once the pools are idle, on the new master.
    wait_for(lambda: sum(new_master.hlen(k) for k in new_master.scan_iter(
        match=KEYS.inprogress("") + "*")) == 0, timeout=20, message="nothing in progress")
    ticks = _runs(r, "test:ticks")
    epochs = sorted(int(k.rsplit(":", 1)[1]) for k in ticks)
    f.signal(15)
    assert f.wait(30) == 0, f.log()[-3000:]
    resent = sum(int(m) for m in re.findall(r"sending the last (\d+) ack batches again", f.log()))
    print(f"\nfailover #{attempt}: {len(acked)} acknowledged, {prod.uncertain} may-or-may-not, "
          f"lost {len(lost)}, duplicated {dups}, resumed {resume:.2f}s after the sentinels switched "
          f"({t_switched - t_failover:.2f}s after SENTINEL FAILOVER), ack batches re-sent {resent}, "
          f"ticks {len(ticks)} (max runs {max(ticks.values())}), "
          f"switches by the sentinels {len(switches.switches)}")
    assert not lost, f"{len(lost)} acknowledged jobs lost"
    # Duplicates: only jobs taken from the old master in the instant before the switch.
    assert dups <= 2 * 8, f"{dups} duplicates"
    assert resume < 10.0, f.log()[-4000:] + sset.logs()
    # Ours, plus at most one the sentinels made on their own.
    assert 1 <= len(switches.switches) <= 2, switches.switches
    assert all(n == 1 for n in ticks.values()), {k: n for k, n in ticks.items() if n != 1}
    missing = sorted(set(range(epochs[0], epochs[-1] + 1)) - set(epochs))
    assert not missing, f"periodic occurrences never ran: {missing}"
    r.flushall()
