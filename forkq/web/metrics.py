"""``/metrics`` of ``forkq web``: the cluster-wide view read from Redis (DESIGN.md §10).

A custom ``prometheus_client`` collector reads Redis at scrape time, so every
dashboard replica reports the same numbers and nothing is kept in memory.  The
per-job counters and histograms come from the master (``forkq --metrics``);
these are the gauges only Redis knows: what is waiting, where, for how long.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..client import Client
from . import queries

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RedisCollector(Collector):
    """One scrape = ``Client.stats()``, ``Client.queues()`` and the live processes' queues
    (a few pipelined round trips, whatever the size of the sets)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        st = self._client.stats()
        qs = self._client.queues()
        served = queries.served_queues(queries.processes(self._client.connection, self._client.keys))
        size = GaugeMetricFamily("forkq_queue_size", "Jobs waiting in a queue.", labels=["queue"])
        lat = GaugeMetricFamily("forkq_queue_latency_seconds",
                                "Seconds since the next job of a queue was enqueued (0 when empty).",
                                labels=["queue"])
        # Not in DESIGN.md's list: what "no live pool serves this queue" alerts need.
        pools = GaugeMetricFamily("forkq_queue_pools",
                                  "Live, not quiet pools that take jobs from a queue.", labels=["queue"])
        for q in qs:
            size.add_metric([q.job_name], q.count)
            lat.add_metric([q.job_name], q.latency)
            pools.add_metric([q.job_name], served.get(q.job_name, 0))
        yield size
        yield lat
        yield pools
        yield GaugeMetricFamily("forkq_scheduled_size", "Jobs in the schedule set.", value=st.scheduled)
        yield GaugeMetricFamily("forkq_retry_size", "Jobs waiting to be retried.", value=st.retry)
        yield GaugeMetricFamily("forkq_dead_size", "Jobs in the dead set.", value=st.dead)
        yield GaugeMetricFamily("forkq_processes", "Live worker pools (one per child process).",
                                value=st.processes)


def exposition(client: Client) -> bytes:
    """The Prometheus text format for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(client))
    return generate_latest(registry)
