"""The runtime conformance kit: checks every runtime, built-in or third-party, must pass.

Subclass :class:`RuntimeConformance` in a test module, say how to build the model and its inputs,
and pytest runs every check through both executors (a thread of the test process, and a spawned
worker process that rebuilds the runtime from its spec)::

    from ladle import RuntimeSpec
    from ladle.testing.conformance import RuntimeConformance

    class TestMyRuntime(RuntimeConformance):
        def make_spec(self, directory):
            save_my_model(directory / "model.bin")
            return RuntimeSpec(plugin="mine", artifact=str(directory))

        def sample_inputs(self, rows, seed):
            return {"input": np.random.default_rng(seed).random((rows, 4), dtype=np.float32)}

        def bad_inputs(self, rows):  # optional: same names, dtypes and shapes, refused values
            return {"input": np.full((rows, 4), -1.0, dtype=np.float32)}

The checks: the lifecycle (loading -> warming -> ready -> draining -> stopped; failed on a broken
artifact), memory measured, a signature consistent with the outputs, batch order and length kept
(a batch's outputs equal each item's outputs run alone), a bad item failing alone with a 4xx
error, and deadlines and cancellation honoured at the instance boundary. Each check is also a plain
function (``check_*``) for use outside the class.

This module is also a plugin (add it with ``PluginHost.add_module("ladle.testing.conformance")``)
registering ``conformance-probe``: a runtime that is right by construction and reports the
deadlines it is handed, used to check the core and the kit itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Collection, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pytest

from ..envelope import Arrays, Batch, InferenceRequest
from ..errors import (
    ConfigError,
    DeadlineExceededError,
    InvalidInputError,
    LadleError,
    ModelNotReadyError,
    RequestCancelledError,
)
from ..executors import ItemResult, make_executor
from ..hookspecs import hookimpl
from ..instance import Instance
from ..plugin_host import PluginHost, Register
from ..runtime import InstanceState, Runtime, RuntimeSpec
from ..tensors import Signature, TensorSpec, datatype_of

__all__ = [
    "EXECUTORS",
    "ProbeRuntime",
    "RunningInstance",
    "RuntimeConformance",
    "break_artifact",
    "check_bad_item_isolated",
    "check_batch_order",
    "check_broken_artifact_fails",
    "check_cancelled_not_run",
    "check_expired_not_run",
    "check_live_items_beside_expired",
    "check_ready",
    "check_signature",
    "check_stop_drains",
    "check_wrong_shape_refused",
    "probe_inputs",
    "running_instance",
    "write_probe",
]

EXECUTORS = ("thread", "process")
T = TypeVar("T")


@dataclasses.dataclass
class RunningInstance:
    """A started instance plus the event loop it lives on and the states it went through."""

    runner: asyncio.Runner
    instance: Instance
    states: list[InstanceState]
    timeout: float = 120.0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the instance's loop; a hung runtime fails the test instead of hanging it."""
        return self.runner.run(asyncio.wait_for(coroutine, self.timeout))

    def execute(self, batch: Batch) -> list[ItemResult]:
        return self.run(self.instance.execute(batch))

    def outputs(self, inputs: Arrays) -> Arrays:
        """Outputs of ``inputs`` run alone (fails the test if the runtime refused them)."""
        (result,) = self.execute(Batch.from_requests([InferenceRequest("conformance", inputs)]))
        assert not isinstance(result, LadleError), f"valid sample inputs were refused: {result!r}"
        return result


def _new_instance(spec: RuntimeSpec, kind: str, host: PluginHost) -> tuple[Instance, list[InstanceState]]:
    states: list[InstanceState] = []
    instance = Instance(spec, make_executor(kind, spec, host), listener=lambda _, state: states.append(state))
    return instance, states


