"""The fixed scaler (ladle.plugins.scalers.fixed): a constant policy and an in-host placement."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
import pytest

from ladle import (
    Arrays,
    Batch,
    ConfigError,
    InstanceState,
    ModelConfig,
    PluginHost,
    ProcessExecutor,
    Runtime,
    RuntimeSpec,
    ThreadExecutor,
    VersionMetrics,
    hookimpl,
)
from ladle.plugins.scalers.fixed.scaler import FixedPlacement, FixedPolicy


class PidRuntime(Runtime):
    """Answers each row with the id of the process it runs in."""

    name = "pid"

    def load(self) -> None:
        self.pid = os.getpid()

    def predict(self, batch: Batch) -> Arrays:
        return {"pid": np.full(batch.rows, self.pid, dtype=np.int64)}


@hookimpl
def register_runtimes(register: Any) -> None:
    register("pid", PidRuntime)


def make_host() -> PluginHost:
    host = PluginHost()
    host.add_module(__name__)  # importable by name, so a worker process can rebuild the runtime too
    return host.collect()


SPEC = RuntimeSpec("pid", ".", model="m", version="3")


def metrics(**figures: Any) -> VersionMetrics:
    return VersionMetrics("m", "3", instances=1, **figures)


def test_the_policy_wants_the_configured_count_whatever_the_load() -> None:
    policy = FixedPolicy({"instances": 3})
    assert policy.desired(metrics()) == 3
    assert policy.desired(metrics(queue_depth=10_000, in_flight=64, request_rate=5e4, p95_latency=9.0)) == 3
    assert FixedPolicy({}).desired(metrics(queue_depth=500)) == 1


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"instances": 0}, "instances"),
        ({"instances": "two"}, "instances"),
        ({"replicas": 2}, "replicas: unknown key"),
    ],
)
def test_bad_policy_options_are_refused_naming_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match="'fixed'") as caught:
        FixedPolicy(options)
    assert named in caught.value.message


def test_the_placement_takes_no_options_of_its_own_or_of_a_model() -> None:
    host = make_host()
    with pytest.raises(ConfigError, match="placement 'fixed' options: slots: unknown key"):
        FixedPlacement({"slots": 2}, host)
    config = ModelConfig(placement={"name": "fixed", "gpus": 1})
    with pytest.raises(ConfigError, match="gpus: unknown key"):
        FixedPlacement({}, host).create(SPEC, 0, config)


def test_the_placement_creates_a_thread_instance_that_is_not_started_and_goes_through_the_lifecycle() -> None:
    async def scenario() -> None:
        host = make_host()
        placement = FixedPlacement({}, host)
        instance = placement.create(SPEC, 2, ModelConfig(executor="thread"))
        states: list[tuple[str, InstanceState]] = []
        instance.listener = lambda changed, state: states.append((changed.name, state))
        assert isinstance(instance.executor, ThreadExecutor)
        assert instance.name == "2" and instance.spec is SPEC and not instance.ready
        await instance.start()
        (result,) = await instance.execute(Batch.of({"x": np.zeros((2, 1))}))
        assert isinstance(result, dict) and result["pid"].tolist() == [os.getpid()] * 2
        await instance.stop(1)
        assert [state for _, state in states] == [
            InstanceState.LOADING,
            InstanceState.WARMING,
            InstanceState.READY,
            InstanceState.DRAINING,
            InstanceState.STOPPED,
        ]
        assert {name for name, _ in states} == {"2"}

    asyncio.run(scenario())


def test_the_placement_defaults_to_threads() -> None:
    host = make_host()
    placement = FixedPlacement({}, host)
    assert isinstance(placement.create(SPEC, 0, ModelConfig()).executor, ThreadExecutor)


def test_the_process_executor_runs_the_runtime_in_a_worker_process() -> None:
    async def scenario() -> None:
        host = make_host()
        instance = FixedPlacement({}, host).create(SPEC, 0, ModelConfig(executor="process"))
        assert isinstance(instance.executor, ProcessExecutor)
        try:
            await instance.start()
            (result,) = await instance.execute(Batch.of({"x": np.zeros((1, 1))}))
            assert isinstance(result, dict)
            worker = int(result["pid"][0])
            assert worker != os.getpid() and worker == instance.executor.pid
        finally:
            await instance.stop(5)
        assert instance.state is InstanceState.STOPPED

    asyncio.run(scenario())


def test_the_fixed_policy_and_placement_are_registered(ladle_host: PluginHost) -> None:
    assert ladle_host.load("scaling_policy", "fixed") is FixedPolicy
    assert ladle_host.load("placement", "fixed") is FixedPlacement
