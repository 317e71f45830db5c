"""``/openapi.json`` describes the HTTP API, and a fuzz pass over the V2, ladle and OpenAI request
bodies generated from it (hypothesis, deterministic and bounded) finds no 5xx, no hang and a JSON
error body for every input a server refuses.

``from_schema`` below turns the JSON Schema subset the document uses (pydantic's output) into a
hypothesis strategy; hypothesis-jsonschema would do it, but no release of it works with current
hypothesis."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from hardening_support import BODY, plugin_host, write_repository
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ladle.config import ServerConfig
from ladle.http.openapi import REQUEST_BODIES
from ladle.server import Server
from ladle.testing.lm import llama_config, write_checkpoint
from ladle.testing.server import RunningServer, run_server

#: model names in the path (or an OpenAI body): mostly the one that serves that kind of body
TENSOR_MODELS = ["doubler"] * 5 + ["tiny", "missing", "..", "a b", "%2e%2e"]
TEXT_MODELS = ["tiny"] * 5 + ["doubler", "missing", "..", "a b", "%2e%2e"]
FUZZED = {  # examples per endpoint: about 45 s in all on two cores
    "/v2/models/{model}/infer": 60,
    "/v2/models/{model}/versions/{version}/infer": 20,
    "/api/v1/models/{model}/predict": 50,
    "/api/v1/models/{model}/generate": 25,
    "/v1/completions": 25,
    "/v1/chat/completions": 25,
}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("fuzz")
    repo = write_repository(root, "timeout = 20.0\n")
    write_checkpoint(repo / "tiny" / "1", llama_config(max_position_embeddings=64))
    config = ServerConfig.model_validate({"server": {"repository": str(repo)}})
    with run_server(Server(config, plugin_host())) as running:
        yield running


@pytest.fixture(scope="module")
def document(running: RunningServer) -> dict[str, Any]:
    response = httpx.get(f"{running.url}/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    data: dict[str, Any] = response.json()
    return data


def resolved(schema: Any, components: dict[str, Any]) -> Any:
    """``schema`` with every ``#/components/schemas/`` reference replaced by its target."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return resolved(components[schema["$ref"].rsplit("/", 1)[-1]], components)
        return {key: resolved(value, components) for key, value in schema.items()}
    if isinstance(schema, list):
        return [resolved(item, components) for item in schema]
    return schema


def body_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    operation = document["paths"][path]["post"]
    reference = operation["requestBody"]["content"]["application/json"]["schema"]
    schema: dict[str, Any] = resolved(reference, document["components"]["schemas"])
    return schema


def test_the_document_describes_every_endpoint_and_its_bodies(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    for (method, path), name in REQUEST_BODIES.items():
        operation = document["paths"][path][method]
        assert operation["responses"]["400"]["content"]["application/json"]
        schema = resolved({"$ref": f"#/components/schemas/{name}"}, document["components"]["schemas"])
        jsonschema.Draft202012Validator.check_schema(schema)
    for path in ("/v2/health/ready", "/metrics", "/openapi.json", "/api/v1/deployments/{name}/traffic"):
        assert path in document["paths"]
    good = {
        "/v2/models/{model}/infer": BODY,
        "/api/v1/models/{model}/predict": {"inputs": [{"x": [1.0, 2.0]}], "params": {"timeout_ms": 500}},
        "/api/v1/models/{model}/generate": {"prompt": "hello", "max_tokens": 4, "stream": True},
        "/v1/completions": {"model": "tiny", "prompt": "hello", "max_tokens": 4},
        "/v1/chat/completions": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
        "/api/v1/deployments": {"model_name": "m", "version": "2", "options": {"rollout": {"steps": [100]}}},
    }
    for path, body in good.items():
        jsonschema.validate(body, body_schema(document, path))
    deploy = body_schema(document, "/api/v1/deployments")
    with pytest.raises(jsonschema.ValidationError):  # the validating pydantic model's own rules
        jsonschema.validate({"model_name": "m", "version": "2", "colour": 1}, deploy)


def test_every_route_of_the_app_is_documented(running: RunningServer, document: dict[str, Any]) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route

    from ladle.http.app import create_app
    from ladle.http.fast_path import FastPath

    served: set[tuple[str, str]] = set()
    app: Any = create_app(running.server)
    while not isinstance(app, Starlette):  # down the middleware: FastPath serves the inference routes
        if isinstance(app, FastPath):
            served.update(("post", path) for path in app.routes.paths)
        app = app.app
    for route in app.routes:
        assert isinstance(route, Route)
        served.update((method.lower(), route.path) for method in route.methods or () if method != "HEAD")
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert len(served) > 40
    assert served - documented == set()
    assert documented - served == set()


SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
JSON_VALUES = st.recursive(
    SCALARS | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
OTHER_TYPES = [None, "text/plain", "application/octet-stream", "application/x-www-form-urlencoded"]
CONTENT_TYPES = st.sampled_from(["application/json"] * 6 + OTHER_TYPES)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values ``schema`` allows (mostly: patterns and formats are not followed)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([from_schema(option) for option in schema.get("anyOf", schema.get("oneOf"))])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {name: from_schema(sub) for name, sub in properties.items() if name in required}
        optional = {name: from_schema(sub) for name, sub in properties.items() if name not in required}
        extra = schema.get("additionalProperties", {})
        base = st.fixed_dictionaries(fixed, optional=optional)
        if extra is False or not isinstance(extra, dict):
            return base
        more = st.dictionaries(st.text(max_size=8), from_schema(extra) if extra else JSON_VALUES, max_size=3)
        return st.tuples(base, more).map(lambda pair: {**pair[1], **pair[0]})
    if kind == "array":
        items = from_schema(schema["items"]) if schema.get("items") else JSON_VALUES
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 6), 6))
    if kind == "string":
        return st.text(max_size=24)
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**40)), schema.get("maximum", 2**40))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        exclusive = "exclusiveMinimum" in schema
        return st.floats(low, high, allow_nan=False, allow_infinity=False, exclude_min=exclusive)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON_VALUES


