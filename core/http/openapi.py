"""``GET /openapi.json``: an OpenAPI 3.1 description of ladle's HTTP API.

Control bodies are described by the pydantic models that validate them (``DeployBody`` with
``DeploymentOptions``, rollback and feedback bodies). The inference bodies (KServe V2, the ladle API,
generation, OpenAI) are parsed by hand on the fast path for speed; the models below describe them
for clients and for the fuzz tests (``tests/hardening``), which generate bodies from this document.
Every error is ``{"error": message, "code": ...}`` (``ErrorBody``).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import __version__
from ..tensors import DATATYPES

__all__ = ["OPENAPI_PATH", "REQUEST_BODIES", "openapi_document", "routes"]

OPENAPI_PATH = "/openapi.json"
_REF = "#/components/schemas/{model}"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error answer: what was wrong, a stable code, and the input or parameter it concerns."""

    error: str
    code: str
    input: str | None = None
    param: str | None = None


class V2InputParameters(BaseModel):
    binary_data_size: int | None = Field(default=None, ge=0, description="bytes of this input after the JSON")


class V2Input(BaseModel):
    name: str
    datatype: str = Field(json_schema_extra={"enum": list(DATATYPES)})
    shape: list[Annotated[int, Field(ge=0)]] = Field(
        description="non-negative dimensions, the batch first", max_length=32
    )
    data: list[Any] | None = Field(
        default=None, description="row-major values, flat or nested; numbers (true/false for BOOL)"
    )
    parameters: V2InputParameters | None = None


class V2OutputParameters(BaseModel):
    binary_data: bool | None = None


class V2RequestedOutput(BaseModel):
    name: str
    parameters: V2OutputParameters | None = None


class V2InferenceRequest(BaseModel):
    """KServe V2 / Open Inference Protocol request (binary extension: JSON, then raw tensors)."""

    id: str | None = None
    inputs: list[V2Input] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_output, timeout_ms, priority, routing_key"
    )


class RequestParams(_Body):
    version: str | None = None
    timeout_ms: int | None = Field(default=None, gt=0)
    priority: Literal["high", "normal", "low"] | None = None
    routing_key: str | None = None


class PredictRequest(_Body):
    """``POST /api/v1/models/{model}/predict``: one record (input name -> one row) per row."""

    id: str | None = None
    inputs: list[dict[str, Any]] = Field(min_length=1)
    params: RequestParams | None = None


class _Sampling(BaseModel):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None


class GenerateRequest(_Sampling):
    """``POST /api/v1/models/{model}/generate``: streamed as server-sent events with ``stream``."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | list[int]
    stream: bool = False
    params: RequestParams | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(_Sampling):
    """OpenAI ``POST /v1/completions``."""

    model: str
    prompt: str | list[int] | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: Literal[1] | None = None
    user: str | None = None


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]]


class ChatCompletionRequest(_Sampling):
    """OpenAI ``POST /v1/chat/completions``."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: Literal[1] | None = None
    user: str | None = None


def _control_bodies() -> dict[str, type[BaseModel]]:
    from ..deployments.controller import DeploymentOptions
    from ..deployments.routes import DeployBody, FeedbackBody, RollbackBody, ScaleBody

    class DeployRequest(DeployBody):
        """``POST /api/v1/deployments``; ``options`` as ``DeploymentOptions`` validates it."""

        options: DeploymentOptions = Field(default_factory=DeploymentOptions)  # type: ignore[assignment]

    return {
        "DeployRequest": DeployRequest,
        "RollbackRequest": RollbackBody,
        "FeedbackRequest": FeedbackBody,
        "ScaleRequest": ScaleBody,
    }


#: (method, path) -> the schema name of its JSON body
REQUEST_BODIES: dict[tuple[str, str], str] = {
    ("post", "/v2/models/{model}/infer"): "V2InferenceRequest",
    ("post", "/v2/models/{model}/versions/{version}/infer"): "V2InferenceRequest",
    ("post", "/api/v1/models/{model}/predict"): "PredictRequest",
    ("post", "/api/v1/models/{model}/generate"): "GenerateRequest",
    ("post", "/v1/completions"): "CompletionRequest",
    ("post", "/v1/chat/completions"): "ChatCompletionRequest",
    ("post", "/api/v1/deployments"): "DeployRequest",
    ("post", "/api/v1/deployments/{name}/rollback"): "RollbackRequest",
    ("post", "/api/v1/models/{name}/feedback"): "FeedbackRequest",
    ("put", "/api/v1/deployments/{name}/versions/{version}/replicas"): "ScaleRequest",
}

