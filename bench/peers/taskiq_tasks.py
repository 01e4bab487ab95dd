"""taskiq tasks on its Redis stream broker (``taskiq worker bench.peers.taskiq_tasks:broker``).

``RedisStreamBroker`` (taskiq-redis) is the broker with acknowledgements (XREADGROUP,
XACK after the task, XAUTOCLAIM of abandoned messages): the one comparable to a
reliable fetch.  ``consumer_id="0"``: the consumer group reads the stream from its
start, so a backlog added before the worker's first start is delivered (taskiq's
default ``"$"`` makes a group created after the fill skip every queued message: the
worker would wait forever).  No result backend (taskiq's default: results are
dropped), as for the other systems.  The worker CLI flags set the rest:
``--workers`` processes, ``--max-async-tasks`` in flight per process.
"""

from __future__ import annotations

import asyncio
import os

from taskiq_redis import RedisStreamBroker

from bench.peers._counter import URL_ENV, awork, done

broker = RedisStreamBroker(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"),
                           queue_name="taskiq", consumer_id="0")


@broker.task(task_name="noop")
async def noop() -> None:
    done()


@broker.task(task_name="sleep10")
async def sleep10() -> None:
    await asyncio.sleep(0.01)
    done()


@broker.task(task_name="asleep10")
async def asleep10() -> None:
    await asyncio.sleep(0.01)
    done()


@broker.task(task_name="sleep10incr")
async def sleep10incr() -> None:
    await asyncio.sleep(0.01)
    await awork()
    done()


TASKS = {"noop": noop, "sleep10": sleep10, "asleep10": asleep10, "sleep10incr": sleep10incr}
