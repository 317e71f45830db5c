"""The ray placement (ladle.plugins.scalers.ray): each instance a Ray actor rebuilt from its spec.

Every test runs on the session's local Ray (``tests/conftest.py``'s ``ray_session``, 2 CPUs).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import psutil
import pytest

from ladle import (
    Batch,
    BatchItem,
    ConfigError,
    DeadlineExceededError,
    Instance,
    InstanceFailedError,
    InstanceState,
    LadleError,
    ModelConfig,
    ModelNotReadyError,
    PluginHost,
    RuntimeFailureError,
    RuntimeSpec,
)
from ladle.plugins.scalers.ray.placement import RayPlacement

SPEC = RuntimeSpec("probe", ".", model="m", version="1")


def host() -> PluginHost:
    plugins = PluginHost()
    plugins.add_module("ray_probe")  # by module name: the actor imports it again
    return plugins.discover()


def config(**placement: Any) -> ModelConfig:
    return ModelConfig(placement={"name": "ray", **placement})


def batch(*rows: float, deadline: float | None = None) -> Batch:
    x = np.array([[value, 1.0, 2.0] for value in rows], dtype=np.float32)
    items = [BatchItem(f"r{i}", 1, {}, deadline) for i in range(len(rows))]
    return Batch({"x": x}, items)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cpus_in_use(ray: Any) -> float:
    return float(ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0))


async def through_graph(instance: Instance, placement: RayPlacement, timeout: float = 60.0) -> None:
    """Send batches until they go through the instance's compiled graph (built once batches come)."""
    deadline = time.monotonic() + timeout
    while placement.describe()["actors"][0]["calls"] != "compiled_graph":
        assert time.monotonic() < deadline, "no compiled graph"
        await instance.execute(batch(1.0))
        await asyncio.sleep(0.02)


def run(scenario: Callable[[RayPlacement], Coroutine[Any, Any, None]], **options: Any) -> None:
    async def main() -> None:
        placement = RayPlacement(options, host())
        try:
            await scenario(placement)
        finally:
            await placement.close()

    asyncio.run(main())


def test_an_instance_runs_in_an_actor_rebuilt_from_its_spec(ray_session: Any) -> None:
    async def scenario(placement: RayPlacement) -> None:
        instance = placement.create(SPEC, 0, config())
        await instance.start()
        try:
            assert instance.state is InstanceState.READY
            small = batch(1.0, 2.0)
            first, second = await instance.execute(small)
            assert isinstance(first, dict) and isinstance(second, dict)
            np.testing.assert_array_equal(first["y"], small.inputs["x"][:1] * 2)
            np.testing.assert_array_equal(second["y"], small.inputs["x"][1:] * 2)
            actor_pid = int(first["pid"][0])
            assert actor_pid != os.getpid() and actor_pid == instance.executor.pid
            # 20,000 rows (240 kB) go by the object store, not inline with the call
            big = Batch({"x": np.random.rand(20_000, 3).astype(np.float32)}, [BatchItem("big", 20_000)])
            (result,) = await instance.execute(big)
            assert isinstance(result, dict)
            np.testing.assert_allclose(result["y"], big.inputs["x"] * 2)
            described = placement.describe()
            assert described["ray"]["mode"] == "existing"  # the session's Ray: not ours to shut down
            (actor,) = described["actors"]
            assert actor["pid"] == actor_pid and actor["num_cpus"] == 1.0 and actor["num_gpus"] == 0.0
            assert instance.describe()["runtime"]["ray_pid"] == actor_pid
        finally:
            await instance.stop(1)
        assert placement.describe()["actors"] == []

    run(scenario)


@pytest.mark.parametrize("compiled", [True, False])
def test_results_stay_intact_while_later_batches_run(ray_session: Any, compiled: bool) -> None:
    """A result still held never pins its channel (it is copied out): thirty batches in a row,
    every answer kept, each one still its own."""

    async def scenario(placement: RayPlacement) -> None:
        instance = placement.create(SPEC, 0, config(compiled_graph=compiled))
        await instance.start()
        try:
            if compiled:
                await through_graph(instance, placement)
            kept = [await instance.execute(batch(float(i), -1.0)) for i in range(30)]
            for i, (first, second) in enumerate(kept):
                assert isinstance(first, dict) and float(first["y"][0, 0]) == 2.0 * i
                assert isinstance(second, RuntimeFailureError)  # the row asked to fail, alone
            (actor,) = placement.describe()["actors"]
            assert actor["calls"] == ("compiled_graph" if compiled else "actor_calls")
            big = Batch({"x": np.random.rand(20_000, 3).astype(np.float32)}, [BatchItem("big", 20_000)])
            (result,) = await instance.execute(big)
            assert isinstance(result, dict)
            np.testing.assert_allclose(result["y"], big.inputs["x"] * 2)
        finally:
            await instance.stop(1)

    run(scenario)


def test_an_idle_graph_is_torn_down_and_its_actor_stops_polling(ray_session: Any) -> None:
    """A compiled graph's actor polls its channel (a busy core); after ``graph_idle_timeout`` without
    a batch the graph goes, the actor idles, and the next batches build it again."""

    async def scenario(placement: RayPlacement) -> None:
        instance = placement.create(SPEC, 0, config(graph_idle_timeout=0.5))
        await instance.start()
        try:
            await through_graph(instance, placement)
            actor = psutil.Process(placement.describe()["actors"][0]["pid"])
            await asyncio.sleep(1.3)
            assert placement.describe()["actors"][0]["calls"] == "actor_calls"
            # Ray's teardown stops the actor's polling loop a second or more later on a busy machine
            actor.cpu_percent(None)
            deadline = time.monotonic() + 10
            while True:
                await asyncio.sleep(0.5)
                busy = actor.cpu_percent(None)
                if busy < 20 or time.monotonic() > deadline:
                    break
            assert busy < 20, f"the actor still polls {busy:.0f}% of a core 10 s after its graph went"
            (answer,) = await instance.execute(batch(4.0))  # a plain call while the graph builds
            assert isinstance(answer, dict) and float(answer["y"][0, 0]) == 8.0
            await through_graph(instance, placement)
        finally:
            await instance.stop(1)

    run(scenario)


