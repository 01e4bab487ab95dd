"""forkq.otel: PRODUCER span at enqueue (this process, the SDK's InMemorySpanExporter),
CONSUMER span per execution in a real forked child of the real CLI (the SDK's
ConsoleSpanExporter writing JSON lines to a file), linked through ``traceparent``
carried in the payload through a real Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis_server import wait_for
from test_master import (
    KEYS,
    NS,
    ForkqProc,
    forkq_procs,
    start_forkq,
    wait_children_ready,
    write_jobs,
)

import forkq
import forkq.otel

EXTRA = '''
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
    out=open(os.environ["SPANS_FILE"], "a"), formatter=lambda s: s.to_json(indent=None) + "\\n")))
trace.set_tracer_provider(_provider)
_tracer = trace.get_tracer("app")


@pool.job(max_fails=1, skip_dead=True)
def traced(job):
    with _tracer.start_as_current_span("inner", attributes={"pid": os.getpid()}):
        if job.arg_bool("fail"):
            raise ValueError("asked to fail")
    R().hincrby("test:runs", job.id, 1)
'''


@pytest.fixture
def forkqs() -> Iterator[list[ForkqProc]]:
    yield from forkq_procs()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """forkq.otel on in this process, with an in-memory exporter; off again afterwards."""
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    forkq.otel.instrument(tracer_provider=provider)
    try:
        yield exp
    finally:
        forkq.otel.uninstrument()


def _traceparent(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _hex(n: int, width: int) -> str:
    return f"0x{n:0{width}x}"


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_producer_span_puts_its_traceparent_in_the_payload(redis_url: str, r: redis.Redis,
                                                           exporter: InMemorySpanExporter) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    try:
        job = enq.enqueue("nobody_serves", {"a": 1})
        batch = enq.enqueue_many("nobody_serves", [{"i": i} for i in range(3)])
        later = enq.enqueue_in("nobody_serves", 3600, {"b": 2})
    finally:
        enq.close()
    sends = [s for s in exporter.get_finished_spans() if s.name == "send nobody_serves"]
    assert len(sends) == 3
    one, many, scheduled = sends
    assert all(s.kind == SpanKind.PRODUCER for s in sends)
    assert dict(one.attributes or {}) == {
        "messaging.system": "forkq", "messaging.destination.name": "nobody_serves",
        "messaging.operation.type": "send", "messaging.operation.name": "send",
        "messaging.message.id": job.id}
    assert (many.attributes or {})["messaging.batch.message_count"] == 3
    queued = {orjson.loads(p)["jid"]: orjson.loads(p)
              for p in r.lrange(KEYS.queue("nobody_serves"), 0, -1)}
    assert queued[job.id]["traceparent"] == _traceparent(one)
    assert {queued[j.id]["traceparent"] for j in batch} == {_traceparent(many)}
    (entry,) = r.zrange(KEYS.schedule, 0, -1)
    assert orjson.loads(entry)["jid"] == later.job.id
    assert orjson.loads(entry)["traceparent"] == _traceparent(scheduled)


def test_forkq_works_without_opentelemetry_and_adds_no_traceparent_when_off(
        redis_url: str) -> None:
    """forkq never needs opentelemetry unless instrumented: here it cannot be imported at all.

    (redis-py 8 imports opentelemetry by itself when it is installed, so "not in
    sys.modules" proves nothing; making the import fail does.)
    """
    code = f"""
import logging, sys
sys.modules["opentelemetry"] = None  # any import of it raises ImportError
logging.basicConfig(level=logging.WARNING)
import orjson, redis, forkq, forkq.otel
assert forkq.otel.tracing is None
e = forkq.Enqueuer({redis_url!r}, {NS!r})
j = e.enqueue("plain_q", {{"a": 1}})
raw = redis.Redis.from_url({redis_url!r}).lrange({KEYS.queue("plain_q")!r}, 0, -1)
assert "traceparent" not in orjson.loads(raw[0]), raw
try:
    forkq.otel.instrument()
except ImportError as exc:
    print(exc)
"""
    env = {k: v for k, v in os.environ.items() if k != "FORKQ_OTEL"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "forkq.otel needs opentelemetry-api: pip install 'forkq[otel]'"
    # FORKQ_OTEL=1 without the extra: one warning, and forkq still works.
    p = subprocess.run([sys.executable, "-c", code.replace("forkq.otel.instrument()", "pass")],
                       env={**env, "FORKQ_OTEL": "1"}, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "FORKQ_OTEL is set but spans are off: forkq.otel needs opentelemetry-api" in p.stderr


def test_consumer_span_in_a_real_child_continues_the_producer_trace(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc],
        exporter: InMemorySpanExporter) -> None:
    spans_file = tmp_path / "spans.jsonl"
    mod = write_jobs(tmp_path, EXTRA)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"],
                    env={"FORKQ_OTEL": "1", "SPANS_FILE": str(spans_file)})
    (child_pid,) = wait_children_ready(f, r, 1)

    app_tracer = TracerProvider().get_tracer("test")  # a request span around the enqueues
    enq = forkq.Enqueuer(redis_url, NS)
    try:
        with app_tracer.start_as_current_span("request"):
            ok = enq.enqueue("traced", {"fail": False})
            bad = enq.enqueue("traced", {"fail": True})
    finally:
        enq.close()
    sends = {(s.attributes or {})["messaging.message.id"]: s for s in exporter.get_finished_spans()
             if s.name == "send traced"}
    assert set(sends) == {ok.id, bad.id}

    def processed() -> list[dict[str, Any]] | None:
        got = [s for s in read_spans(spans_file) if s["name"] == "process traced"]
        return got if len(got) == 2 else None

    spans = wait_for(processed, timeout=30, interval=0.1, message="2 process spans exported")
    by_jid = {s["attributes"]["messaging.message.id"]: s for s in spans}
    inner = {s["parent_id"]: s for s in read_spans(spans_file) if s["name"] == "inner"}
    for jid, span in by_jid.items():
        send = sends[jid].get_span_context()
        assert span["kind"] == "SpanKind.CONSUMER"
        # The same trace as the producer, its child, and linked to it.
        assert span["context"]["trace_id"] == _hex(send.trace_id, 32)
        assert span["parent_id"] == _hex(send.span_id, 16)
        assert [lk["context"]["span_id"] for lk in span["links"]] == [_hex(send.span_id, 16)]
        assert {k: span["attributes"][k] for k in (
            "messaging.system", "messaging.destination.name", "messaging.operation.type")} == {
            "messaging.system": "forkq", "messaging.destination.name": "traced",
            "messaging.operation.type": "process"}
        # The handler's own span nests under it, and ran in the forked child.
        assert inner[span["context"]["span_id"]]["attributes"]["pid"] == child_pid
    assert by_jid[ok.id]["status"]["status_code"] == "UNSET"
    failed = by_jid[bad.id]
    assert failed["status"]["status_code"] == "ERROR"
    assert failed["attributes"]["error.type"] == "ValueError"
    (event,) = [e for e in failed["events"] if e["name"] == "exception"]
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "asked to fail"
    assert f.stop() == 0
