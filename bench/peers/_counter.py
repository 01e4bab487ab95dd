"""Counts finished benchmark jobs the same way for every system under test.

Every benchmark job, whatever the system, ends by calling ``done()`` (or
``probe(t)`` for latency probes).  The call only bumps an in-process counter; a
daemon thread per process flushes the count to Redis (``INCRBY bench:done``)
every 10 ms.  That way completion is measured identically for forkq and every
peer without adding a Redis round trip to each job (which would halve the
throughput of the fast systems and hide the differences), and the harness only
has to poll one key.  Accuracy is bounded by the flush interval (10 ms), small
next to runs of several seconds.

RQ forks a short-lived "work horse" per job that exits with ``os._exit``, so an
in-process buffer would be lost: with ``BENCH_COUNTER_DIRECT=1`` each call
writes to Redis at once instead.

Only the standard library and redis-py: this module also runs in the peers'
virtualenv, where forkq is not installed.
"""

from __future__ import annotations

import os
import threading
import time

import redis

URL_ENV = "BENCH_REDIS_URL"
DIRECT_ENV = "BENCH_COUNTER_DIRECT"
DONE_KEY = "bench:done"
WORK_KEY = "bench:work"
LAT_KEY = "bench:lat"
FLUSH_EVERY = 0.01


class _State:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.count = 0
        self.lat: list[float] = []
        self.started = False
        self.conn: redis.Redis | None = None


_state = _State()
_DIRECT = os.environ.get(DIRECT_ENV) == "1"


def _reset_after_fork() -> None:
    # A forked child starts with its own empty counter, a fresh lock (the
    # parent's might have been held at fork time) and no flusher thread yet.
    global _state
    _state = _State()


os.register_at_fork(after_in_child=_reset_after_fork)


def _connect() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))


def _flusher(st: _State) -> None:
    conn = _connect()
    while True:
        time.sleep(FLUSH_EVERY)
        with st.lock:
            n, st.count = st.count, 0
            lat, st.lat = st.lat, []
        if not n and not lat:
            continue
        try:
            pipe = conn.pipeline(transaction=False)
            if lat:
                pipe.rpush(LAT_KEY, *[repr(x) for x in lat])
            if n:
                pipe.incrby(DONE_KEY, n)
            pipe.execute()
        except redis.RedisError:
            with st.lock:  # keep the counts for the next try
                st.count += n
                st.lat[:0] = lat
            time.sleep(0.1)


def _record(latency: float | None) -> None:
    st = _state
    if _DIRECT:
        if st.conn is None:
            st.conn = _connect()
        if latency is not None:
            st.conn.rpush(LAT_KEY, repr(latency))
        # INCRBY, not INCR: the harness subtracts every INCRBY (the counter's own
        # traffic), while INCR is the job body's one Redis call (``work()``).
        st.conn.incrby(DONE_KEY, 1)
        return
    with st.lock:
        st.count += 1
        if latency is not None:
            st.lat.append(latency)
        if st.started:
            return
        st.started = True
    threading.Thread(target=_flusher, args=(st,), name="bench-counter", daemon=True).start()


def done() -> None:
    """A benchmark job finished."""
    _record(None)


def probe(enqueued_at: float) -> None:
    """A latency probe started: record start minus enqueue time (seconds)."""
    _record(time.time() - enqueued_at)


_local = threading.local()


def work() -> None:
    """The body of the I/O workloads: one real Redis round trip (``INCR``), as user code does.

    Each thread has its own connection (made on first use, after any fork), the way
    an application's job code holds its own client; it is not the system's connection.
    """
    conn = getattr(_local, "conn", None)
    if conn is None or getattr(_local, "pid", 0) != os.getpid():
        conn = _local.conn = _connect()
        _local.pid = os.getpid()
    # A real INCR: redis-py's incr() sends INCRBY, which the harness counts as its own.
    conn.execute_command("INCR", WORK_KEY)


async def awork() -> None:
    """``work()`` for asyncio systems (arq): one INCR on the process's own async client."""
    import redis.asyncio as aredis

    conn = getattr(_local, "aconn", None)
    if conn is None or getattr(_local, "apid", 0) != os.getpid():
        conn = _local.aconn = aredis.Redis.from_url(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))
        _local.apid = os.getpid()
    await conn.execute_command("INCR", WORK_KEY)
