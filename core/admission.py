"""The admission pipeline: the one path every protocol's requests take to a batcher.

Every ingress (V2 REST and gRPC, the ladle API, the OpenAI endpoints, jobs) decodes into one
``InferenceRequest`` and calls ``Admission.infer`` (one answer) or ``Admission.stream`` (chunks of a
generation). Nothing below this module knows which protocol a request came by::

    route      the model's router picks the version (a ``static`` router once per routing table)
    check      payload kind, signature, input checks, requested outputs: all before anything queues
    stages     the model's delivery stages, outermost first (fallback, cache, circuit breaker,
               rollout samples, shadow copy, cascade), each a ``Stage`` with one interface
    queue      the version's batcher: ``submit`` for tensors, ``stream`` for a generation
    answer     one ``Answer``: outputs or generation, the version that served, where from and why

A client that goes away (``request.cancel.abandon()``, called by the adapter) calls off its request
wherever it is: a queued tensor request is dropped before it runs, a generation is aborted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

from .envelope import Arrays, InferenceRequest
from .errors import LadleError, ModelNotReadyError, RequestCancelledError
from .generation import FinishReason, GenerationChunk, GenerationResult, GenerationStream, Usage
from .routing import Route

if TYPE_CHECKING:
    from .serving import ModelEndpoint, VersionEndpoint

__all__ = [
    "ARM_HEADER",
    "SERVED_FROM_HEADER",
    "SOURCE_MODEL",
    "VERSION_HEADER",
    "Admission",
    "Answer",
    "AnswerStream",
    "Call",
    "Pending",
    "Proceed",
    "Stage",
    "WatchedStream",
    "chain",
]

VERSION_HEADER = "Ladle-Model-Version"
SERVED_FROM_HEADER = "Ladle-Served-From"
FALLBACK_HEADER = "Ladle-Fallback-Reason"
ARM_HEADER = "Ladle-Experiment-Arm"
#: ``Answer.source`` of an answer the routed version computed for this request.
SOURCE_MODEL = "model"

#: An outcome callback: (outputs, or the generation result, or ``None``; the error or ``None``).
Outcome = Callable[["Arrays | GenerationResult | None", "BaseException | None"], None]
#: Told of every answer no batcher reported: (request, the version or ``None``, HTTP-style status).
AnswerListener = Callable[[InferenceRequest, "str | None", int], None]


@dataclass(slots=True)
class Answer:
    """One answer, whatever the protocol: tensors (``outputs``) or a ``generation``, the version that
    served it, and where it came from: ``source`` is ``"model"`` (the routed version ran it),
    ``"cache"``, ``"cascade"`` (escalated to a larger model) or ``"fallback:<kind>"``; ``reason`` says
    why (``"circuit_open"``, ``"overloaded"``, ``"unsure"``); ``arm`` names an experiment arm."""

    model: str
    version: str
    outputs: Arrays
    generation: GenerationResult | None = None
    source: str = SOURCE_MODEL
    reason: str = ""
    arm: str | None = None

    def headers(self) -> dict[str, str]:
        return _headers(self.version, self.source, self.reason, self.arm)


def _headers(version: str, source: str, reason: str, arm: str | None) -> dict[str, str]:
    headers = {VERSION_HEADER: version}
    if source != SOURCE_MODEL:
        headers[SERVED_FROM_HEADER] = source
        if reason:
            headers[FALLBACK_HEADER] = reason
    if arm is not None:
        headers[ARM_HEADER] = arm
    return headers


class WatchedStream:
    """A batcher's ``GenerationStream`` that tells its outcome callbacks how it ended: the whole
    result once it finishes, or the error (``RequestCancelledError`` when it was aborted)."""

    __slots__ = ("_callbacks", "_done", "_finish", "_inner", "_text", "_tokens", "_usage")

    def __init__(self, inner: GenerationStream) -> None:
        self._inner = inner
        self._text: list[str] = []
        self._tokens: list[int] = []
        self._usage = Usage(inner.prompt_tokens, 0)
        self._finish: FinishReason | None = None
        self._callbacks: list[Outcome] = []
        self._done = False

    @classmethod
    def replay(cls, result: GenerationResult) -> WatchedStream:
        """A stream that yields a known result as one chunk (a cached generation)."""
        return cls(_Replay(result))

    @property
    def request_id(self) -> str:
        return self._inner.request_id

    @property
    def prompt_tokens(self) -> int:
        return self._inner.prompt_tokens

    def add_done_callback(self, callback: Outcome) -> None:
        self._callbacks.append(callback)

    def _end(self, result: GenerationResult | None, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        for callback in self._callbacks:
            callback(result, error)

    def __aiter__(self) -> WatchedStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        try:
            chunk = await self._inner.__anext__()
        except StopAsyncIteration:
            if self._finish is None:
                self._end(None, RequestCancelledError("the generation was aborted"))
            raise
        except asyncio.CancelledError:
            self._end(None, RequestCancelledError("the generation was aborted"))
            raise
        except BaseException as exc:
            self._end(None, exc)
            raise
        self._text.append(chunk.text)
        self._tokens.extend(chunk.token_ids)
        self._usage = chunk.usage
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
            self._end(
                GenerationResult("".join(self._text), list(self._tokens), chunk.finish_reason, self._usage),
                None,
            )
        return chunk

    def abort(self) -> None:
        self._inner.abort()
        self._end(None, RequestCancelledError("the generation was aborted"))

    def cancel(self) -> None:
        """``abort`` (a stream is the ``Cancellable`` work of its request)."""
        self.abort()

    async def collect(self) -> GenerationResult:
        async for _ in self:
            pass
        finish = self._finish
        return GenerationResult("".join(self._text), list(self._tokens), finish or "abort", self._usage)


class _Replay:
    """A finished generation as a ``GenerationStream`` of one chunk."""

    def __init__(self, result: GenerationResult) -> None:
        self.request_id = ""
        self.prompt_tokens = result.usage.prompt_tokens
        self._result: GenerationResult | None = result

    def __aiter__(self) -> _Replay:
        return self

    async def __anext__(self) -> GenerationChunk:
        result, self._result = self._result, None
        if result is None:
            raise StopAsyncIteration
        usage = result.usage
        return GenerationChunk(
            result.text,
            list(result.token_ids),
            usage.prompt_tokens,
            usage.completion_tokens,
            result.finish_reason,
        )

    def abort(self) -> None:
        self._result = None

    async def collect(self) -> GenerationResult:
        raise NotImplementedError  # WatchedStream collects by iterating

    async def __aenter__(self) -> _Replay:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.abort()


class Pending:
    """An answer on its way: who is answering (``model``, ``version``, ``source``, ``reason``; a stage
    may change these until the answer exists) and how it will come: a ``future`` of outputs
    (tensors) or a ``stream`` (a generation)."""

    __slots__ = ("future", "model", "ran", "reason", "source", "stream", "version")

    def __init__(
        self,
        model: str,
        version: str,
        future: asyncio.Future[Arrays] | None = None,
        stream: WatchedStream | None = None,
        source: str = SOURCE_MODEL,
        reason: str = "",
    ) -> None:
        self.model = model
        self.version = version
        self.future = future
        self.stream = stream
        self.source = source
        self.reason = reason
        #: Whether a batcher computes the answer (and reports it); ``False`` for a stored answer.
        self.ran = True

    @classmethod
    def answered(
        cls,
        model: str,
        version: str,
        result: Arrays | GenerationResult,
        source: str,
        reason: str = "",
    ) -> Pending:
        """An answer that exists already (a cache hit, a static fallback)."""
        if isinstance(result, GenerationResult):
            pending = cls(model, version, stream=WatchedStream.replay(result), source=source, reason=reason)
        else:
            future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
            future.set_result(result)
            pending = cls(model, version, future, source=source, reason=reason)
        pending.ran = False
        return pending

    def relabel(self, source: str, reason: str) -> Pending:
        self.source = source
        self.reason = reason
        return self

    def add_done_callback(self, callback: Outcome) -> None:
        """Call ``callback(result, error)`` once the answer exists (or failed, or was cancelled)."""
        if self.stream is not None:
            self.stream.add_done_callback(callback)
            return
        assert self.future is not None

        def done(future: asyncio.Future[Arrays]) -> None:
            if future.cancelled():
                callback(None, RequestCancelledError("the request was cancelled"))
            elif (error := future.exception()) is not None:
                callback(None, error)
            else:
                callback(future.result(), None)

        self.future.add_done_callback(done)


class Call:
    """A request on its way through one model's stages: the version it was routed to and the route
    (``None`` when the request named its version)."""

    __slots__ = ("admission", "endpoint", "request", "route", "target")

    def __init__(
        self,
        admission: Admission,
        endpoint: ModelEndpoint,
        target: VersionEndpoint,
        request: InferenceRequest,
        route: Route | None,
    ) -> None:
        self.admission = admission
        self.endpoint = endpoint
        self.target = target
        self.request = request
        self.route = route

    def to(self, target: VersionEndpoint) -> Call:
        """The same call bound for another version of the model (checked against its signature)."""
        target.check(self.request)
        self.request.version = target.version
        return Call(self.admission, self.endpoint, target, self.request, None)


Proceed: TypeAlias = Callable[[Call], Pending]


class Stage:
    """One delivery stage on a model's admission path.

    ``admit`` sees a routed, checked call before it queues. It goes on with ``proceed(call)`` (the
    next stage, and finally the batcher) and may, around that: answer at once (a cache hit), divert
    the call (a fallback, with ``call.to(version)`` or ``call.admission.admit(...)``), refuse it (an
    open circuit), watch its outcome (``pending.add_done_callback``), copy it (a shadow) or replace
    its answer (a cascade). Stages are built and swapped on the control path; ``admit`` is hot.
    """

    def admit(self, call: Call, proceed: Proceed) -> Pending:
        return proceed(call)

    def describe(self) -> dict[str, Any]:
        """Figures for the deployment's status, merged into its ``delivery`` section."""
        return {}

    async def close(self) -> None:
        """Stop background work (shadow workers, say)."""


