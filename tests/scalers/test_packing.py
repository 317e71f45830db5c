"""GPU packing (ladle.packing, ladle.gpus): memory strings, GPU specs, first-fit-decreasing, re-planning, MPS
environments, the ``resources`` table of model config, and NVML reading."""

from __future__ import annotations

import math
import random
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from ladle import ConfigError, PluginHost
from ladle.config import ServerConfig, merge_model_config
from ladle.gpus import (
    GiB,
    Gpu,
    MiB,
    machine_gpus,
    memory_bytes,
    nvml_process_memory,
    parse_gpus,
    parse_memory,
)
from ladle.packing import (
    NO_MEMORY,
    Demand,
    Plan,
    demands_from_plans,
    mps_environment,
    pack,
    replan,
    with_figure,
)
from ladle.repository import ModelRepository
from ladle.server import load_config

GB = 10**9


def demand(model: str, memory: int | None, *, share: float | None = None, instance: int = 0) -> Demand:
    return Demand(model, "1", instance, memory, share)


def devices(plan: Plan) -> dict[str, str]:
    """model/version#instance -> device."""
    return {a.demand.label: a.gpu.device for a in plan.assignments}


def assert_within_capacity(plan: Plan) -> None:
    for gpu in plan.gpus:
        assert plan.used_bytes(gpu) <= gpu.memory_bytes, gpu
        assert plan.claimed_percentage(gpu) <= 100, gpu
    for assignment in plan.assignments:
        memory = assignment.demand.memory_bytes
        assert memory is not None
        assert assignment.limit_bytes >= memory * (1 + plan.headroom)
        assert assignment.limit_bytes % MiB == 0


# memory strings and GPU specs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GiB", 20 * GiB),
        ("500MB", 500 * 10**6),
        ("80GB", 80 * GB),
        ("8Gi", 8 * GiB),
        ("1.5GiB", 3 * GiB // 2),
        ("512 mib", 512 * MiB),
        ("1024", 1024),
        (4096, 4096),
    ],
)
def test_memory_strings_give_bytes(text: Any, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["20 GiBs", "twenty", "", "-5GB", "0", 0, 2.5, True, "20Gb/s", "1e9"])
def test_bad_memory_strings_are_refused_naming_the_key(text: Any) -> None:
    with pytest.raises(ConfigError, match=r"resources\.gpu_memory") as caught:
        parse_memory(text, "resources.gpu_memory")
    assert caught.value.details["key"] == "resources.gpu_memory"
    with pytest.raises(ValueError):
        memory_bytes(text)


def test_gpu_specs_give_indexed_gpus() -> None:
    assert parse_gpus("4x80GiB") == tuple(Gpu(i, 80 * GiB) for i in range(4))
    assert parse_gpus("80GiB,40GiB") == (Gpu(0, 80 * GiB), Gpu(1, 40 * GiB))
    assert parse_gpus("2x80GiB, 40GB") == (Gpu(0, 80 * GiB), Gpu(1, 80 * GiB), Gpu(2, 40 * GB))


@pytest.mark.parametrize("spec", ["", "4x", "0x80GiB", "4xx", "80GiB,", "four x 80GiB"])
def test_bad_gpu_specs_are_refused_naming_the_option(spec: str) -> None:
    with pytest.raises(ConfigError, match="--gpus"):
        parse_gpus(spec)


# first-fit-decreasing ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [3, 11, 2026])
def test_the_practice_problem_thirty_models_from_500MB_to_40GB_on_80GB_gpus(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.randint(500 * 10**6, 40 * GB) for _ in range(30)]
    plan = pack([demand(f"m{i:02d}", size) for i, size in enumerate(sizes)], parse_gpus("30x80GiB"))
    assert not plan.unplaced
    assert len(plan.assignments) == 30
    assert_within_capacity(plan)
    reserved = sum(math.ceil(size * 1.1) for size in sizes)
    assert plan.lower_bound >= math.ceil(reserved / (80 * GiB))
    assert plan.lower_bound <= plan.gpus_used <= plan.lower_bound + 1
    # fewest GPUs first: the GPUs in use are a prefix, not a spread over all thirty
    assert {a.gpu.index for a in plan.assignments} == set(range(plan.gpus_used))


