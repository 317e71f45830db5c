"""``dashboards/ladle.json`` is a well-formed Grafana dashboard whose every query names metrics and
labels that a real server's ``/metrics`` exports, once it has served tensor and generative models
with quality monitoring on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.lm import llama_config, write_checkpoint
from ladle.testing.server import run_server

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
#: Metrics the dashboard charts that a server exports only once something happened that this test
#: does not cause (a counter has no series before its first count).
CONDITIONAL = {"ladle_instance_restarts_total": "counted once the supervisor replaces a failed instance"}
#: Labels those conditional metrics carry.
CONDITIONAL_LABELS = {"ladle_restart_reason"}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "topk", "bottomk", "rate", "irate", "increase", "deriv",
    "histogram_quantile", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "offset", "bool", "label_values", "le",
}  # fmt: skip


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append(variable["query"]["query"])
    return found


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses."""
    labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels.update(name.strip() for name in group.split(",") if name.strip())
    labels.update(re.findall(r"label_values\([^,]+,\s*(\w+)\)", expr))
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^]]*\]|\b(?:by|without)\s*\([^)]*\)", " ", bare)
    bare = re.sub(r"label_values\(([^,]+),\s*\w+\)", r"\1", bare)
    words = set(re.findall(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare))
    return words - PROMQL_WORDS - labels, labels


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads((DASHBOARDS / "ladle.json").read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 38  # Grafana 10+
    (source,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${" + source["name"] + "}", panel["title"]
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
    titles = " ".join(p["title"] for p in panels).lower()
    for subject in (
        "status code",
        "latency",
        "queue depth",
        "batch size",
        "instances",
        "kv-cache",
        "tokens",
        "drift",
    ):
        assert subject in titles, subject
    provider = (DASHBOARDS / "provisioning" / "dashboards" / "ladle.yaml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider  # where the README's docker run mounts it
    datasource = (DASHBOARDS / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    assert "type: prometheus" in datasource and "url: ${PROMETHEUS_URL}" in datasource


def exposition(url: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) in a server's ``/metrics``."""
    text = httpx.get(f"{url}/metrics").text
    metrics, labels = set(), set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            assert name is not None
            metrics.add(name.group(0))
            labels.update(re.findall(r'(\w+)="', line))
    return metrics, labels


def test_every_query_names_metrics_a_server_exports(repository: Path) -> None:
    write_checkpoint(repository / "tiny" / "1", llama_config())  # served by the continuous batcher
    config = ServerConfig.model_validate(
        {
            "server": {"repository": str(repository)},
            "telemetry": {
                "quality": {"enabled": True, "inputs": True, "reference_rows": 20, "min_count": 10}
            },
        }
    )
    from sklearn.datasets import load_iris

    rows = load_iris().data
    with run_server(Server(config)) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        for start in range(0, 120, 4):
            body = {"inputs": [{"input": row.tolist()} for row in rows[start : start + 4]]}
            assert client.post("/api/v1/models/iris/predict", json=body).status_code == 200
        wrong = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": np.zeros(4).tolist()}]}
        assert client.post("/v2/models/iris/infer", json=wrong).status_code == 422
        generated = client.post("/api/v1/models/tiny/generate", json={"prompt": "the quick", "max_tokens": 4})
        assert generated.status_code == 200, generated.text
        exported, exported_labels = exposition(running.url)
    dashboard = json.loads((DASHBOARDS / "ladle.json").read_text())
    used: set[str] = set()
    used_labels: set[str] = set()
    for expr in queries(dashboard):
        metrics, labels = names_in(expr)
        assert metrics, f"no metric found in {expr!r}"
        used |= metrics
        used_labels |= labels
    missing = used - exported - set(CONDITIONAL)
    assert not missing, f"the dashboard queries metrics /metrics does not export: {sorted(missing)}"
    assert not used_labels - exported_labels - CONDITIONAL_LABELS, sorted(used_labels - exported_labels)
    assert set(CONDITIONAL) <= used  # each conditional metric is charted, and said why above
    legends = {t.get("legendFormat", "") for p in dashboard["panels"] for t in p.get("targets", [])}
    legend_labels = {name for legend in legends for name in re.findall(r"\{\{(\w+)\}\}", legend)}
    assert not legend_labels - exported_labels - CONDITIONAL_LABELS, sorted(legend_labels - exported_labels)
