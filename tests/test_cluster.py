"""Redis Cluster: a namespace lives in one slot; forkq pins to its owner and follows it.

Real servers on loopback (tests/ha_servers.py): three masters, the slots split in
three.  The migration test runs forkq through the CLI with the jobs recording
their completions on a separate standalone Redis (the ``redis_url`` fixture).
Figures printed with ``-s`` are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from ha_servers import ClusterSet
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis_server import wait_for
from test_master import ForkqProc

import forkq
from forkq.connection import ConnectionSpec, parse_target, validate_url
from forkq.keys import Keys


def slot_of(namespace: str) -> int:
    return key_slot(("{" + namespace + "}").encode())


def keys_in_slot(node: object, namespace: str) -> int:
    return int(node.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot_of(namespace)))  # type: ignore[attr-defined]


def namespace_on(cluster: ClusterSet, node: redis.Redis | object, prefix: str) -> str:
    """A namespace whose slot ``node`` owns."""
    for i in range(10_000):
        ns = f"{prefix}{i}"
        if cluster.owner(slot_of(ns)) is node:
            return ns
    raise AssertionError("no namespace found")


# -- URLs (no server needed) ------------------------------------------------------------

def test_cluster_url_names_the_nodes_never_the_password() -> None:
    spec = ConnectionSpec.of("redis+cluster://:pw9@10.0.0.1:7000,10.0.0.2:7001?socket_timeout=3")
    assert spec.kind == "cluster" and spec.describe() == "redis+cluster://10.0.0.1:7000,10.0.0.2:7001"
    assert "pw9" not in repr(spec)
    t = parse_target("rediss+cluster://u:p@h:7000")
    assert t.tls and t.nodes == (("h", 7000),) and t.kwargs == {"username": "u", "password": "p"}


@pytest.mark.parametrize(("url", "why"), [
    ("redis+cluster://h:7000/2", "only database 0"),
    ("redis+cluster://h:7000?db=1", "only database 0"),
    ("redis+cluster://h:7000?cluster=true", "unknown option"),
    ("redis+cluster://", "no host"),
    ("redis+cluster://h:7000?sentinel_password=x", "unknown option"),
])
def test_bad_cluster_urls_are_config_errors(url: str, why: str) -> None:
    with pytest.raises(forkq.ConfigError, match=why):
        validate_url(url)


def test_cluster_refuses_an_empty_namespace() -> None:
    spec = ConnectionSpec.of("redis+cluster://127.0.0.1:7000")
    with pytest.raises(forkq.ConfigError, match="non-empty namespace"):
        spec.for_namespace("")
    with pytest.raises(forkq.ConfigError, match="non-empty namespace"):
        spec.connect()  # not pinned to a namespace


# -- a live cluster -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSet]:
    c = ClusterSet().start()
    yield c
    c.cleanup()


def _run_pool(url: str, ns: str, n: int) -> list[str]:
    got: list[str] = []
    lock = threading.Lock()
    pool = forkq.WorkerPool(namespace=ns, config=forkq.Config(idle_poll_interval=0.2))

    @pool.job
    def work(job: forkq.Job) -> None:
        with lock:
            got.append(job.id)

    e = forkq.Enqueuer(url, ns)
    try:
        jids = {j.id for j in e.enqueue_many("work", [{"i": i} for i in range(n)])}
    finally:
        e.close()
    pool.start(url, concurrency=4)
    try:
        wait_for(lambda: len(got) >= n, timeout=30, message=f"{n} jobs of {ns}")
    finally:
        pool.stop(timeout=5)
    assert set(got) == jids
    return got


def test_a_url_naming_a_node_that_does_not_own_the_slot_works(cluster: ClusterSet) -> None:
    owner = cluster.nodes[0]
    ns = namespace_on(cluster, owner, "away")
    other = cluster.nodes[1]
    _run_pool(cluster.url_of(other), ns, 50)
    c = forkq.Client(cluster.url_of(other), ns)
    try:
        assert c.queues()[0].count == 0 and c.stats().processed == 50
    finally:
        c.close()
    assert keys_in_slot(owner, ns) > 0


def test_two_namespaces_on_two_nodes_run_at_once(cluster: ClusterSet) -> None:
    a = namespace_on(cluster, cluster.nodes[1], "na")
    b = namespace_on(cluster, cluster.nodes[2], "nb")
    results: dict[str, list[str]] = {}
    threads = [threading.Thread(target=lambda ns=ns: results.__setitem__(ns, _run_pool(cluster.url, ns, 200)))
               for ns in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results[a]) == 200 and len(results[b]) == 200
    assert keys_in_slot(cluster.nodes[1], a) > 0 and keys_in_slot(cluster.nodes[2], b) > 0


def test_a_redis_cluster_client_is_accepted(cluster: ClusterSet) -> None:
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster.nodes[0].port)])
    try:
        spec = ConnectionSpec.of(rc)
        assert spec.kind == "cluster"
        ns = namespace_on(cluster, cluster.nodes[2], "rc")
        e = forkq.Enqueuer(rc, ns)
        try:
            e.enqueue("x")
        finally:
            e.close()
        assert cluster.nodes[2].client().llen(Keys(ns).queue("x")) == 1
    finally:
        rc.close()


CLUSTER_ACL_EXTRA = "+cluster|slots +spublish +ssubscribe +sunsubscribe"


def test_the_documented_acl_line_plus_the_cluster_commands_runs_everything(cluster: ClusterSet) -> None:
    from test_security import acl_line

    ns = namespace_on(cluster, cluster.nodes[1], "acl")
    for n in cluster.nodes:  # ACL users are per node in a cluster
        admin = n.client()
        admin.execute_command("ACL", "SETUSER", *acl_line("clworker", "cl-pw", ns), *CLUSTER_ACL_EXTRA.split())
        admin.execute_command("ACL", "LOG", "RESET")
    try:
        url = f"redis+cluster://clworker:cl-pw@127.0.0.1:{cluster.nodes[0].port}"
        _run_pool(url, ns, 50)
        denied = {n.port: n.client().execute_command("ACL", "LOG") for n in cluster.nodes}
        assert all(v == [] for v in denied.values()), denied
    finally:
        for n in cluster.nodes:
            n.client().execute_command("ACL", "DELUSER", "clworker")


# -- wakes: sharded pub/sub on the slot's owner ------------------------------------------

def _shard_subscribers(node: object, channel: str) -> int:
    reply = node.client().execute_command("PUBSUB", "SHARDNUMSUB", channel)  # type: ignore[attr-defined]
    return int(reply[1])


def _classic_subscribers(node: object, channel: str) -> int:
    reply = node.client().execute_command("PUBSUB", "NUMSUB", channel)  # type: ignore[attr-defined]
    return int(reply[1])


def _runs_soon(pool: forkq.WorkerPool, url: str, ran: threading.Event, within: float) -> float:
    """Enqueue one ``ping`` into the idle pool; seconds until it ran (fails past ``within``)."""
    ran.clear()
    e = forkq.Enqueuer(url, pool.keys.namespace)
    try:
        t0 = time.monotonic()
        e.enqueue("ping")
    finally:
        e.close()
    assert ran.wait(within), f"an idle pool was not woken within {within} s (its poll is 60 s)"
    return time.monotonic() - t0


def test_wakes_go_over_sharded_pubsub_and_follow_a_slot_migration(cluster: ClusterSet) -> None:
    src, dest = cluster.nodes[1], cluster.nodes[2]
    ns = namespace_on(cluster, src, "shw")
    channel = Keys(ns).wake_channel
    ran = threading.Event()
    # A 60 s idle poll: a job that runs within seconds was woken by a wake message.
    pool = forkq.WorkerPool(namespace=ns, config=forkq.Config(idle_poll_interval=60.0))

    @pool.job
    def ping(job: forkq.Job) -> None:
        ran.set()

    before = [int(n.client().info("commandstats").get("cmdstat_spublish", {}).get("calls", 0))
              for n in cluster.nodes]
    url = cluster.url_of(cluster.nodes[0])
    pool.start(url, concurrency=2)
    try:
        wait_for(lambda: _shard_subscribers(src, channel) == 1, timeout=10, message="SSUBSCRIBE at the owner")
        assert all(_classic_subscribers(n, channel) == 0 for n in cluster.nodes)
        _runs_soon(pool, url, ran, within=5.0)
        after = [int(n.client().info("commandstats").get("cmdstat_spublish", {}).get("calls", 0))
                 for n in cluster.nodes]
        assert after[1] > before[1], "the enqueue's wake was not an SPUBLISH on the owner"

        # The slot moves: the old owner ends the shard subscription, the pool subscribes
        # again at the new owner, and wakes reach it there.
        cluster.migrate_slot(slot_of(ns), dest)
        wait_for(lambda: _shard_subscribers(dest, channel) == 1, timeout=15,
                 message="SSUBSCRIBE again at the new owner")
        assert _shard_subscribers(src, channel) == 0
        _runs_soon(pool, url, ran, within=5.0)
    finally:
        pool.stop(timeout=5)
        cluster.migrate_slot(slot_of(ns), src)  # leave the layout as the other tests expect


# -- slot migration with work flowing ------------------------------------------------------

JOBS = '''
import os
import time

import redis

import forkq

pool = forkq.WorkerPool(namespace="{ns}")
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
'''


@pytest.mark.slow
def test_slot_migration_mid_run_loses_nothing_and_work_continues_at_the_new_owner(
        cluster: ClusterSet, tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    src = cluster.nodes[0]
    dest = cluster.nodes[1]
    ns = namespace_on(cluster, src, "mig")
    keys = Keys(ns)
    (tmp_path / "cljobs.py").write_text(JOBS.format(ns=ns))
    f = ForkqProc(tmp_path, cluster.url_of(cluster.nodes[2]), "cljobs", ["-p", "2", "-c", "4"],
                  env={"RESULTS_URL": redis_url, "FORKQ_LOG_LEVEL": "WARNING"})
    forkqs.append(f)
    acked: list[tuple[str, float]] = []
    refused = [0]
    stop = threading.Event()

    def produce() -> None:
        e = forkq.Enqueuer(cluster.url, ns)
        try:
            while not stop.is_set():
                try:
                    acked.append((e.enqueue("work").id, time.time()))
                except forkq.EnqueueError:
                    refused[0] += 1
                time.sleep(0.003)
        finally:
            e.close()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        wait_for(lambda: f.proc.poll() is None and r.hlen("test:runs") >= 300, timeout=60, interval=0.05,
                 message="work flowing")
        t0 = time.time()
        # One key at a time, slowly: the pools and the producer run against a slot that is
        # half moved (ASK / TRYAGAIN) for seconds.
        moved = cluster.migrate_slot(slot_of(ns), dest, pause=0.2, batch=1)
        t_moved = time.time()
        assert cluster.owner(slot_of(ns)) is dest
        marker = forkq.Enqueuer(cluster.url, ns)
        try:
            marker_jid = marker.enqueue("work").id
        finally:
            marker.close()
        wait_for(lambda: r.hexists("test:done_at", marker_jid), timeout=30, message="work at the new owner")
        resume = float(r.hget("test:done_at", marker_jid)) - t_moved
        time.sleep(1.0)  # keep work flowing at the new owner for a while
    finally:
        stop.set()
        producer.join(30)
    jids = [j for j, _ in acked]

    def settled() -> bool:
        assert f.proc.poll() is None, f.log()[-3000:]
        got = r.hgetall("test:runs")
        return all(j.encode() in got for j in jids)

    wait_for(settled, timeout=90, interval=0.2, message=f"{len(jids)} enqueued jobs done")
    runs = {k.decode(): int(v) for k, v in r.hgetall("test:runs").items()}
    lost = [j for j in jids if j not in runs]
    dups = sum(n - 1 for n in runs.values() if n > 1)
    d = dest.client()
    wait_for(lambda: sum(d.hlen(k) for k in d.scan_iter(match=keys.inprogress("") + "*")) == 0,
             timeout=20, message="nothing in progress at the new owner")
    assert src.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot_of(ns)) == 0
    f.signal(15)
    assert f.wait(30) == 0, f.log()[-3000:]
    print(f"\nslot migration: {len(jids)} enqueued, {refused[0]} refused, {moved} keys moved in "
          f"{t_moved - t0:.2f}s, lost {len(lost)}, duplicated {dups}, "
          f"a job enqueued after the move ran {resume:.2f}s later")
    assert not lost and dups == 0 and refused[0] == 0
    assert resume < 10.0
