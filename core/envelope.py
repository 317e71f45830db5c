"""The request envelope that travels the data path, and the serialisable batch a runtime executes.

The envelope's fields are settled here once: a request id, a target (model, version), named
tensors, parameters, an absolute deadline, a priority class, a routing key, trace context and a
cancel signal. Plugins read these; only the core creates envelopes.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from .generation import GenerationPayload

__all__ = [
    "Arrays",
    "Batch",
    "BatchItem",
    "CancelSignal",
    "Cancellable",
    "InferenceRequest",
    "Priority",
    "TraceContext",
    "new_request_id",
]

Arrays = dict[str, np.ndarray[Any, Any]]

_prefix = os.urandom(4).hex()
_counter = itertools.count(1)


def new_request_id() -> str:
    """A process-unique request id, cheap to make (no uuid4 on the hot path)."""
    return f"{_prefix}-{next(_counter):x}"


class Priority(IntEnum):
    """Priority classes; a lower value is served first and can never be starved by a higher one."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @classmethod
    def parse(cls, value: object) -> Priority:
        """Accepts a name (``"high"``) or a number (``0``); raises ``ValueError`` otherwise."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            key = value.strip().upper()
            if key in cls.__members__:
                return cls[key]
            if key.isdigit():
                return cls(int(key))
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        raise ValueError(f"priority must be one of {[m.name.lower() for m in cls]} or 0-2, got {value!r}")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """W3C trace context carried with a request; ``sampled`` is decided once, at the edge."""

    trace_id: str
    parent_span_id: str
    sampled: bool
    tracestate: str = ""

    @classmethod
    def from_traceparent(cls, header: str, tracestate: str = "") -> TraceContext | None:
        """Parse a ``traceparent`` header (``00-<32 hex>-<16 hex>-<2 hex>``); ``None`` if malformed."""
        parts = header.strip().split("-")
        if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
            return None
        try:
            flags = int(parts[3], 16)
            int(parts[1], 16)
            int(parts[2], 16)
        except ValueError:
            return None
        if parts[1] == "0" * 32 or parts[2] == "0" * 16:
            return None
        return cls(parts[1], parts[2], bool(flags & 1), tracestate)

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.parent_span_id}-{'01' if self.sampled else '00'}"


class Cancellable(Protocol):
    """Work in flight that can be called off: a future, a generation stream."""

    def cancel(self) -> object: ...


class CancelSignal:
    """Set when the client goes away or the deadline passes; work not yet started is skipped.

    ``cancel`` only marks the request (a deadline passed: the batcher answers it). ``abandon`` is for
    a client that will never read the answer: it marks the request and calls off ``work``, what the
    admission pipeline queued for it (its future, or its generation stream, which aborts). ``finish``
    says the answer went out: nothing is abandoned after that. ``cancelled`` and ``abandoned`` are
    read-only (plain attributes, because batchers read them per request).
    """

    __slots__ = ("abandoned", "cancelled", "finished", "reason", "work")

    def __init__(self) -> None:
        #: Whether the request was called off (a deadline passed, or the client went away).
        self.cancelled = False
        #: Whether the client went away (not merely a deadline passing).
        self.abandoned = False
        self.finished = False
        self.reason = ""
        #: The request's work in flight (set by the admission pipeline when it queues the request).
        self.work: Cancellable | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        if not self.cancelled:
            self.cancelled = True
            self.reason = reason

    def abandon(self, reason: str = "client disconnected") -> None:
        """The client went away: mark the request and call off its work in flight."""
        if self.finished or self.abandoned:
            return
        self.cancel(reason)
        self.abandoned = True
        work, self.work = self.work, None
        if work is not None:
            work.cancel()

    def finish(self) -> None:
        """The answer went out (or failed): later disconnects change nothing."""
        self.finished = True
        self.work = None


class InferenceRequest:
    """One request on the data path, whatever protocol it came by.

    The payload is either named tensors (``inputs``) or, for a generative model, a generation
    request (``generation``: a prompt or chat messages and sampling parameters; ``inputs`` is then
    empty and ``rows`` is 1). ``deadline`` is absolute, in ``time.monotonic()`` seconds
    (system-wide on Linux, so it means the same in a worker process); ``rows`` is the size of the
    first dimension shared by all inputs. ``protocol`` names the ingress it came by (``"v2"``,
    ``"ladle"``, ``"openai"``, ``"grpc"``, ``"job"``), for metrics only.
    """

    __slots__ = (
        "arm",
        "arrival",
        "cancel",
        "deadline",
        "generation",
        "id",
        "inputs",
        "model",
        "outputs",
        "parameters",
        "priority",
        "protocol",
        "routing_key",
        "rows",
        "trace",
        "version",
    )

    def __init__(
        self,
        model: str,
        inputs: Arrays,
        *,
        version: str | None = None,
        id: str | None = None,
        parameters: dict[str, Any] | None = None,
        deadline: float | None = None,
        priority: Priority = Priority.NORMAL,
        routing_key: str | None = None,
        trace: TraceContext | None = None,
        outputs: Sequence[str] | None = None,
        rows: int | None = None,
        generation: GenerationPayload | None = None,
        protocol: str = "",
        cancel: CancelSignal | None = None,
    ) -> None:
        self.id = id or new_request_id()
        self.model = model
        self.version = version
        self.inputs = inputs
        self.parameters = parameters if parameters is not None else {}
        self.deadline = deadline
        self.priority = priority
        self.routing_key = routing_key
        self.trace = trace
        self.outputs = outputs
        self.generation = generation
        self.protocol = protocol
        self.cancel = cancel if cancel is not None else CancelSignal()
        self.arrival = time.monotonic()
        #: The experiment arm serving the request, when its model's router names arms.
        self.arm: str | None = None
        if rows is None:
            rows = next(iter(inputs.values())).shape[0] if inputs else (1 if generation is not None else 0)
        self.rows = rows

    def derive(self, model: str, version: str | None, **changes: Any) -> InferenceRequest:
        """A copy bound for another target that shares this request's identity, arrival and cancel
        signal (a fallback, a cascade's escalation); ``changes`` override other fields."""
        copy = InferenceRequest(
            model,
            changes.pop("inputs", self.inputs),
            version=version,
            id=changes.pop("id", self.id),
            parameters=changes.pop("parameters", self.parameters),
            deadline=changes.pop("deadline", self.deadline),
            priority=changes.pop("priority", self.priority),
            routing_key=changes.pop("routing_key", self.routing_key),
            trace=changes.pop("trace", self.trace),
            outputs=changes.pop("outputs", self.outputs),
            rows=self.rows,
            generation=changes.pop("generation", self.generation),
            protocol=self.protocol,
            cancel=changes.pop("cancel", self.cancel),
        )
        if changes:
            raise TypeError(f"unknown request fields {sorted(changes)}")
        copy.arrival = self.arrival
        return copy

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def shape_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can be concatenated along the first dimension."""
        inputs = self.inputs
        if len(inputs) == 1:  # the common case, without building a list (batchers call this per request)
            for name, a in inputs.items():
                return (name, a.dtype, a.shape[1:])
        return tuple([(name, a.dtype, a.shape[1:]) for name, a in inputs.items()])

    def __repr__(self) -> str:
        return f"InferenceRequest(id={self.id!r}, model={self.model!r}, version={self.version!r}, rows={self.rows})"  # noqa: E501


@dataclass(slots=True)
class BatchItem:
    """Per-request metadata inside a batch: serialisable, so a batch can cross a process boundary.

    Read-only by convention; not frozen, because a frozen dataclass costs three times as much to
    build and one is built per request.
    """

    request_id: str
    rows: int
    parameters: Mapping[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    cancelled: bool = False
    #: When the batch was zero-padded: the request's own non-batch sizes of its (first) input, so
    #: ``Batch.split`` cuts the outputs back along the axes that were padded.
    extents: tuple[int, ...] | None = None


def _trim(array: np.ndarray[Any, Any], own: tuple[int, ...], padded: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """``array`` cut back to ``own`` along each axis ``k >= 1`` whose length is ``padded[k - 1]``."""
    index: list[slice] = [slice(None)]
    for axis, (mine, full) in enumerate(zip(own, padded, strict=False), start=1):
        if axis >= array.ndim:
            break
        index.append(slice(0, mine) if array.shape[axis] == full and mine < full else slice(None))
    return array[tuple(index)]


@dataclass(slots=True)
class Batch:
    """Named arrays concatenated along the first dimension, plus one ``BatchItem`` per request."""

    inputs: Arrays
    items: list[BatchItem]

    @property
    def rows(self) -> int:
        return sum(item.rows for item in self.items)

    @classmethod
    def of(cls, inputs: Arrays, parameters: Mapping[str, Any] | None = None) -> Batch:
        """A batch of one request (handy in tests and warm-up)."""
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        return cls(inputs, [BatchItem(new_request_id(), rows, dict(parameters or {}))])

    @classmethod
    def from_requests(cls, requests: Sequence[InferenceRequest]) -> Batch:
        """Concatenate the requests' inputs; a single request's arrays are used as they are."""
        items = [BatchItem(r.id, r.rows, r.parameters, r.deadline, r.cancel.cancelled) for r in requests]
        if len(requests) == 1:
            return cls(requests[0].inputs, items)
        names = requests[0].inputs.keys()
        return cls({n: np.concatenate([r.inputs[n] for r in requests]) for n in names}, items)

    def split(self, outputs: Arrays) -> list[Arrays]:
        """Cut batch outputs back into one dict per item, by each item's row count.

        In a zero-padded batch (items carry ``extents``), an output axis ``k >= 1`` as long as the
        batch's padded input axis ``k`` is cut back to each request's own length along it.
        """
        if len(self.items) == 1:
            return [outputs]
        result: list[Arrays] = []
        start = 0
        padded = None if self.items[0].extents is None else self._padded_extents()
        for item in self.items:
            stop = start + item.rows
            if padded is None or item.extents is None or item.extents == padded:
                result.append({name: array[start:stop] for name, array in outputs.items()})
            else:
                result.append(
                    {name: _trim(array[start:stop], item.extents, padded) for name, array in outputs.items()}
                )
            start = stop
        return result

    def _padded_extents(self) -> tuple[int, ...] | None:
        extents = [item.extents for item in self.items]
        if any(e is None for e in extents):
            return None
        return tuple(max(sizes) for sizes in zip(*extents, strict=True))

    def select(self, index: int) -> Batch:
        """The sub-batch holding only item ``index``."""
        return self.subset([index])

    def subset(self, indices: Sequence[int]) -> Batch:
        """The sub-batch of the items at ``indices`` (in that order)."""
        starts = [0]
        for item in self.items:
            starts.append(starts[-1] + item.rows)
        if len(indices) == 1:
            i = indices[0]
            inputs = {n: a[starts[i] : starts[i + 1]] for n, a in self.inputs.items()}
        else:
            inputs = {
                n: np.concatenate([a[starts[i] : starts[i + 1]] for i in indices])
                for n, a in self.inputs.items()
            }
        return Batch(inputs, [self.items[i] for i in indices])