def _queue(call: Call) -> Pending:
    return call.target.queue(call.request)


def chain(stages: tuple[Stage, ...]) -> Proceed:
    """Compose ``stages`` (outermost first) in front of the version's batcher."""
    proceed: Proceed = _queue
    for stage in reversed(stages):
        proceed = _link(stage, proceed)
    return proceed


def _link(stage: Stage, proceed: Proceed) -> Proceed:
    admit = stage.admit
    return lambda call: admit(call, proceed)


class AnswerStream:
    """The chunks of one generation answer, and the version serving it (known before the first chunk)."""

    __slots__ = ("_admission", "_pending", "_request", "_stream", "arm")

    def __init__(
        self, admission: Admission, request: InferenceRequest, pending: Pending, arm: str | None
    ) -> None:
        assert pending.stream is not None
        self._admission = admission
        self._request = request
        self._pending = pending
        self._stream = pending.stream
        self.arm = arm
        pending.stream.add_done_callback(self._counted)

    @property
    def model(self) -> str:
        return self._pending.model

    @property
    def version(self) -> str:
        return self._pending.version

    @property
    def request_id(self) -> str:
        return self._request.id

    @property
    def prompt_tokens(self) -> int:
        return self._stream.prompt_tokens

    def headers(self) -> dict[str, str]:
        pending = self._pending
        return _headers(pending.version, pending.source, pending.reason, self.arm)

    def _counted(self, result: GenerationResult | Arrays | None, error: BaseException | None) -> None:
        if error is not None or not self._pending.ran:  # the batcher reports what it computed
            self._admission.answered(self._request, self._pending.version, _status(error))

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self._stream

    def abort(self) -> None:
        self._stream.abort()

    async def collect(self) -> GenerationResult:
        return await self._stream.collect()


