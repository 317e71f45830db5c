"""Text generation over HTTP: the ladle ``generate`` endpoint and the OpenAI-compatible API.

``POST /api/v1/models/{name}/generate``::

    {"prompt": "Once upon", "max_tokens": 32, "stream": false,
     "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": null, "stop": ["\\n"],
     "params": {"version": "1", "timeout_ms": 60000, "priority": "high", "routing_key": "user-42"}}

answers ``{"id", "model", "version", "text", "token_ids", "finish_reason", "usage"}``; with
``"stream": true`` it sends server-sent events, one ``data: {"text", "token_ids"}`` per chunk, a last
``data: {"finish_reason", "usage"}`` and ``data: [DONE]``.

OpenAI-compatible: ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions``
(``stream`` and ``stream_options.include_usage`` too), so the official ``openai`` client works
unchanged. Errors there use OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
The routing key is the ``Ladle-Routing-Key`` header, else the body's ``user``.

Every endpoint is a thin adapter: it builds one ``InferenceRequest`` with a ``GenerationPayload``
and hands it to the admission pipeline, so canary splits, sticky keys, shadows, fallbacks, breakers
and rollouts apply to generative models as to any other. A client that disconnects aborts its
sequence, and its cache blocks return to the pool.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..admission import Admission, AnswerStream
from ..envelope import CancelSignal, InferenceRequest
from ..errors import InvalidRequestError, LadleError, ModelNotFoundError, public_text
from ..generation import GenerationChunk, GenerationPayload, GenerationResult, SamplingParams
from ..request_context import ROUTING_KEY_HEADER, RequestContext
from ..server import Server
from .fast_path import JSON_HEADERS, FastRoutes, Handler, Reply
from .responses import error_headers, json_response
from .v2_codec import parse_json

__all__ = ["openai_error_body", "openai_payload", "openai_response", "routes"]

_SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}
_ids = itertools.count(1)
_prefix = os.urandom(3).hex()
_DONE = b"data: [DONE]\n\n"
_UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "suffix", "tools", "functions")
#: chunk -> the server-sent events it becomes
Render = Callable[[GenerationChunk], list[bytes]]


def _new_id(kind: str) -> str:
    return f"{kind}-{_prefix}{next(_ids):x}"


def _sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def openai_error_body(error: LadleError) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    return {
        "error": {
            "message": public_text(error.message),
            "type": kind,
            "param": error.details.get("param"),
            "code": error.code,
        }
    }


def _openai(handler: Handler, admission: Admission) -> Handler:
    """OpenAI's error body for every error of an OpenAI endpoint (counted once, like every answer)."""

    async def wrapped(
        model: str | None, version: str | None, body: bytes, headers: Mapping[str, str], cancel: CancelSignal
    ) -> Reply:
        try:
            return await handler(model, version, body, headers, cancel)
        except LadleError as exc:
            admission.refused("", "openai", exc)  # a no-op when the pipeline counted it already
            return exc.status, orjson.dumps(openai_error_body(exc)), {**JSON_HEADERS, **error_headers(exc)}

    return wrapped


async def _events(
    stream: AnswerStream, render: Render, error_body: Callable[[LadleError], Any]
) -> AsyncGenerator[bytes, None]:
    """Server-sent events of a generation; an error mid-stream is sent as an event."""
    try:
        async for chunk in stream:
            for event in render(chunk):
                yield event
    except LadleError as exc:
        yield _sse(error_body(exc))
    finally:
        stream.abort()  # no-op when finished; frees the sequence when the client went away
    yield _DONE


def _object(raw: bytes) -> dict[str, Any]:
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    return body


def _prompt(value: Any) -> str | tuple[int, ...]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]  # OpenAI's batch-of-one form
    if isinstance(value, str) or (
        isinstance(value, list)
        and value
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    ):
        return value if isinstance(value, str) else tuple(value)
    raise InvalidRequestError("'prompt' must be a string or a list of token ids", param="prompt")


def _reject_unsupported(body: Mapping[str, Any]) -> None:
    """400 for OpenAI features ladle does not serve, rather than silently ignoring them."""
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            raise InvalidRequestError(f"only {name} = 1 is supported", param=name)
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, False, 0, []):
            raise InvalidRequestError(f"{name} is not supported", param=name)


