"""The ``inference.GRPCInferenceService`` servicer: a thin adapter onto the admission pipeline.

ServerLive, ServerReady, ServerMetadata, ModelReady and ModelMetadata answer what the V2 REST
endpoints answer. ModelInfer decodes one ``ModelInferRequest`` into one ``InferenceRequest`` and
hands it to ``Admission.infer``; ModelStreamInfer does so for each message of the stream,
concurrently, and streams a generative model's chunks (see ``ladle.grpc.generation``). Other
methods of the service (model config, statistics, repository control, shared memory) answer
UNIMPLEMENTED.

Per-request settings: the call's deadline becomes the request's deadline (or the request's
``timeout_ms``, whichever is sooner); metadata carries ``ladle-routing-key``, ``ladle-priority``,
``ladle-timeout-ms`` and ``traceparent`` exactly as HTTP headers do, and request parameters win
over them (tritonclient's uint64 ``priority`` is read like the V2 REST ``priority`` parameter:
0 high, 1 normal, 2 low). A call the client cancels abandons its request: a queued tensor request
is dropped before it runs, a generation is aborted and its cache blocks freed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from .. import __version__
from ..admission import Answer
from ..config import ServerConfig
from ..envelope import InferenceRequest
from ..errors import ConfigError, LadleError, RuntimeFailureError
from ..request_context import RequestContext
from ..serving import ModelEndpoint, VersionEndpoint
from .codec import decode_inputs, encode_outputs, parameter_values, requested_outputs
from .generation import GenerationCall, decode_generation, response_parameters
from .status import status_of, trailing_metadata
from .stubs import SERVICE_NAME, Stubs

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["InferenceService"]

logger = logging.getLogger("ladle.grpc")

Emit = Callable[[Any], None]
#: Taken off the call's deadline, so the pipeline answers DEADLINE_EXCEEDED before gRPC cancels.
_DEADLINE_MARGIN = 0.002
_NO_HEADERS: Mapping[str, str] = {}
_METADATA_LIMIT = 4096
_END = object()


def _data_plane_auth(config: ServerConfig) -> Any:
    """The bearer-token check of the data plane, or ``None`` when the data plane is open."""
    if not config.server.data_plane_token:
        return None
    from ..deployments.auth import BearerAuth, configured_tokens

    tokens = configured_tokens(config)
    if not tokens:
        raise ConfigError(
            "[server] data_plane_token = true needs a token: set [server] api_token or LADLE_API_TOKEN",
            key="server.data_plane_token",
        )
    return BearerAuth(tokens, rate=None)


def _generates(endpoint: ModelEndpoint, version: str | None) -> bool:
    target: VersionEndpoint | None = endpoint.versions.get(version) if version else endpoint.latest()
    return target is not None and target.generates


def _internal(exc: Exception) -> RuntimeFailureError:
    logger.exception("gRPC inference handler failed")
    return RuntimeFailureError(f"internal error: {type(exc).__name__}")


class InferenceService:
    """The servicer over one server's model manager (``handler()`` registers it)."""

    def __init__(self, server: Server, stubs: Stubs) -> None:
        manager = server.manager
        self._manager = manager
        self._models = manager.models
        self._admission = manager.admission
        self._trace_context = server.trace_context
        self._auth = _data_plane_auth(server.config)
        pb = stubs.service
        self._pb = pb
        self._Response = pb.ModelInferResponse
        self._StreamResponse = pb.ModelStreamInferResponse
        self._Tensor = pb.ModelInferResponse.InferOutputTensor
        self._Parameter = pb.InferParameter
        self._answer_metadata: dict[tuple[str, str, str, str | None], tuple[tuple[str, str], ...]] = {}

    def handler(self) -> Any:
        """The ``grpc.GenericRpcHandler`` of the service."""
        pb = self._pb

        def unary(method: Any, request: Any, response: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )

        guarded = self._guarded
        methods = {
            "ServerLive": unary(
                guarded(self.server_live, False), pb.ServerLiveRequest, pb.ServerLiveResponse
            ),
            "ServerReady": unary(
                guarded(self.server_ready, False), pb.ServerReadyRequest, pb.ServerReadyResponse
            ),
            "ServerMetadata": unary(
                guarded(self.server_metadata), pb.ServerMetadataRequest, pb.ServerMetadataResponse
            ),
            "ModelReady": unary(guarded(self.model_ready), pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ModelMetadata": unary(
                guarded(self.model_metadata), pb.ModelMetadataRequest, pb.ModelMetadataResponse
            ),
            "ModelInfer": unary(self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.model_stream_infer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=pb.ModelStreamInferResponse.SerializeToString,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)

    # health and metadata ------------------------------------------------------------------------

    def _guarded(self, method: Callable[[Any], Any], authenticated: bool = True) -> Any:
        """``method(message)`` as a handler: errors become statuses; the token is checked when the
        data plane needs one (liveness and readiness are open, as ``/v2/health/*`` are)."""

        async def call(message: Any, context: Any) -> Any:
            try:
                if authenticated and self._auth is not None:
                    self._authenticate(context.invocation_metadata())
                return method(message)
            except LadleError as exc:
                error = exc
            except Exception as exc:
                error = _internal(exc)
            await _abort(context, error)

        return call

    def _authenticate(self, metadata: Any) -> None:
        headers = dict(metadata) if metadata else _NO_HEADERS
        self._auth.check(headers.get("authorization"))

    def server_live(self, message: Any) -> Any:
        return self._pb.ServerLiveResponse(live=True)

    def server_ready(self, message: Any) -> Any:
        return self._pb.ServerReadyResponse(ready=self._manager.ready)

    def server_metadata(self, message: Any) -> Any:
        return self._pb.ServerMetadataResponse(
            name="ladle", version=__version__, extensions=["binary_tensor_data", "ladle_api"]
        )

    def model_ready(self, message: Any) -> Any:
        endpoint = self._manager.endpoint(message.name)
        version = message.version
        ready = endpoint.loaded(version).ready if version else endpoint.ready
        return self._pb.ModelReadyResponse(ready=ready)

    def model_metadata(self, message: Any) -> Any:
        endpoint = self._manager.endpoint(message.name)
        version = endpoint.loaded(message.version) if message.version else None
        chosen = version if version is not None else endpoint.latest()
        signature = chosen.signature if chosen is not None else None
        tensor = self._pb.ModelMetadataResponse.TensorMetadata

        def specs(kind: str) -> list[Any]:
            if signature is None:
                return []
            found = signature.inputs if kind == "inputs" else signature.outputs
            return [tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in found]

        return self._pb.ModelMetadataResponse(
            name=endpoint.name,
            versions=[version.version] if version is not None else list(endpoint.versions),
            platform=chosen.spec.plugin if chosen is not None else "",
            inputs=specs("inputs"),
            outputs=specs("outputs"),
        )

    # inference ----------------------------------------------------------------------------------

    def _request(
        self, message: Any, context: Any, streaming: bool
    ) -> tuple[InferenceRequest, list[str] | None, GenerationCall | None]:
        """The envelope of one ``ModelInferRequest``, its requested outputs and, for a generative
        model on a stream, the decoded generation; raises ``LadleError`` for what the client got
        wrong. ModelInfer to a generative model sends tensors (``text_input`` rows in,
        ``text_output`` rows out), exactly as the V2 REST endpoint does."""
        name = message.model_name
        endpoint = self._models.get(name)
        if endpoint is None:
            endpoint = self._manager.endpoint(name)  # 404 naming the served models
        metadata = context.invocation_metadata()
        headers = dict(metadata) if metadata else _NO_HEADERS
        if self._auth is not None:
            self._auth.check(headers.get("authorization"))
        parameters = parameter_values(message.parameters)
        settings = RequestContext.parse(headers, parameters, self._trace_context)
        deadline = settings.deadline
        remaining = context.time_remaining()
        if remaining is not None:
            call_deadline = time.monotonic() + remaining - _DEADLINE_MARGIN
            if deadline is None or call_deadline < deadline:
                deadline = call_deadline
        version = message.model_version or None
        request_id = message.id or None
        if streaming and _generates(endpoint, version):
            generation = decode_generation(message, parameters)
            request = InferenceRequest(
                endpoint.name,
                {},
                version=version,
                id=request_id,
                deadline=deadline,
                priority=settings.priority,
                routing_key=settings.routing_key,
                trace=settings.trace,
                generation=generation.payload,
                protocol="grpc",
            )
            return request, None, generation
        inputs, rows = decode_inputs(message)
        outputs = requested_outputs(message)
        request = InferenceRequest(
            name,
            inputs,
            version=version,
            id=request_id,
            parameters=parameters,
            deadline=deadline,
            priority=settings.priority,
            routing_key=settings.routing_key,
            trace=settings.trace,
            outputs=outputs,
            rows=rows,
            protocol="grpc",
        )
        return request, outputs, None

    def _abandoned(self, request: InferenceRequest) -> None:
        """The call was cancelled while its request was in the pipeline: call the request off and
        count it (499, or 504 when it was its deadline)."""
        request.cancel.abandon("the gRPC call was cancelled")
        status = 504 if request.expired(time.monotonic()) else 499
        self._admission.answered(request, request.version, status)

    def _parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        parameter = self._Parameter
        converted = {}
        for key, value in values.items():
            if isinstance(value, bool):
                converted[key] = parameter(bool_param=value)
            elif isinstance(value, int):
                converted[key] = parameter(int64_param=value)
            else:
                converted[key] = parameter(string_param=str(value))
        return converted

    def _answer(self, answer: Answer, request_id: str, outputs: list[str] | None) -> Any:
        """The ``ModelInferResponse`` of a tensor answer."""
        tensors, contents = encode_outputs(answer.outputs, outputs, self._Tensor)
        return self._Response(
            model_name=answer.model,
            model_version=answer.version,
            id=request_id,
            outputs=tensors,
            raw_output_contents=contents,
        )

    def _metadata_of(self, answer: Answer) -> tuple[tuple[str, str], ...]:
        """The answer's headers as trailing metadata (the few distinct sets are built once)."""
        key = (answer.version, answer.source, answer.reason, answer.arm)
        pairs = self._answer_metadata.get(key)
        if pairs is None:
            pairs = tuple((name.lower(), value) for name, value in answer.headers().items())
            if len(self._answer_metadata) < _METADATA_LIMIT:
                self._answer_metadata[key] = pairs
        return pairs

    async def model_infer(self, message: Any, context: Any) -> Any:
        request: InferenceRequest | None = None
        try:
            request, outputs, _ = self._request(message, context, False)
            try:
                answer = await self._admission.infer(request)
            except asyncio.CancelledError:
                self._abandoned(request)
                raise
            response = self._answer(answer, message.id, outputs)
            context.set_trailing_metadata(self._metadata_of(answer))
            return response
        except LadleError as exc:
            self._admission.refused(message.model_name, "grpc", exc)  # no-op once the pipeline counted it
            error: LadleError = exc
        except Exception as exc:
            error = _internal(exc)
        finally:
            if request is not None:
                request.cancel.finish()
        await _abort(context, error)

    # streaming ----------------------------------------------------------------------------------

    async def model_stream_infer(self, messages: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """Each message is one request, served concurrently; responses go out as they come."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def read() -> None:
            try:
                async for message in messages:
                    task = loop.create_task(self._stream_one(message, context, queue.put_nowait))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:  # the client closed its side: finish what it asked for
                    await asyncio.wait(set(tasks))
            finally:
                queue.put_nowait(_END)

        reader = loop.create_task(read())
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    def _stream_error(self, message: Any, error: LadleError) -> Any:
        response = self._Response(
            model_name=message.model_name,
            model_version=message.model_version,
            id=message.id,
            parameters=self._parameters({"ladle_error_code": error.code}),
        )
        return self._StreamResponse(error_message=_message(error), infer_response=response)

    async def _stream_one(self, message: Any, context: Any, emit: Emit) -> None:
        request: InferenceRequest | None = None
        try:
            request, outputs, generation = self._request(message, context, True)
            if generation is None:
                try:
                    answer = await self._admission.infer(request)
                except asyncio.CancelledError:
                    self._abandoned(request)
                    raise
                emit(self._StreamResponse(infer_response=self._answer(answer, message.id, outputs)))
            else:
                await self._generate(request, message.id, generation, emit)
        except LadleError as exc:
            self._admission.refused(message.model_name, "grpc", exc)
            emit(self._stream_error(message, exc))
        except Exception as exc:
            emit(self._stream_error(message, _internal(exc)))
        finally:
            if request is not None:
                request.cancel.finish()

    async def _generate(
        self, request: InferenceRequest, request_id: str, generation: GenerationCall, emit: Emit
    ) -> None:
        """Stream one generation's chunks (or, with ``stream`` false, its whole text)."""
        stream = self._admission.stream(request)
        model, version = stream.model, stream.version
        response, tensor = self._Response, self._Tensor

        def send(text: str, tokens: list[int], parameters: dict[str, Any], outputs: bool = True) -> None:
            tensors, contents = generation.outputs(text, tokens, tensor) if outputs else ([], [])
            emit(
                self._StreamResponse(
                    infer_response=response(
                        model_name=model,
                        model_version=version,
                        id=request_id,
                        outputs=tensors,
                        raw_output_contents=contents,
                        parameters=self._parameters(parameters),
                    )
                )
            )

        try:
            if not generation.stream:
                result = await stream.collect()
                send(result.text, result.token_ids, response_parameters(result.finish_reason, result.usage))
                return
            async for chunk in stream:
                final = chunk.finish_reason is not None
                has_data = bool(chunk.text or chunk.token_ids)
                if has_data or final:
                    outputs = has_data or not generation.empty_final
                    send(
                        chunk.text,
                        chunk.token_ids,
                        response_parameters(chunk.finish_reason, chunk.usage),
                        outputs,
                    )
        except asyncio.CancelledError:
            request.cancel.abandon("the gRPC stream was cancelled")
            raise
        finally:
            stream.abort()  # a no-op once finished


def _message(error: LadleError) -> str:
    """The message a client reads: the HTTP body's ``error`` (no server path in it)."""
    return str(error.to_dict()["error"])


async def _abort(context: Any, error: LadleError) -> None:
    await context.abort(status_of(error), _message(error), trailing_metadata(error))
