"""The forkq job module of the async workload (l): ``forkq -c 1 --async-concurrency 1000 bench.async_jobs``.

Apart from bench/jobs.py on purpose: a pool with an ``async def`` job fills its
threads and its async slots from one budget, so a sync benchmark pool that also
registered this job would take up to ``--async-concurrency`` sync jobs per fetch
and hold them in the child (a deep prefetch no sync-only pool has); every sync
workload's figures would then describe that mixed pool, not forkq's default.
"""

from __future__ import annotations

import asyncio

from forkq import Job, WorkerPool

from .jobs import NAMESPACE
from .peers._counter import done

pool = WorkerPool(NAMESPACE)


@pool.job("asleep10")
async def asleep10(job: Job) -> None:
    # Runs on each child's event loop (--async-concurrency).
    await asyncio.sleep(0.01)
    done()
