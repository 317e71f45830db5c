"""A small HTTP client of the control API, shared by ``ladle deploy``, ``traffic``, ``rollback`` and
``status``. The server's URL and token default to ``$LADLE_URL`` and ``$LADLE_API_TOKEN``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson

__all__ = [
    "ControlClient",
    "ControlError",
    "add_connection_options",
    "client_from",
    "fail",
    "print_json",
    "report",
    "summary",
]

DEFAULT_URL = "http://127.0.0.1:8000"


class ControlError(Exception):
    """The server refused the request or could not be reached; ``str()`` says why."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ControlClient:
    """Calls the control API; every method returns the decoded JSON body or raises ``ControlError``."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.url = url

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._client.close()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        content = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else {}
        try:
            response = self._client.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise ControlError(f"cannot reach {self.url}: {exc}") from None
        try:
            data = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            data = None
        if response.status_code >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            text = message or response.text[:200] or response.reason_phrase
            raise ControlError(f"{response.status_code}: {text}", response.status_code, data)
        return data

    def deploy(self, model: str, version: str, traffic: float | None, options: dict[str, Any]) -> Any:
        body: dict[str, Any] = {"model": model, "version": version, "options": options}
        if traffic is not None:
            body["traffic"] = traffic
        return self.call("POST", "/api/v1/deployments", body)

    def traffic(self, model: str, weights: dict[str, float]) -> Any:
        return self.call("PUT", f"/api/v1/deployments/{model}/traffic", weights)

    def rollback(self, model: str, version: str | None) -> Any:
        return self.call(
            "POST", f"/api/v1/deployments/{model}/rollback", {"version": version} if version else {}
        )

    def status(self, model: str | None = None) -> Any:
        return self.call("GET", f"/api/v1/deployments/{model}" if model else "/api/v1/deployments")


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("LADLE_URL", DEFAULT_URL),
        help=f"the server (default: $LADLE_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("LADLE_API_TOKEN"),
        help="bearer token of the control API (default: $LADLE_API_TOKEN)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for an answer (default 600)"
    )
    parser.add_argument("--json", action="store_true", help="print the server's JSON answer")


def client_from(args: argparse.Namespace) -> ControlClient:
    return ControlClient(args.url, args.token, args.timeout)


def fail(error: ControlError) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def print_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def report(state: dict[str, Any], as_json: bool) -> None:
    """Print a model's state after a change: JSON, or its one-line summary."""
    if as_json:
        print_json(state)
    else:
        print(summary(state))


def summary(state: dict[str, Any]) -> str:
    """One line per model: traffic split and rollout."""
    traffic = ", ".join(f"{v} {w:g}%" for v, w in state.get("traffic", {}).items()) or "no traffic"
    line = f"{state.get('name')}: {traffic} (router {state.get('router')}, {state.get('mode')} mode)"
    rollout = state.get("rollout")
    if rollout:
        line += f"; rollout of {rollout.get('canary')} {rollout.get('state')}"
        if rollout.get("state") == "running":
            line += f" at {rollout.get('percent', '?')}%"
        if rollout.get("reason"):
            line += f": {rollout['reason']}"
    return line
