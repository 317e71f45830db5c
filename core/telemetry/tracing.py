"""Traces: a cheap sampling decision at the edge, spans emitted after the fact for sampled requests.

``TraceSampler.start_request(headers)`` runs once per request: with traces off it returns ``None``
at once; otherwise it honours an incoming W3C ``traceparent`` (parent-based: the caller's sampled
flag decides) and draws a ratio decision for requests that arrive without one. Nothing else
happens per request on the data path: no span objects exist while a request is being served.

When a batch finishes, ``SpanEmitter`` creates the spans of its *sampled* requests with explicit
start and end times through the OpenTelemetry SDK:

    ladle.request  (server)  arrival -> end of batch; parent: the incoming traceparent, if any
    ├── ladle.route           when the server reports routing times (``route_span``)
    ├── ladle.queue           arrival -> batch start
    └── ladle.batch           batch start -> end; one per batch, linked to every sampled request in it
        └── ladle.runtime     when the batcher reports the runtime's own interval

The request span's id is derived from the trace id and the request id, so spans that belong to
one request can be emitted at different moments without any per-request state.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..envelope import InferenceRequest, TraceContext
from .families import ATTR_ERROR, ATTR_MODEL, ATTR_VERSION

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

__all__ = ["SpanEmitter", "TraceSampler", "request_span_id"]

ATTR_REQUEST_ID = "ladle.request.id"
ATTR_ROWS = "ladle.request.rows"


class TraceSampler:
    """The edge decision: parent-based on an incoming ``traceparent``, else a ratio."""

    __slots__ = ("enabled", "ratio")

    def __init__(self, enabled: bool = False, ratio: float = 0.01) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"trace ratio must be within [0, 1], got {ratio}")
        self.enabled = enabled
        self.ratio = ratio

    def start_request(self, headers: Mapping[str, str]) -> TraceContext | None:
        """The trace context of a new request; ``None`` when it is neither sampled nor propagated.

        A valid incoming ``traceparent`` is returned as parsed (sampled or not, as the caller
        decided). A request without one is sampled with probability ``ratio`` and gets a new trace
        id; its ``parent_span_id`` is empty (its request span is the root).
        """
        if not self.enabled:
            return None
        header = headers.get("traceparent")
        if header:
            context = TraceContext.from_traceparent(header, headers.get("tracestate") or "")
            if context is not None:
                return context
        if self.ratio >= 1.0 or random.random() < self.ratio:
            return TraceContext(f"{random.getrandbits(128) or 1:032x}", "", True)
        return None


def request_span_id(trace_id: str, request_id: str) -> int:
    """The span id of a request's ``ladle.request`` span (stable, so no state is kept)."""
    digest = hashlib.blake2b(f"{trace_id}/{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


def _sampled(request: InferenceRequest) -> bool:
    trace = request.trace
    return trace is not None and trace.sampled


class SpanEmitter:
    """Creates finished spans through an OpenTelemetry ``TracerProvider`` (needs ``ladle[telemetry]``)."""

    def __init__(self, provider: TracerProvider, ids: _PresetIds) -> None:
        from opentelemetry import trace as trace_api

        self._api = trace_api
        self._provider = provider
        self._tracer = provider.get_tracer("ladle")
        self._ids = ids
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    @classmethod
    def create(
        cls,
        service_name: str,
        exporter: SpanExporter,
        batch: bool = True,
    ) -> SpanEmitter:
        """A provider of its own (never the global one) exporting through ``exporter``."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        ids = _make_preset_ids()
        provider = TracerProvider(
            sampler=ALWAYS_ON,  # the decision was taken at the edge
            resource=Resource.create({"service.name": service_name}),
            id_generator=ids,
        )
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        return cls(provider, ids)

    def _ns(self, monotonic: float) -> int:
        return int(monotonic * 1e9) + self._offset_ns

    def _context(self, trace_id: int, span_id: int, remote: bool = False, tracestate: str = "") -> Any:
        api = self._api
        state = api.TraceState.from_header([tracestate]) if tracestate else None
        span_context = api.SpanContext(
            trace_id,
            span_id,
            is_remote=remote,
            trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED),
            trace_state=state,
        )
        return api.set_span_in_context(api.NonRecordingSpan(span_context))

    def _request_span(
        self, request: InferenceRequest, end: float, error: str | None, attributes: Mapping[str, Any]
    ) -> Span:
        trace = request.trace
        assert trace is not None
        trace_id = int(trace.trace_id, 16)
        self._ids.preset(trace_id, request_span_id(trace.trace_id, request.id))
        parent = (
            self._context(trace_id, int(trace.parent_span_id, 16), remote=True, tracestate=trace.tracestate)
            if trace.parent_span_id
            else None
        )
        span = self._tracer.start_span(
            "ladle.request",
            context=parent,
            kind=self._api.SpanKind.SERVER,
            attributes={**attributes, ATTR_REQUEST_ID: request.id, ATTR_ROWS: request.rows},
            start_time=self._ns(request.arrival),
        )
        if error is not None:
            span.set_attribute(ATTR_ERROR, error)
            span.set_status(self._api.Status(self._api.StatusCode.ERROR, error))
        span.end(end_time=self._ns(end))
        return span

    def _child(
        self,
        name: str,
        parent: Any,
        start: float,
        end: float,
        attributes: Mapping[str, Any],
        links: Sequence[Any] = (),
    ) -> Span:
        span = self._tracer.start_span(
            name, context=parent, attributes=dict(attributes), links=list(links), start_time=self._ns(start)
        )
        span.end(end_time=self._ns(end))
        return span

    def emit_batch(
        self,
        model: str,
        version: str,
        requests: Sequence[InferenceRequest],
        started: float,
        finished: float,
        errors: Sequence[str | None],
        runtime: tuple[float, float] | None = None,
    ) -> int:
        """Spans of the sampled requests of a finished batch; returns how many requests were sampled."""
        base = {ATTR_MODEL: model, ATTR_VERSION: version}
        links = []
        first_context = None
        for request, error in zip(requests, errors, strict=True):
            if not _sampled(request):
                continue
            span = self._request_span(request, finished, error, base)
            context = self._api.set_span_in_context(span)
            self._child("ladle.queue", context, request.arrival, started, base)
            links.append(self._api.Link(span.get_span_context(), {ATTR_REQUEST_ID: request.id}))
            if first_context is None:
                first_context = context
        if first_context is not None:
            batch_attributes = {
                **base,
                "ladle.batch.requests": len(requests),
                "ladle.batch.size": sum(r.rows for r in requests),
            }
            batch = self._child("ladle.batch", first_context, started, finished, batch_attributes, links)
            if runtime is not None:
                self._child(
                    "ladle.runtime", self._api.set_span_in_context(batch), runtime[0], runtime[1], base
                )
        return len(links)

    def emit_dropped(
        self, model: str, version: str, requests: Sequence[InferenceRequest], code: str, now: float
    ) -> None:
        """Spans of sampled requests answered without running (queue span ends when they were dropped)."""
        base = {ATTR_MODEL: model, ATTR_VERSION: version}
        for request in requests:
            if _sampled(request):
                span = self._request_span(request, now, code, base)
                self._child("ladle.queue", self._api.set_span_in_context(span), request.arrival, now, base)

    def route_span(self, request: InferenceRequest, start: float, end: float, **attributes: Any) -> None:
        """A ``ladle.route`` span under a sampled request (times are ``time.monotonic()``)."""
        trace = request.trace
        if trace is None or not trace.sampled:
            return
        parent = self._context(int(trace.trace_id, 16), request_span_id(trace.trace_id, request.id))
        self._child("ladle.route", parent, start, end, {ATTR_MODEL: request.model, **attributes})

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self._provider.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self._provider.shutdown()


class _PresetIds:
    """Marker type; the real class (an OpenTelemetry ``IdGenerator``) is built lazily."""

    def preset(self, trace_id: int, span_id: int) -> None:
        raise NotImplementedError


def _make_preset_ids() -> Any:
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class PresetIds(IdGenerator, _PresetIds):
        """Random ids, except for the next span after ``preset`` (the request span, whose ids are known)."""

        def __init__(self) -> None:
            self._local = threading.local()

        def preset(self, trace_id: int, span_id: int) -> None:
            self._local.trace_id = trace_id
            self._local.span_id = span_id

        def generate_trace_id(self) -> int:
            value: int | None = getattr(self._local, "trace_id", None)
            if value is not None:
                self._local.trace_id = None
                return value
            return random.getrandbits(128) or 1

        def generate_span_id(self) -> int:
            value: int | None = getattr(self._local, "span_id", None)
            if value is not None:
                self._local.span_id = None
                self._local.trace_id = None
                return value
            return random.getrandbits(64) or 1

    return PresetIds()