def test_headroom_is_reserved_beyond_each_figure() -> None:
    two = [demand("a", 38 * GiB), demand("b", 38 * GiB)]
    with_headroom = pack(two, parse_gpus("2x80GiB"), headroom=0.1)
    assert with_headroom.gpus_used == 2  # 2 x 41.8 GiB does not fit in 80 GiB
    assert with_headroom.assignments[0].limit_bytes == math.ceil(38 * GiB * 1.1 / MiB) * MiB
    without = pack(two, parse_gpus("2x80GiB"), headroom=0.0)
    assert without.gpus_used == 1 and set(devices(without).values()) == {"cuda:0"}
    gpu = without.gpus[0]
    assert without.free_bytes(gpu) == 4 * GiB
    with pytest.raises(ConfigError, match="headroom"):
        pack(two, parse_gpus("1x80GiB"), headroom=-0.1)


def test_largest_first_fills_gpus_in_use_before_opening_another() -> None:
    demands = [demand("small", 10 * GiB), demand("large", 60 * GiB), demand("medium", 30 * GiB)]
    plan = pack(demands, parse_gpus("3x80GiB"))
    assert devices(plan) == {"large/1#0": "cuda:0", "medium/1#0": "cuda:1", "small/1#0": "cuda:0"}
    assert plan.gpus_used == 2 == plan.lower_bound


def test_the_largest_unused_gpu_opens_first() -> None:
    plan = pack([demand("a", 30 * GiB), demand("b", 5 * GiB)], parse_gpus("40GiB,80GiB"))
    assert devices(plan) == {"a/1#0": "cuda:1", "b/1#0": "cuda:1"}


def test_what_cannot_be_placed_is_listed_with_why() -> None:
    demands = [
        demand("huge", 90 * GB),
        demand("undeclared", None),
        Demand("sharded", "1", 0, 10 * GiB, gpus=2),
        *(demand("fifty", 50 * GiB, instance=i) for i in range(3)),
    ]
    plan = pack(demands, parse_gpus("2x80GiB"))
    reasons = {u.demand.label: u.reason for u in plan.unplaced}
    assert set(reasons) == {"huge/1#0", "undeclared/1#0", "sharded/1#0", "fifty/1#2"}
    assert "more than the largest GPU (80.0 GiB)" in reasons["huge/1#0"]
    assert reasons["undeclared/1#0"] == NO_MEMORY == "no gpu_memory declared and nothing measured"
    assert "needs 2 GPUs" in reasons["sharded/1#0"]
    assert "no GPU has that left" in reasons["fifty/1#2"]
    assert plan.lower_bound == 3  # the three fifties need three GPUs; the huge one counts for none
    data = plan.to_dict()
    assert {(u["model"], u["instance"]) for u in data["unplaced"]} == {
        ("huge", 0),
        ("undeclared", 0),
        ("sharded", 0),
        ("fifty", 2),
    }
    assert pack([demand("a", GiB)], ()).unplaced[0].reason.startswith("no GPU known")


def test_declared_sm_shares_sum_to_at_most_one_gpu_and_unset_shares_claim_none() -> None:
    shared = [demand("half", GiB, share=0.5, instance=i) for i in range(3)]
    uncapped = [demand("free", GiB, instance=i) for i in range(4)]
    plan = pack(shared + uncapped, parse_gpus("2x80GiB"))
    assert_within_capacity(plan)
    per_gpu = {gpu.device: plan.claimed_percentage(gpu) for gpu in plan.gpus}
    assert per_gpu == {"cuda:0": 100, "cuda:1": 50}
    assert plan.lower_bound == 2  # 150% of SMs claimed


# environments -----------------------------------------------------------------------------------