def _status(error: BaseException | None) -> int:
    if error is None:
        return 200
    return error.status if isinstance(error, LadleError) else 500


def _no_listener(request: InferenceRequest, version: str | None, status: int) -> None:
    return None


class Admission:
    """The admission pipeline of one server (see the module docstring).

    ``models`` are the served models by name (read per request; the server adds and removes
    them); ``lookup`` finds one by name or raises ``ModelNotFoundError`` naming the served ones;
    ``listener`` is told of every answer that no batcher reported: refusals, failures, stored
    answers (the telemetry layer counts them by status; batchers report what they computed).
    """

    def __init__(
        self,
        models: Mapping[str, ModelEndpoint],
        lookup: Callable[[str], ModelEndpoint],
        listener: AnswerListener | None = None,
    ) -> None:
        #: The served models; a refusal naming another model is counted under ``""``, so clients
        #: cannot create one metric series per made-up name.
        self._models = models
        self._lookup = lookup
        self.answered: AnswerListener = listener or _no_listener

    def refused(self, model: str, protocol: str, error: LadleError) -> None:
        """Count an answer an adapter refused before the pipeline saw the request (an unknown model,
        a body that does not decode)."""
        if error.counted:
            return
        error.counted = True
        name = model if model in self._models else ""
        self.answered(InferenceRequest(name, {}, protocol=protocol), None, error.status)

    # the pipeline -------------------------------------------------------------------------------

    def _route(
        self, endpoint: ModelEndpoint, request: InferenceRequest
    ) -> tuple[ModelEndpoint, VersionEndpoint, InferenceRequest, Route | None]:
        """The version that takes ``request`` (checked), and the route when the router chose it. A
        router may send a request to another model: the result names that model and a copy bound
        for it."""
        if request.deadline is None:
            request.deadline = request.arrival + endpoint.timeout
        route: Route | None = None
        version = request.version
        if version is None:
            route = endpoint.fixed_route
            if route is None:
                table = endpoint.table
                if not table.versions:
                    raise ModelNotReadyError(
                        f"model {endpoint.name!r} has no ready version", model=endpoint.name
                    )
                route = endpoint.router.route(request, table)
            primary = route.primary
            if primary.model != endpoint.name:
                copy = request.derive(primary.model, primary.version or None)
                return self._route(self._lookup(primary.model), copy)
            version = primary.version
        target = endpoint.versions.get(version) or endpoint.loaded(version)  # (raises, naming the loaded)
        request.version = version  # before the checks: a refusal names the version it reached
        arms = endpoint.arms
        if arms is not None:
            request.arm = arms.get(version)
        target.check(request)
        return endpoint, target, request, route

    def admit(self, request: InferenceRequest) -> Pending:
        """Route, check and queue ``request``; raises its ``LadleError`` at once if it is refused."""
        endpoint, target, request, route = self._route(self._lookup(request.model), request)
        if not endpoint.stages:
            return target.queue(request)
        return endpoint.proceed(Call(self, endpoint, target, request, route))

    async def infer(self, request: InferenceRequest) -> Answer:
        """The whole answer of ``request`` (a generation is collected); raises its ``LadleError``.

        A failure carries the version header of the version it reached.
        """
        pending: Pending | None = None
        try:
            endpoint = self._models.get(request.model) or self._lookup(request.model)  # (raises)
            direct = endpoint.direct
            if direct is not None and request.version is None and request.generation is None:
                # The plain path, inline: a static router, no stages, tensors (``_route`` without
                # the questions whose answers are known).
                if request.deadline is None:
                    request.deadline = request.arrival + endpoint.timeout
                request.version = version = direct.version
                direct.check(request)
                return Answer(endpoint.name, version, await direct.submit(request))
            endpoint, target, routed, route = self._route(endpoint, request)
            if not endpoint.stages and routed.generation is None:
                outputs = await target.submit(routed)
                return Answer(endpoint.name, target.version, outputs, None, SOURCE_MODEL, "", routed.arm)
            if endpoint.stages:
                pending = endpoint.proceed(Call(self, endpoint, target, routed, route))
            else:
                pending = target.queue(routed)
            if pending.stream is not None:
                generation: GenerationResult | None = await pending.stream.collect()
                outputs = {}
            else:
                assert pending.future is not None
                generation = None
                outputs = await pending.future
        except asyncio.CancelledError:
            if not request.cancel.abandoned:
                raise
            error = RequestCancelledError(f"request {request.id} was cancelled: the client went away")
            self._refused(request, pending, error)
            raise error from None
        except LadleError as exc:
            self._refused(request, pending, exc)
            raise
        version = pending.version
        if not pending.ran:
            self.answered(routed, version, 200)
        arms = self._lookup(pending.model).arms if pending.model != endpoint.name else endpoint.arms
        return Answer(
            pending.model,
            version,
            outputs,
            generation,
            pending.source,
            pending.reason,
            arms.get(version) if arms else None,
        )

    def stream(self, request: InferenceRequest) -> AnswerStream:
        """The chunks of a generation request; raises its ``LadleError`` at once if it is refused.
        Errors after the first chunk are raised by the stream."""
        try:
            pending = self.admit(request)
        except LadleError as exc:
            self._refused(request, None, exc)
            raise
        if pending.stream is None:  # a tensor answer (a cache or static fallback) cannot stream
            raise ModelNotReadyError("the answer to a generation request came back as tensors")
        arms = self._lookup(pending.model).arms
        return AnswerStream(self, request, pending, arms.get(pending.version) if arms else None)

    def _refused(self, request: InferenceRequest, pending: Pending | None, error: LadleError) -> None:
        version = pending.version if pending is not None else request.version
        if version is not None and VERSION_HEADER not in error.headers:
            error.headers[VERSION_HEADER] = version
        if request.model not in self._models:
            self.refused(request.model, request.protocol, error)
            return
        error.counted = True
        self.answered(request, version, error.status)
