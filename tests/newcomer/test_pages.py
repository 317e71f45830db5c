"""The landing page lists what is served and links everything else; ``/docs`` renders ``/openapi.json``
with nothing fetched from elsewhere."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.server import run_server


def test_landing_and_docs_pages(repository: Path) -> None:
    config = ServerConfig.model_validate(
        {
            "server": {"repository": str(repository), "keep_going": True},
            "models": {"slow": {"batcher": "<b>"}},
        }
    )
    server = Server(config)
    with run_server(server, wait_ready=False) as running, httpx.Client(base_url=running.url) as client:
        deadline = time.monotonic() + 60
        while server.manager.loading and time.monotonic() < deadline:
            time.sleep(0.05)
        home = client.get("/")
        assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
        page = home.text
        for link in ("/docs", "/openapi.json", "/metrics", "/api/v1/stats", "/v2/health/ready"):
            assert f'href="{link}"' in page
        assert '<a href="/v2/models/iris"><code>iris</code></a>' in page
        assert "(sklearn)" in page  # each version's runtime
        assert "no batcher named &#x27;&lt;b&gt;&#x27;" in page and "<b>" not in page  # a failure, escaped
        for href in re.findall(r'href="(/[^"]*)"', page):  # every link on the page answers
            expected = 503 if href == "/v2/health/ready" else 200  # a model failed: not ready
            assert client.get(href).status_code == expected, href
        assert client.get("/openapi.json").json()["paths"]  # what /docs renders
        docs = client.get("/docs")
        assert docs.status_code == 200 and 'fetch("/openapi.json")' in docs.text
        assert not re.search(r"(src|href)=\"https?://", docs.text + page)  # nothing from elsewhere
