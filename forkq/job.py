"""The job format's one owner: the Job value and its JSON codec (orjson only, never pickle).

Wire format (DESIGN.md §2), as forkq writes it::

    {"jid": "<24 hex>", "class": name, "queue": name, "args": [{...kwargs}],
     "created_at": 1700000000.1, "enqueued_at": 1700000000.1, "retry": true,
     "retry_count": 0, "error_message": ..., "error_class": ..., "failed_at": ...,
     "retried_at": ..., "error_backtrace": [...], "unique": true, "unique_key": "...",
     "recovered": 1}

Payloads also come from other producers (Sidekiq's Ruby client, hand-written
LPUSHes, a bug in someone's service), so every field forkq *reads* is checked
here, once, by :func:`decode`: type, range and size.  A payload that fails is
a :class:`MalformedPayload` with a readable reason; callers bury it in ``dead``
with its raw bytes and never crash, stall or spin on it.  Nothing outside this
module looks inside a payload: the helpers below (``jid_of``, ``queue_of``,
``recovery_count``, ``unique_guard_of``, ``timestamp``) are what every other
module uses, and Lua scripts decode with cjson or get what they need in ARGV.

Sidekiq semantics for ``retry_count``: absent before the first failure, 0 after
it, +1 on each later failure.  Sidekiq 8 writes ``created_at``/``enqueued_at``
as integer milliseconds; :func:`timestamp` reads both forms.

(Over 400 lines on purpose: the job format's one owner keeps every field rule, helper and the Job value together, so no other module needs to know the format.)
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import orjson

from . import clock
from .errors import ArgError, ConfigError, JobCancelled
from .keys import Keys

_dumps = orjson.dumps
_loads = orjson.loads
# Datetimes would silently become strings: hand them to _refuse instead.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME

# Bounds of what forkq accepts in the fields it reads.
MAX_NAME_CHARS = 1000
MAX_JID_CHARS = 200
MAX_COUNT = 1_000_000_000
# Epoch seconds up to the year 5138, or Sidekiq 8's milliseconds (see timestamp()).
MAX_TIMESTAMP = 1e14
# Above this a timestamp is milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
MS_THRESHOLD = 1e11
# Deepest nesting forkq accepts: what orjson can write back (it writes 255 levels).
MAX_DEPTH = 250

_TIMESTAMP_FIELDS = ("created_at", "enqueued_at", "failed_at", "retried_at")
_COUNT_FIELDS = ("retry_count", "recovered", "killed")
_TEXT_FIELDS = ("error_message", "error_class", "unique_key", "traceparent")


class MalformedPayload(ValueError):
    """A queue entry that is not a forkq/Sidekiq job (bad JSON, wrong shape or field types)."""


def new_jid() -> str:
    return os.urandom(12).hex()


# -- encoding -------------------------------------------------------------------------
def _refuse(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} value {_short(repr(obj))} cannot be carried by JSON "
                    "(use str, int, float, bool, None, lists and dicts with str keys)")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _check_finite(value: Any, path: str = "") -> None:
    """orjson writes NaN and infinities as ``null``: find and refuse them."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{value!r} at {path or 'top level'} cannot be carried by JSON "
                            "(NaN and infinities would silently become null)")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


def encode(data: dict[str, Any]) -> bytes:
    """JSON of a job; refuses what JSON cannot carry faithfully (raises TypeError).

    The NaN walk only runs when the output contains ``null``: the common payload
    pays one bytes search.
    """
    out = _dumps(data, default=_refuse, option=_STRICT)
    if b"null" in out:
        _check_finite(data)
    return out


def build_payload(name: str, args: dict[str, Any] | None, *, now: float | None = None,
                  jid: str | None = None, unique_key: str | None = None,
                  group: str | None = None) -> dict[str, Any]:
    """The JSON object of a new job.  ``jid`` comes first, so ``jid_of`` finds it cheaply.

    ``group`` (fair groups) comes right after ``queue``; give it through
    :func:`check_group` first (a bad one is the caller's error, not a dead job).
    """
    t = clock.now() if now is None else now  # Redis's time (DESIGN.md §8)
    data: dict[str, Any] = {
        "jid": jid or new_jid(),
        "class": name,
        "queue": name,
    }
    if group is not None:
        data["group"] = group
    data["args"] = [args if args is not None else {}]
    data["created_at"] = t
    data["enqueued_at"] = t
    data["retry"] = True
    if unique_key is not None:
        data["unique"] = True
        data["unique_key"] = unique_key
    return data


