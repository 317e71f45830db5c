"""Text generation over HTTP: the ladle ``generate`` endpoint and the OpenAI-compatible API.

``POST /api/v1/models/{name}/generate``::

    {"prompt": "Once upon", "max_tokens": 32, "stream": false,
     "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": null, "stop": ["\\n"],
     "params": {"version": "1", "timeout_ms": 60000, "priority": "high"}}

answers ``{"id", "model", "version", "text", "token_ids", "finish_reason", "usage"}``; with
``"stream": true`` it sends server-sent events, one ``data: {"text", "token_ids"}`` per chunk, a last
``data: {"finish_reason", "usage"}`` and ``data: [DONE]``.

OpenAI-compatible: ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions``
(``stream`` and ``stream_options.include_usage`` too), so the official ``openai`` client works
unchanged. Errors there use OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
A client that disconnects aborts its sequence, and its cache blocks return to the pool.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..errors import InvalidRequestError, LadleError, ModelNotFoundError
from ..generation import GenerationChunk, GenerationStream, SamplingParams, TextGenerator
from ..server import Server
from ..serving import ModelEndpoint, VersionEndpoint
from .request_context import VERSION_HEADER, RequestContext
from .responses import JSON, error_response, json_response, read_body
from .v2_codec import parse_json

__all__ = ["routes"]

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_ids = itertools.count(1)
_prefix = os.urandom(3).hex()


def _new_id(kind: str) -> str:
    return f"{kind}-{_prefix}{next(_ids):x}"


def _generator(endpoint: ModelEndpoint, version: str | None) -> tuple[VersionEndpoint, TextGenerator]:
    served = endpoint.version(version)
    batcher = served.batcher
    if not isinstance(batcher, TextGenerator):
        raise InvalidRequestError(
            f"model {endpoint.name!r} does not generate text (its batcher is {served.config.batcher.name!r})",
            model=endpoint.name,
        )
    return served, batcher


def _sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


def _openai_error(error: LadleError) -> Response:
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    body = {
        "error": {
            "message": error.message,
            "type": kind,
            "param": error.details.get("param"),
            "code": error.code,
        }
    }
    headers = (
        {"Retry-After": str(max(1, round(error.retry_after)))} if hasattr(error, "retry_after") else None
    )
    return json_response(body, error.status, headers)


def _openai(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """OpenAI's error body for every error of an OpenAI endpoint."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except LadleError as exc:
            return _openai_error(exc)

    return wrapped


async def _stream_events(
    stream: GenerationStream, render: Callable[[GenerationChunk], list[bytes]]
) -> AsyncIterator[bytes]:
    """Server-sent events from a generation stream; an error mid-stream is sent as an event."""
    try:
        async for chunk in stream:
            for event in render(chunk):
                yield event
    except LadleError as exc:
        yield _sse({"error": exc.to_dict()})
    finally:
        stream.abort()  # no-op when finished; frees the sequence when the client went away
    yield _DONE


def _event_response(
    stream: GenerationStream, render: Callable[[GenerationChunk], list[bytes]], headers: Mapping[str, str]
) -> StreamingResponse:
    """The ``text/event-stream`` response of a streamed generation."""
    return StreamingResponse(
        _stream_events(stream, render), media_type="text/event-stream", headers={**_SSE_HEADERS, **headers}
    )


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


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    return body


_UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "suffix", "tools", "functions")


def _reject_unsupported(body: Mapping[str, Any]) -> None:
    """400 for OpenAI features ladle does not serve, rather than silently ignoring them."""
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            raise InvalidRequestError(f"only {name} = 1 is supported", param=name)
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, False, 0, []):
            raise InvalidRequestError(f"{name} is not supported", param=name)


def _sampling(body: Mapping[str, Any]) -> SamplingParams:
    fields = {key: body[key] for key in SamplingParams.FIELDS if key in body}
    if "max_completion_tokens" in body and body["max_completion_tokens"] is not None:
        fields["max_tokens"] = body["max_completion_tokens"]
    return SamplingParams.from_mapping(fields)


