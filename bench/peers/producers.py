"""One producer per system, behind the same small interface.

``send(kind)`` is the system's ordinary one-job-per-call API (what an
application does per request); ``send_many(kind, n)`` is its bulk API where it
has one (forkq ``enqueue_many``, RQ ``enqueue_many`` with a pipeline), otherwise
``None``; ``fill(kind, n)`` puts a backlog in place as fast as the system
allows (setup only, never timed).  Kinds: ``noop``, ``sleep10``, ``incr``,
``sleep10incr``, ``sleep100incr`` (one INCR on the job's own connection, after
a 0/10/100 ms sleep), ``asleep10`` (``await asyncio.sleep(0.01)``: an ``async def``
job in every system; the async-only peers saq and taskiq have only it and a few
others), ``probe``
(a probe carries its enqueue time: forkq's payload has ``enqueued_at``, the
peers get it as the argument).

System libraries are imported lazily: this module is used both by forkq's
interpreter and by the peers' virtualenv.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

CHUNK = 1000
KINDS = ("noop", "sleep10", "incr", "sleep10incr", "sleep100incr", "probe", "asleep10")


class Producer:
    has_bulk = False

    def __init__(self, url: str) -> None:
        self.url = url

    def send(self, kind: str) -> None:
        raise NotImplementedError

    def send_many(self, kind: str, n: int) -> None:
        raise NotImplementedError

    def fill(self, kind: str, n: int, names: int = 0) -> None:
        for _ in range(n):
            self.send(kind)

    # Scheduled enqueue (bench/enqueue_bulk.py): a no-op due ``seconds`` from now.
    has_bulk_schedule = False

    def send_in(self, seconds: float) -> None:
        raise NotImplementedError

    def send_in_many(self, seconds: float, n: int) -> None:
        raise NotImplementedError

    # Scheduled trickle (bench/trickle.py --delay): a latency probe due ``seconds`` from
    # now, carrying its due time (the probe records start minus that).
    def send_probe_in(self, seconds: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ForkqProducer(Producer):
    has_bulk = True

    def __init__(self, url: str) -> None:
        from bench.jobs import NAMESPACE
        from forkq import Enqueuer

        self.enq = Enqueuer(url, NAMESPACE)

    def send(self, kind: str) -> None:
        self.enq.enqueue(kind)

    def send_many(self, kind: str, n: int) -> None:
        for start in range(0, n, CHUNK):
            self.enq.enqueue_many(kind, [None] * min(CHUNK, n - start))

    def fill(self, kind: str, n: int, names: int = 0) -> None:
        if not names:
            self.send_many(kind, n)
            return
        from bench.jobs import extra_names

        all_names = extra_names(names)
        per = n // len(all_names)
        for i, name in enumerate(all_names):
            count = per + (1 if i < n - per * len(all_names) else 0)
            for start in range(0, count, CHUNK):
                self.enq.enqueue_many(name, [None] * min(CHUNK, count - start))

    def schedule(self, n: int, seconds: float) -> None:
        """Park ``n`` jobs in the schedule set, due in ``seconds`` (scaling workload)."""
        from bench.jobs import NAMESPACE
        from forkq import job as jobcodec
        from forkq.keys import Keys

        keys = Keys(NAMESPACE)
        conn = self.enq._conn
        run_at = time.time() + seconds
        for start in range(0, n, CHUNK):
            members = {}
            for _ in range(min(CHUNK, n - start)):
                members[jobcodec.encode(jobcodec.build_payload("noop", None))] = run_at
            conn.zadd(keys.schedule, members)

    has_bulk_schedule = True

    def send_in(self, seconds: float) -> None:
        self.enq.enqueue_in("noop", seconds)

    def send_probe_in(self, seconds: float) -> None:
        # The probe reads enqueued_at, which a scheduled job gets as its due time.
        self.enq.enqueue_in("probe", seconds)

    def send_in_many(self, seconds: float, n: int) -> None:
        for start in range(0, n, CHUNK):
            self.enq.enqueue_in_many("noop", seconds, [None] * min(CHUNK, n - start))

    def close(self) -> None:
        self.enq.close()


class RQProducer(Producer):
    has_bulk = True

    def __init__(self, url: str) -> None:
        from redis import Redis
        from rq import Queue

        from bench.peers import rq_tasks

        self.tasks = rq_tasks
        self.conn = Redis.from_url(url)
        self.q = Queue("default", connection=self.conn)

    def _call(self, kind: str) -> tuple[Any, tuple[Any, ...]]:
        fn = getattr(self.tasks, kind)
        return fn, ((time.time(),) if kind == "probe" else ())

    def send(self, kind: str) -> None:
        fn, args = self._call(kind)
        self.q.enqueue(fn, *args)

    def send_many(self, kind: str, n: int) -> None:
        from rq import Queue

        for start in range(0, n, CHUNK):
            datas = [Queue.prepare_data(*self._call(kind)) for _ in range(min(CHUNK, n - start))]
            with self.conn.pipeline() as pipe:
                self.q.enqueue_many(datas, pipeline=pipe)
                pipe.execute()

    def fill(self, kind: str, n: int, names: int = 0) -> None:
        self.send_many(kind, n)

    def send_in(self, seconds: float) -> None:
        from datetime import timedelta

        self.q.enqueue_in(timedelta(seconds=seconds), self.tasks.noop)


class DramatiqProducer(Producer):
    def __init__(self, url: str) -> None:
        from bench.peers import dramatiq_tasks

        self.tasks = dramatiq_tasks

    def send(self, kind: str) -> None:
        actor = getattr(self.tasks, kind)
        if kind == "probe":
            actor.send(time.time())
        else:
            actor.send()

    def send_in(self, seconds: float) -> None:
        self.tasks.noop.send_with_options(delay=int(seconds * 1000))

    def send_probe_in(self, seconds: float) -> None:
        self.tasks.probe.send_with_options(args=(time.time() + seconds,), delay=int(seconds * 1000))


class CeleryProducer(Producer):
    def __init__(self, url: str) -> None:
        from bench.peers import celery_tasks

        self.tasks = celery_tasks

    def send(self, kind: str) -> None:
        task = getattr(self.tasks, kind)
        if kind == "probe":
            task.delay(time.time())
        else:
            task.delay()

    def fill(self, kind: str, n: int, names: int = 0) -> None:
        task = getattr(self.tasks, kind)
        with self.tasks.app.producer_or_acquire() as producer:
            for _ in range(n):
                task.apply_async(producer=producer)

    def send_in(self, seconds: float) -> None:
        self.tasks.noop.apply_async(countdown=seconds)


class HueyProducer(Producer):
    def __init__(self, url: str) -> None:
        from bench.peers import huey_tasks

        self.tasks = huey_tasks

    def send(self, kind: str) -> None:
        task = getattr(self.tasks, kind)
        if kind == "probe":
            task(time.time())
        else:
            task()

    def send_in(self, seconds: float) -> None:
        self.tasks.noop.schedule(delay=seconds)

    def send_probe_in(self, seconds: float) -> None:
        self.tasks.probe.schedule(args=(time.time() + seconds,), delay=seconds)


class ArqProducer(Producer):
    """arq is asyncio-only: one event loop kept for the producer's life."""

    def __init__(self, url: str) -> None:
        from arq import create_pool

        from bench.peers.arq_tasks import REDIS

        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(create_pool(REDIS))

    def send(self, kind: str) -> None:
        args = (time.time(),) if kind == "probe" else ()
        self.loop.run_until_complete(self.pool.enqueue_job(kind, *args))

    def fill(self, kind: str, n: int, names: int = 0) -> None:
        async def go() -> None:
            for start in range(0, n, CHUNK):
                await asyncio.gather(*[self.pool.enqueue_job(kind)
                                       for _ in range(min(CHUNK, n - start))])

        self.loop.run_until_complete(go())

    def send_in(self, seconds: float) -> None:
        self.loop.run_until_complete(self.pool.enqueue_job("noop", _defer_by=seconds))

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.aclose())
        self.loop.close()