# -- decoding and validation ---------------------------------------------------------
def decode(payload: bytes | str) -> dict[str, Any]:
    """Parse and validate a queue entry; raise MalformedPayload with a readable reason.

    Every field forkq reads is checked here, so code after a successful decode can
    trust types: ``class``/``jid`` non-empty strings, ``queue`` a string if present ("" = absent),
    ``args`` a list, timestamps finite non-negative numbers, counts non-negative
    ints, ``unique`` a bool with a string ``unique_key``.
    """
    try:
        data = _loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedPayload(f"payload is JSON {type(data).__name__}, expected an object")
    validate(data)
    # orjson reads 1024 levels but writes only 255: a deeper job could be run but never
    # written back (retry, recovery, promotion).  Only a payload with that many brackets
    # can be that deep, so the common payload pays two byte counts, not a walk.
    raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "replace")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        _check_depth(data, 0)
    return data


def _check_depth(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise MalformedPayload(f"payload is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for v in value.values():
            if isinstance(v, (dict, list)):
                _check_depth(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)):
                _check_depth(v, depth + 1)


def _bad(field: str, value: Any, expected: str) -> MalformedPayload:
    return MalformedPayload(
        f"field {field!r} is {type(value).__name__} {_short(repr(value))}, expected {expected}")


def validate(data: dict[str, Any]) -> None:
    """Check the fields of a decoded payload (see :func:`decode`)."""
    get = data.get
    for required in ("class", "jid"):
        if get(required) is None:
            raise MalformedPayload(f"payload has no {required!r}")
    name = get("class")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise _bad("class", name, f"a job name string of 1 to {MAX_NAME_CHARS} characters")
    jid = get("jid")
    if not isinstance(jid, str) or not jid or len(jid) > MAX_JID_CHARS:
        raise _bad("jid", jid, f"a string of 1 to {MAX_JID_CHARS} characters")
    queue = get("queue")
    if queue is not None and (not isinstance(queue, str) or len(queue) > MAX_NAME_CHARS):
        # "" is read as absent (the job's name is its queue), as older forkq wrote it.
        raise _bad("queue", queue, f"a queue name string of at most {MAX_NAME_CHARS} characters")
    args = get("args", [])
    if not isinstance(args, list):
        raise _bad("args", args, "a list")
    for f in _TIMESTAMP_FIELDS:
        v = get(f)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not 0 <= v <= MAX_TIMESTAMP):
            raise _bad(f, v, "epoch seconds (a number from 0), or null")
    for f in _COUNT_FIELDS:
        v = get(f)
        # Sidekiq's "Retry Now" decrements retry_count, so -1 is a real value there.
        low = -1 if f == "retry_count" else 0
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not low <= v <= MAX_COUNT):
            raise _bad(f, v, f"a whole number from {low}, or null")
    for f in _TEXT_FIELDS:
        v = get(f)
        if v is not None and not isinstance(v, str):
            raise _bad(f, v, "a string or null")
    unique = get("unique")
    if unique is not None and not isinstance(unique, bool):
        raise _bad("unique", unique, "true, false or null")
    if unique and not get("unique_key"):
        raise MalformedPayload("field 'unique' is true but 'unique_key' is missing")
    group = get("group")
    if group is not None and not valid_group(group):
        raise _bad("group", group, GROUP_RULE)
    bid = get("bid")
    if bid is not None and not valid_bid(bid):
        raise _bad("bid", bid, f"a batch id of 1 to {MAX_BID_CHARS} letters, digits, '-' or '_'")


# -- what other modules read from a payload -----------------------------------------
_JID_PREFIX = b'{"jid":"'


def jid_of(payload: bytes) -> str | None:
    """The jid of a stored payload, or None if it has none (cheap for forkq's own payloads)."""
    if payload.startswith(_JID_PREFIX):
        end = payload.find(b'"', len(_JID_PREFIX))
        if end > len(_JID_PREFIX) and b"\\" not in payload[len(_JID_PREFIX):end]:
            return payload[len(_JID_PREFIX):end].decode("utf-8", "replace")
    try:
        data = _loads(payload)
    except orjson.JSONDecodeError:
        return None
    jid = data.get("jid") if isinstance(data, dict) else None
    return jid if isinstance(jid, str) and jid else None


