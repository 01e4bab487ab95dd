"""Small helpers shared by tests (no Redis fakes here: everything talks to the real server)."""

from __future__ import annotations

import threading
from typing import Any

import forkq


class Recorder:
    """Thread-safe record of what handlers saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)

    def snapshot(self) -> list[Any]:
        with self.lock:
            return list(self.items)


def start(pools: list[forkq.WorkerPool], pool: forkq.WorkerPool, url: str, concurrency: int = 4) -> forkq.WorkerPool:
    pool.start(url, concurrency=concurrency)
    pools.append(pool)
    return pool
