"""Job module for bench/sidekiq_push.py: ``forkq -p 2 -c 10 bench.sk7_jobs``.

The plain layout (``namespace=""``, Sidekiq 7/8's), one job ``Probe`` that records
how long after its ``enqueued_at`` it started (bench.peers._counter.probe).
"""

from __future__ import annotations

from forkq import Job, WorkerPool

from .peers._counter import probe

pool = WorkerPool("")


@pool.job("Probe")
def probe_job(job: Job) -> None:
    probe(job.enqueued_at)
