"""Retry delays for forkq's own loops (not job retries: those are in ``retry.py``).

One formula for every loop that retries Redis or a fork: exponential from
``base``, capped, with jitter so that many processes retrying the same server
do not retry in step.
"""

from __future__ import annotations

import random


def capped_exponential(attempt: int, *, base: float, cap: float, jitter: float = 0.5) -> float:
    """Seconds before try ``attempt`` (1 = the first retry): ``base * 2**(attempt-1)``, at most
    ``cap``, times a random factor in ``[1 - jitter, 1 + jitter]``."""
    delay = min(cap, base * 2 ** max(0, min(attempt - 1, 30)))
    if jitter:
        delay *= random.uniform(1.0 - jitter, 1.0 + jitter)
    return delay