@contextmanager
def running_instance(
    spec: RuntimeSpec, kind: str, host: PluginHost, timeout: float = 120.0
) -> Iterator[RunningInstance]:
    """Start an instance of ``spec`` on executor ``kind`` (``"thread"`` or ``"process"``); stop it after."""
    runner = asyncio.Runner()
    instance, states = _new_instance(spec, kind, host)
    running = RunningInstance(runner, instance, states, timeout)
    try:
        running.run(instance.start())
        yield running
    finally:
        try:
            if instance.state is not InstanceState.STOPPED:
                running.run(instance.stop(drain_timeout=timeout))
        finally:
            runner.close()


def _batch(inputs: Sequence[Arrays], **request: Any) -> tuple[Batch, list[InferenceRequest]]:
    requests = [InferenceRequest("conformance", arrays, **request) for arrays in inputs]
    return Batch.from_requests(requests), requests


def _assert_outputs_equal(
    actual: ItemResult, expected: Arrays, what: str, rtol: float, atol: float, ignore: Collection[str] = ()
) -> None:
    assert not isinstance(actual, LadleError), f"{what}: failed with {actual!r}"
    assert sorted(actual) == sorted(expected), f"{what}: output names {sorted(actual)} != {sorted(expected)}"
    for name, want in expected.items():
        if name in ignore:
            continue
        got = actual[name]
        assert got.shape == want.shape, (
            f"{what}: output {name!r} has shape {got.shape}, expected {want.shape}"
        )
        assert got.dtype == want.dtype, (
            f"{what}: output {name!r} has dtype {got.dtype}, expected {want.dtype}"
        )
        if want.dtype.hasobject:
            assert got.tolist() == want.tolist(), f"{what}: output {name!r} differs"
        else:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{what}: output {name!r}")


def _is_client_error(result: ItemResult) -> bool:
    return isinstance(result, LadleError) and 400 <= result.status < 500


def _fits(spec: TensorSpec, shape: tuple[int, ...]) -> bool:
    return len(spec.shape) == len(shape) and all(
        w in (-1, g) for w, g in zip(spec.shape[1:], shape[1:], strict=True)
    )


# ---------------------------------------------------------------------------------------------
# checks


def check_ready(running: RunningInstance) -> None:
    """Started: loading -> warming -> ready, and the runtime measured the memory it holds."""
    assert running.states == [InstanceState.LOADING, InstanceState.WARMING, InstanceState.READY]
    assert running.instance.ready
    info = running.instance.info
    assert info is not None
    assert isinstance(info.memory_bytes, int) and info.memory_bytes > 0, (
        f"memory_bytes after warm-up should be a positive measurement, got {info.memory_bytes!r}"
    )


def check_signature(running: RunningInstance, sample: Arrays) -> None:
    """A signature is stated, ``sample`` fits its inputs, and real outputs fit its outputs."""
    signature = running.instance.signature
    assert signature is not None, "the runtime states no signature (from the artifact or from config)"
    assert isinstance(signature, Signature)
    assert {s.name for s in signature.inputs} == set(sample), (
        f"signature inputs {[s.name for s in signature.inputs]} != sample inputs {sorted(sample)}"
    )
    for spec in signature.inputs:
        array = sample[spec.name]
        assert spec.datatype == datatype_of(array), (
            f"input {spec.name!r}: {spec.datatype} != {datatype_of(array)}"
        )
        assert _fits(spec, array.shape), f"input {spec.name!r}: shape {array.shape} does not fit {spec.shape}"
    rows = next(iter(sample.values())).shape[0]
    outputs = running.outputs(sample)
    assert {s.name for s in signature.outputs} == set(outputs), (
        f"signature outputs {[s.name for s in signature.outputs]} != returned outputs {sorted(outputs)}"
    )
    for spec in signature.outputs:
        array = outputs[spec.name]
        assert spec.datatype == datatype_of(array), (
            f"output {spec.name!r}: {spec.datatype} != {datatype_of(array)}"
        )
        assert array.shape[0] == rows, f"output {spec.name!r} has {array.shape[0]} rows for {rows} input rows"
        assert _fits(spec, array.shape), (
            f"output {spec.name!r}: shape {array.shape} does not fit {spec.shape}"
        )
    assert Signature.from_dict(signature.to_dict()) == Signature(signature.inputs, signature.outputs)