MAX_BID_CHARS = 64
_BID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def valid_bid(bid: Any) -> bool:
    """A batch id forkq will build a key from (Sidekiq Pro's ``bid`` field): short, plain."""
    return isinstance(bid, str) and 0 < len(bid) <= MAX_BID_CHARS and _BID_CHARS.issuperset(bid)


# -- fair groups --------------------------------------------------------------------------
# A group becomes part of key names (keys.group_queue: ``gqueue:<name>:<group>``): no
# braces (hash tags), no ``:`` (the separator), no control characters, bounded in
# bytes.  fetch.lua and promote_due.lua apply the same rule before building a key
# from a payload's group (``valid_group`` there); a payload whose group fails it is
# never routed to a group and is buried by the executor with this reason.
MAX_GROUP_BYTES = 128
GROUP_RULE = (f"a group: a non-empty string of at most {MAX_GROUP_BYTES} UTF-8 bytes "
              "without '{', '}', ':' or control characters")
_GROUP_FORBIDDEN = frozenset("{}:" + "".join(map(chr, range(32))) + "\x7f")
# queue:<name> carries one token per non-empty group (see fetch.lua): a Sidekiq-shaped
# job of this class, so views listing the queue (Sidekiq Web, Client) stay readable.
GROUP_TOKEN_CLASS = "forkq.group"
_TOKEN_PREFIX = b'{"class":"forkq.group",'


def valid_group(group: Any) -> bool:
    if not isinstance(group, str) or not group or _GROUP_FORBIDDEN.intersection(group):
        return False
    try:
        return len(group.encode("utf-8")) <= MAX_GROUP_BYTES
    except UnicodeEncodeError:  # lone surrogates
        return False


def check_group(group: Any) -> str:
    """A producer's ``group=`` argument, or ConfigError (a ValueError-like forkq error)."""
    if not valid_group(group):
        raise ConfigError(f"bad group {_short(repr(group))}: expected {GROUP_RULE}")
    return str(group)


def group_of(data: dict[str, Any]) -> str | None:
    """The fair group of a (validated) job, or None."""
    return data.get("group")


def group_hint(payload: bytes) -> str | None:
    """The group of a payload that may not pass :func:`decode` (to release its lease)."""
    if b'"group"' not in payload:
        return None
    try:
        data = _loads(payload)
    except orjson.JSONDecodeError:
        return None
    group = data.get("group") if isinstance(data, dict) else None
    return group if valid_group(group) else None


def _cjson_string(text: str) -> bytes:
    """A JSON string as Redis's cjson writes it (it also escapes ``/`` and DEL)."""
    return _dumps(text).replace(b"/", b"\\/").replace(b"\x7f", b"\\u007f")


def group_token(name: str, group: str) -> bytes:
    """The entry standing for ``group`` in ``queue:<name>`` (fetch.lua recognises the
    prefix; the jid lets Sidekiq Web's links work on it).  Byte for byte what the Lua
    scripts' ``token_of`` builds, so one LREM/LPOS finds a token whoever wrote it."""
    return (b'{"class":"forkq.group","queue":' + _cjson_string(name) + b',"args":['
            + _cjson_string(group) + b'],"jid":' + _cjson_string("forkq-group-" + group)
            + b',"retry":false}')


def is_group_token(payload: bytes) -> bool:
    return payload.startswith(_TOKEN_PREFIX)


def token_group(payload: bytes) -> str | None:
    """The group a token stands for (None for anything that is not a token)."""
    if not is_group_token(payload):
        return None
    try:
        data = _loads(payload)
    except orjson.JSONDecodeError:
        return None
    args = data.get("args") if isinstance(data, dict) else None
    if isinstance(args, list) and len(args) == 1 and valid_group(args[0]):
        return str(args[0])
    return None


def bid_of(data: dict[str, Any]) -> str | None:
    """The batch a (validated) job belongs to, if any (``bid``, as Sidekiq Pro writes it)."""
    return data.get("bid") or None


def queue_of(data: dict[str, Any]) -> str:
    """The queue a (validated) job belongs to: ``queue``, else its job name."""
    return data.get("queue") or data["class"]


def traceparent_of(data: dict[str, Any]) -> str | None:
    """The W3C ``traceparent`` the producer put in a (validated) job, for OpenTelemetry."""
    return data.get("traceparent") or None