def test_a_failing_item_fails_alone_and_expired_items_are_skipped(ray_session: Any) -> None:
    async def scenario(placement: RayPlacement) -> None:
        instance = placement.create(SPEC, 0, config())
        await instance.start()
        try:
            good, bad = await instance.execute(batch(3.0, -1.0))
            assert isinstance(good, dict) and float(good["y"][0, 0]) == 6.0
            assert isinstance(bad, RuntimeFailureError) and "asked to fail" in bad.message
            # the deadline crosses as time left, and the actor skips what expired before it ran
            (late,) = await instance.execute(batch(1.0, deadline=time.monotonic() - 0.01))
            assert isinstance(late, DeadlineExceededError)
            (in_time,) = await instance.execute(batch(1.0, deadline=time.monotonic() + 30))
            assert isinstance(in_time, dict)
        finally:
            await instance.stop(1)

    run(scenario)


def test_model_options_reach_the_actor(ray_session: Any) -> None:
    async def scenario(placement: RayPlacement) -> None:
        chosen = config(num_cpus=0.5, runtime_env={"env_vars": {"PROBE_MARK": "7"}})
        instance = placement.create(SPEC, 0, chosen)
        await instance.start()
        try:
            (result,) = await instance.execute(batch(1.0))
            assert isinstance(result, dict) and float(result["mark"][0]) == 7.0
            # the only actor on the cluster holds half a CPU (an earlier test's may take a moment to go)
            deadline = time.monotonic() + 20
            while (used := _cpus_in_use(ray_session)) != 0.5:
                assert time.monotonic() < deadline, f"{used} CPUs in use"
                await asyncio.sleep(0.1)
        finally:
            await instance.stop(1)

    run(scenario)


@pytest.mark.parametrize(
    ("options", "key"),
    [({"num_gpus": -1}, "num_gpus"), ({"num_cpu": 1}, "num_cpu"), ({"runtime_env": "x"}, "runtime_env")],
)
def test_bad_model_options_are_config_errors_naming_the_option(options: dict[str, Any], key: str) -> None:
    placement = RayPlacement({}, host())
    with pytest.raises(ConfigError, match=key) as caught:
        placement.create(SPEC, 0, config(**options))
    assert "placement 'ray' of model 'm'" in caught.value.message


def test_bad_server_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="load_timeout"):
        RayPlacement({"load_timeout": 0}, host())
    with pytest.raises(ConfigError, match="adress"):
        RayPlacement({"adress": "auto"}, host())


def test_an_actor_the_cluster_cannot_place_fails_its_instance_in_bounded_time(ray_session: Any) -> None:
    async def scenario(placement: RayPlacement) -> None:
        instance = placement.create(SPEC, 0, config(num_cpus=64))
        started = time.monotonic()
        with pytest.raises(InstanceFailedError, match=r"not placed and loaded within 2 s.*64 CPUs"):
            await instance.start()
        assert time.monotonic() - started < 30
        assert instance.state is InstanceState.FAILED

    run(scenario, load_timeout=2)


@pytest.mark.parametrize("graph", [False, True], ids=["actor-calls", "compiled-graph"])
def test_a_killed_actor_fails_its_instance_and_a_replacement_serves(ray_session: Any, graph: bool) -> None:
    async def scenario(placement: RayPlacement) -> None:
        instance = placement.create(SPEC, 0, config())
        await instance.start()
        pid = instance.executor.pid
        assert pid is not None
        if graph:
            await through_graph(instance, placement)
            os.kill(pid, signal.SIGKILL)  # mid-graph, as a crash looks
        else:
            ray_session.kill(instance.executor.actor, no_restart=True)  # the way a lost node looks
        deadline = time.monotonic() + 30  # Ray kills asynchronously: a call sent at once may still run
        while _running(pid):
            assert time.monotonic() < deadline, "the actor did not die"
            await asyncio.sleep(0.02)
        with pytest.raises(InstanceFailedError, match="died"):
            await asyncio.wait_for(instance.execute(batch(1.0)), 60)
        assert instance.state is InstanceState.FAILED
        with pytest.raises(ModelNotReadyError):
            await instance.execute(batch(1.0))
        await instance.stop(1)
        # what the supervisor does: a new instance at the same index, from the same spec
        replacement = placement.create(SPEC, 0, config())
        await replacement.start()
        try:
            (result,) = await replacement.execute(batch(2.0))
            assert isinstance(result, dict) and float(result["y"][0, 0]) == 4.0
            assert int(result["pid"][0]) != instance.executor.pid
        finally:
            await replacement.stop(1)

    run(scenario)


def test_a_runtime_that_fails_to_load_reports_why(ray_session: Any) -> None:
    async def scenario(placement: RayPlacement) -> None:
        spec = RuntimeSpec("probe", ".", model="m", version="1", options={"fail_load": True})
        instance = placement.create(spec, 0, config())
        with pytest.raises(LadleError, match="asked not to load"):
            await instance.start()
        assert instance.state is InstanceState.FAILED

    run(scenario)
