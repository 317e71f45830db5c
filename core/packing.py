"""GPU packing: memory figures, GPUs, and a plan of which instance runs on which GPU.

Each instance of a model that runs on a GPU is a ``Demand``: the device memory it needs (declared in
its ``model.toml`` as ``resources.gpu_memory``, or measured once it ran) and, optionally, the share of
the GPU's SMs it should get (``resources.gpu_share``). ``pack`` places demands onto GPUs by
first-fit-decreasing on memory, each demand reserving its memory plus a headroom fraction and filling
the GPUs already in use before it opens another (largest first). Declared SM shares on one GPU sum to
at most 100%; an instance without one claims none and runs uncapped. ``replan`` revises a plan when
figures change or instances come and go, keeping every instance where it is while it still fits and
moving only what must move.

``mps_environment`` is what a worker process of an assignment starts with (before its CUDA context
exists) under NVIDIA MPS. GPUs, memory sizes and NVML live in ``ladle.gpus``. Nothing here imports a
framework or touches a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError
from .gpus import Gpu, MiB, format_bytes

if TYPE_CHECKING:
    from .repository import ModelPlan

__all__ = [
    "DEFAULT_HEADROOM",
    "Assignment",
    "Demand",
    "InstanceKey",
    "Move",
    "Plan",
    "Replan",
    "Unplaced",
    "demands_from_plans",
    "mps_environment",
    "pack",
    "replan",
    "with_figure",
]

DEFAULT_HEADROOM = 0.1
NO_MEMORY = "no gpu_memory declared and nothing measured"

#: (model, version, instance index)
InstanceKey = tuple[str, str, int]
Source = Literal["declared", "measured"]

# demands and plans ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Demand:
    """What one instance needs on a GPU.

    ``memory_bytes`` is ``None`` while nothing is declared or measured; ``gpu_share`` is the fraction
    of the GPU's SMs it should get (``None``: uncapped, claiming none); ``gpus`` the GPUs one
    instance spans (packing places single-GPU instances only).
    """

    model: str
    version: str
    instance: int
    memory_bytes: int | None
    gpu_share: float | None = None
    source: Source = "declared"
    gpus: int = 1
    placement: str = ""

    @property
    def key(self) -> InstanceKey:
        return (self.model, self.version, self.instance)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.version}#{self.instance}"

    @property
    def thread_percentage(self) -> int:
        """``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``: ``round(gpu_share * 100)``, 100 when unset."""
        return 100 if self.gpu_share is None else max(1, round(self.gpu_share * 100))

    @property
    def claimed_percentage(self) -> int:
        """The SM percentage this instance claims on its GPU (0 when it declares no share)."""
        return 0 if self.gpu_share is None else self.thread_percentage

    def reserved_bytes(self, headroom: float) -> int:
        """Memory plus headroom, rounded up to whole MiB (also the worker's memory limit)."""
        assert self.memory_bytes is not None
        return math.ceil(math.ceil(self.memory_bytes * (1 + headroom)) / MiB) * MiB


@dataclass(frozen=True)
class Assignment:
    """One instance on one GPU, with the memory limit its worker starts with."""

    demand: Demand
    gpu: Gpu
    limit_bytes: int

    def env(self) -> dict[str, str]:
        return mps_environment(self)

    def to_dict(self, env: Callable[[Assignment], dict[str, str]] | None = None) -> dict[str, Any]:
        """The plan's entry of this instance; ``env`` gives its worker's environment (default: ``env()``)."""
        demand = self.demand
        return {
            "model": demand.model,
            "version": demand.version,
            "instance": demand.instance,
            "memory_bytes": demand.memory_bytes,
            "limit_bytes": self.limit_bytes,
            "source": demand.source,
            "placement": demand.placement,
            "thread_percentage": demand.thread_percentage,
            "env": env(self) if env is not None else self.env(),
        }


def mps_environment(assignment: Assignment) -> dict[str, str]:
    """The environment of the assignment's worker: its one GPU, its SM cap and its memory limit.

    Inside the worker the GPU is device 0 (``CUDA_VISIBLE_DEVICES`` shows it alone), so the memory
    limit names device 0; ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA count GPUs as NVML does.
    """
    mib = math.ceil(assignment.limit_bytes / MiB)
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": str(assignment.gpu.index),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(assignment.demand.thread_percentage),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={mib}M",
    }