def check_batch_order(running: RunningInstance, samples: Sequence[Arrays], rtol: float, atol: float) -> None:
    """A batch of several items returns one result per item, in order, equal to that item run alone."""
    alone = [running.outputs(sample) for sample in samples]
    first, second = alone[0], alone[1]
    assert any(
        first[name].shape != second[name].shape or not np.allclose(first[name], second[name])
        for name in first
    ), "sample_inputs gives equal outputs for different seeds, so order cannot be checked"
    batch, _ = _batch(samples)
    results = running.execute(batch)
    assert len(results) == len(samples), f"{len(results)} results for a batch of {len(samples)} items"
    for index, (result, expected) in enumerate(zip(results, alone, strict=True)):
        _assert_outputs_equal(result, expected, f"item {index} of a {len(samples)}-item batch", rtol, atol)


def check_bad_item_isolated(
    running: RunningInstance, good: Sequence[Arrays], bad: Arrays, rtol: float, atol: float
) -> None:
    """A refused item fails alone with a 4xx error; the items around it get their own outputs."""
    (alone,) = running.execute(_batch([bad])[0])
    assert _is_client_error(alone), f"a bad input run alone should fail with a 4xx error, got {alone!r}"
    expected = [running.outputs(sample) for sample in good]
    items = [good[0], bad, *good[1:]]
    positions = [0, *range(2, len(items))]
    results = running.execute(_batch(items)[0])
    assert len(results) == len(items), f"{len(results)} results for a batch of {len(items)} items"
    assert _is_client_error(results[1]), f"the bad item should fail with a 4xx error, got {results[1]!r}"
    for position, want in zip(positions, expected, strict=True):
        _assert_outputs_equal(results[position], want, f"good item {position} beside a bad one", rtol, atol)
    _assert_outputs_equal(running.outputs(good[0]), expected[0], "a good item after a bad one", rtol, atol)


def check_wrong_shape_refused(running: RunningInstance, sample: Arrays) -> None:
    """An input with one column too many is a client error (4xx), and the instance keeps serving."""
    name = next((n for n, a in sample.items() if a.ndim >= 2), None)
    if name is None:
        pytest.skip("every sample input is one-dimensional; no trailing dimension to get wrong")
    array = sample[name]
    wrong = dict(sample)
    wrong[name] = np.concatenate([array, array[..., -1:]], axis=-1)
    (result,) = running.execute(_batch([wrong])[0])
    assert _is_client_error(result), (
        f"input {name!r} of shape {wrong[name].shape} should be a 4xx, got {result!r}"
    )
    running.outputs(sample)


def check_expired_not_run(running: RunningInstance, sample: Arrays) -> None:
    """A batch whose items' deadlines have all passed is answered 504 without running."""
    batch, _ = _batch([sample, sample], deadline=time.monotonic() - 1.0)
    results = running.execute(batch)
    assert all(isinstance(r, DeadlineExceededError) for r in results), (
        f"expired items should fail with DeadlineExceededError without running, got {results!r}"
    )


def check_cancelled_not_run(running: RunningInstance, sample: Arrays) -> None:
    """A batch whose requests were all cancelled is answered 499 without running."""
    requests = [InferenceRequest("conformance", sample) for _ in range(2)]
    for request in requests:
        request.cancel.cancel("client disconnected")
    results = running.execute(Batch.from_requests(requests))
    assert all(isinstance(r, RequestCancelledError) for r in results), (
        f"cancelled items should fail with RequestCancelledError without running, got {results!r}"
    )


