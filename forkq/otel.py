"""OpenTelemetry spans for jobs (extra ``forkq[otel]``), off unless asked for.

``forkq.otel.instrument()`` (or ``FORKQ_OTEL=1`` in the environment, read when
forkq is imported) turns on:

* a ``send <queue>`` PRODUCER span around each enqueue call (one per call: a batch
  of ``enqueue_many`` is one span, ``messaging.batch.message_count`` set), whose
  context is written into each payload as a W3C ``traceparent`` field (kept by
  Sidekiq and by forkq's codec, see forkq/job.py);
* a ``process <queue>`` CONSUMER span per execution, a child of the producer's
  span (one trace from the web request to the job) and linked to it, current
  while the handler runs (spans the handler makes nest under it), with the
  exception recorded and the status ERROR when the job fails.

Attributes follow the messaging semantic conventions: ``messaging.system``
("forkq"), ``messaging.destination.name`` (the queue), ``messaging.message.id``
(the jid), ``messaging.operation.type``/``messaging.operation.name``.

Why this shape: when not enabled, the cost is nothing: this module does not
import ``opentelemetry`` and the hot paths check one module attribute
(``tracing is None``).  forkq sets up no SDK or exporter: the application does
(in its jobs module, so children inherit it), as OpenTelemetry recommends for
libraries.  Use an exporter that is safe across ``fork`` (the SDK's
BatchSpanProcessor restarts its thread in children).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .config import env_value
from .job import traceparent_of

log = logging.getLogger("forkq.otel")

SYSTEM = "forkq"

# The one attribute the hot paths read; a _Tracing while instrumented.
tracing: _Tracing | None = None


class _Tracing:
    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        self._trace = trace
        self._context = context
        self._propagate = propagate
        self._Link = Link
        self._SpanKind = SpanKind
        self._Status = Status
        self._ERROR = StatusCode.ERROR
        self.tracer = trace.get_tracer("forkq", _version(), tracer_provider=tracer_provider)

    @contextmanager
    def send(self, queue: str, datas: Sequence[dict[str, Any]]) -> Iterator[Any]:
        """The PRODUCER span of one enqueue call; puts its ``traceparent`` in every payload."""
        attrs: dict[str, Any] = {
            "messaging.system": SYSTEM, "messaging.destination.name": queue,
            "messaging.operation.type": "send", "messaging.operation.name": "send",
        }
        if len(datas) == 1:
            attrs["messaging.message.id"] = datas[0]["jid"]
        else:
            attrs["messaging.batch.message_count"] = len(datas)
        with self.tracer.start_as_current_span(f"send {queue}", kind=self._SpanKind.PRODUCER,
                                               attributes=attrs) as span:
            carrier: dict[str, str] = {}
            self._propagate.inject(carrier)
            parent = carrier.get("traceparent")
            if parent:
                for data in datas:
                    data["traceparent"] = parent
            yield span

    def process(self, queue: str, job: Any) -> Callable[[BaseException | None, str | None], None] | None:
        """Start the CONSUMER span of one execution, current in this thread; return its end.

        Tracing must never cost a job: an error here is logged and the job runs untraced.
        """
        try:
            return self._process(queue, job)
        except Exception:  # noqa: BLE001
            log.exception("forkq.otel: could not start the span of %s %s", job.name, job.id)
            return None

    def _process(self, queue: str, job: Any) -> Callable[[BaseException | None, str | None], None]:
        parent = traceparent_of(job.data)
        ctx = self._propagate.extract({"traceparent": parent}) if parent else None
        links = []
        if ctx is not None:
            producer = self._trace.get_current_span(ctx).get_span_context()
            if producer.is_valid:
                links.append(self._Link(producer))
        attrs: dict[str, Any] = {
            "messaging.system": SYSTEM, "messaging.destination.name": queue,
            "messaging.operation.type": "process", "messaging.operation.name": "process",
            "messaging.message.id": job.id, "forkq.job.name": job.name,
        }
        retry_count = job.data.get("retry_count")
        if isinstance(retry_count, int):
            attrs["forkq.job.retry_count"] = retry_count
        span = self.tracer.start_span(f"process {queue}", context=ctx,
                                      kind=self._SpanKind.CONSUMER, attributes=attrs, links=links)
        token = self._context.attach(self._trace.set_span_in_context(span))

        def end(error: BaseException | None, aborted: str | None) -> None:
            try:
                if error is not None and aborted is None:
                    span.record_exception(error)
                    span.set_attribute("error.type", type(error).__qualname__)
                    span.set_status(self._Status(self._ERROR, f"{type(error).__name__}: {error}"))
                elif aborted is not None:
                    span.set_attribute("error.type", f"forkq.{aborted}")
                    span.set_status(self._Status(self._ERROR, f"job aborted: {aborted}"))
                span.end()
            except Exception:  # noqa: BLE001 - never let tracing fail a finished job
                log.exception("forkq.otel: could not end the span of %s %s", job.name, job.id)
            finally:
                self._context.detach(token)

        return end


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("forkq")
    except PackageNotFoundError:
        return "0"


def instrument(tracer_provider: Any = None) -> None:
    """Turn on forkq's spans (idempotent); ``tracer_provider`` defaults to the global one."""
    global tracing
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        raise ImportError("forkq.otel needs opentelemetry-api: pip install 'forkq[otel]'") from None
    tracing = _Tracing(tracer_provider)


def uninstrument() -> None:
    """Turn the spans off again (tests, or an app that instruments only for a while)."""
    global tracing
    tracing = None


def _from_environment() -> None:
    if env_value("FORKQ_OTEL").strip().lower() not in ("1", "true", "yes", "on"):
        return
    try:
        instrument()
    except ImportError as exc:
        log.warning("FORKQ_OTEL is set but spans are off: %s", exc)


_from_environment()
