"""saq jobs and worker settings (``saq bench.peers.saq_tasks.settings``: one asyncio process).

``concurrency`` = the in-flight count asked for (``BENCH_THREADS``); everything else
is saq's default (its Redis queue ``default``, BLMOVE-based dequeue, 20 concurrent
Redis operations per queue).  saq names a job by its function's ``__qualname__``, so
the functions carry the benchmark's kind names.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from saq import Queue

from bench.peers._counter import URL_ENV, awork, done

QUEUE_NAME = "default"


def make_queue() -> Queue:
    return Queue.from_url(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"), name=QUEUE_NAME)


async def noop(ctx: dict[str, Any]) -> None:
    done()


async def sleep10(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.01)
    done()


async def asleep10(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.01)
    done()


async def sleep10incr(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.01)
    await awork()
    done()


settings = {
    "queue": make_queue(),
    "functions": [noop, sleep10, asleep10, sleep10incr],
    "concurrency": int(os.environ.get("BENCH_THREADS", "10")),
}
