"""The data-path extras: shadow copies compared and never returned, cascades, circuit breakers with
fallbacks, overload fallbacks and the response cache."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ladle import InferenceRequest, Priority, RuntimeFailureError, ServerBusyError
from ladle.serving import ModelEndpoint

from .harness import (
    BEHAVIOUR,
    CALLS,
    admit,
    answer,
    make_config,
    predict,
    rows,
    run_async,
    serving,
    write_version,
)


def summing_to(total: float) -> np.ndarray:
    return np.full((1, 4), total / 4, dtype=np.float32)


def sigmoid(total: float) -> float:
    return float(1 / (1 + np.exp(-total)))


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    write_version(repo, "fraud", "v1")
    return repo


@run_async
async def test_shadow_copies_are_compared_and_never_returned(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2", shift=0.1)
        await controller.deploy(
            "fraud", "v2", traffic=0, options={"router": {"name": "shadow", "shadow": "v2"}}
        )
        endpoint = manager.endpoint("fraud")
        shadow_batcher = endpoint.versions["v2"].batcher
        priorities: list[Priority] = []
        submit = shadow_batcher.submit

        def recording(request: InferenceRequest) -> asyncio.Future[Any]:
            priorities.append(request.priority)
            return submit(request)

        shadow_batcher.submit = recording  # type: ignore[method-assign]
        totals = [-0.2, 2.0] * 20  # scores 0.45 (label flips when shifted) and 0.88 (stays)
        for total in totals:
            version, answer = await predict(endpoint, summing_to(total))
            assert version == "v1" and answer.source == "model"
            assert answer.outputs["score"][0] == pytest.approx(sigmoid(total), abs=1e-6)  # never the shadow's
        mirror = controller.deliveries["fraud"].mirror
        assert mirror is not None
        await until(lambda: mirror.stats.get("v2") is not None and mirror.stats["v2"].compared == len(totals))
        figures = (await controller.describe("fraud"))["delivery"]["shadow"]
        assert figures["offered"] == len(totals) and figures["dropped"] == 0
        shadow = figures["versions"]["v2"]
        assert shadow["label_agreement"] == pytest.approx(0.5)
        assert shadow["mean_abs_score_diff"] == pytest.approx(0.1, abs=1e-5)
        assert shadow["latency_diff_ms_p50"] is not None
        assert priorities == [Priority.LOW] * len(totals)  # copies never compete with live traffic


@run_async
async def test_a_full_shadow_queue_drops_copies_not_requests(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2", delay=0.05)
        router = {"name": "shadow", "shadow": "v2", "queue": 1, "concurrency": 1}
        await controller.deploy("fraud", "v2", traffic=0, options={"router": router})
        endpoint = manager.endpoint("fraud")
        results = await asyncio.gather(*(predict(endpoint, rows(1)) for _ in range(30)))
        assert {version for version, _ in results} == {"v1"}
        mirror = controller.deliveries["fraud"].mirror
        assert mirror is not None and mirror.dropped > 0
        await until(lambda: mirror.stats["v2"].compared + mirror.dropped == mirror.offered)


@run_async
async def test_cascade_sends_only_unsure_requests_to_the_large_model(repo: Path, tmp_path: Path) -> None:
    write_version(repo, "big", "1", shift=0.01)
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2")
        router = {"name": "cascade", "small": "v1", "large": "v2", "band": [0.3, 0.7]}
        await controller.deploy("fraud", "v2", traffic=0, options={"router": router})
        endpoint = manager.endpoint("fraud")
        before = CALLS.copy()
        version, sure = await predict(endpoint, summing_to(3.0))  # 0.95: the small model is sure
        assert version == "v1" and sure.source == "model"
        version, unsure = await predict(endpoint, summing_to(0.2))  # 0.55: within the band
        assert version == "v2"
        assert (unsure.source, unsure.reason) == ("cascade", "unsure")
        assert CALLS[("fraud", "v1")] - before[("fraud", "v1")] == 2
        assert CALLS[("fraud", "v2")] - before[("fraud", "v2")] == 1
        # the large one may be another model
        other = {"name": "cascade", "small": "v1", "large": "big:1"}
        await controller.deploy("fraud", "v1", traffic=100, options={"router": other})
        _, answer = await predict(endpoint, summing_to(0.2))
        assert (answer.model, answer.version, answer.source) == ("big", "1", "cascade")
        assert answer.outputs["score"][0] == pytest.approx(sigmoid(0.2) + 0.01, abs=1e-6)


def set_behaviour(repo: Path, version: str, **behaviour: Any) -> None:
    (repo / "fraud" / version / BEHAVIOUR).write_text(json.dumps({"live": True, **behaviour}))


async def outcome(endpoint: ModelEndpoint) -> tuple[str, str]:
    try:
        version, answer = await predict(endpoint, rows(1))
    except RuntimeFailureError:
        return "error", ""
    return version, "" if answer.source == "model" else answer.source


@run_async
async def test_the_breaker_opens_falls_back_probes_and_closes(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        write_version(repo, "fraud", "v2", live=True)
        resilience = {
            "circuit_breaker": {"min_requests": 5, "error_ratio": 0.5, "cooldown": 0.3, "probes": 2},
            "fallback": [{"version": "v1"}],
        }
        await controller.deploy("fraud", "v2", options={"resilience": resilience})
        endpoint = manager.endpoint("fraud")
        assert await outcome(endpoint) == ("v2", "")
        set_behaviour(repo, "v2", fail=True)
        seen = [await outcome(endpoint) for _ in range(12)]
        assert seen[:4] == [("error", "")] * 4  # counted, not yet enough to judge
        assert seen[-5:] == [("v1", "fallback:version")] * 5  # open: the fallback serves
        set_behaviour(repo, "v2")  # the version recovers
        await asyncio.sleep(0.35)
        probes = [await outcome(endpoint) for _ in range(4)]
        assert probes == [("v2", "")] * 4  # two probes succeeded, closed again
        events = [e["kind"] for e in (await controller.describe("fraud"))["history"]["events"]]
        assert events[:3] == ["circuit_closed", "circuit_half_open", "circuit_open"]


@run_async
async def test_an_overloaded_version_falls_back_to_a_static_response(repo: Path, tmp_path: Path) -> None:
    write_version(repo, "fraud", "v1", delay=0.2)
    models = {
        "fraud": {"instances": 1, "batcher": {"name": "dynamic", "max_queue_size": 1, "max_batch_size": 2}}
    }
    async with serving(make_config(repo, tmp_path / "d.db", models)) as (_, controller):
        requests = [InferenceRequest("fraud", {"x": rows(2)}) for _ in range(5)]
        with pytest.raises(ServerBusyError):
            for request in requests:
                admit(request)
        await asyncio.sleep(0.5)
        resilience = {"fallback": [{"static": {"score": [0.5]}}]}
        await controller.deploy("fraud", "v1", options={"resilience": resilience})
        answers = await asyncio.gather(*(answer(InferenceRequest("fraud", {"x": rows(2)})) for _ in range(5)))
        static = [a for a in answers if a.source != "model"]
        assert len(static) == 3  # one runs, one queues, three are shed and answered statically
        assert all(
            (a.source, a.reason, a.version) == ("fallback:static", "overloaded", "fallback") for a in static
        )
        assert static[0].outputs["score"].tolist() == [0.5, 0.5]  # one row per input row
        assert static[0].outputs["score"].dtype == np.float32  # the model's own datatype
        assert (await controller.describe("fraud"))["delivery"]["fallbacks"] == {"overloaded:static": 3}


@run_async
async def test_identical_inputs_are_answered_from_the_cache(repo: Path, tmp_path: Path) -> None:
    async with serving(make_config(repo, tmp_path / "d.db")) as (manager, controller):
        await controller.deploy(
            "fraud", "v1", options={"resilience": {"cache": {"ttl": 60, "max_entries": 10}}}
        )
        endpoint = manager.endpoint("fraud")
        x = rows(1, seed=3)
        first = (await predict(endpoint, x))[1].outputs
        computed = CALLS[("fraud", "v1")]
        version, second = await predict(endpoint, x.copy())
        assert second.source == "cache" and version == "v1"
        assert second.outputs["score"].tolist() == first["score"].tolist()
        assert CALLS[("fraud", "v1")] == computed  # not computed again
        await predict(endpoint, rows(1, seed=4))
        assert CALLS[("fraud", "v1")] == computed + 1
        write_version(repo, "fraud", "v2")
        await controller.deploy("fraud", "v2")  # a traffic change forgets cached answers
        version, third = await predict(endpoint, x)
        assert version == "v2" and third.source == "model"
