"""What a child tells its master, as typed messages over the child's report pipe.

One JSON object per line, its kind in ``"t"``; each line is written with one
``os.write`` (atomic below PIPE_BUF) on a non-blocking pipe, so a master that
stopped reading costs reports, never a stuck child.  The master turns lines
back into these values with :func:`decode`, which never raises: a line that is
not a known message (a child's memory was corrupted, a version mismatch during
a rolling restart) is ignored.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import orjson


@dataclass(frozen=True, kw_only=True)
class Message:
    kind: ClassVar[str] = ""


@dataclass(frozen=True, kw_only=True)
class Starting(Message):
    """Inside ``PoolRuntime.start()``: from here on it may have fetched jobs."""

    kind: ClassVar[str] = "starting"


@dataclass(frozen=True, kw_only=True)
class Ready(Message):
    """The pool is up: sent from ``PoolRuntime.start()`` just before its first fetch,
    so a job that kills the child at once is not taken for a failed boot."""

    kind: ClassVar[str] = "ready"
    identity: str = ""


@dataclass(frozen=True, kw_only=True)
class Status(Message):
    """Once a second: the master's STATUS=, watchdog and frozen-child checks read it."""

    kind: ClassVar[str] = "s"
    busy: int = 0
    conc: int = 0
    done: int = 0
    ok: bool = True
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RedisRefused(Message):
    """Wrong credentials or missing ACL rights: fatal for the whole master."""

    kind: ClassVar[str] = "redis_refused"
    msg: str = "Redis refused forkq"


@dataclass(frozen=True, kw_only=True)
class RedisDown(Message):
    kind: ClassVar[str] = "redis_down"
    msg: str = "Redis unreachable"


@dataclass(frozen=True, kw_only=True)
class BootError(Message):
    kind: ClassVar[str] = "boot_error"
    msg: str = ""


@dataclass(frozen=True, kw_only=True)
class Recycle(Message):
    """A limit was reached (jobs done, memory): replace me when it is my turn."""

    kind: ClassVar[str] = "recycle"
    why: str = ""


@dataclass(frozen=True, kw_only=True)
class RemoteStop(Message):
    """Sidekiq's Web UI asked this process to stop: the whole service stops."""

    kind: ClassVar[str] = "remote_stop"


@dataclass(frozen=True, kw_only=True)
class HardTimeout(Message):
    kind: ClassVar[str] = "hard_timeout"
    jobs: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class JobRows(Message):
    """``forkq --metrics``: per-job-name rows, cumulative since the child started
    (forkq/metrics.py); only the names that changed, split to stay below PIPE_BUF."""

    kind: ClassVar[str] = "m"
    rows: dict[str, Any] = field(default_factory=dict)


KINDS: dict[str, type[Message]] = {m.kind: m for m in (
    Starting, Ready, Status, RedisRefused, RedisDown, BootError, Recycle, RemoteStop, HardTimeout,
    JobRows)}

# The type each field must have on the wire.
_TYPES: dict[str, tuple[type, ...]] = {
    "identity": (str,), "busy": (int,), "conc": (int,), "done": (int,), "ok": (bool,),
    "quiet": (bool,), "msg": (str,), "why": (str,), "jobs": (list,), "extra": (dict,),
    "rows": (dict,),
}


def encode(msg: Message) -> bytes:
    data = asdict(msg)
    data["t"] = msg.kind
    return orjson.dumps(data) + b"\n"


def send(fd: int, msg: Message) -> None:
    """Write one message; a full or closed pipe drops it (never blocks the child)."""
    try:
        os.write(fd, encode(msg))
    except (BlockingIOError, BrokenPipeError, OSError):
        pass


def decode(line: bytes) -> Message | None:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    cls = KINDS.get(str(data.pop("t", "")))
    if cls is None:
        return None
    fields: dict[str, Any] = {}
    for name in cls.__dataclass_fields__:
        if name not in data:
            continue
        value = data[name]
        kinds = _TYPES.get(name, (object,))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return None
        fields[name] = tuple(str(v) for v in value) if isinstance(value, list) else value
    return cls(**fields)


class LineReader:
    """Splits what a non-blocking pipe delivers into complete lines."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        return [m for m in (decode(line) for line in lines) if m is not None]