def recovery_count(data: dict[str, Any]) -> int:
    """How many times a pool died while running this (validated) job."""
    return data.get("recovered") or 0


def kill_count(data: dict[str, Any]) -> int:
    """How many times this (validated) job's pool was SIGKILLed from outside while running it."""
    return data.get("killed") or 0


def unique_guard_of(data: dict[str, Any], keys: Keys) -> str | None:
    """The unique-guard key a (validated) job holds, if it is a unique job.

    Only a key of this namespace's guards for the job's own name counts: a payload
    from elsewhere must not make forkq write or delete arbitrary keys (or keys of
    another Cluster slot, which would fail the whole script call).
    """
    if not data.get("unique"):
        return None
    key = data.get("unique_key")
    if isinstance(key, str) and key.startswith(keys.unique(data["class"], "")):
        return key
    return None


def timestamp(value: Any) -> float:
    """Epoch seconds of a (validated) timestamp field; Sidekiq 8 writes integer ms."""
    if value is None:
        return 0.0
    t = float(value)
    return t / 1000.0 if t > MS_THRESHOLD else t


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
                 "_checkin", "_checkin_at", "_cancelled")

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
        self._cancelled = False

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Job:
        """A Job from a payload that passed :func:`decode` (types are trusted here)."""
        rc = data.get("retry_count")
        return cls(
            name=data["class"],
            id=data["jid"],
            args=kwargs_of(data),
            data=data,
            enqueued_at=timestamp(data.get("enqueued_at")),
            fails=(rc + 1) if rc is not None else 0,
        )

    # Cancellation (Client.cancel) -------------------------------------------
    @property
    def cancelled(self) -> bool:
        """True once ``Client.cancel`` reached this running job (a long job checks it)."""
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Raise ``forkq.JobCancelled`` if the job was cancelled: it ends, never retried."""
        if self._cancelled:
            raise JobCancelled(f"job {self.name} {self.id} was cancelled")

    def mark_cancelled(self) -> None:
        """Set by the pool when a cancel for this job arrives (any thread; a bool store)."""
        self._cancelled = True

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

    @property
    def group(self) -> str | None:
        """The fair group this job was enqueued in (``enqueue(..., group=...)``), or None."""
        return group_of(self.data)

    @property
    def batch_id(self) -> str | None:
        """The batch this job belongs to (``Enqueuer.batch``), or None.  A job may add
        jobs to its own batch before it finishes: ``enq.batch(bid=job.batch_id)``."""
        return bid_of(self.data)

    def __repr__(self) -> str:
        # Bounded: a 600 KiB job must not print 1.2 MB on a terminal or in a log line.
        return (f"Job(name={self.name!r}, id={self.id!r}, args={_short(repr(self.args), 200)}, "
                f"fails={self.fails})")


# -- backtraces (Sidekiq's error_backtrace) --------------------------------------------
MAX_BACKTRACE_LINES = 50


def backtrace_lines(tb: Any) -> list[str]:
    """A traceback as Ruby-style lines, innermost first (``file:line:in `name'``), as Sidekiq shows."""
    # The frames walked by hand: traceback.extract_tb stats every source file
    # (linecache) for lines this format never shows, a third of a failure's cost.
    lines: list[str] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        lines.append(f"{code.co_filename}:{tb.tb_lineno}:in `{code.co_name}'")
        tb = tb.tb_next
    lines.reverse()
    return lines[:MAX_BACKTRACE_LINES]


def compress_backtrace(lines: list[str]) -> str:
    """Sidekiq 6.4+/7's stored form: base64 of zlib-deflated JSON of the lines."""
    import base64
    import zlib

    return base64.b64encode(zlib.compress(_dumps(lines))).decode("ascii")


def backtrace_of(data: dict[str, Any]) -> list[str] | None:
    """The stored ``error_backtrace`` of an entry (compressed or Sidekiq's old raw list)."""
    import base64
    import binascii
    import zlib

    value = data.get("error_backtrace")
    if isinstance(value, list):
        return [str(v) for v in value]
    if not isinstance(value, str) or not value:
        return None
    try:
        lines = _loads(zlib.decompress(base64.b64decode(value)))
    except (binascii.Error, zlib.error, orjson.JSONDecodeError, ValueError):
        return None
    return [str(v) for v in lines] if isinstance(lines, list) else None
