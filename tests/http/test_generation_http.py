"""Generation over HTTP against a real server with a tiny Llama-style checkpoint written here:
the ladle generate endpoint (JSON and server-sent events) and the OpenAI API through the official client."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.lm import llama_config, write_checkpoint
from ladle.testing.server import RunningServer, run_server


@pytest.fixture(scope="module")
def lm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("lm") / "models"
    write_checkpoint(repo / "tiny" / "1", llama_config())  # zero config: detected, continuous batching
    # a long context, so that a stream the client leaves is still generating when it leaves
    write_checkpoint(repo / "other" / "1", llama_config(max_position_embeddings=4096), seed=1)
    (repo / "other" / "model.toml").write_text("timeout = 60.0\n")
    config = ServerConfig.model_validate({"server": {"repository": str(repo)}})
    with run_server(Server(config)) as running:
        yield running


@pytest.fixture(scope="module")
def lm(lm_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lm_server.url, timeout=60) as client:
        yield client


def sse_events(response: httpx.Response) -> list[object]:
    events: list[object] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


def test_generate_json_and_stream_agree(lm: httpx.Client) -> None:
    body = {"prompt": "the quick brown fox", "max_tokens": 12, "temperature": 0}
    whole = lm.post("/api/v1/models/tiny/generate", json=body)
    assert whole.status_code == 200, whole.text
    assert whole.headers["Ladle-Model-Version"] == "1"
    result = whole.json()
    assert result["finish_reason"] == "length" and len(result["token_ids"]) == 12
    assert result["usage"]["completion_tokens"] == 12
    with lm.stream("POST", "/api/v1/models/tiny/generate", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict) and "token_ids" in e]
    assert [t for c in chunks for t in c["token_ids"]] == result["token_ids"]  # greedy: the same tokens
    assert "".join(c["text"] for c in chunks) == result["text"]
    assert events[-2] == {"finish_reason": "length", "usage": result["usage"]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 2}, "top_p"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "word " * 2000, "max_tokens": 4}, None),
    ],
)
def test_bad_generation_parameters_are_400_naming_them(
    lm: httpx.Client, body: dict[str, object], param: str | None
) -> None:
    response = lm.post("/api/v1/models/tiny/generate", json=body)
    assert response.status_code == 400, response.text
    if param is not None:
        assert response.json()["param"] == param
    else:
        assert "context" in response.json()["error"]


def test_openai_client_completions_chat_and_streaming(lm_server: RunningServer) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{lm_server.url}/v1", api_key="unused")
    assert sorted(m.id for m in client.models.list().data) == ["other", "tiny"]
    completion = client.completions.create(model="tiny", prompt="the quick", max_tokens=6, temperature=0)
    assert completion.choices[0].finish_reason == "length" and completion.usage is not None
    assert completion.usage.completion_tokens == 6
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage is not None
    assert chat.usage.completion_tokens == 5 and chat.usage.prompt_tokens > 3
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=-3)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing", prompt="x")
    with pytest.raises(openai.BadRequestError, match="n = 1"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=2)


def test_disconnect_aborts_the_sequence_and_frees_its_blocks(
    lm_server: RunningServer, lm: httpx.Client
) -> None:
    batcher = lm_server.server.manager.endpoint("other").versions["1"].batcher
    with lm.stream(
        "POST",
        "/api/v1/models/other/generate",
        json={"prompt": "a", "max_tokens": 4000, "stream": True, "ignore_eos": True},
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # one chunk arrived; the client goes away
    deadline = time.monotonic() + 20
    # the stream ends at once; the engine frees the sequence at its next step
    while (batcher.in_flight or not batcher.stats()[0]["aborted"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batcher.in_flight == 0
    (stats,) = batcher.stats()
    assert stats["aborted"] >= 1 and stats["generated_tokens"] < 4000


def test_non_generative_model_refuses_generate(client: httpx.Client) -> None:
    response = client.post("/api/v1/models/bc/generate", json={"prompt": "x"})
    assert response.status_code == 400 and "does not generate" in response.json()["error"]


def test_generation_gauges_reach_prometheus(lm: httpx.Client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert (
        lm.post("/api/v1/models/tiny/generate", json={"prompt": "count me", "max_tokens": 5}).status_code
        == 200
    )
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(lm.get("/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("ladle_generation") and sample.labels.get("ladle_model_name") == "tiny":
                values[sample.name] = sample.value
    assert values["ladle_generation_tokens_generated"] >= 5
    assert 0 <= values["ladle_generation_kv_cache_usage"] < 1
    assert values["ladle_generation_sequences_running"] == 0 and values["ladle_generation_preemptions"] == 0


def test_time_to_first_token_and_inter_token_latency_reach_prometheus(lm: httpx.Client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def counts() -> dict[str, float]:
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(lm.get("/metrics").text):
            for sample in family.samples:
                if sample.name.endswith("_count") and sample.labels.get("ladle_model_name") == "tiny":
                    found[sample.name] = sample.value
        return found

    before = counts()
    body = {"prompt": "one two three", "max_tokens": 6, "ignore_eos": True}
    assert lm.post("/api/v1/models/tiny/generate", json=body).status_code == 200
    after = counts()
    first = "ladle_generation_time_to_first_token_seconds_count"
    gaps = "ladle_generation_inter_token_latency_seconds_count"
    assert after[first] - before.get(first, 0) == 1  # one request, one first token
    assert after[gaps] - before.get(gaps, 0) >= 1  # later tokens, one sample per step that emitted
