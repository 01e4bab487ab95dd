"""arq jobs and worker (``python -m bench.peers.arq_tasks``: one asyncio worker process).

Settings: ``max_jobs`` = the thread count asked for (``BENCH_THREADS``), and
``poll_delay`` 0.01 s instead of arq's 0.5 s default: arq has no blocking pop, it
sleeps ``poll_delay`` between polls even with a backlog, so the default would cap
it at ``max_jobs / 0.5`` jobs/s.  Logging at WARNING (arq's CLI logs every job
at INFO; no system here is measured with per-job logging).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from arq.connections import RedisSettings
from arq.worker import run_worker

from bench.peers._counter import URL_ENV, awork, done
from bench.peers._counter import probe as _probe

REDIS = RedisSettings.from_dsn(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))


async def noop(ctx: dict[str, Any]) -> None:
    done()


async def sleep10(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.01)
    done()


async def asleep10(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.01)
    done()


async def incr(ctx: dict[str, Any]) -> None:
    await awork()
    done()


async def sleep10incr(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.01)
    await awork()
    done()


async def sleep100incr(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.1)
    await awork()
    done()


async def probe(ctx: dict[str, Any], enqueued_at: float) -> None:
    _probe(enqueued_at)


class WorkerSettings:
    functions = [noop, sleep10, asleep10, incr, sleep10incr, sleep100incr, probe]
    redis_settings = REDIS
    max_jobs = int(os.environ.get("BENCH_THREADS", "10"))
    poll_delay = 0.01


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings)
