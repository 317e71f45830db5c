"""The mps placement (ladle.plugins.scalers.mps): packing real worker processes, the environment each
starts with, re-planning on measured memory, the private MPS control daemon (against a stand-in
``nvidia-cuda-mps-control`` on PATH that records what it is asked) and the fallback without MPS.

Tests marked ``gpu`` run only where a CUDA device is present (with torch); the rest run on CPU.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ladle import (
    Arrays,
    Batch,
    ConfigError,
    InstanceState,
    LadleError,
    ModelConfig,
    PluginHost,
    Runtime,
    RuntimeSpec,
    hookimpl,
)
from ladle.gpus import GiB, MiB
from ladle.plugins.scalers.mps.daemon import PID_FILE, MpsDaemon
from ladle.plugins.scalers.mps.placement import MpsPlacement, PackedWorker

CONTROL = "nvidia-cuda-mps-control"
ENV_KEYS = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_LOG_DIRECTORY",
)


class EnvRuntime(Runtime):
    """Answers with the environment its worker process started with (read at load, before anything
    else in the process could touch a GPU) and the device its spec names; options ``reports`` (bytes
    it claims to hold) and ``fail`` (an error message to raise from ``predict``)."""

    name = "env"

    def load(self) -> None:
        self.seen = {key: os.environ.get(key) for key in ENV_KEYS}
        self.seen["device"] = self.spec.device

    def predict(self, batch: Batch) -> Arrays:
        if self.spec.options.get("fail"):
            raise RuntimeError(self.spec.options["fail"])
        return {"env": np.array([json.dumps(self.seen)] * batch.rows, dtype=object)}

    def memory_bytes(self) -> int | None:
        reported = self.spec.options.get("reports")
        return int(reported) if reported is not None else None


@hookimpl
def register_runtimes(register: Any) -> None:
    register("env", EnvRuntime)
    register("alloc", AllocRuntime)


def make_host() -> PluginHost:
    host = PluginHost()
    host.add_module(__name__)  # importable by name, so worker processes rebuild the runtime too
    host.add_module("ladle.plugins.scalers.mps")
    return host.collect()


def spec(model: str, **options: Any) -> RuntimeSpec:
    return RuntimeSpec("env", ".", model=model, version="1", device="cuda", options=options)


def config(
    memory: int | str | None, *, share: float | None = None, instances: int = 1, **fields: Any
) -> ModelConfig:
    """A model's config as the server resolves it: on a GPU, placement ``mps``, its ``resources``."""
    resources = {k: v for k, v in (("gpu_memory", memory), ("gpu_share", share)) if v is not None}
    return ModelConfig.model_validate(
        {"device": "cuda", "placement": "mps", "instances": instances, "resources": resources, **fields}
    )


