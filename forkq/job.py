"""The Job value and its JSON codec (Sidekiq-shaped, orjson only, never pickle).

Wire format (DESIGN.md §2)::

    {"jid": "<24 hex>", "class": name, "queue": name, "args": [{...kwargs}],
     "created_at": 1700000000.1, "enqueued_at": 1700000000.1, "retry": true,
     "retry_count": 0, "error_message": ..., "error_class": ..., "failed_at": ...,
     "retried_at": ..., "unique": true, "unique_key": "...", "recovered": 1}

``jid`` is written first on purpose: the fetch script reads it with a cheap
prefix match instead of decoding JSON.  Sidekiq semantics for ``retry_count``:
absent before the first failure, 0 after it, +1 on each later failure.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from .errors import ArgError

_dumps = orjson.dumps
_loads = orjson.loads


class MalformedPayload(ValueError):
    """A queue entry that is not a forkq/Sidekiq job (bad JSON or wrong shape)."""


def new_jid() -> str:
    return os.urandom(12).hex()


def encode(data: dict[str, Any]) -> bytes:
    return _dumps(data)


def build_payload(name: str, args: dict[str, Any] | None, *, now: float | None = None,
                  jid: str | None = None, unique_key: str | None = None) -> dict[str, Any]:
    """The JSON object of a new job.  ``jid`` comes first (see module docstring)."""
    t = time.time() if now is None else now
    data: dict[str, Any] = {
        "jid": jid or new_jid(),
        "class": name,
        "queue": name,
        "args": [args if args is not None else {}],
        "created_at": t,
        "enqueued_at": t,
        "retry": True,
    }
    if unique_key is not None:
        data["unique"] = True
        data["unique_key"] = unique_key
    return data


def decode(payload: bytes | str) -> dict[str, Any]:
    """Parse and validate a queue entry; raise MalformedPayload with a readable reason."""
    try:
        data = _loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedPayload(f"payload is JSON {type(data).__name__}, expected an object")
    name = data.get("class")
    if not isinstance(name, str) or not name:
        raise MalformedPayload("payload has no 'class' (job name) string")
    jid = data.get("jid")
    if not isinstance(jid, str) or not jid:
        raise MalformedPayload("payload has no 'jid' string")
    args = data.get("args", [])
    if not isinstance(args, list):
        raise MalformedPayload("payload 'args' is not a list")
    return data


def kwargs_of(data: dict[str, Any]) -> dict[str, Any]:
    """forkq's keyword arguments travel as the single JSON object in ``args``."""
    args = data.get("args")
    if isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict):
        return args[0]
    return {}


class Job:
    """A job being executed, as handed to the handler and to middleware.

    Not frozen: it carries the argument-error state of gocraft's ``Arg*`` helpers
    and the latest ``checkin``.  Build-from-dict is the only constructor on the
    hot path, so it stays a slotted plain class.
    """

    __slots__ = ("name", "id", "args", "data", "enqueued_at", "fails", "_arg_error",
                 "_checkin", "_checkin_at")

    def __init__(self, *, name: str, id: str, args: dict[str, Any], data: dict[str, Any],
                 enqueued_at: float = 0.0, fails: int = 0) -> None:
        self.name = name
        self.id = id
        self.args = args
        self.data = data
        self.enqueued_at = enqueued_at
        self.fails = fails
        self._arg_error: ArgError | None = None
        self._checkin: str | None = None
        self._checkin_at: float | None = None

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Job:
        rc = data.get("retry_count")
        return cls(
            name=data["class"],
            id=data["jid"],
            args=kwargs_of(data),
            data=data,
            enqueued_at=float(data.get("enqueued_at") or 0.0),
            fails=(rc + 1) if isinstance(rc, int) else 0,
        )

    # Positional arguments pushed by a Sidekiq client (``args: [1, "x"]``).
    @property
    def positional_args(self) -> list[Any]:
        args = self.data.get("args")
        if isinstance(args, list) and not (len(args) == 1 and isinstance(args[0], dict)):
            return args
        return []

    @property
    def last_error(self) -> str | None:
        return self.data.get("error_message")

    # gocraft's typed accessors ------------------------------------------------
    def _arg(self, key: str, kinds: tuple[type, ...], kind_name: str, default: Any) -> Any:
        if key not in self.args:
            self._arg_error = ArgError(f"argument {key!r} is missing")
            return default
        value = self.args[key]
        # bool is an int subclass: reject it where a number is asked for.
        if isinstance(value, bool) and bool not in kinds:
            value_ok = False
        else:
            value_ok = isinstance(value, kinds)
        if not value_ok:
            self._arg_error = ArgError(
                f"argument {key!r} is {type(value).__name__} {value!r}, expected {kind_name}")
            return default
        return value

    def arg_str(self, key: str) -> str:
        return str(self._arg(key, (str,), "str", ""))

    def arg_int(self, key: str) -> int:
        value = self._arg(key, (int, float), "int", 0)
        if isinstance(value, float):
            if not value.is_integer():
                self._arg_error = ArgError(f"argument {key!r} is float {value!r}, expected int")
                return 0
            return int(value)
        return int(value)

    def arg_float(self, key: str) -> float:
        return float(self._arg(key, (int, float), "float", 0.0))

    def arg_bool(self, key: str) -> bool:
        return bool(self._arg(key, (bool,), "bool", False))

    def arg_error(self) -> None:
        """Raise the last argument error, if any (gocraft's ``ArgError``)."""
        if self._arg_error is not None:
            raise self._arg_error

    # Progress -----------------------------------------------------------------
    def checkin(self, message: str) -> None:
        """Record progress; visible in ``Client.worker_observations()`` at the next beat."""
        # Lone surrogates would make every heartbeat that carries it fail to encode.
        self._checkin = str(message).encode("utf-8", "backslashreplace").decode("utf-8")
        self._checkin_at = time.time()

    def __repr__(self) -> str:
        return f"Job(name={self.name!r}, id={self.id!r}, args={self.args!r}, fails={self.fails})"
