"""The job module of bench/groups.py: ``forkq -p 2 -c 8 bench.groups_jobs``.

One no-op name, ``fair``: a job of group ``B`` records its pickup latency (start
minus ``enqueued_at``, through bench/peers/_counter.py's buffered ``probe``), every
other job only counts itself (``done``), so grouped and ungrouped runs execute the
same code.
"""

from __future__ import annotations

from forkq import Job, WorkerPool

from .peers._counter import done, probe

NAMESPACE = "bgroups"

pool = WorkerPool(NAMESPACE)


@pool.job("fair")
def fair(job: Job) -> None:
    if job.group == "B":
        probe(job.enqueued_at)
    else:
        done()