FLOATS = st.floats(-1e6, 1e6, allow_nan=False)
#: rows of the doubler's input ``x`` (FP32 ``[-1, 2]``), now and then with one value replaced
ROWS = st.integers(0, 3).flatmap(
    lambda n: st.lists(st.lists(FLOATS, min_size=2, max_size=2), min_size=n, max_size=n)
)
NEAR_ROWS = st.one_of(
    ROWS,
    st.tuples(ROWS, st.integers(0, 5), SCALARS | st.text(max_size=3)).map(
        lambda t: [*t[0][: t[1]], [t[2], 0.0], *t[0][t[1] :]]
    ),
)
V2_INPUT = st.one_of(
    NEAR_ROWS.map(lambda rows: {"name": "x", "datatype": "FP32", "shape": [len(rows), 2], "data": rows}),
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["x", "y"]),
            "datatype": st.sampled_from(["FP32", "INT64", "BOOL", "BYTES", "FP16"]),
            "shape": st.lists(st.integers(0, 3), max_size=3),
            "data": st.lists(SCALARS | st.lists(SCALARS, max_size=3), max_size=6),
        }
    ),
)
#: bodies close to what the doubler takes, so that fuzzing goes past the first checks into
#: decoding, the signature and the model
NEAR_VALID = {
    "V2InferenceRequest": st.fixed_dictionaries({"inputs": st.lists(V2_INPUT, min_size=1, max_size=2)}),
    "PredictRequest": NEAR_ROWS.map(lambda rows: {"inputs": [{"x": row} for row in rows]}),
    "ChatCompletionRequest": st.fixed_dictionaries(
        {
            "messages": st.lists(
                st.fixed_dictionaries(
                    {
                        "role": st.sampled_from(["user", "system", "assistant", "x"]),
                        "content": st.text(max_size=8),
                    }
                ),
                max_size=2,
            )
        },
        optional={"max_tokens": st.integers(-1, 4), "temperature": st.floats(-1, 3), "stream": st.booleans()},
    ),
}


def bodies(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Bodies the schema allows, bodies with one field replaced, any JSON, and bytes."""
    valid = from_schema(schema)
    mutated = st.tuples(valid, st.text(max_size=12), JSON_VALUES).map(
        lambda t: {**t[0], t[1]: t[2]} if isinstance(t[0], dict) else t[0]
    )
    near = NEAR_VALID.get(schema.get("title", ""), valid)
    return st.one_of(near, valid, mutated, JSON_VALUES, st.binary(max_size=64))


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # not orjson: integers beyond 64 bits are JSON too


def check(response: httpx.Response, asked_for_a_deadline: bool) -> None:
    status = response.status_code
    allowed = status < 500 or (status == 504 and asked_for_a_deadline)
    assert allowed, f"{status}: {response.text[:500]}"
    media = response.headers.get("content-type", "")
    if media.startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                orjson.loads(line.removeprefix("data: "))
        return
    assert media == "application/json", (status, media, response.text[:200])
    body = orjson.loads(response.content)
    if status >= 400:
        assert isinstance(body, dict) and "error" in body, body


@pytest.mark.parametrize("path", list(FUZZED))
def test_fuzzed_bodies_get_no_5xx_no_hang_and_json_errors(
    running: RunningServer, document: dict[str, Any], path: str
) -> None:
    schema = body_schema(document, path)
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=FUZZED[path],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        body=bodies(schema),
        model=st.sampled_from(
            TEXT_MODELS if "generate" in path or path.startswith("/v1/") else TENSOR_MODELS
        ),
        version=st.sampled_from(["1", "2", "x"]),
        content_type=CONTENT_TYPES,
        binary_length=st.none() | st.integers(-5, 200).map(str) | st.just("abc"),
    )
    def run(body: Any, model: str, version: str, content_type: str | None, binary_length: str | None) -> None:
        if isinstance(body, dict) and path.startswith("/v1/"):
            body["model"] = model  # OpenAI bodies name the model: mostly one that exists
        if not isinstance(body, bytes):
            body = dumps(body)
        url = running.url + path.replace("{model}", model).replace("{version}", version)
        headers = {"content-type": content_type} if content_type else {}
        if binary_length is not None and path.startswith("/v2"):
            headers["inference-header-content-length"] = binary_length
        with httpx.Client(timeout=30) as client:
            response = client.post(url, content=body, headers=headers)  # a hang fails on the timeout
        check(response, b"timeout" in body)
        statuses[response.status_code] += 1

    run()
    assert len(statuses) >= 3 and statuses[200], statuses  # past the first checks, some served