def routes(server: Server) -> list[BaseRoute]:
    manager = server.manager
    limit = server.config.server.max_request_bytes
    trace_context = server.trace_context

    async def generate(request: Request) -> Response:
        endpoint = manager.endpoint(request.path_params["model"])
        body = _object(parse_json(await read_body(request, limit)))
        params = body.pop("params", None) or {}
        if not isinstance(params, dict) or set(params) - {"version", "timeout_ms", "priority"}:
            raise InvalidRequestError("'params' takes version, timeout_ms and priority", param="params")
        prompt = body.pop("prompt", None)
        if not isinstance(prompt, str) and not (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)
        ):
            raise InvalidRequestError("'prompt' must be a string or a list of token ids", param="prompt")
        stream_wanted = body.pop("stream", False)
        if not isinstance(stream_wanted, bool):
            raise InvalidRequestError("'stream' must be true or false", param="stream")
        body.pop("id", None)
        sampling = SamplingParams.from_mapping(body)
        version = str(params["version"]) if params.get("version") is not None else None
        served, generator = _generator(endpoint, version)
        context = RequestContext.parse(request.headers, params, endpoint.timeout, trace_context)
        request_id = _new_id("gen")
        stream = generator.generate(
            prompt, sampling, priority=context.priority, request_id=request_id, deadline=context.deadline
        )
        headers = {VERSION_HEADER: served.version}
        if stream_wanted:

            def render(chunk: GenerationChunk) -> list[bytes]:
                events = []
                if chunk.text or chunk.token_ids:
                    events.append(_sse({"text": chunk.text, "token_ids": chunk.token_ids}))
                if chunk.finish_reason is not None:
                    events.append(
                        _sse({"finish_reason": chunk.finish_reason, "usage": chunk.usage.to_dict()})
                    )
                return events

            return _event_response(stream, render, headers)
        try:
            result = await stream.collect()
        except LadleError as exc:
            return error_response(exc, headers)
        payload = {
            "id": request_id,
            "model": endpoint.name,
            "version": served.version,
            "text": result.text,
            "token_ids": result.token_ids,
            "finish_reason": result.finish_reason,
            "usage": result.usage.to_dict(),
        }
        return Response(orjson.dumps(payload), 200, headers, JSON)

    def _generators() -> list[tuple[ModelEndpoint, VersionEndpoint]]:
        found = []
        for endpoint in manager.models.values():
            table = endpoint.table
            served = endpoint.versions.get(table.latest) if table.versions else None
            if served is not None and isinstance(served.batcher, TextGenerator):
                found.append((endpoint, served))
        return found

    async def models(request: Request) -> Response:
        data = [
            {"id": endpoint.name, "object": "model", "created": int(served.loaded_at), "owned_by": "ladle"}
            for endpoint, served in _generators()
        ]
        return json_response({"object": "list", "data": data})

    def _target(body: Mapping[str, Any]) -> tuple[ModelEndpoint, VersionEndpoint, TextGenerator]:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("'model' must name a served model", param="model")
        try:
            endpoint = manager.endpoint(name)
        except ModelNotFoundError as exc:
            exc.details["param"] = "model"
            raise
        served, generator = _generator(endpoint, None)
        return endpoint, served, generator

    def _stream_flag(body: Mapping[str, Any]) -> tuple[bool, bool]:
        wanted = body.get("stream") or False
        if not isinstance(wanted, bool):
            raise InvalidRequestError("'stream' must be true or false", param="stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise InvalidRequestError("'stream_options' must be an object", param="stream_options")
        return wanted, bool(options.get("include_usage", False))

    async def completions(request: Request) -> Response:
        body = _object(parse_json(await read_body(request, limit)))
        endpoint, served, generator = _target(body)
        _reject_unsupported(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if not isinstance(prompt, str) and not (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)
        ):
            raise InvalidRequestError("'prompt' must be a string or a list of token ids", param="prompt")
        sampling = _sampling(body)
        streaming, include_usage = _stream_flag(body)
        context = RequestContext.parse(request.headers, {}, endpoint.timeout, trace_context)
        request_id = _new_id("cmpl")
        created = int(time.time())
        stream = generator.generate(
            prompt, sampling, priority=context.priority, request_id=request_id, deadline=context.deadline
        )
        headers = {VERSION_HEADER: served.version}

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

        envelope = functools.partial(_openai_object, request_id, "text_completion", created, endpoint.name)

        if streaming:

            def render(chunk: GenerationChunk) -> list[bytes]:
                events = []
                if chunk.text or chunk.finish_reason is not None:
                    events.append(_sse(envelope([choice(chunk.text, chunk.finish_reason)])))
                if chunk.finish_reason is not None and include_usage:
                    events.append(_sse(envelope([], chunk.usage.to_dict())))
                return events

            return _event_response(stream, render, headers)
        result = await stream.collect()
        return json_response(
            envelope([choice(result.text, result.finish_reason)], result.usage.to_dict()), 200, headers
        )

    async def chat_completions(request: Request) -> Response:
        body = _object(parse_json(await read_body(request, limit)))
        endpoint, served, generator = _target(body)
        _reject_unsupported(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("'messages' must be a non-empty list", param="messages")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise InvalidRequestError("every message needs a string 'role'", param="messages")
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                message["content"] = "".join(
                    p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
                )
            elif not isinstance(content, str):
                raise InvalidRequestError("every message needs string 'content'", param="messages")
        sampling = _sampling(body)
        streaming, include_usage = _stream_flag(body)
        prompt_ids = generator.tokenizer.encode_chat(messages)
        context = RequestContext.parse(request.headers, {}, endpoint.timeout, trace_context)
        request_id = _new_id("chatcmpl")
        created = int(time.time())
        stream = generator.generate(
            prompt_ids,
            sampling,
            priority=context.priority,
            request_id=request_id,
            deadline=context.deadline,
            add_special_tokens=False,
        )
        headers = {VERSION_HEADER: served.version}

        kind = "chat.completion.chunk" if streaming else "chat.completion"
        envelope = functools.partial(_openai_object, request_id, kind, created, endpoint.name)

        if streaming:
            first = [True]

            def render(chunk: GenerationChunk) -> list[bytes]:
                events = []
                if first[0]:
                    first[0] = False
                    delta = {"role": "assistant", "content": ""}
                    events.append(_sse(envelope([{"index": 0, "delta": delta, "finish_reason": None}])))
                if chunk.text:
                    delta = {"content": chunk.text}
                    events.append(_sse(envelope([{"index": 0, "delta": delta, "finish_reason": None}])))
                if chunk.finish_reason is not None:
                    events.append(
                        _sse(envelope([{"index": 0, "delta": {}, "finish_reason": chunk.finish_reason}]))
                    )
                    if include_usage:
                        events.append(_sse(envelope([], chunk.usage.to_dict())))
                return events

            return _event_response(stream, render, headers)
        result = await stream.collect()
        message = {"role": "assistant", "content": result.text}
        choice = {"index": 0, "message": message, "finish_reason": result.finish_reason}
        return json_response(envelope([choice], result.usage.to_dict()), 200, headers)

    return [
        Route("/api/v1/models/{model}/generate", generate, methods=["POST"]),
        Route("/v1/models", _openai(models), methods=["GET"]),
        Route("/v1/completions", _openai(completions), methods=["POST"]),
        Route("/v1/chat/completions", _openai(chat_completions), methods=["POST"]),
    ]