class SaqProducer(Producer):
    """saq (asyncio-only): ``Queue.enqueue`` per job, many at once on one loop."""

    def __init__(self, url: str) -> None:
        from bench.peers.saq_tasks import make_queue

        self.loop = asyncio.new_event_loop()
        self.queue = make_queue()
        self.loop.run_until_complete(self.queue.connect())

    def send(self, kind: str) -> None:
        self.loop.run_until_complete(self.queue.enqueue(kind))

    def fill(self, kind: str, n: int, names: int = 0) -> None:
        async def go() -> None:
            for start in range(0, n, CHUNK):
                await asyncio.gather(*[self.queue.enqueue(kind)
                                       for _ in range(min(CHUNK, n - start))])

        self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.queue.disconnect())
        self.loop.close()


class TaskiqProducer(Producer):
    """taskiq (asyncio-only): ``task.kiq()`` per job on its Redis stream broker."""

    def __init__(self, url: str) -> None:
        from bench.peers import taskiq_tasks

        self.tasks = taskiq_tasks
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(taskiq_tasks.broker.startup())

    def send(self, kind: str) -> None:
        self.loop.run_until_complete(self.tasks.TASKS[kind].kiq())

    def fill(self, kind: str, n: int, names: int = 0) -> None:
        task = self.tasks.TASKS[kind]

        async def go() -> None:
            for start in range(0, n, CHUNK):
                await asyncio.gather(*[task.kiq() for _ in range(min(CHUNK, n - start))])

        self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.tasks.broker.shutdown())
        self.loop.close()


PRODUCERS: dict[str, type[Producer]] = {
    "forkq": ForkqProducer, "rq": RQProducer, "dramatiq": DramatiqProducer,
    "celery": CeleryProducer, "huey": HueyProducer, "arq": ArqProducer,
    "saq": SaqProducer, "taskiq": TaskiqProducer,
}


def make(system: str, url: str) -> Producer:
    return PRODUCERS[system](url)
