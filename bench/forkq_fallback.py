"""FALLBACK runner for forkq while its CLI (``python -m forkq``) is not usable.

    python -m bench.forkq_fallback -p 2 -c 10 --redis URL

Imports ``bench.jobs``, forks ``-p`` children, each running ``pool.start(url,
concurrency=c)`` until SIGTERM.  No supervision, no respawn: only the same
process shape (N children x C threads) as the real CLI.  The harness uses it
only when ``python -m forkq --help`` fails, and says so in its output.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def _child(url: str, concurrency: int) -> None:
    from bench.jobs import pool

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pool.start(url, concurrency=concurrency)
    while not stop.wait(0.5):
        if os.getppid() == 1:  # parent died: do not linger
            break
    pool.stop(5.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.forkq_fallback")
    ap.add_argument("-p", type=int, default=2)
    ap.add_argument("-c", type=int, default=10)
    ap.add_argument("--redis", required=True)
    a = ap.parse_args(argv)
    import bench.jobs  # noqa: F401 - import before fork, like the real master

    pids = []
    for _ in range(a.p):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _child(a.redis, a.c)
            except BaseException:  # noqa: BLE001 - report and exit the child only
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        pids.append(pid)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in pids:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