@dataclass(frozen=True)
class Unplaced:
    demand: Demand
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.demand.model,
            "version": self.demand.version,
            "instance": self.demand.instance,
            "memory_bytes": self.demand.memory_bytes,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Plan:
    """Which instance runs on which GPU, and what could not be placed (with why)."""

    gpus: tuple[Gpu, ...]
    headroom: float = DEFAULT_HEADROOM
    assignments: tuple[Assignment, ...] = ()
    unplaced: tuple[Unplaced, ...] = ()

    def on(self, gpu: Gpu) -> list[Assignment]:
        return [a for a in self.assignments if a.gpu.index == gpu.index]

    def used_bytes(self, gpu: Gpu) -> int:
        return sum(a.limit_bytes for a in self.on(gpu))

    def free_bytes(self, gpu: Gpu) -> int:
        return gpu.memory_bytes - self.used_bytes(gpu)

    def claimed_percentage(self, gpu: Gpu) -> int:
        return sum(a.demand.claimed_percentage for a in self.on(gpu))

    def assignment(self, key: InstanceKey) -> Assignment | None:
        return next((a for a in self.assignments if a.demand.key == key), None)

    def unplaced_reason(self, key: InstanceKey) -> str | None:
        return next((u.reason for u in self.unplaced if u.demand.key == key), None)

    @property
    def gpus_used(self) -> int:
        return len({a.gpu.index for a in self.assignments})

    @property
    def lower_bound(self) -> int:
        """No packing of the placeable demands can use fewer GPUs than this: the fewest of the largest
        GPUs (repeating the largest where they run out) whose memory holds every reservation, and
        at least the total claimed SM share in whole GPUs."""
        largest = max((g.memory_bytes for g in self.gpus), default=0)
        demands = [a.demand for a in self.assignments] + [
            u.demand for u in self.unplaced if _fits_alone(u.demand, self.headroom, largest)
        ]
        if not demands:
            return 0
        remaining = sum(d.reserved_bytes(self.headroom) for d in demands)
        count = 0
        for size in sorted((g.memory_bytes for g in self.gpus), reverse=True):
            if remaining <= 0:
                break
            remaining -= size
            count += 1
        if remaining > 0:
            count += math.ceil(remaining / largest)
        shares = math.ceil(sum(d.claimed_percentage for d in demands) / 100)
        return max(count, shares)

    def to_dict(self, env: Callable[[Assignment], dict[str, str]] | None = None) -> dict[str, Any]:
        """``{"gpus": [{"device", "memory_bytes", "free_bytes", "thread_percentage", "models": [...]}],
        "unplaced": [{"model", "version", "instance", "reason"}], "gpus_used", "lower_bound", ...}``;
        ``env`` gives each worker's environment (default: ``mps_environment``)."""
        return {
            "gpus": [
                {
                    "device": gpu.device,
                    "name": gpu.name,
                    "memory_bytes": gpu.memory_bytes,
                    "used_bytes": self.used_bytes(gpu),
                    "free_bytes": self.free_bytes(gpu),
                    "thread_percentage": self.claimed_percentage(gpu),
                    "models": [a.to_dict(env) for a in self.on(gpu)],
                }
                for gpu in self.gpus
            ],
            "unplaced": [u.to_dict() for u in self.unplaced],
            "gpus_used": self.gpus_used,
            "lower_bound": self.lower_bound,
            "headroom": self.headroom,
        }


