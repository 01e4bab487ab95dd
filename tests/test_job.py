"""The Job value, its typed argument accessors and the wire format."""

from __future__ import annotations

import orjson
import pytest

import forkq
from forkq import job as jobcodec


def make(args: dict) -> forkq.Job:
    return forkq.Job.from_data(jobcodec.build_payload("j", args))


def test_typed_args_return_values_and_no_error() -> None:
    job = make({"s": "x", "i": 3, "f": 1.5, "b": True, "fi": 2.0})
    assert (job.arg_str("s"), job.arg_int("i"), job.arg_float("f"), job.arg_bool("b")) == ("x", 3, 1.5, True)
    assert job.arg_int("fi") == 2 and job.arg_float("i") == 3.0
    job.arg_error()  # nothing raised


@pytest.mark.parametrize(("getter", "key", "fragment"), [
    ("arg_str", "i", "expected str"),
    ("arg_int", "s", "expected int"),
    ("arg_int", "b", "expected int"),      # bool is not an int here
    ("arg_int", "f", "expected int"),      # 1.5 is not integral
    ("arg_float", "s", "expected float"),
    ("arg_bool", "i", "expected bool"),
    ("arg_str", "missing", "is missing"),
])
def test_wrong_or_missing_arg_sets_an_error_raised_by_arg_error(getter: str, key: str, fragment: str) -> None:
    job = make({"s": "x", "i": 3, "f": 1.5, "b": True})
    getattr(job, getter)(key)
    with pytest.raises(forkq.ArgError, match=fragment):
        job.arg_error()


def test_payload_is_sidekiq_shaped_with_jid_first() -> None:
    data = jobcodec.build_payload("send_email", {"addr": "a@b"})
    raw = jobcodec.encode(data)
    assert raw.startswith(b'{"jid":"')
    decoded = orjson.loads(raw)
    assert decoded["class"] == decoded["queue"] == "send_email"
    assert decoded["args"] == [{"addr": "a@b"}]
    assert len(decoded["jid"]) == 24 and int(decoded["jid"], 16) >= 0
    assert isinstance(decoded["created_at"], float) and decoded["enqueued_at"] == decoded["created_at"]


@pytest.mark.parametrize(("raw", "reason"), [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "expected an object"),
    (b'{"jid": "x"}', "no 'class'"),
    (b'{"class": "a"}', "no 'jid'"),
    (b'{"class": "a", "jid": "x", "args": 5}', "'args' is int 5, expected a list"),
])
def test_malformed_payloads_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(jobcodec.MalformedPayload, match=reason):
        jobcodec.decode(raw)


def test_sidekiq_positional_args_are_exposed() -> None:
    job = forkq.Job.from_data({"class": "x", "jid": "1", "args": [1, "two"]})
    assert job.positional_args == [1, "two"] and job.args == {}


def test_fails_follow_sidekiq_retry_count() -> None:
    assert forkq.Job.from_data({"class": "x", "jid": "1", "args": []}).fails == 0
    assert forkq.Job.from_data({"class": "x", "jid": "1", "args": [], "retry_count": 0}).fails == 1
    assert forkq.Job.from_data({"class": "x", "jid": "1", "args": [], "retry_count": 2}).fails == 3