def check_live_items_beside_expired(
    running: RunningInstance,
    samples: Sequence[Arrays],
    rtol: float,
    atol: float,
    ignore: Collection[str] = (),
) -> None:
    """Items still in time get their own outputs when an expired item shares their batch.

    ``ignore`` names outputs that may legitimately depend on a request's deadline.
    """
    expected = [running.outputs(sample) for sample in samples]
    now = time.monotonic()
    requests = [
        InferenceRequest("conformance", sample, deadline=now - 1.0 if index == 1 else now + 600.0)
        for index, sample in enumerate(samples)
    ]
    results = running.execute(Batch.from_requests(requests))
    assert len(results) == len(samples)
    for index, (result, want) in enumerate(zip(results, expected, strict=True)):
        if index == 1 and isinstance(result, LadleError):
            assert isinstance(result, DeadlineExceededError), f"the expired item failed with {result!r}"
            continue
        _assert_outputs_equal(result, want, f"item {index} beside an expired item", rtol, atol, ignore)


def check_stop_drains(
    spec: RuntimeSpec, kind: str, host: PluginHost, sample: Arrays, timeout: float = 120.0
) -> None:
    """Stopping waits for the batch in flight (draining), then stops; a stopped instance takes no work."""

    async def scenario(instance: Instance) -> ItemResult:
        task = asyncio.ensure_future(instance.execute(_batch([sample])[0]))
        await asyncio.sleep(0)  # let the batch start and count itself in flight
        assert instance.in_flight == 1
        await instance.stop(drain_timeout=timeout)
        (result,) = await task
        return result

    with running_instance(spec, kind, host, timeout) as running:
        result = running.run(scenario(running.instance))
        assert not isinstance(result, LadleError), f"the batch in flight during stop failed: {result!r}"
        assert running.states == [
            InstanceState.LOADING,
            InstanceState.WARMING,
            InstanceState.READY,
            InstanceState.DRAINING,
            InstanceState.STOPPED,
        ]
        with pytest.raises(ModelNotReadyError):
            running.execute(_batch([sample])[0])


def break_artifact(spec: RuntimeSpec, directory: Path) -> RuntimeSpec:
    """A copy of ``spec`` whose artifact (copied into ``directory``) has every file overwritten with junk."""
    source = spec.path
    if source.is_dir():
        target = directory / source.name
        shutil.copytree(source, target)
        files = [p for p in target.rglob("*") if p.is_file()]
    else:
        target = directory / source.name
        shutil.copy2(source, target)
        files = [target]
    for path in files:
        path.write_bytes(b"\x00this is not a model\xff" * 8)
    return dataclasses.replace(spec, artifact=str(target))


def check_broken_artifact_fails(
    spec: RuntimeSpec, kind: str, host: PluginHost, timeout: float = 120.0
) -> None:
    """Loading a broken artifact raises, leaves the instance ``failed`` with its error, and serves nothing."""
    runner = asyncio.Runner()
    instance, states = _new_instance(spec, kind, host)
    try:
        with pytest.raises(Exception):  # noqa: B017 - any error will do; the state is what is checked
            runner.run(asyncio.wait_for(instance.start(), timeout))
        assert states[0] is InstanceState.LOADING and states[-1] is InstanceState.FAILED, states
        assert instance.state is InstanceState.FAILED and instance.error
        with pytest.raises(ModelNotReadyError):
            runner.run(asyncio.wait_for(instance.execute(Batch({}, [])), timeout))
    finally:
        runner.close()


# ---------------------------------------------------------------------------------------------
# the class a plugin author subclasses


