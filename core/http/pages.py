"""Two HTML pages for people: ``/`` lists the served models and links everything else, ``/docs``
renders the API description at ``/openapi.json``.

Both are plain HTML served by the app itself, with no asset from elsewhere: the docs page reads
``/openapi.json`` with a few lines of inline script and lists every route with its parameters,
request body and responses (any OpenAPI viewer can load ``/openapi.json`` too).
"""

from __future__ import annotations

from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from .. import __version__
from ..server import Server

__all__ = ["docs_page", "landing_page", "routes"]

OPENAPI_PATH = "/openapi.json"

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 64rem; padding: 0 1rem;
       color: #1d1d1f; }
h1 { margin-bottom: 0; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3rem .6rem;
border-bottom: 1px solid #ddd; vertical-align: top; }
code, pre { font: 13px ui-monospace, monospace; } pre { background: #f5f5f7; padding: .6rem;
overflow-x: auto; } .ok { color: #18794e; } .bad { color: #c62828; }
.method { display: inline-block; min-width: 4rem; font-weight: bold; }
details { border-bottom: 1px solid #eee; padding: .3rem 0; } summary { cursor: pointer; }
"""

_LINKS = (
    ("/docs", "API documentation"),
    (OPENAPI_PATH, "OpenAPI description (JSON)"),
    ("/metrics", "Prometheus metrics"),
    ("/api/v1/stats", "windowed figures per version (JSON)"),
    ("/api/v1/models", "models, versions and instances (JSON)"),
    ("/api/v1/deployments", "deployments and their history (JSON)"),
    ("/v2/health/ready", "readiness"),
)


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _model_rows(described: list[dict[str, Any]], failures: dict[str, str]) -> str:
    rows = []
    for model in described:
        name = escape(model["name"])
        versions = ", ".join(
            f'<span class="{"ok" if v["ready"] else "bad"}">{escape(v["version"])}</span> '
            f"({escape(v['runtime'])})"
            for v in model["versions"]
        )
        traffic = ", ".join(f"{escape(v)} {w:g}%" for v, w in model["traffic"].items())
        rows.append(
            f'<tr><td><a href="/v2/models/{name}"><code>{name}</code></a></td>'
            f"<td>{versions or '-'}</td><td>{traffic or '-'}</td><td>{escape(model['router'])}</td></tr>"
        )
    for key, message in sorted(failures.items()):
        rows.append(
            f'<tr><td><code>{escape(key)}</code></td><td colspan="3" class="bad">{escape(message)}</td></tr>'
        )
    return "".join(rows)


def landing_page(server: Server) -> str:
    """The HTML of ``/``: what this server serves, and where everything else is."""
    manager = server.manager
    state = "loading" if manager.loading else ("ready" if manager.ready else "not ready")
    links = "".join(f'<li><a href="{href}">{escape(href)}</a>: {text}</li>' for href, text in _LINKS)
    rows = _model_rows(manager.describe(), manager.failures)
    body = (
        f"<h1>ladle</h1><p class=sub>version {escape(__version__)}, {server.controller.mode} mode, "
        f'<span class="{"ok" if state == "ready" else "bad"}">{state}</span></p>'
        "<h2>Models</h2><table><tr><th>model</th><th>versions (runtime)</th><th>traffic</th>"
        f"<th>router</th></tr>{rows or '<tr><td colspan=4>no model is served</td></tr>'}</table>"
        f"<h2>Links</h2><ul>{links}</ul>"
        "<p>Inference: <code>POST /v2/models/NAME/infer</code> (KServe V2, <code>tritonclient</code>), "
        "<code>POST /api/v1/models/NAME/predict</code> (records), <code>/v1/chat/completions</code> "
        "(OpenAI) for generative models.</p>"
    )
    return _page("ladle", body)


# The docs page renders /openapi.json in the browser: paths, parameters, bodies and responses.
_DOCS_SCRIPT = """
const out = document.getElementById("api");
const show = (value) => JSON.stringify(value, null, 2);
function resolve(spec, schema) {
  if (schema && schema.$ref) {
    const path = schema.$ref.replace(/^#\\//, "").split("/");
    return path.reduce((node, key) => (node || {})[key], spec) || schema;
  }
  return schema;
}
function text(tag, value, cls) {
  const node = document.createElement(tag);
  node.textContent = value;
  if (cls) node.className = cls;
  return node;
}
fetch("%(openapi)s").then((r) => {
  if (!r.ok) throw new Error("GET %(openapi)s answered " + r.status);
  return r.json();
}).then((spec) => {
  document.getElementById("title").textContent = (spec.info || {}).title || "ladle API";
  out.textContent = "";
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      if (typeof op !== "object" || !op) continue;
      const box = document.createElement("details");
      const head = document.createElement("summary");
      head.append(text("span", method.toUpperCase(), "method"), text("code", path));
      if (op.summary) head.append(" \\u2014 " + op.summary);
      box.append(head);
      if (op.description) box.append(text("p", op.description));
      for (const p of op.parameters || []) {
        box.append(text("p", `${p.in} parameter ${p.name}${p.required ? " (required)" : ""}: ` +
          (p.description || show(resolve(spec, p.schema)))));
      }
      const body = op.requestBody && op.requestBody.content;
      if (body) {
        for (const [type, media] of Object.entries(body)) {
          const schema = media.schema ? show(resolve(spec, media.schema)) : "(no schema: raw bytes)";
          box.append(text("p", "request body, " + type + ":"), text("pre", schema));
        }
      }
      for (const [status, resp] of Object.entries(op.responses || {})) {
        box.append(text("p", status + ": " + (resp.description || "")));
      }
      out.append(box);
    }
  }
}).catch((error) => {
  out.textContent = "The API description could not be read: " + error.message +
    ". This server may not publish %(openapi)s yet.";
});
"""


def docs_page() -> str:
    """The HTML of ``/docs``."""
    body = (
        f'<h1 id="title">ladle API</h1><p class=sub>rendered from <a href="{OPENAPI_PATH}">'
        f"<code>{OPENAPI_PATH}</code></a>; <a href='/'>home</a></p>"
        '<div id="api">loading the API description...</div>'
        f"<script>{_DOCS_SCRIPT % {'openapi': OPENAPI_PATH}}</script>"
    )
    return _page("ladle API", body)


def routes(server: Server) -> list[BaseRoute]:
    """``/`` and ``/docs``."""
    docs = docs_page()

    async def landing(request: Request) -> Response:
        return HTMLResponse(landing_page(server))

    async def documentation(request: Request) -> Response:
        return HTMLResponse(docs)

    return [
        Route("/", landing, methods=["GET"]),
        Route("/docs", documentation, methods=["GET"]),
    ]