def _openai_sampling(body: Mapping[str, Any]) -> SamplingParams:
    fields = {key: body[key] for key in SamplingParams.FIELDS if key in body}
    if body.get("max_completion_tokens") is not None:
        fields["max_tokens"] = body["max_completion_tokens"]
    return SamplingParams.from_mapping(fields)


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    wanted = body.get("stream") or False
    if not isinstance(wanted, bool):
        raise InvalidRequestError("'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InvalidRequestError("'stream_options' must be an object", param="stream_options")
    return wanted, bool(options.get("include_usage", False))


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("'messages' must be a non-empty list", param="messages")
    messages = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequestError("every message needs a string 'role'", param="messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        elif not isinstance(content, str):
            raise InvalidRequestError("every message needs string 'content'", param="messages")
        messages.append({**message, "content": content})
    return messages


def openai_payload(endpoint: str, body: Mapping[str, Any]) -> GenerationPayload:
    """The generation payload of an OpenAI ``/v1/completions`` or ``/v1/chat/completions`` body (the
    online endpoints and the Batch API parse bodies here); 400 for what ladle does not serve."""
    _reject_unsupported(body)
    sampling = _openai_sampling(body)
    if endpoint == "/v1/chat/completions":
        return GenerationPayload(messages=tuple(_messages(body.get("messages"))), sampling=sampling)
    return GenerationPayload(prompt=_prompt(body.get("prompt")), sampling=sampling)


def openai_response(
    request_id: str, kind: str, created: int, model: str, result: GenerationResult
) -> dict[str, Any]:
    """The whole (not streamed) OpenAI answer: ``kind`` ``"text_completion"`` or ``"chat.completion"``."""
    if kind == "chat.completion":
        message = {"role": "assistant", "content": result.text}
        choice = {"index": 0, "message": message, "finish_reason": result.finish_reason}
    else:
        choice = {"text": result.text, "index": 0, "logprobs": None, "finish_reason": result.finish_reason}
    return _openai_object(request_id, kind, created, model, [choice], result.usage.to_dict())


def _openai_object(
    request_id: str,
    kind: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """An OpenAI response or stream chunk object."""
    data: dict[str, Any] = {
        "id": request_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        data["usage"] = usage
    return data


def routes(server: Server, fast_routes: FastRoutes) -> list[BaseRoute]:
    manager = server.manager
    admission = manager.admission
    trace_context = server.trace_context

    def envelope(
        model: str,
        payload: GenerationPayload,
        headers: Mapping[str, str],
        params: Mapping[str, Any],
        cancel: CancelSignal,
        request_id: str,
        protocol: str,
    ) -> InferenceRequest:
        try:
            endpoint = manager.endpoint(model)
        except ModelNotFoundError as exc:
            exc.details["param"] = "model"
            raise
        context = RequestContext.parse(headers, params, trace_context)
        version = params.get("version")
        return InferenceRequest(
            endpoint.name,
            {},
            version=str(version) if version is not None else None,
            id=request_id,
            deadline=context.deadline,
            priority=context.priority,
            routing_key=context.routing_key,
            trace=context.trace,
            generation=payload,
            protocol=protocol,
            cancel=cancel,
        )

    async def generate(
        model: str | None, _: str | None, raw: bytes, headers: Mapping[str, str], cancel: CancelSignal
    ) -> Reply:
        assert model is not None
        body = _object(raw)
        params = body.pop("params", None) or {}
        if not isinstance(params, dict) or set(params) - {"version", "timeout_ms", "priority", "routing_key"}:
            raise InvalidRequestError(
                "'params' takes version, timeout_ms, priority and routing_key", param="params"
            )
        prompt = _prompt(body.pop("prompt", None))
        streaming = body.pop("stream", False)
        if not isinstance(streaming, bool):
            raise InvalidRequestError("'stream' must be true or false", param="stream")
        body.pop("id", None)
        payload = GenerationPayload(prompt=prompt, sampling=SamplingParams.from_mapping(body))
        request = envelope(model, payload, headers, params, cancel, _new_id("gen"), "ladle")
        if streaming:
            stream = admission.stream(request)

            def render(chunk: GenerationChunk) -> list[bytes]:
                events = []
                if chunk.text or chunk.token_ids:
                    events.append(_sse({"text": chunk.text, "token_ids": chunk.token_ids}))
                if chunk.finish_reason is not None:
                    events.append(
                        _sse({"finish_reason": chunk.finish_reason, "usage": chunk.usage.to_dict()})
                    )
                return events

            errors: Callable[[LadleError], Any] = lambda error: {"error": error.to_dict()}  # noqa: E731
            return 200, _events(stream, render, errors), {**_SSE_HEADERS, **stream.headers()}
        answer = await admission.infer(request)
        result = answer.generation
        assert result is not None
        data = {
            "id": request.id,
            "model": answer.model,
            "version": answer.version,
            "text": result.text,
            "token_ids": result.token_ids,
            "finish_reason": result.finish_reason,
            "usage": result.usage.to_dict(),
        }
        return 200, orjson.dumps(data), {**JSON_HEADERS, **answer.headers()}

    def openai_request(
        body: Mapping[str, Any],
        payload: GenerationPayload,
        headers: Mapping[str, str],
        cancel: CancelSignal,
        kind: str,
    ) -> InferenceRequest:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("'model' must name a served model", param="model")
        params: dict[str, Any] = {}
        user = body.get("user")
        if isinstance(user, str) and user and ROUTING_KEY_HEADER not in headers:
            params["routing_key"] = user
        return envelope(name, payload, headers, params, cancel, _new_id(kind), "openai")

    async def answer_openai(
        request: InferenceRequest,
        streaming: bool,
        render: Callable[[Callable[..., dict[str, Any]]], Render],
        kind: str,
    ) -> Reply:
        created = int(time.time())
        if streaming:
            stream = admission.stream(request)
            make = functools.partial(
                _openai_object,
                request.id,
                f"{kind}.chunk" if kind == "chat.completion" else kind,
                created,
                stream.model,
            )
            return (
                200,
                _events(stream, render(make), openai_error_body),
                {**_SSE_HEADERS, **stream.headers()},
            )
        answer = await admission.infer(request)
        assert answer.generation is not None
        data = openai_response(request.id, kind, created, answer.model, answer.generation)
        return 200, orjson.dumps(data), {**JSON_HEADERS, **answer.headers()}

    async def completions(
        _: str | None, __: str | None, raw: bytes, headers: Mapping[str, str], cancel: CancelSignal
    ) -> Reply:
        body = _object(raw)
        payload = openai_payload("/v1/completions", body)
        streaming, include_usage = _stream_flags(body)
        request = openai_request(body, payload, headers, cancel, "cmpl")

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

        def render(make: Callable[..., dict[str, Any]]) -> Render:
            def events(chunk: GenerationChunk) -> list[bytes]:
                out = []
                if chunk.text or chunk.finish_reason is not None:
                    out.append(_sse(make([choice(chunk.text, chunk.finish_reason)])))
                if chunk.finish_reason is not None and include_usage:
                    out.append(_sse(make([], chunk.usage.to_dict())))
                return out

            return events

        return await answer_openai(request, streaming, render, "text_completion")

    async def chat_completions(
        _: str | None, __: str | None, raw: bytes, headers: Mapping[str, str], cancel: CancelSignal
    ) -> Reply:
        body = _object(raw)
        payload = openai_payload("/v1/chat/completions", body)
        streaming, include_usage = _stream_flags(body)
        request = openai_request(body, payload, headers, cancel, "chatcmpl")

        def render(make: Callable[..., dict[str, Any]]) -> Render:
            first = [True]

            def events(chunk: GenerationChunk) -> list[bytes]:
                out = []
                if first[0]:
                    first[0] = False
                    delta = {"role": "assistant", "content": ""}
                    out.append(_sse(make([{"index": 0, "delta": delta, "finish_reason": None}])))
                if chunk.text:
                    out.append(
                        _sse(make([{"index": 0, "delta": {"content": chunk.text}, "finish_reason": None}]))
                    )
                if chunk.finish_reason is not None:
                    out.append(_sse(make([{"index": 0, "delta": {}, "finish_reason": chunk.finish_reason}])))
                    if include_usage:
                        out.append(_sse(make([], chunk.usage.to_dict())))
                return out

            return events

        return await answer_openai(request, streaming, render, "chat.completion")

    async def models(request: Request) -> Response:
        data = [
            {"id": endpoint.name, "object": "model", "created": int(served.loaded_at), "owned_by": "ladle"}
            for endpoint in manager.models.values()
            if (served := endpoint.latest()) is not None and served.generates
        ]
        return json_response({"object": "list", "data": data})

    fast_routes.add("/api/v1/models/{model}/generate", generate, "ladle")
    fast_routes.add("/v1/completions", _openai(completions, admission), "openai")
    fast_routes.add("/v1/chat/completions", _openai(chat_completions, admission), "openai")
    return [Route("/v1/models", models, methods=["GET"])]
