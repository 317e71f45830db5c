"""Triton's model-repository and statistics extensions over REST, so that ``tritonclient.http``'s
``get_model_repository_index``, ``load_model``, ``unload_model`` and ``get_inference_statistics``
work against ladle.

=====  ================================================  ==========================================
POST   /v2/repository/index                              every version in the repository, loaded or
                                                         not: ``[{"name", "version", "state",
                                                         "reason"}]`` (``{"ready": true}``: only
                                                         ready ones)
POST   /v2/repository/models/{name}/load                 serve the newest version the model's
                                                         ``version_policy`` selects (managed mode)
POST   /v2/repository/models/{name}/unload               take every version of the model out of
                                                         service (managed mode)
GET    /v2/models/stats                                  Triton's ``{"model_stats": [...]}`` for
GET    /v2/models/{name}[/versions/{version}]/stats      all models, one model, or one version
=====  ================================================  ==========================================

Load and unload change what is served, so they go through the deployment controller, are recorded
in its history, and need the control API's bearer token. In static mode (no ``[server] state``) they
answer 503 as Triton does when model control is off. The index follows the control API's rule for
reads (open unless a token is configured).

Statistics are cumulative since the version loaded, read from the stats layer: ``success`` counts
answers computed without error (its ``ns`` covers every request that ran), ``fail`` requests that
ended in an error (no duration), ``queue`` the time from arrival to the start of a batch,
``compute_infer`` one entry per batch executed with its duration; ladle does not time input and
output preparation apart from the batch (``compute_input`` and ``compute_output`` are zero), keeps
no per-batch-size timings (``batch_stats`` is empty) and no last-inference time (``0``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..deployments import DeploymentController
from ..deployments.auth import BearerAuth, configured_tokens
from ..deployments.router_policy import current_split
from ..errors import ConfigError, InvalidRequestError, LadleError, PluginError
from ..repository import check_name, version_key
from ..server import Server
from ..telemetry.families import ATTR_ERROR, version_attributes
from ..telemetry.series import HistogramSnapshot
from ..telemetry.stats import StatsRegistry
from .responses import error_response, json_response, read_json_object

__all__ = ["ModelControlDisabledError", "model_statistics", "repository_index", "routes"]

Handler = Callable[[Request], Awaitable[Response]]
_NO_DURATION = {"count": 0, "ns": 0}


class ModelControlDisabledError(LadleError):
    """Load or unload asked of a static-mode server (Triton answers 503 when model control is off)."""

    status = 503
    code = "model_control_disabled"


# the index -------------------------------------------------------------------------------------------


def repository_index(server: Server, ready_only: bool = False) -> list[dict[str, str]]:
    """One entry per version directory of every model in the repository, in Triton's shape:
    ``state`` is READY, LOADING or UNAVAILABLE, ``reason`` says why a version is not ready."""
    manager = server.manager
    repository = manager.repository
    entries = []
    for name in repository.models():
        endpoint = manager.models.get(name)
        for version in repository.versions(name):
            served = endpoint.versions.get(version) if endpoint is not None else None
            failure = manager.failures.get(f"{name}/{version}") or manager.failures.get(name)
            if served is not None and served.ready:
                state, reason = "READY", ""
            elif served is not None:
                state, reason = "LOADING", "loading or warming up"
            elif failure is not None:
                state, reason = "UNAVAILABLE", failure
            elif manager.loading:
                state, reason = "UNAVAILABLE", "not loaded yet"
            else:
                state, reason = "UNAVAILABLE", "unloaded"
            if ready_only and state != "READY":
                continue
            entries.append({"name": name, "version": version, "state": state, "reason": reason})
    return entries


# statistics ------------------------------------------------------------------------------------------


def _duration(snapshot: HistogramSnapshot | None) -> dict[str, int]:
    if snapshot is None:
        return dict(_NO_DURATION)
    return {"count": int(snapshot.count), "ns": round(snapshot.total * 1e9)}


def _cumulative(family: Any, key: tuple[tuple[str, str], ...]) -> HistogramSnapshot | None:
    series = family.series.get(key)
    return series.cumulative() if series is not None else None


def model_statistics(stats: StatsRegistry, model: str, version: str) -> dict[str, Any]:
    """Triton's ``$model_stat`` of one version, from the stats layer's cumulative figures."""
    key = version_attributes(model, version)
    succeeded = stats.requests.series.get(key)
    failed = sum(
        int(series.total())
        for series_key, series in list(stats.requests.series.items())
        if series_key[: len(key)] == key
        and len(series_key) == len(key) + 1
        and series_key[-1][0] == ATTR_ERROR
    )
    latency = _cumulative(stats.request_duration, key)
    batches = _cumulative(stats.batch_duration, key)
    rows = _cumulative(stats.batch_size, key)
    success = {
        "count": int(succeeded.total()) if succeeded is not None else 0,
        "ns": _duration(latency)["ns"],
    }
    return {
        "name": model,
        "version": version,
        "last_inference": 0,
        "inference_count": round(rows.total) if rows is not None else 0,
        "execution_count": int(batches.count) if batches is not None else 0,
        "inference_stats": {
            "success": success,
            "fail": {"count": failed, "ns": 0},
            "queue": _duration(_cumulative(stats.queue_duration, key)),
            "compute_input": dict(_NO_DURATION),
            "compute_infer": _duration(batches),
            "compute_output": dict(_NO_DURATION),
            "cache_hit": dict(_NO_DURATION),
        },
        "batch_stats": [],
    }


# load and unload (managed mode) ----------------------------------------------------------------------


async def load_model(controller: DeploymentController, name: str) -> dict[str, Any]:
    """Serve the newest version the model's ``version_policy`` selects from the repository, with all
    of its traffic (deployed through the controller); a no-op when it serves already."""
    manager = controller.manager
    try:
        plan = manager.repository.plan(name, manager.config, manager.host)
    except (ConfigError, PluginError) as exc:
        raise InvalidRequestError(f"model {name!r} cannot be loaded: {exc.message}", model=name) from None
    newest = plan.versions[-1]
    endpoint = manager.models.get(name)
    if endpoint is not None and newest in endpoint.versions and current_split(endpoint).get(newest) == 100:
        return await controller.describe(name, history=False)
    return await controller.deploy(name, newest)


# routes ----------------------------------------------------------------------------------------------


def _parameters(body: Mapping[str, Any], allowed: set[str]) -> dict[str, Any]:
    unknown = sorted(set(body) - {"parameters"})
    if unknown:
        raise InvalidRequestError(f"unknown fields {unknown}; allowed: parameters", allowed=["parameters"])
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequestError("'parameters' must be a JSON object")
    refused = sorted(set(parameters) - allowed)
    if refused:
        raise InvalidRequestError(
            f"parameters {refused} are not supported: ladle loads a model from its folder in the "
            f"repository and its model.toml (supported: {sorted(allowed) or 'none'})",
            unsupported=refused,
        )
    return parameters


def routes(server: Server) -> list[BaseRoute]:
    """The repository and statistics routes of ``server``."""
    manager = server.manager
    controller = server.controller
    config = server.config
    auth = BearerAuth(configured_tokens(config))
    limit = min(config.server.max_request_bytes, 1024 * 1024)

    def guarded(handler: Handler, *, write: bool) -> Handler:
        """Model control says first whether it is possible here at all (static mode), then checks
        the token; reads follow the control API's rule."""

        async def endpoint(request: Request) -> Response:
            if write:
                require_managed()
            try:
                auth.check(request.headers.get("authorization"), required=write or auth.enabled)
            except LadleError as exc:
                return error_response(exc)
            return await handler(request)

        return endpoint

    def model_name(request: Request) -> str:
        return check_name("model", request.path_params["model"])

    def require_managed() -> None:
        if not controller.managed:
            raise ModelControlDisabledError(
                "explicit model load / unload is not allowed: this server runs in static mode "
                "(ladle.toml and the model repository decide what is served); set [server] state = "
                '"deployments.db" to load and unload models through the API'
            )

    async def index(request: Request) -> Response:
        body = await read_json_object(request, limit, optional=True)
        unknown = sorted(set(body) - {"ready", "repository_name"})
        if unknown:
            raise InvalidRequestError(f"unknown fields {unknown}; allowed: ready", allowed=["ready"])
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidRequestError(f"'ready' must be true or false, got {ready!r}")
        return json_response(repository_index(server, ready))

    async def load(request: Request) -> Response:
        name = model_name(request)
        _parameters(await read_json_object(request, limit, optional=True), set())
        manager.repository.model_dir(name)  # 404 naming the model before anything else
        return json_response(await load_model(controller, name))

    async def unload(request: Request) -> Response:
        name = model_name(request)
        parameters = _parameters(await read_json_object(request, limit, optional=True), {"unload_dependents"})
        if not isinstance(parameters.get("unload_dependents", False), bool):
            raise InvalidRequestError("'unload_dependents' must be true or false")
        return json_response(await controller.unload(name))

    async def statistics(request: Request) -> Response:
        stats = server.telemetry.stats
        name = request.path_params.get("model")
        version = request.path_params.get("version")
        if name is None:
            targets = [(m, v) for m, endpoint in manager.models.items() for v in endpoint.versions]
        else:
            endpoint = manager.endpoint(name)
            if version is not None:
                endpoint.loaded(version)
                targets = [(name, version)]
            else:
                targets = [(name, v) for v in endpoint.versions]
        ordered = sorted(targets, key=lambda t: (t[0], version_key(t[1])))
        return json_response({"model_stats": [model_statistics(stats, m, v) for m, v in ordered]})

    return [
        Route("/v2/repository/index", guarded(index, write=False), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", guarded(load, write=True), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", guarded(unload, write=True), methods=["POST"]),
        Route("/v2/models/stats", statistics, methods=["GET"]),
        Route("/v2/models/{model}/stats", statistics, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/stats", statistics, methods=["GET"]),
    ]