_OPERATIONS: tuple[tuple[str, str, str], ...] = (
    ("get", "/v2", "server metadata"),
    ("get", "/v2/health/live", "liveness: 200 while the process serves"),
    ("get", "/v2/health/ready", "readiness: 200 once models are ready; 503 while loading or draining"),
    ("get", "/v2/models/{model}", "model metadata: versions, inputs, outputs"),
    ("get", "/v2/models/{model}/ready", "whether the model can answer"),
    ("get", "/v2/models/{model}/config", "the model's configuration"),
    ("get", "/v2/models/{model}/versions/{version}", "version metadata"),
    ("get", "/v2/models/{model}/versions/{version}/ready", "whether the version can answer"),
    ("post", "/v2/models/{model}/infer", "V2 inference (JSON, or the binary tensor extension)"),
    ("post", "/v2/models/{model}/versions/{version}/infer", "V2 inference on one version"),
    ("get", "/api/v1/models", "served models and load failures"),
    ("post", "/api/v1/models/{model}/predict", "records in, records out"),
    ("post", "/api/v1/models/{model}/generate", "text generation (server-sent events with stream)"),
    ("get", "/v1/models", "OpenAI: generative models"),
    ("post", "/v1/completions", "OpenAI completions"),
    ("post", "/v1/chat/completions", "OpenAI chat completions"),
    ("get", "/api/v1/deployments", "every model's deployment state"),
    ("get", "/api/v1/placement", "where instances run, per placement (actors, GPUs, MPS)"),
    ("post", "/api/v1/deployments", "deploy a version (managed mode; bearer token)"),
    ("get", "/api/v1/deployments/{name}", "one model's deployment state and history"),
    ("put", "/api/v1/deployments/{name}/traffic", "set the split, percent per version (summing to 100)"),
    ("post", "/api/v1/deployments/{name}/rollback", "roll back to the previous version"),
    ("delete", "/api/v1/deployments/{name}/versions/{version}", "unload a version without traffic"),
    ("post", "/api/v1/models/{name}/feedback", "the true label of a served request"),
    (
        "put",
        "/api/v1/deployments/{name}/versions/{version}/replicas",
        "set a version's instance count (its floor under an autoscaling policy)",
    ),
    ("post", "/v2/repository/index", "Triton repository extension: the models in the repository"),
    ("post", "/v2/repository/models/{model}/load", "Triton: serve a model (managed mode; bearer token)"),
    ("post", "/v2/repository/models/{model}/unload", "Triton: stop serving a model (managed mode)"),
    ("get", "/v2/models/stats", "Triton statistics extension: every version"),
    ("get", "/v2/models/{model}/stats", "Triton statistics of one model"),
    ("get", "/v2/models/{model}/versions/{version}/stats", "Triton statistics of one version"),
    ("post", "/api/v1/models/{name}/jobs", "submit an asynchronous prediction job"),
    ("get", "/api/v1/jobs", "list jobs"),
    ("get", "/api/v1/jobs/{id}", "one job's state and progress"),
    ("delete", "/api/v1/jobs/{id}", "cancel a job"),
    ("get", "/api/v1/jobs/{id}/results", "a finished job's results (JSON or JSON Lines)"),
    ("post", "/v1/files", "OpenAI files: upload a batch input file"),
    ("get", "/v1/files", "OpenAI files: list"),
    ("get", "/v1/files/{id}", "OpenAI files: one file"),
    ("delete", "/v1/files/{id}", "OpenAI files: delete"),
    ("get", "/v1/files/{id}/content", "OpenAI files: the content"),
    ("post", "/v1/batches", "OpenAI Batch API: create a batch"),
    ("get", "/v1/batches", "OpenAI Batch API: list"),
    ("get", "/v1/batches/{id}", "OpenAI Batch API: one batch"),
    ("post", "/v1/batches/{id}/cancel", "OpenAI Batch API: cancel"),
    ("get", "/api/v1/stats", "windowed figures per version (what ladle top shows)"),
    ("get", "/metrics", "Prometheus text"),
    ("get", "/", "a landing page: what is served and where to start"),
    ("get", "/docs", "this API, browsable"),
    ("get", OPENAPI_PATH, "this document"),
)

_ERRORS = {
    "400": "malformed body or parameter",
    "401": "missing or wrong bearer token",
    "404": "unknown model, version or route",
    "408": "headers or body not sent in time",
    "413": "body, JSON values or rows over a limit",
    "415": "a body that is not JSON (or binary tensors for V2)",
    "422": "inputs do not match the model's signature",
    "429": "rate limited, or too many failed tokens (Retry-After)",
    "431": "request headers too large",
    "500": "a runtime failed (the server log has the detail)",
    "503": "overloaded, not ready, draining or at the connection limit (Retry-After)",
    "504": "the request's deadline passed",
}


def _parameters(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


def _operation(method: str, path: str, summary: str) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}}}
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": _parameters(path),
        "responses": {"200": {"description": "success"}}
        | {status: {"description": text, **error} for status, text in _ERRORS.items()},
    }
    body = REQUEST_BODIES.get((method, path))
    content: dict[str, Any]
    if path.endswith("/traffic"):
        body_schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 100},
        }
        content = {"application/json": {"schema": body_schema}}
        operation["requestBody"] = {"required": True, "content": content}
    elif body is not None:
        content = {"application/json": {"schema": {"$ref": _REF.format(model=body)}}}
        if body == "V2InferenceRequest":
            content["application/octet-stream"] = {
                "schema": {"type": "string", "format": "binary"},
                "description": "the JSON header (Inference-Header-Content-Length bytes), then raw tensors",
            }
        operation["requestBody"] = {"required": True, "content": content}
    return operation


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The whole document (built once per process)."""
    models: list[type[BaseModel]] = [
        ErrorBody,
        V2InferenceRequest,
        PredictRequest,
        GenerateRequest,
        CompletionRequest,
        ChatCompletionRequest,
    ]
    control = _control_bodies()
    keyed = [(model, "validation") for model in [*models, *control.values()]]
    by_model, definitions = models_json_schema(keyed, ref_template=_REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    for name, model in control.items():  # the public names, not the validating classes' own
        defined = by_model[(model, "validation")]["$ref"].rsplit("/", 1)[-1]
        if defined != name:
            schemas[name] = schemas.pop(defined)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary in _OPERATIONS:
        paths.setdefault(path, {})[method] = _operation(method, path, summary)
    return {
        "openapi": "3.1.0",
        "info": {"title": "ladle", "version": __version__, "description": __doc__.split("\n\n")[0]},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def routes() -> list[BaseRoute]:
    async def document(request: Request) -> Response:
        return Response(orjson.dumps(openapi_document()), media_type="application/json")

    return [Route(OPENAPI_PATH, document, methods=["GET"])]