@dataclass(frozen=True)
class Move:
    """An instance that changed GPU in a re-plan; ``target`` ``None``: it no longer fits anywhere."""

    key: InstanceKey
    source: str
    target: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        model, version, instance = self.key
        return {
            "model": model,
            "version": version,
            "instance": instance,
            "from": self.source,
            "to": self.target,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Replan:
    plan: Plan
    moves: tuple[Move, ...]


# packing -------------------------------------------------------------------------------------


def _fits_alone(demand: Demand, headroom: float, largest: int) -> bool:
    return demand.memory_bytes is not None and demand.gpus == 1 and demand.reserved_bytes(headroom) <= largest


def _size_order(demand: Demand, headroom: float) -> tuple[int, int, str, str, int]:
    return (-demand.reserved_bytes(headroom), -demand.claimed_percentage, *demand.key)


class _Loads:
    """GPUs being filled: what each holds, in the order they were opened."""

    def __init__(self, gpus: Sequence[Gpu], headroom: float) -> None:
        self.gpus = tuple(gpus)
        self.headroom = headroom
        self.members: dict[int, list[Demand]] = {g.index: [] for g in gpus}
        self.opened: list[Gpu] = []
        self.unplaced: list[Unplaced] = []
        self.largest = max((g.memory_bytes for g in gpus), default=0)

    def used(self, gpu: Gpu) -> int:
        return sum(d.reserved_bytes(self.headroom) for d in self.members[gpu.index])

    def claimed(self, gpu: Gpu) -> int:
        return sum(d.claimed_percentage for d in self.members[gpu.index])

    def fits(self, gpu: Gpu, demand: Demand) -> bool:
        return (
            self.used(gpu) + demand.reserved_bytes(self.headroom) <= gpu.memory_bytes
            and self.claimed(gpu) + demand.claimed_percentage <= 100
        )

    def add(self, gpu: Gpu, demand: Demand) -> None:
        if gpu not in self.opened:
            self.opened.append(gpu)
        self.members[gpu.index].append(demand)

    def place(self, demand: Demand, avoid: Gpu | None = None) -> Gpu | None:
        """First fit on the GPUs in use, else open the largest unused one; ``None`` (recorded as
        unplaced with a reason) when no GPU can take it."""
        reason = self._impossible(demand)
        if reason is None:
            unused = sorted(
                (g for g in self.gpus if g not in self.opened), key=lambda g: (-g.memory_bytes, g.index)
            )
            for gpu in [*self.opened, *unused]:
                if gpu != avoid and self.fits(gpu, demand):
                    self.add(gpu, demand)
                    return gpu
            reason = self._no_room(demand)
        self.unplaced.append(Unplaced(demand, reason))
        return None

    def _impossible(self, demand: Demand) -> str | None:
        if demand.memory_bytes is None:
            return NO_MEMORY
        if demand.gpus != 1:
            return f"needs {demand.gpus} GPUs per instance; packing places instances that fit on one GPU"
        if not self.gpus:
            return (
                "no GPU known: NVML sees none (on a GPU machine, install the nvml extra) and none were given"
            )
        reserved = demand.reserved_bytes(self.headroom)
        if reserved > self.largest:
            return (
                f"needs {format_bytes(reserved)} ({format_bytes(demand.memory_bytes)} + "
                f"{self.headroom:.0%} headroom), more than the largest GPU ({format_bytes(self.largest)})"
            )
        return None

    def _no_room(self, demand: Demand) -> str:
        most = max(g.memory_bytes - self.used(g) for g in self.gpus)
        wants = f"needs {format_bytes(demand.reserved_bytes(self.headroom))}"
        if demand.claimed_percentage:
            wants += f" and {demand.claimed_percentage}% of a GPU's SMs"
        return f"{wants}; no GPU has that left (the most free memory on one GPU is {format_bytes(most)})"

    def overflow(self, gpu: Gpu) -> tuple[int, int]:
        return self.used(gpu) - gpu.memory_bytes, self.claimed(gpu) - 100

    def evict_one(self, gpu: Gpu) -> Demand:
        """Take off ``gpu`` the smallest instance whose leaving ends its overflow, else the largest."""
        memory, share = self.overflow(gpu)
        members = sorted(self.members[gpu.index], key=lambda d: (d.reserved_bytes(self.headroom), d.key))
        victim = next(
            (
                d
                for d in members
                if d.reserved_bytes(self.headroom) >= memory and d.claimed_percentage >= share
            ),
            members[-1] if memory > 0 else max(members, key=lambda d: d.claimed_percentage),
        )
        self.members[gpu.index].remove(victim)
        return victim

    def plan(self) -> Plan:
        assignments = tuple(
            Assignment(d, gpu, d.reserved_bytes(self.headroom))
            for gpu in sorted(self.gpus, key=lambda g: g.index)
            for d in sorted(self.members[gpu.index], key=lambda d: d.key)
        )
        unplaced = tuple(sorted(self.unplaced, key=lambda u: u.demand.key))
        return Plan(self.gpus, self.headroom, assignments, unplaced)


def pack(demands: Iterable[Demand], gpus: Sequence[Gpu], headroom: float = DEFAULT_HEADROOM) -> Plan:
    """First-fit-decreasing: the largest reservation first, each onto the first GPU in use with room
    for its memory and SM share, opening the largest unused GPU only when none has room."""
    if headroom < 0:
        raise ConfigError(f"headroom must be 0 or more, got {headroom}", key="headroom")
    loads = _Loads(gpus, headroom)
    for demand in sorted(demands, key=lambda d: _order_key(d, headroom)):
        loads.place(demand)
    return loads.plan()


def _order_key(demand: Demand, headroom: float) -> tuple[Any, ...]:
    if demand.memory_bytes is None:
        return (1, *demand.key)
    return (0, *_size_order(demand, headroom))


def replan(previous: Plan, demands: Iterable[Demand]) -> Replan:
    """Revise ``previous`` for ``demands`` (new figures, instances added or gone).

    Every instance stays on its GPU while that GPU still holds it; on a GPU that overflows, the
    smallest instance whose leaving is enough moves (else the largest, and again). Moved instances
    go first-fit elsewhere, then new ones first-fit-decreasing. ``moves`` says what changed GPU.
    """
    wanted = {d.key: d for d in demands}
    loads = _Loads(previous.gpus, previous.headroom)
    evicted: list[tuple[Demand, Gpu, str]] = []
    for gpu in sorted(previous.gpus, key=lambda g: g.index):
        for assignment in previous.on(gpu):
            demand = wanted.get(assignment.demand.key)
            if demand is None:
                continue  # released
            if loads._impossible(demand) is not None:
                evicted.append((demand, gpu, "it no longer fits on any GPU"))
                continue
            loads.add(gpu, demand)
        while max(loads.overflow(gpu)) > 0:
            victim = loads.evict_one(gpu)
            evicted.append((victim, gpu, f"{gpu.device} overflowed after a re-plan"))
    kept = {d.key for members in loads.members.values() for d in members}
    moving = {d.key for d, _, _ in evicted}
    moves = []
    for demand, gpu, why in sorted(evicted, key=lambda e: _order_key(e[0], previous.headroom)):
        target = loads.place(demand, avoid=gpu)
        moves.append(Move(demand.key, gpu.device, target.device if target else None, why))
    fresh = [d for key, d in wanted.items() if key not in kept and key not in moving]
    for demand in sorted(fresh, key=lambda d: _order_key(d, previous.headroom)):
        loads.place(demand)
    return Replan(loads.plan(), tuple(sorted(moves, key=lambda m: m.key)))


def with_figure(demand: Demand, memory: int, source: Source = "measured") -> Demand:
    """``demand`` with a new memory figure (a measurement replacing a declaration)."""
    return replace(demand, memory_bytes=memory, source=source)


def demands_from_plans(plans: Iterable[ModelPlan]) -> tuple[list[Demand], list[tuple[str, str]]]:
    """One demand per configured instance of every version whose device is a GPU (``cuda`` or
    ``cuda:N``: packing chooses the GPU), from its ``resources``; and the (model, version) pairs that
    run elsewhere (CPU)."""
    demands: list[Demand] = []
    elsewhere: list[tuple[str, str]] = []
    for plan in plans:
        config = plan.config
        for version in plan.versions:
            if not config.device.startswith("cuda"):
                elsewhere.append((plan.name, version))
                continue
            resources = config.resources
            demands.extend(
                Demand(
                    plan.name,
                    version,
                    index,
                    resources.gpu_memory,
                    resources.gpu_share,
                    gpus=resources.gpus,
                    placement=config.placement.name,
                )
                for index in range(config.instances)
            )
    return demands, elsewhere
