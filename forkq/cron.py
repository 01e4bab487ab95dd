"""Cron specs with seconds FIRST (gocraft's format), on croniter: parsing and occurrences."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from croniter import CroniterBadDateError, croniter

from .errors import ConfigError

_FIELD_NAMES = ("seconds", "minutes", "hours", "day of month", "month", "day of week")
_FIELD_RANGES = ("0-59", "0-59", "0-23", "1-31", "1-12 or jan-dec", "0-7 or sun-sat")


def parse_cron(spec: str) -> croniter:
    """A 6-field cron spec, seconds FIRST (gocraft's format): ``"0 */5 * * * *"``.

    Rejected with a ConfigError naming the bad field: a spec that is malformed,
    out of range, or that can never fire (``"0 0 0 31 2 *"``) would otherwise only
    fail later, on a housekeeper thread, where nobody sees it.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"cron spec must be a string, got {type(spec).__name__}")
    fields = spec.split()
    if len(fields) != 6:
        raise ConfigError(
            f"bad cron spec {spec!r}: need 6 fields, seconds first (sec min hour day month weekday), "
            f"got {len(fields)}")
    # croniter takes seconds as the LAST field.
    expr = " ".join(fields[1:] + fields[:1])
    if not _valid(expr):
        raise ConfigError(f"bad cron spec {spec!r}: {_diagnose(fields)}")
    it = croniter(expr, datetime.fromtimestamp(time.time(), tz=timezone.utc))
    try:
        it.get_next(float)
    except CroniterBadDateError:
        raise ConfigError(f"bad cron spec {spec!r}: it never fires (no such date)") from None
    return croniter(expr, datetime.fromtimestamp(0, tz=timezone.utc))


def _valid(expr: str) -> bool:
    try:
        return bool(croniter.is_valid(expr, second_at_beginning=False))
    except (ValueError, KeyError, TypeError):
        return False


def _diagnose(fields: list[str]) -> str:
    """Name the first field that is wrong on its own (all others replaced by ``*``)."""
    for i, value in enumerate(fields):
        probe = ["*"] * 6
        probe[i] = value
        if not _valid(" ".join(probe[1:] + probe[:1])):
            return f"{_FIELD_NAMES[i]} field {value!r} is not valid (allowed: {_FIELD_RANGES[i]}, *, a-b, */n, lists)"
    return "the fields are not a valid combination"


def occurrences(spec: str, start: float, end: float) -> list[int]:
    """Epoch seconds of the occurrences in (start, end]."""
    it = parse_cron(spec)
    it.set_current(datetime.fromtimestamp(int(start), tz=timezone.utc))
    out: list[int] = []
    while True:
        t = int(it.get_next(float))
        if t > end:
            return out
        out.append(t)