class RuntimeConformance:
    """Base class of a runtime's conformance tests; see the module docstring.

    Override ``make_spec`` and ``sample_inputs``; optionally ``bad_inputs``, ``plugin_host``
    (to add plugin modules that are not installed), and the class attributes below.
    """

    #: Executors to check; a runtime that cannot live in a worker process may drop ``"process"``.
    executors: ClassVar[tuple[str, ...]] = EXECUTORS
    #: Tolerances for "a batch's outputs equal each item's outputs alone" (kernels may differ by batch size).
    rtol: ClassVar[float] = 1e-5
    atol: ClassVar[float] = 1e-6
    #: Rows of the items of the multi-item batch.
    item_rows: ClassVar[tuple[int, ...]] = (2, 1, 3)
    #: Longest wait for any one step (load, batch, stop) before the check fails.
    timeout: ClassVar[float] = 120.0
    #: Outputs that depend on a request's deadline, so are not compared beside an expired item.
    deadline_outputs: ClassVar[frozenset[str]] = frozenset()

    def make_spec(self, directory: Path) -> RuntimeSpec:
        """Write the model into ``directory`` (empty) and return a spec that serves it."""
        raise NotImplementedError

    def sample_inputs(self, rows: int, seed: int) -> Arrays:
        """Valid inputs of ``rows`` rows; different seeds must give different outputs."""
        raise NotImplementedError

    def bad_inputs(self, rows: int) -> Arrays | None:
        """Inputs with the sample's names, dtypes and shapes whose values the runtime refuses with a
        4xx error, or ``None`` when the runtime never refuses values (the isolation check is skipped)."""
        return None

    def plugin_host(self) -> PluginHost:
        """The plugin host the instances are built with (default: every installed plugin)."""
        return PluginHost().discover()

    # fixtures ----------------------------------------------------------------------------------

    # Class-scoped fixtures are class methods: pytest runs them once per class, not per instance.

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_spec(cls, tmp_path_factory: pytest.TempPathFactory) -> RuntimeSpec:
        return cls().make_spec(tmp_path_factory.mktemp("conformance-model"))

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_host(cls) -> PluginHost:
        return cls().plugin_host()

    @pytest.fixture(scope="class", params=EXECUTORS)
    @classmethod
    def executor_kind(cls, request: pytest.FixtureRequest) -> str:
        kind: str = request.param
        if kind not in cls.executors:
            pytest.skip(f"{cls.__name__} does not run on the {kind} executor")
        return kind

    @pytest.fixture(scope="class")
    @classmethod
    def running(
        cls, conformance_spec: RuntimeSpec, executor_kind: str, conformance_host: PluginHost
    ) -> Iterator[RunningInstance]:
        with running_instance(conformance_spec, executor_kind, conformance_host, cls.timeout) as running:
            yield running

    def _samples(self) -> list[Arrays]:
        return [self.sample_inputs(rows, seed) for seed, rows in enumerate(self.item_rows, start=1)]

    # checks ------------------------------------------------------------------------------------

    def test_ready_after_start(self, running: RunningInstance) -> None:
        check_ready(running)

    def test_signature_matches_outputs(self, running: RunningInstance) -> None:
        check_signature(running, self.sample_inputs(2, 0))

    def test_batch_keeps_order_and_length(self, running: RunningInstance) -> None:
        check_batch_order(running, self._samples(), self.rtol, self.atol)

    def test_bad_item_fails_alone(self, running: RunningInstance) -> None:
        bad = self.bad_inputs(1)
        if bad is None:
            pytest.skip("bad_inputs() is None: the runtime declares no input values it refuses")
        check_bad_item_isolated(running, self._samples()[:2], bad, self.rtol, self.atol)

    def test_wrong_shape_is_client_error(self, running: RunningInstance) -> None:
        check_wrong_shape_refused(running, self.sample_inputs(1, 0))

    def test_expired_batch_is_not_run(self, running: RunningInstance) -> None:
        check_expired_not_run(running, self.sample_inputs(1, 0))

    def test_cancelled_batch_is_not_run(self, running: RunningInstance) -> None:
        check_cancelled_not_run(running, self.sample_inputs(1, 0))

    def test_live_items_beside_expired(self, running: RunningInstance) -> None:
        check_live_items_beside_expired(running, self._samples(), self.rtol, self.atol, self.deadline_outputs)

    def test_stop_drains_in_flight_batch(
        self, conformance_spec: RuntimeSpec, executor_kind: str, conformance_host: PluginHost
    ) -> None:
        check_stop_drains(
            conformance_spec, executor_kind, conformance_host, self.sample_inputs(3, 0), self.timeout
        )

    def test_broken_artifact_fails(
        self,
        conformance_spec: RuntimeSpec,
        executor_kind: str,
        conformance_host: PluginHost,
        tmp_path: Path,
    ) -> None:
        broken = break_artifact(conformance_spec, tmp_path)
        check_broken_artifact_fails(broken, executor_kind, conformance_host, self.timeout)

    def test_spec_is_plain_data(self, conformance_spec: RuntimeSpec) -> None:
        """The spec survives JSON (how it reaches a worker process, a Ray actor or a pod)."""
        data = json.loads(json.dumps(conformance_spec.to_dict()))
        assert RuntimeSpec.from_dict(data) == conformance_spec