async def worker_env(
    placement: MpsPlacement,
    model: str,
    index: int = 0,
    model_config: ModelConfig | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Start one instance through the placement, ask it once, stop it; what its worker saw."""
    instance = placement.create(spec(model, **options), index, model_config)
    try:
        await instance.start()
        (result,) = await instance.execute(Batch.of({"x": np.zeros((1, 1))}))
        assert isinstance(result, dict)
        seen: dict[str, Any] = json.loads(result["env"][0])
        return seen
    finally:
        await instance.stop(5)


STAND_IN = """\
#!{python}
'''Stand-in for nvidia-cuda-mps-control: records argv, stdin and its directories; -d leaves a
sleeping "daemon" whose pid it writes where the real one does; answers queries like the real one.'''
import json, os, subprocess, sys
pipe = os.environ["CUDA_MPS_PIPE_DIRECTORY"]
pid_file = os.path.join(pipe, "{pid_file}")
stdin = "" if sys.argv[1:] else sys.stdin.read()
with open(os.environ["MPS_STAND_IN_RECORD"], "a") as record:
    record.write(json.dumps({{"argv": sys.argv[1:], "stdin": stdin, "pipe": pipe,
                              "log": os.environ["CUDA_MPS_LOG_DIRECTORY"]}}) + "\\n")
if sys.argv[1:] == ["-d"]:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                               start_new_session=True, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(pid_file, "w") as f:
        f.write(str(sleeper.pid))
    sys.exit(0)
try:
    pid = int(open(pid_file).read())
    os.kill(pid, 0)
except (OSError, ValueError):
    sys.exit(1)  # like the real one: no daemon to talk to
for line in stdin.splitlines():
    words = line.split()
    if words == ["quit"]:
        os.kill(pid, 9)
    elif words == ["get_server_list"]:
        print(4242)
    elif words[:1] == ["get_server_status"]:
        print("FAULT" if os.path.exists(os.path.join(pipe, "fault")) else "ACTIVE")
"""


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an exited daemon nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class StandIn:
    """The stand-in control program on PATH and what it recorded."""

    def __init__(self, directory: Path) -> None:
        self.record = directory / "record.jsonl"
        self.program = directory / "bin" / CONTROL
        self.program.parent.mkdir()
        self.program.write_text(STAND_IN.format(python=sys.executable, pid_file=PID_FILE))
        self.program.chmod(0o755)

    def calls(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def commands(self) -> list[str]:
        """``-d`` for a start, else the stdin command."""
        return [" ".join(c["argv"]) if c["argv"] else c["stdin"].strip() for c in self.calls()]


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    program = StandIn(tmp_path)
    monkeypatch.setenv("PATH", f"{program.program.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("MPS_STAND_IN_RECORD", str(program.record))
    yield program


@pytest.fixture
def no_mps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # worker processes start from sys.executable, not PATH


@pytest.fixture
def placements() -> Iterator[list[MpsPlacement]]:
    """Placements made by a test; closed after it (their daemons stopped) whatever happens."""
    made: list[MpsPlacement] = []
    yield made
    for placement in made:
        asyncio.run(placement.close())


def placement(made: list[MpsPlacement], **options: Any) -> MpsPlacement:
    result = MpsPlacement(options, make_host())
    made.append(result)
    return result


# options and registration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"headroom": -0.1}, "headroom"),
        ({"headroom": 2}, "headroom"),
        ({"gpus": "4xx"}, "gpus"),
        ({"mps": "maybe"}, "mps"),
        ({"packing": "best-fit"}, "packing: unknown key"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match="'mps'") as caught:
        MpsPlacement(options, make_host())
    assert named in caught.value.message


def test_the_placement_is_registered_as_mps() -> None:
    assert make_host().load("placement", "mps") is MpsPlacement


def test_a_version_is_declared_by_its_config_and_refused_when_it_cannot_be_placed(
    placements: list[MpsPlacement],
) -> None:
    packer = placement(placements, gpus="1x80GiB")
    with pytest.raises(ConfigError, match=r"resources\.gpu_memory"):
        packer.create(spec("nobody"), 0)  # no config and never declared
    with pytest.raises(ConfigError, match=r"cannot be placed on a GPU: needs 99\.0 GiB"):
        packer.create(spec("big"), 0, config("90GiB"))
    with pytest.raises(ConfigError, match="no gpu_memory declared and nothing measured"):
        packer.create(spec("vague"), 0, config(None))
    with pytest.raises(ConfigError, match="packs GPU models; its device is 'cpu'"):
        packer.create(spec("cpu"), 0, config("1GiB", device="cpu"))
    with pytest.raises(ConfigError, match="placement 'mps' of model 'own'"):
        packer.create(spec("own"), 0, config("1GiB", placement={"name": "mps", "headroom": 0.5}))
    assert packer.current().assignments == () and packer.describe()["gpus"][0]["models"] == []


# workers, environments and the daemon -----------------------------------------------------------


def test_instances_run_in_worker_processes_packed_with_their_mps_environment(
    stand_in: StandIn, placements: list[MpsPlacement]
) -> None:
    packer = placement(placements, gpus="2x16GiB")
    a_config, b_config = config("10GiB", share=0.5), config("10GiB", share=0.25)  # 2 x 11 GiB > 16 GiB

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        return await worker_env(packer, "a", 0, a_config), await worker_env(packer, "b", 0, b_config)

    a, b = asyncio.run(scenario())
    (start,) = [c for c in stand_in.calls() if c["argv"] == ["-d"]]
    pipe, log_dir = start["pipe"], start["log"]
    assert Path(pipe).name == "pipe" and Path(pipe).parent.name.startswith("ladle-mps-")
    assert a == {
        "CUDA_VISIBLE_DEVICES": "0",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=11264M",
        "CUDA_MPS_PIPE_DIRECTORY": pipe,
        "CUDA_MPS_LOG_DIRECTORY": log_dir,
        "device": "cuda:0",
    }
    # a's instance stopped before b's was created, so b went first-fit onto GPU 0 too
    assert b["CUDA_VISIBLE_DEVICES"] == "0" and b["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert b["device"] == "cuda:0"  # the worker sees its one GPU as device 0
    daemon_pid = int((Path(pipe) / PID_FILE).read_text())
    asyncio.run(packer.close())
    assert stand_in.commands() == ["-d", "quit"]  # one daemon, stopped; nothing else asked of it
    assert not Path(pipe).parent.exists()
    assert not running(daemon_pid)


def test_prepared_versions_are_packed_together_and_the_plan_is_described(
    stand_in: StandIn, placements: list[MpsPlacement]
) -> None:
    packer = placement(placements, gpus="2x16GiB")
    a_config, b_config = config("10GiB", share=0.5), config("3GiB", share=0.25, instances=2)
    packer.prepare([("a", "1", a_config), ("b", "1", b_config)])

    async def scenario() -> list[dict[str, Any]]:
        instances = [packer.create(spec("a"), 0, a_config)] + [
            packer.create(spec("b"), i, b_config) for i in (0, 1)
        ]
        try:
            await asyncio.gather(*(i.start() for i in instances))
            results = [(await i.execute(Batch.of({"x": np.zeros((1, 1))})))[0] for i in instances]
            assert all(isinstance(r, dict) for r in results)
            return [json.loads(r["env"][0]) for r in results if isinstance(r, dict)]
        finally:
            await asyncio.gather(*(i.stop(5) for i in instances))

    described = packer.describe()  # before anything started: the plan, with the MPS settings
    assert [[m["model"] for m in g["models"]] for g in described["gpus"]] == [["a", "b"], ["b"]]
    assert described["mps"] == {"active": False, "state": "not started", "pipe_directory": None}
    seen = asyncio.run(scenario())
    assert [s["CUDA_VISIBLE_DEVICES"] for s in seen] == ["0", "0", "1"]
    assert [s["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] for s in seen] == ["50", "25", "25"]
    assert [s["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] for s in seen] == ["0=11264M", "0=3380M", "0=3380M"]
    assert packer.current().assignments == ()  # stopped instances gave their room back


def test_the_daemon_command_lines_and_private_directories(stand_in: StandIn) -> None:
    daemon = MpsDaemon(str(stand_in.program), timeout=5)
    daemon.start()
    try:
        assert daemon.alive()
        assert daemon.server_pids() == [4242]
        assert daemon.faulted_servers() == []
        env = daemon.client_environment()
        assert env == {
            "CUDA_MPS_PIPE_DIRECTORY": str(daemon.pipe_directory),
            "CUDA_MPS_LOG_DIRECTORY": str(daemon.log_directory),
        }
        assert daemon.pipe_directory != Path("/tmp/nvidia-mps")  # never the system daemon's
    finally:
        daemon.stop()
    calls = stand_in.calls()
    assert [c["argv"] for c in calls] == [["-d"], [], [], [], []]
    assert [c["stdin"] for c in calls[1:]] == [
        "get_server_list\n",
        "get_server_list\n",
        "get_server_status 4242\n",
        "quit\n",
    ]
    assert {c["pipe"] for c in calls} == {env["CUDA_MPS_PIPE_DIRECTORY"]}
    assert not daemon.alive() and daemon.root is None


def test_a_server_fault_or_a_dead_daemon_restarts_every_worker(
    stand_in: StandIn, placements: list[MpsPlacement]
) -> None:
    packer = placement(placements, gpus="2x16GiB")
    a_config, b_config = config("10GiB", instances=2), config("2GiB")
    packer.prepare([("a", "1", a_config), ("b", "1", b_config)])
    for model, index, model_config in (("a", 0, a_config), ("a", 1, a_config), ("b", 0, b_config)):
        packer.create(spec(model), index, model_config)  # created, not started
    everyone = [("a", "1", 0), ("a", "1", 1), ("b", "1", 0)]
    assert packer.health() == []
    assert packer.affected("a", "1", 0) == [("a", "1", 0), ("b", "1", 0)]  # the same GPU
    daemon = packer._daemon
    assert daemon is not None
    (daemon.pipe_directory / "fault").touch()
    assert packer.health() == everyone
    (daemon.pipe_directory / "fault").unlink()
    dead = int((daemon.pipe_directory / PID_FILE).read_text())
    os.kill(dead, signal.SIGKILL)
    while running(dead):
        time.sleep(0.01)
    assert packer.health() == everyone  # and the daemon was started again
    assert daemon.alive() and packer.health() == []
    assert stand_in.commands().count("-d") == 2


def test_without_mps_one_warning_and_time_slicing_with_the_plan_unchanged(
    no_mps: None, placements: list[MpsPlacement], caplog: pytest.LogCaptureFixture
) -> None:
    packer = placement(placements, gpus="2x16GiB")
    a_config = config("10GiB", share=0.5, instances=2)
    packer.prepare([("a", "1", a_config)])
    before = packer.current()
    caplog.set_level(logging.WARNING, logger="ladle.plugins.scalers.mps.placement")

    async def scenario() -> list[dict[str, Any]]:
        instances = [packer.create(spec("a"), i, a_config) for i in (0, 1)]
        plan = packer.current()
        try:
            await asyncio.gather(*(i.start() for i in instances))
            results = [(await i.execute(Batch.of({"x": np.zeros((1, 1))})))[0] for i in instances]
            assert plan == before
            return [json.loads(r["env"][0]) for r in results if isinstance(r, dict)]
        finally:
            await asyncio.gather(*(i.stop(5) for i in instances))

    seen = asyncio.run(scenario())
    warnings = [r for r in caplog.records if "MPS is not available" in r.getMessage()]
    assert len(warnings) == 1
    assert f"{CONTROL} is not on PATH" in warnings[0].getMessage()
    assert "time-slicing" in warnings[0].getMessage()
    assert [s["CUDA_VISIBLE_DEVICES"] for s in seen] == ["0", "1"]
    assert all(s[key] is None for s in seen for key in ENV_KEYS if key.startswith("CUDA_MPS_"))
    served = packer.describe()
    assert served["mps"]["active"] is False and "not on PATH" in served["mps"]["state"]


def test_mps_off_by_option_starts_no_daemon_and_warns_nothing(
    stand_in: StandIn, placements: list[MpsPlacement], caplog: pytest.LogCaptureFixture
) -> None:
    packer = placement(placements, gpus="1x16GiB", mps=False)
    packer.create(spec("a"), 0, config("1GiB"))
    assert stand_in.calls() == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# measured memory and re-planning ----------------------------------------------------------------


def test_a_measured_figure_replaces_the_declared_one_and_moves_what_must_move(
    stand_in: StandIn, placements: list[MpsPlacement]
) -> None:
    packer = placement(placements, gpus="2x16GiB")
    a_config, b_config = config("6GiB"), config("6GiB")  # 2 x 6.6 GiB on GPU 0
    packer.prepare([("a", "1", a_config), ("b", "1", b_config)])

    async def scenario() -> dict[str, Any]:
        b = packer.create(spec("b", reports=GiB), 0, b_config)  # reports less than declared: no change
        a = packer.create(spec("a", reports=9 * GiB), 0, a_config)  # 9.9 + 6.6 GiB overflow 16 GiB
        try:
            await b.start()
            assert packer.take_moves() == []
            await a.start()
            return {"a": a.describe(), "b": b.describe(), "plan": packer.describe()}
        finally:
            await asyncio.gather(a.stop(5), b.stop(5))

    seen = asyncio.run(scenario())
    assert seen["a"]["memory_bytes"] == 9 * GiB
    assert seen["a"]["runtime"]["memory_source"] == "runtime"
    assert seen["a"]["runtime"]["gpu"] == "cuda:0"
    assert seen["b"]["memory_bytes"] == 6 * GiB  # a runtime's figure never lowers a declaration
    assert seen["b"]["runtime"]["memory_source"] == "declared"
    (move,) = packer.take_moves()
    assert (move.key, move.source, move.target) == (("b", "1", 0), "cuda:0", "cuda:1")
    assert packer.take_moves() == []
    a_entry, b_entry = seen["plan"]["gpus"][0]["models"][0], seen["plan"]["gpus"][1]["models"][0]
    assert (a_entry["model"], a_entry["source"], a_entry["memory_bytes"]) == ("a", "measured", 9 * GiB)
    assert a_entry["env"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={-(-9 * 1024 * 11 // 10)}M"
    assert b_entry["model"] == "b"
    # the version keeps its measured figure for instances created later
    later = packer.create(spec("a"), 0)
    assert isinstance(later.executor, PackedWorker)
    assert later.executor.assignment.demand.memory_bytes == 9 * GiB


def test_instances_added_by_the_scaler_are_packed_into_free_room_and_stopping_frees_it(
    stand_in: StandIn, placements: list[MpsPlacement]
) -> None:
    packer = placement(placements, gpus="2x16GiB")
    a_config, b_config = config("6GiB"), config("12GiB")
    packer.prepare([("a", "1", a_config), ("b", "1", b_config)])
    extra = packer.create(spec("a"), 1, a_config)  # a second instance nobody declared: the scaler's
    assert isinstance(extra.executor, PackedWorker)
    assert extra.executor.env["CUDA_VISIBLE_DEVICES"] == "1"  # beside a/0: b, packed first, fills GPU 0
    with pytest.raises(ConfigError, match=r"instance 2 cannot be placed on a GPU: needs 6\.6 GiB"):
        packer.create(spec("a"), 2, a_config)  # 13.2 + 6.6 GiB overflow either GPU
    assert packer.current().unplaced == ()  # a refused addition leaves no trace
    first = packer.create(spec("a"), 0, a_config)
    replacement = packer.create(spec("a"), 0, a_config)  # the same instance, recreated elsewhere

    async def scenario() -> None:
        await first.stop(1)  # the replaced worker goes: the replacement keeps the room
        assert packer.current().assignment(("a", "1", 0)) is not None
        await replacement.stop(1)
        await extra.stop(1)

    asyncio.run(scenario())
    assert [a.demand.label for a in packer.current().assignments] == ["b/1#0"]


def test_an_out_of_memory_error_names_the_instance_limit(
    stand_in: StandIn, placements: list[MpsPlacement]
) -> None:
    packer = placement(placements, gpus="1x16GiB")
    oom = "CUDA out of memory. Tried to allocate 4.00 GiB"

    async def scenario() -> tuple[Any, Any]:
        a = packer.create(spec("a", fail=oom), 0, config("2GiB"))
        b = packer.create(spec("b"), 0, config("2GiB"))
        try:
            await asyncio.gather(a.start(), b.start())
            (failed,) = await a.execute(Batch.of({"x": np.zeros((1, 1))}))
            (served,) = await b.execute(Batch.of({"x": np.zeros((1, 1))}))
            assert a.state is InstanceState.READY and b.state is InstanceState.READY
            return failed, served
        finally:
            await asyncio.gather(a.stop(5), b.stop(5))

    failed, served = asyncio.run(scenario())
    assert isinstance(failed, LadleError)
    assert oom in failed.message
    assert "MPS limit: a/1 instance 0 may hold 2.2 GiB on cuda:0" in failed.message
    assert isinstance(served, dict)  # the other instance on the same GPU keeps serving


# on a GPU ---------------------------------------------------------------------------------------


class AllocRuntime(Runtime):
    """Holds ``mib`` MiB on its CUDA device; ``predict`` allocates ``grow`` MiB more per call."""

    name = "alloc"

    def load(self) -> None:
        import torch

        self.torch = torch
        self.held = torch.empty(
            int(self.spec.options["mib"]) * MiB, dtype=torch.uint8, device=self.spec.device
        )

    def predict(self, batch: Batch) -> Arrays:
        extra = self.torch.empty(
            int(self.spec.options.get("grow", 0)) * MiB, dtype=self.torch.uint8, device="cuda"
        )
        return {"held": np.full(batch.rows, self.held.numel() + extra.numel(), dtype=np.int64)}


def cuda_present() -> bool:
    return os.path.exists("/dev/nvidia0")


gpu = pytest.mark.skipif(not cuda_present(), reason="no CUDA device on this machine")


def alloc_spec(model: str, **options: Any) -> RuntimeSpec:
    return RuntimeSpec("alloc", ".", model=model, version="1", device="cuda", options=options)


@pytest.mark.gpu
@gpu
def test_gpu_measured_memory_comes_from_nvml_for_the_worker_process(placements: list[MpsPlacement]) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("pynvml")
    packer = placement(placements, mps=False)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        instance = packer.create(alloc_spec("held", mib=1024), 0, config("4GiB"))
        try:
            await instance.start()
            return instance.describe(), packer.describe()
        finally:
            await instance.stop(10)

    described, plan = asyncio.run(scenario())
    assert described["runtime"]["memory_source"] == "nvml"
    assert described["memory_bytes"] >= 1024 * MiB  # the tensor, plus the CUDA context
    assert plan["gpus"][0]["models"][0]["source"] == "measured"


@pytest.mark.gpu
@gpu
def test_gpu_an_instance_over_its_mps_limit_fails_alone(placements: list[MpsPlacement]) -> None:
    pytest.importorskip("torch")
    if not any((Path(d) / CONTROL).exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip(f"{CONTROL} is not installed")
    packer = placement(placements)

    async def scenario() -> tuple[Any, Any]:
        greedy = packer.create(alloc_spec("greedy", mib=256, grow=4096), 0, config("1GiB"))
        modest = packer.create(alloc_spec("modest", mib=256), 0, config("1GiB"))
        try:
            await asyncio.gather(greedy.start(), modest.start())
            (failed,) = await greedy.execute(Batch.of({"x": np.zeros((1, 1))}))
            (served,) = await modest.execute(Batch.of({"x": np.zeros((1, 1))}))
            return failed, served
        finally:
            await asyncio.gather(greedy.stop(10), modest.stop(10))

    failed, served = asyncio.run(scenario())
    assert isinstance(failed, LadleError) and "MPS limit" in failed.message and "1.1 GiB" in failed.message
    assert isinstance(served, dict) and int(served["held"][0]) == 256 * MiB
