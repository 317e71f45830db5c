"""Generation rides the one admission path: canary splits, sticky keys, shadows, fallbacks and the
stats layer apply to generative models as to tensor models; a client that leaves aborts its sequence."""

from __future__ import annotations

import concurrent.futures
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.lm import llama_config, write_checkpoint
from ladle.testing.server import RunningServer, run_server

GREEDY = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def lm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("delivery") / "models"
    for model in ("split", "mirrored", "busy"):
        for version in ("1", "2"):
            write_checkpoint(repo / model / version, llama_config())  # the same weights: the same tokens
    (repo / "split" / "model.toml").write_text(
        'version_policy = "all"\nrouter = "canary"\ntraffic = { "1" = 50, "2" = 50 }\n'
    )
    (repo / "mirrored" / "model.toml").write_text(
        'version_policy = "all"\nrouter = { name = "shadow", shadow = "2" }\n'
        'traffic = { "1" = 100, "2" = 0 }\n'
    )
    (repo / "busy" / "model.toml").write_text(
        'version_policy = "all"\nbatcher = { name = "continuous", max_num_seqs = 1, max_waiting = 1 }\n'
        'resilience = { fallback = [{ version = "1" }] }\ntraffic = { "2" = 100 }\nrouter = "canary"\n'
    )
    config = ServerConfig.model_validate({"server": {"repository": str(repo)}})
    with run_server(Server(config)) as running:
        yield running


@pytest.fixture(scope="module")
def lm(lm_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lm_server.url, timeout=60) as client:
        yield client


def generate(client: httpx.Client, model: str, **params: Any) -> httpx.Response:
    body = (
        {"prompt": "the quick brown fox", **GREEDY, "params": params}
        if params
        else {"prompt": "the quick brown fox", **GREEDY}
    )
    response = client.post(f"/api/v1/models/{model}/generate", json=body)
    assert response.status_code == 200, response.text
    return response


def test_a_canary_split_and_sticky_keys_route_generations(lm: httpx.Client) -> None:
    versions = Counter(generate(lm, "split").headers["Ladle-Model-Version"] for _ in range(24))
    assert set(versions) == {"1", "2"}, versions
    keyed = {generate(lm, "split", routing_key="user-3").headers["Ladle-Model-Version"] for _ in range(6)}
    assert len(keyed) == 1  # a routing key sticks to one version
    chat = {
        lm.post(
            "/v1/chat/completions",
            json={
                "model": "split",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
                "user": "u-9",
            },
        ).headers["Ladle-Model-Version"]
        for _ in range(6)
    }
    assert len(chat) == 1  # OpenAI's ``user`` is the routing key


def test_shadow_copies_of_generations_are_compared_token_by_token(
    lm_server: RunningServer, lm: httpx.Client
) -> None:
    for _ in range(6):
        assert generate(lm, "mirrored").headers["Ladle-Model-Version"] == "1"  # never the shadow
    delivery = lm_server.server.controller.deliveries["mirrored"]
    assert delivery.mirror is not None
    deadline = time.monotonic() + 30
    while (stats := delivery.mirror.stats.get("2")) is None or stats.compared < 6:
        assert time.monotonic() < deadline, delivery.mirror.describe()
        time.sleep(0.05)
    figures = delivery.mirror.describe()["versions"]["2"]
    assert figures["identical_generations"] == 1.0 and figures["token_agreement"] == 1.0


def test_an_overloaded_generative_version_falls_back(lm_server: RunningServer) -> None:
    body = {"prompt": "once upon a time", "max_tokens": 48, "temperature": 0, "ignore_eos": True}

    def one(_: int) -> tuple[str, str]:
        with httpx.Client(base_url=lm_server.url, timeout=60) as client:
            response = client.post("/api/v1/models/busy/generate", json=body)
            if response.status_code == 503:  # both versions full: shed, as documented
                return "shed", response.json()["code"]
            assert response.status_code == 200, response.text
            return response.headers["Ladle-Model-Version"], response.headers.get("Ladle-Served-From", "")

    # each version runs one sequence and queues one: six at once overflow v2 into its fallback
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = Counter(pool.map(one, range(6)))
    assert answers[("2", "")] >= 1 and answers[("1", "fallback:version")] >= 1, answers


def test_generations_reach_the_stats_layer(lm: httpx.Client) -> None:
    for _ in range(3):
        generate(lm, "split", version="1")
    stats = lm.get("/api/v1/stats").json()
    (entry,) = [v for v in stats["versions"] if (v["model"], v["version"]) == ("split", "1")]
    assert entry["requests"] >= 3 and entry["latency_p50"] is not None
    assert entry["responses_by_status"].get("200", 0) >= 3
    metrics = lm.get("/metrics").text
    assert any(
        line.startswith("ladle_requests_total{")
        and 'ladle_model_name="split"' in line
        and 'ladle_model_version="1"' in line
        for line in metrics.splitlines()
    )
    assert "ladle_generation_time_to_first_token" in metrics


def test_a_client_that_leaves_aborts_its_sequence_and_frees_its_blocks(
    lm_server: RunningServer, lm: httpx.Client
) -> None:
    batcher = lm_server.server.manager.models["split"].versions["1"].batcher
    aborted = sum(e["aborted"] for e in batcher.stats())
    body = {
        "prompt": "the quick brown fox",
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
        "params": {"version": "1"},
    }
    with lm.stream("POST", "/api/v1/models/split/generate", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up
    deadline = time.monotonic() + 10
    while True:
        engines = batcher.stats()
        if sum(e["aborted"] for e in engines) > aborted and all(
            e["free_blocks"] == e["num_blocks"] for e in engines
        ):
            break
        assert time.monotonic() < deadline, engines
        time.sleep(0.02)
    stats = lm.get("/api/v1/stats").json()
    (entry,) = [v for v in stats["versions"] if (v["model"], v["version"]) == ("split", "1")]
    assert entry["responses_by_status"].get("499", 0) >= 1


def test_a_shared_prefix_goes_to_the_instance_that_caches_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    repo = tmp_path_factory.mktemp("prefix") / "models"
    write_checkpoint(repo / "chat" / "1", llama_config())
    (repo / "chat" / "model.toml").write_text("instances = 2\n")
    system = "you are a helpful assistant who answers in short sentences and never repeats itself " * 3
    config = ServerConfig.model_validate({"server": {"repository": str(repo)}})
    with run_server(Server(config)) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        batcher = running.server.manager.models["chat"].versions["1"].batcher
        for question in ("what is two plus two", "name a colour", "say hello", "count to three"):
            body = {"prompt": system + question, "max_tokens": 2, "temperature": 0}
            assert client.post("/api/v1/models/chat/generate", json=body).status_code == 200
        engines = batcher.stats()
        assert sum(e.get("prefix_routed", 0) for e in engines) == 3  # every request after the first
        cached = sorted(e["cached_prompt_tokens"] for e in engines)
        assert cached[0] == 0 and cached[1] > 0  # one instance holds the prefix and served them all
        metrics = client.get("/metrics").text
        assert "ladle_generation_prefix_routing_hit_ratio" in metrics
