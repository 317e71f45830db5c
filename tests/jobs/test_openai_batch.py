"""The OpenAI Batch API through the official ``openai`` client against a tiny LM written here:
upload, create, poll, output and error files keyed by ``custom_id``, validation, cancel, delete."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ladle.config import ServerConfig
from ladle.server import Server
from ladle.testing.lm import llama_config, write_checkpoint
from ladle.testing.server import RunningServer, run_server

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def lm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("batch")
    write_checkpoint(root / "models" / "tiny" / "1", llama_config())
    config = ServerConfig.model_validate(
        {
            "server": {"repository": str(root / "models")},
            "jobs": {"store": str(root / "jobs.sqlite3"), "batch_rows": 3, "concurrency": 4},
        }
    )
    with run_server(Server(config)) as running:
        yield running


@pytest.fixture(scope="module")
def client(lm_server: RunningServer) -> Any:
    return openai.OpenAI(base_url=f"{lm_server.url}/v1", api_key="unused", max_retries=0)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def wait(client: Any, batch_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)


def chat(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "tiny",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 4,
            **body,
        },
    }


def test_a_chat_batch_gives_output_and_error_files_keyed_by_custom_id(client: Any, tmp_path: Path) -> None:
    lines = [chat(f"req-{i}", f"hello number {i}", temperature=0) for i in range(7)]
    lines.append(chat("bad-temperature", "x", temperature=-1))
    lines.append(chat("no-such-model", "x") | {"body": {"model": "missing", "messages": []}})
    path = tmp_path / "requests.jsonl"
    path.write_bytes(jsonl(lines))
    uploaded = client.files.create(file=path.open("rb"), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == path.stat().st_size
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert client.files.content(uploaded.id).content == path.read_bytes()
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "t"},
    )
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "t"}
    done = wait(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 9
    assert done.request_counts.completed == 7 and done.request_counts.failed == 2
    output = [orjson.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == [f"req-{i}" for i in range(7)]
    for line in output:
        response = line["response"]
        assert response["status_code"] == 200 and line["error"] is None
        assert response["body"]["object"] == "chat.completion"
        assert response["body"]["usage"]["completion_tokens"] == 4
    # greedy decoding: the batch answers what the online endpoint answers
    online = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello number 3"}], max_tokens=4, temperature=0
    )
    assert (
        output[3]["response"]["body"]["choices"][0]["message"]["content"] == online.choices[0].message.content
    )
    errors = {
        orjson.loads(line)["custom_id"]: orjson.loads(line)
        for line in client.files.content(done.error_file_id).text.splitlines()
    }
    assert set(errors) == {"bad-temperature", "no-such-model"}
    assert errors["bad-temperature"]["response"]["status_code"] == 400
    assert errors["bad-temperature"]["response"]["body"]["error"]["param"] == "temperature"
    assert errors["no-such-model"]["response"]["status_code"] in (400, 404)
    assert batch.id in [b.id for b in client.batches.list().data]


def test_a_completions_batch(client: Any) -> None:
    lines = [
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "tiny", "prompt": "the", "max_tokens": 3},
        },
        {
            "custom_id": "b",
            "url": "/v1/completions",
            "body": {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2},
        },
    ]
    uploaded = client.files.create(file=("c.jsonl", jsonl(lines)), purpose="batch")
    done = wait(
        client,
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
        ).id,
    )
    assert done.status == "completed" and done.error_file_id is None
    output = [orjson.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [(o["custom_id"], o["response"]["body"]["object"]) for o in output] == [
        ("a", "text_completion"),
        ("b", "text_completion"),
    ]
    assert output[1]["response"]["body"]["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
    }


def test_a_file_that_does_not_validate_fails_the_batch_naming_the_lines(client: Any) -> None:
    content = (
        jsonl([chat("one", "x")])
        + b"{broken\n"
        + jsonl([chat("one", "dup"), {**chat("u", "x"), "url": "/v1/completions"}])
    )
    uploaded = client.files.create(file=("bad.jsonl", content), purpose="batch")
    done = wait(
        client,
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    assert done.status == "failed" and done.output_file_id is None
    assert [(e.line, e.code) for e in done.errors.data] == [
        (2, "invalid_request"),
        (3, "invalid_request"),
        (4, "invalid_request"),
    ]
    assert "used twice" in done.errors.data[1].message and "endpoint" in done.errors.data[2].message


def test_cancel_a_batch_and_the_api_errors(client: Any) -> None:
    lines = [chat(f"r{i}", "a long one", max_tokens=64, ignore_eos=True) for i in range(30)]
    uploaded = client.files.create(file=("many.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert client.batches.retrieve(batch.id).request_counts.completed < 30
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-missing")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError, match="input file"):
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/completions", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)