def test_the_mps_environment_of_an_assignment() -> None:
    plan = pack(
        [demand("a", 70 * GiB), demand("b", 10 * GiB, share=0.333), demand("c", 5 * GiB, share=0.255)],
        parse_gpus("2x80GiB"),
    )
    env = {a.demand.model: mps_environment(a) for a in plan.assignments}
    assert env["a"] == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "0",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "100",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={math.ceil(70 * 1024 * 1.1)}M",
    }
    assert env["b"]["CUDA_VISIBLE_DEVICES"] == "1"  # 77 GiB reserved on GPU 0 leaves too little
    assert env["b"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "33"
    assert env["b"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=11264M"  # device 0 inside the worker
    assert env["c"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == str(round(25.5))
    data = plan.to_dict()
    assert data["gpus"][1]["models"][0]["env"] == env["b"]
    assert data["gpus"][0]["thread_percentage"] == 0 and data["gpus"][1]["thread_percentage"] == 33 + 26


# re-planning ------------------------------------------------------------------------------------


def test_a_measured_figure_that_still_fits_moves_nothing() -> None:
    first = pack([demand("a", 20 * GiB), demand("b", 20 * GiB)], parse_gpus("2x80GiB"))
    grown = [with_figure(demand("a", 20 * GiB), 30 * GiB), demand("b", 20 * GiB)]
    result = replan(first, grown)
    assert result.moves == ()
    assert devices(result.plan) == devices(first) == {"a/1#0": "cuda:0", "b/1#0": "cuda:0"}
    a = result.plan.assignment(("a", "1", 0))
    assert a is not None and a.demand.source == "measured" and a.limit_bytes == 33 * GiB


def test_a_measured_figure_that_overflows_moves_only_the_smallest_instance_that_must_move() -> None:
    declared = [demand("a", 30 * GiB), demand("b", 30 * GiB), demand("c", 8 * GiB)]
    first = pack(declared, parse_gpus("2x80GiB"))
    assert set(devices(first).values()) == {"cuda:0"}  # 33 + 33 + 8.8 GiB
    measured = [with_figure(declared[0], 40 * GiB), declared[1], declared[2]]  # 44 + 33 + 8.8 > 80
    result = replan(first, measured)
    assert [(m.key, m.source, m.target) for m in result.moves] == [(("c", "1", 0), "cuda:0", "cuda:1")]
    assert devices(result.plan) == {"a/1#0": "cuda:0", "b/1#0": "cuda:0", "c/1#0": "cuda:1"}
    assert_within_capacity(result.plan)
    assert "overflowed" in result.moves[0].reason


def test_a_figure_that_fits_no_gpu_leaves_the_plan_with_a_reason() -> None:
    first = pack([demand("a", 30 * GiB)], parse_gpus("1x80GiB"))
    result = replan(first, [with_figure(demand("a", 30 * GiB), 79 * GiB)])
    (move,) = result.moves
    assert move.target is None and move.to_dict()["to"] is None
    assert "more than the largest GPU" in (result.plan.unplaced_reason(("a", "1", 0)) or "")


def test_added_instances_take_free_room_and_released_ones_free_theirs() -> None:
    first = pack([demand("a", 50 * GiB, instance=0), demand("b", 10 * GiB)], parse_gpus("2x80GiB"))
    added = [demand("a", 50 * GiB, instance=0), demand("a", 50 * GiB, instance=1), demand("b", 10 * GiB)]
    grown = replan(first, added)
    assert grown.moves == ()
    assert devices(grown.plan) == {"a/1#0": "cuda:0", "b/1#0": "cuda:0", "a/1#1": "cuda:1"}
    shrunk = replan(grown.plan, [demand("a", 50 * GiB, instance=1)])
    assert shrunk.moves == () and devices(shrunk.plan) == {"a/1#1": "cuda:1"}
    assert shrunk.plan.free_bytes(shrunk.plan.gpus[0]) == 80 * GiB


def test_a_lower_measured_figure_frees_room_without_moving_anything() -> None:
    first = pack([demand("a", 60 * GiB), demand("b", 30 * GiB)], parse_gpus("2x80GiB"))
    assert devices(first) == {"a/1#0": "cuda:0", "b/1#0": "cuda:1"}
    result = replan(first, [with_figure(demand("a", 60 * GiB), 20 * GiB), demand("b", 30 * GiB)])
    assert result.moves == () and devices(result.plan) == devices(first)
    assert result.plan.free_bytes(result.plan.gpus[0]) == 80 * GiB - 22 * GiB


# the resources table of model config ------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_resources_merge_key_by_key_across_config_layers(tmp_path: Path) -> None:
    model_file = write(tmp_path / "m" / "model.toml", '[resources]\ngpu_memory = "20GiB"\n')
    server = ServerConfig(
        defaults={"resources": {"gpu_share": 0.25}}, models={"m": {"resources": {"gpus": 2}}}
    )
    resources = merge_model_config(server, "m", model_file).resources
    assert (resources.gpu_memory, resources.gpu_share, resources.gpus) == (20 * GiB, 0.25, 2)
    assert merge_model_config(ServerConfig(), "m", None).resources.gpu_memory is None


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ('gpu_memory = "20 GiBs"', "resources.gpu_memory"),
        ("gpu_memory = -1", "resources.gpu_memory"),
        ("gpu_share = 0", "resources.gpu_share"),
        ("gpu_share = 1.5", "resources.gpu_share"),
        ("gpus = 0", "resources.gpus"),
        ("gpus = true", "resources.gpus"),
        ('gpu_mem = "1GiB"', "resources.gpu_mem: unknown key"),
    ],
)
def test_bad_resources_are_refused_naming_the_file_and_key(tmp_path: Path, table: str, named: str) -> None:
    model_file = write(tmp_path / "m" / "model.toml", f"[resources]\n{table}\n")
    with pytest.raises(ConfigError, match=r"model\.toml") as caught:
        merge_model_config(ServerConfig(), "m", model_file)
    assert named in caught.value.message


def test_demands_come_from_model_plans_and_cpu_models_are_listed_apart(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tables = {
        "big": 'device = "cuda"\ninstances = 2\n[resources]\ngpu_memory = "30GiB"\n',
        "tiny": 'device = "cuda:1"\n[resources]\ngpu_memory = 500000000\ngpu_share = 0.2\n',
        "cpu": "instances = 3\n",
    }
    for model, table in tables.items():
        write(repo / model / "model.toml", f'runtime = "python"\n{table}')
        (repo / model / "1").mkdir()
    host = PluginHost().discover()
    config = load_config(repo)  # as the server reads a bare repository
    repository = ModelRepository(config.repository_path)
    plans = [repository.plan(name, config, host) for name in repository.models()]
    demands, elsewhere = demands_from_plans(plans)
    assert elsewhere == [("cpu", "1")]
    assert [(d.label, d.memory_bytes, d.gpu_share) for d in demands] == [
        ("big/1#0", 30 * GiB, None),
        ("big/1#1", 30 * GiB, None),
        ("tiny/1#0", 500_000_000, 0.2),
    ]


# NVML -------------------------------------------------------------------------------------------


def test_without_nvml_there_are_no_machine_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    assert machine_gpus() is None
    assert nvml_process_memory(1) is None


def fake_nvml(fail_init: bool = False) -> types.ModuleType:
    """A stand-in ``pynvml`` with two GPUs and one process on the second."""
    module = types.ModuleType("pynvml")
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    memory = {0: 80 * GiB, 1: 40 * GiB}
    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda index: index  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda handle: b"NVIDIA H100" if handle == 0 else "NVIDIA A100"  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(total=memory[handle])  # type: ignore[attr-defined]
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: (  # type: ignore[attr-defined]
        [types.SimpleNamespace(pid=4242, usedGpuMemory=3 * GiB)] if handle == 1 else []
    )
    module.calls = calls  # type: ignore[attr-defined]
    return module


def test_machine_gpus_and_process_memory_are_read_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert machine_gpus() == (Gpu(0, 80 * GiB, "NVIDIA H100"), Gpu(1, 40 * GiB, "NVIDIA A100"))
    assert nvml_process_memory(4242) == 3 * GiB
    assert nvml_process_memory(1) is None
    assert nvml.calls == ["init", "shutdown"] * 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(fail_init=True))
    assert machine_gpus() is None
