"""The forkq job module of the async benchmark (bench/async_bench.py): 10 ms
``asyncio.sleep`` jobs on each child's event loop."""

from __future__ import annotations

import asyncio

from forkq import Job, WorkerPool

from .peers._counter import done

pool = WorkerPool("bench")


@pool.job("asleep10")
async def asleep10(job: Job) -> None:
    await asyncio.sleep(0.01)
    done()