# ---------------------------------------------------------------------------------------------
# the probe runtime


class ProbeRuntime(Runtime):
    """Right by construction: ``y = x * factor`` for ``x`` FP32 ``[-1, 4]``, plus ``deadline``, each
    row's item deadline as the runtime saw it (NaN for none). Negative values are refused.

    ``probe.json`` in the artifact directory holds ``{"factor": 2.0}``. Option ``fault`` makes it
    misbehave so the kit can be shown to catch it: ``"reverse"`` (items come back in reverse
    order) or ``"server_error"`` (bad values raise a plain exception, a 500).
    """

    name = "conformance-probe"

    def load(self) -> None:
        self.factor = float(json.loads((self.spec.path / "probe.json").read_text())["factor"])
        self.fault = self.spec.options.get("fault")
        if self.fault not in (None, "reverse", "server_error"):
            raise ConfigError(f"unknown probe fault {self.fault!r}")

    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("x", "FP32", (-1, 4)),),
            outputs=(TensorSpec("y", "FP32", (-1, 4)), TensorSpec("deadline", "FP64", (-1,))),
        )

    def predict(self, batch: Batch) -> Arrays:
        x = batch.inputs["x"]
        if x.ndim != 2 or x.shape[1] != 4:
            raise InvalidInputError(f"x must be [-1, 4], got {list(x.shape)}", input="x")
        if (x < 0).any():
            if self.fault == "server_error":
                raise RuntimeError("negative input")
            raise InvalidInputError("x must not be negative", input="x")
        deadlines = np.concatenate(
            [np.full(item.rows, math.nan if item.deadline is None else item.deadline) for item in batch.items]
        )
        outputs = {"y": (x * self.factor).astype(np.float32), "deadline": deadlines}
        if self.fault == "reverse" and len(batch.items) > 1:
            bounds = np.cumsum([0, *(item.rows for item in batch.items)])
            order = [np.arange(bounds[i], bounds[i + 1]) for i in reversed(range(len(batch.items)))]
            index = np.concatenate(order)
            outputs = {name: value[index] for name, value in outputs.items()}
        return outputs

    def memory_bytes(self) -> int:
        return 8


def write_probe(directory: Path, factor: float = 2.0) -> Path:
    """Write the probe's artifact into ``directory`` and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "probe.json").write_text(json.dumps({"factor": factor}))
    return directory


@hookimpl
def register_runtimes(register: Register) -> None:
    register("conformance-probe", ProbeRuntime, description="the conformance kit's probe runtime")


def probe_inputs(rows: int, seed: int) -> Arrays:
    """Valid probe inputs: non-negative ``x`` of ``rows`` rows."""
    return {"x": np.random.default_rng(seed).random((rows, 4), dtype=np.float32)}
