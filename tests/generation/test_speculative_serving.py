"""Speculative decoding from the config down: ``speculative = { draft = ..., num_tokens = ... }`` is
checked when a model is planned (the draft exists, is not the model, decodes on its own, shares the
tokenizer) and served through a real server, whose greedy answers equal the target's without a
draft and whose metrics count proposed and accepted draft tokens."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ladle import ModelRepository, PluginHost
from ladle.config import ServerConfig
from ladle.errors import ConfigError
from ladle.server import Server
from ladle.testing.lm import llama_config, write_checkpoint
from ladle.testing.server import RunningServer, run_server

from .support import write_draft

PROMPTS = ["the quick brown fox", "Hello, world! How are you today?", "Numbers like 12, 345 and"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``chat`` speculates with ``chat-draft`` (its weights plus noise); ``plain`` is ``chat`` alone."""
    root = tmp_path_factory.mktemp("speculative") / "models"
    target = write_checkpoint(root / "chat" / "1", llama_config(), seed=1)
    shutil.copytree(target, root / "plain" / "1")
    write_draft(target, root / "chat-draft" / "1", noise=0.03)
    (root / "chat" / "model.toml").write_text('speculative = { draft = "chat-draft", num_tokens = 3 }\n')
    return root


def plan(root: Path, model: str, **models: dict[str, object]) -> dict[str, object]:
    config = ServerConfig.model_validate({"server": {"repository": str(root)}, "models": models})
    specs = ModelRepository(root).plan(model, config, PluginHost().discover()).specs
    return dict(next(iter(specs.values())).options)


def test_the_draft_reaches_the_runtime_with_its_own_options(repository: Path) -> None:
    options = plan(repository, "chat", **{"chat-draft": {"options": {"dtype": "float64"}}})
    draft = options["speculative"]
    assert draft == {
        "draft": "chat-draft",
        "version": "1",
        "artifact": str(repository / "chat-draft" / "1"),
        "num_tokens": 3,
        "options": {"dtype": "float64"},
    }
    # a ladle.toml table overrides one key of the model.toml table, as for every table
    overridden = plan(repository, "chat", chat={"speculative": {"num_tokens": 5}})
    assert overridden["speculative"]["num_tokens"] == 5  # type: ignore[index]
    assert "speculative" not in plan(repository, "plain")


def refusal(root: Path, model: str, **models: dict[str, object]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        plan(root, model, **models)
    return caught.value


def test_bad_drafts_are_refused_at_plan_time_naming_both_models(repository: Path, tmp_path: Path) -> None:
    missing = refusal(repository, "plain", plain={"speculative": {"draft": "nowhere"}})
    assert "'nowhere'" in missing.message and "'plain'" in missing.message
    assert "its models: chat, chat-draft, plain" in missing.message
    assert missing.details["key"] == "speculative" and "[models.plain]" in missing.details["file"]
    itself = refusal(repository, "plain", plain={"speculative": {"draft": "plain"}})
    assert "its own draft" in itself.message
    unnamed = refusal(repository, "plain", plain={"speculative": {"num_tokens": 2}})
    assert "names no draft" in unnamed.message
    chained = refusal(repository, "plain", plain={"speculative": {"draft": "chat"}})  # chat speculates itself
    assert "'chat'" in chained.message and "of its own" in chained.message
    too_many = refusal(repository, "plain", plain={"speculative": {"draft": "chat-draft", "num_tokens": 40}})
    assert "num_tokens" in too_many.message
    # another tokenizer: trained on other words, so the same ids mean other tokens
    root = tmp_path / "models"
    shutil.copytree(repository, root)
    shutil.rmtree(root / "chat-draft" / "1")
    write_checkpoint(root / "chat-draft" / "1", llama_config(), seed=7)
    other = refusal(root, "chat")
    assert "'chat-draft'" in other.message and "'chat'" in other.message and "tokenizer" in other.message
    assert other.details["file"].endswith("model.toml")
    (root / "chat-draft" / "1" / "tokenizer.json").unlink()
    assert "has no tokenizer.json" in refusal(root, "chat").message


def test_a_server_refuses_to_start_with_a_bad_draft(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_checkpoint(root / "chat" / "1", llama_config(), seed=1)
    (root / "chat" / "model.toml").write_text('speculative = { draft = "gone" }\n')
    config = ServerConfig.model_validate({"server": {"repository": str(root)}})
    with pytest.raises(ConfigError, match="'gone'"):
        Server(config)


@pytest.fixture(scope="module")
def served(repository: Path) -> Iterator[RunningServer]:
    config = ServerConfig.model_validate({"server": {"repository": str(repository)}})
    with run_server(Server(config)) as running:
        yield running


def test_greedy_answers_with_a_draft_equal_the_target_s_and_drafts_are_counted(served: RunningServer) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        for prompt in PROMPTS:
            body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
            answers = [client.post(f"/api/v1/models/{m}/generate", json=body) for m in ("chat", "plain")]
            assert [a.status_code for a in answers] == [200, 200], answers[0].text
            chat, plain = (a.json() for a in answers)
            assert chat["token_ids"] == plain["token_ids"] and chat["text"] == plain["text"]
        stream = {"prompt": PROMPTS[0], "max_tokens": 16, "ignore_eos": True, "stream": True}
        with client.stream("POST", "/v1/completions", json={**stream, "model": "chat"}) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line.startswith("data: {")]
        text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events)
        assert text == plain_text(client, PROMPTS[0], 16)
        metrics = client.get("/metrics").text
    values = gauges(metrics, "chat")
    proposed = values["ladle_generation_speculative_proposed"]
    assert 0 < values["ladle_generation_speculative_accepted"] < proposed
    assert 0 < values["ladle_generation_speculative_acceptance_rate"] < 1
    assert gauges(metrics, "plain")["ladle_generation_speculative_proposed"] == 0
    engines = served.server.manager.models["chat"].versions["1"].batcher.stats()
    assert engines[0]["draft_accepted"] == values["ladle_generation_speculative_accepted"]


def plain_text(client: httpx.Client, prompt: str, tokens: int) -> str:
    body = {"model": "plain", "prompt": prompt, "max_tokens": tokens, "ignore_eos": True, "temperature": 0}
    answer: str = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    return answer


def gauges(metrics: str, model: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("ladle_generation_speculative") and f'ladle_model_name="{model}"' in line:
            values[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return values
