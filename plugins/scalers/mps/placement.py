"""The mps placement: GPU instances packed onto this machine's GPUs, one worker process each, under MPS.

One placement object serves every version whose config names it (one per server), so instances of
several models share a GPU; its state is kept per model, version and instance. A version is declared
from its config's ``resources`` when its first instance is created (``prepare`` declares many at
once, so the whole set is packed largest first). The plan packs instances first-fit-decreasing on
memory (``ladle.pack``). Each instance runs in a worker process that starts with
``CUDA_VISIBLE_DEVICES`` (its GPU), ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (from ``gpu_share``) and
``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` (its memory plus headroom), and finds the placement's private MPS
control daemon, started with the first instance and stopped by ``close``. Without
``nvidia-cuda-mps-control`` the placement warns once and the GPUs are time-sliced; the plan is the same.

Once warmed up, a worker reports the device memory NVML sees for its process; that figure replaces
the declared one and the plan is revised, keeping instances where they fit (``take_moves`` lists
running instances that must be recreated elsewhere). A runtime's own figure, when NVML is absent,
only ever raises the declared one (runtimes report weights, not allocator peaks). An instance whose
worker stops gives its room back.

Options (``[plugins.options.mps]`` in ladle.toml; a model's own placement table takes none):

- ``headroom`` (0-1, default 0.1): memory reserved beyond each instance's figure, and its limit;
- ``gpus`` (e.g. ``"4x80GiB"``): the GPUs to pack onto; default: read through NVML (extra ``nvml``);
- ``mps`` (default true): false time-slices the GPUs without starting a daemon (and without a warning);
- ``control`` (default ``"nvidia-cuda-mps-control"``): the control program, a name on PATH or a path.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import Field

from ladle import (
    Arrays,
    Assignment,
    Batch,
    ConfigError,
    Demand,
    Gpu,
    Instance,
    InstanceKey,
    LadleError,
    ModelConfig,
    Move,
    Placement,
    Plan,
    PluginHost,
    PluginOptions,
    ProcessExecutor,
    RuntimeInfo,
    RuntimeSpec,
    format_bytes,
    machine_gpus,
    nvml_process_memory,
    parse_gpus,
    parse_options,
    replan,
)

from .daemon import MpsDaemon, MpsDaemonError

__all__ = ["MpsOptions", "MpsPlacement", "PackedWorker"]

log = logging.getLogger(__name__)


class MpsOptions(PluginOptions):
    """Options of the mps placement."""

    headroom: float = Field(default=0.1, ge=0, le=1)
    gpus: str | None = Field(default=None, description="e.g. '4x80GiB'; default: NVML")
    mps: bool = True
    control: str = Field(default="nvidia-cuda-mps-control", min_length=1)


@dataclass
class _Version:
    """What one version declared, what it measured, and which instance indices it has now."""

    declared: int | None
    gpu_share: float | None
    gpus: int
    measured: int | None = None
    instances: set[int] = field(default_factory=set)

    def demands(self, model: str, version: str) -> list[Demand]:
        memory = self.measured if self.measured is not None else self.declared
        source: Literal["declared", "measured"] = "measured" if self.measured is not None else "declared"
        return [
            Demand(model, version, i, memory, self.gpu_share, source, self.gpus, "mps")
            for i in sorted(self.instances)
        ]


class MpsPlacement(Placement):
    """Packs GPU instances onto this machine's GPUs, one worker process each, under MPS."""

    def __init__(self, options: Mapping[str, Any], host: PluginHost) -> None:
        super().__init__(options, host)
        self.settings = parse_options(MpsOptions, options, "placement 'mps'")
        self._gpus: tuple[Gpu, ...] | None = (
            parse_gpus(self.settings.gpus, key="placement 'mps' option gpus") if self.settings.gpus else None
        )
        self._versions: dict[tuple[str, str], _Version] = {}
        self._plan: Plan | None = None
        self._workers: dict[InstanceKey, PackedWorker] = {}
        self._pending: list[Move] = []
        self._daemon: MpsDaemon | None = None
        self._mps_state = "not started"
        self._mps_checked = False

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        """The GPUs packed onto: the ``gpus`` option, else NVML's (read once), else none."""
        if self._gpus is None:
            self._gpus = machine_gpus() or ()
        return self._gpus

    # what the core tells the placement -----------------------------------------------------------

    def prepare(self, versions: Iterable[tuple[str, str, ModelConfig]]) -> tuple[Move, ...]:
        """Declare many versions, ``(model, version, config)`` each, then plan once: the whole set
        is packed largest first (versions declared one by one are packed first-fit as they come)."""
        for model, version, config in versions:
            self._declare(model, version, config)
        return self._replan()

    def _declare(self, model: str, version: str, config: ModelConfig) -> _Version:
        if not config.device.startswith("cuda"):
            raise ConfigError(
                f"model {model!r}: placement 'mps' packs GPU models; its device is {config.device!r}",
                model=model,
                key="device",
            )
        parse_options(PluginOptions, config.placement.options, f"placement 'mps' of model {model!r}")
        resources = config.resources
        entry = self._versions.get((model, version))
        if entry is None:
            entry = self._versions[(model, version)] = _Version(
                resources.gpu_memory, resources.gpu_share, resources.gpus
            )
        else:  # a measured figure survives a re-declaration
            entry.declared, entry.gpu_share, entry.gpus = (
                resources.gpu_memory,
                resources.gpu_share,
                resources.gpus,
            )
        entry.instances.update(range(config.instances))
        return entry

    def measured(self, model: str, version: str, instance: int, memory_bytes: int) -> tuple[Move, ...]:
        """An instance measured ``memory_bytes`` after warm-up (its worker reports it): the version's
        figure becomes the largest any of its instances measured, and the plan is revised."""
        entry = self._versions.get((model, version))
        if entry is None or instance not in entry.instances:
            return ()
        figure = max(memory_bytes, entry.measured or 0)
        if figure == entry.measured:
            return ()
        entry.measured = figure
        return self._replan()

    def take_moves(self) -> list[Move]:
        """Running instances that a re-plan moved to another GPU (or off every GPU) since the last
        call: each must be recreated through ``create``, which places it where the plan now says."""
        moves, self._pending = self._pending, []
        return moves

    def _stopped(self, worker: PackedWorker) -> None:
        """A worker stopped: its instance gives its room back (unless a replacement took its key)."""
        if self._workers.get(worker.key) is not worker:
            return
        del self._workers[worker.key]
        model, version, index = worker.key
        entry = self._versions.get((model, version))
        if entry is not None:
            entry.instances.discard(index)  # the version stays declared: it may scale up again
        self._replan()

    def _replan(self) -> tuple[Move, ...]:
        demands = [d for (m, v), entry in self._versions.items() for d in entry.demands(m, v)]
        previous = self._plan or Plan(self.gpus, self.settings.headroom)
        result = replan(previous, demands)
        self._plan = result.plan
        running = [move for move in result.moves if move.key in self._workers]
        for move in running:
            model, version, index = move.key
            target = move.target or "nowhere"
            log.warning(
                "re-plan moves %s/%s#%d from %s to %s: %s",
                model,
                version,
                index,
                move.source,
                target,
                move.reason,
            )
        self._pending.extend(running)
        return result.moves

    # what the core reads ---------------------------------------------------------------------------

    def current(self) -> Plan:
        """The current plan (a ``ladle.Plan``)."""
        if self._plan is None:
            self._replan()
        assert self._plan is not None
        return self._plan

    def describe(self) -> dict[str, Any]:
        """The current plan as JSON: per GPU its memory, what is left, and each instance with its
        memory, limit, SM percentage and worker environment; what is unplaced and why; MPS state."""
        data = self.current().to_dict(env=self._environment)
        data["mps"] = {
            "active": self._daemon is not None,
            "state": self._mps_state,
            "pipe_directory": str(self._daemon.pipe_directory) if self._daemon is not None else None,
        }
        return data

    def affected(self, model: str, version: str, instance: int) -> list[InstanceKey]:
        """The running instances that share a fatal GPU fault of this one: under MPS, every instance
        on its GPU (the server fails them all and takes no new client until they exited)."""
        key = (model, version, instance)
        worker = self._workers.get(key)
        if worker is None:
            return []
        if self._daemon is None:
            return [key]
        device = worker.assignment.gpu.index
        return sorted(k for k, w in self._workers.items() if w.assignment.gpu.index == device)

    def health(self) -> list[InstanceKey]:
        """Running instances to restart because MPS failed under them: all of them when the daemon
        died (it is started again first) or a server reports a fault; empty when all is well."""
        daemon = self._daemon
        if daemon is None or not self._workers:
            return []
        if not daemon.alive():
            log.warning("the MPS control daemon died; starting it again")
            try:
                daemon.restart()
            except MpsDaemonError as exc:
                log.error("the MPS control daemon cannot be started again: %s", exc)
            return sorted(self._workers)
        try:
            faulted = daemon.faulted_servers()
        except MpsDaemonError as exc:
            log.warning("cannot query the MPS control daemon: %s", exc)
            return []
        if faulted:
            log.warning("MPS servers %s report a fatal fault; every worker must restart", faulted)
            return sorted(self._workers)
        return []

    async def close(self) -> None:
        """Stop the MPS control daemon (after the instances stopped)."""
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            await asyncio.to_thread(daemon.stop)
            self._mps_state = "stopped"

    # creating instances ----------------------------------------------------------------------------

    def create(self, spec: RuntimeSpec, index: int, config: ModelConfig | None = None) -> Instance:
        """A worker-process instance on the GPU the plan gives it (``ConfigError`` when none can
        take it). ``config`` declares the version on its first instance."""
        key = (spec.model, spec.version, index)
        entry = self._versions.get((spec.model, spec.version))
        if entry is None:
            if config is None:
                raise ConfigError(
                    f"model {spec.model!r} version {spec.version!r}: the mps placement knows nothing of what "
                    "it needs; declare it (resources.gpu_memory in its model.toml) before creating instances",
                    model=spec.model,
                    version=spec.version,
                    key="resources.gpu_memory",
                )
            self._declare(spec.model, spec.version, config)
            self._replan()
            entry = self._versions[(spec.model, spec.version)]
        added = index not in entry.instances
        if added:
            entry.instances.add(index)  # the scaler added an instance
            self._replan()
        plan = self.current()
        assignment = plan.assignment(key)
        if assignment is None:
            reason = plan.unplaced_reason(key) or "not in the plan"
            if added:  # a refused addition leaves no trace in the plan
                entry.instances.discard(index)
                self._replan()
            raise ConfigError(
                f"{spec.model}/{spec.version} instance {index} cannot be placed on a GPU: {reason}",
                model=spec.model,
                version=spec.version,
            )
        self._start_mps()
        worker_spec = replace(spec, device="cuda:0")  # the one GPU its CUDA_VISIBLE_DEVICES shows
        worker = PackedWorker(worker_spec, self.host, self, key, assignment, self._environment(assignment))
        self._workers[key] = worker
        return Instance(worker_spec, worker, name=str(index))

    def _environment(self, assignment: Assignment) -> dict[str, str]:
        env = assignment.env()
        if self._daemon is not None:
            return {**env, **self._daemon.client_environment()}
        if self._mps_checked:  # time-slicing: the MPS settings would mean nothing
            return {k: v for k, v in env.items() if not k.startswith("CUDA_MPS_")}
        return env

    def _start_mps(self) -> None:
        if self._mps_checked:
            return
        self._mps_checked = True
        if not self.settings.mps:
            self._mps_state = "off (option mps = false): GPUs are time-sliced"
            return
        executable = shutil.which(self.settings.control)
        if executable is None:
            reason = f"{self.settings.control} is not on PATH"
        else:
            daemon = MpsDaemon(executable)
            try:
                daemon.start()
            except MpsDaemonError as exc:
                reason = str(exc)
            else:
                self._daemon = daemon
                self._mps_state = "running"
                return
        self._mps_state = f"off: {reason}"
        log.warning(
            "NVIDIA MPS is not available (%s): instances of placement 'mps' share their GPUs by "
            "time-slicing, without per-instance SM shares or memory limits; the plan is unchanged",
            reason,
        )


class PackedWorker(ProcessExecutor):
    """A worker process on its planned GPU: reports measured memory to the placement, gives its
    room back when it stops, and names its memory limit in out-of-memory errors."""

    def __init__(
        self,
        spec: RuntimeSpec,
        host: PluginHost,
        placement: MpsPlacement,
        key: InstanceKey,
        assignment: Assignment,
        env: Mapping[str, str],
    ) -> None:
        super().__init__(spec, host, env=env)
        self.placement = placement
        self.key = key
        self.assignment = assignment
        self.limited = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" in env

    async def load(self) -> None:
        try:
            await super().load()
        except LadleError as exc:
            self._name_limit(exc)
            raise

    async def warmup(self) -> RuntimeInfo:
        try:
            info = await super().warmup()
        except LadleError as exc:
            self._name_limit(exc)
            raise
        pid = self.pid
        seen = await asyncio.to_thread(nvml_process_memory, pid) if pid is not None else None
        planned = self.assignment.demand.memory_bytes
        figure, source = seen, "nvml"
        own = info.memory_bytes
        if seen is None:
            raises = own is not None and (planned is None or own > planned)
            figure, source = (own, "runtime") if raises else (None, "")
        if figure is not None:
            self.placement.measured(*self.key, figure)
        details = {
            **info.details,
            "gpu": self.assignment.gpu.device,
            "memory_limit_bytes": self.assignment.limit_bytes if self.limited else None,
            "memory_source": source or self.assignment.demand.source,
        }
        return replace(info, memory_bytes=figure if figure is not None else planned, details=details)

    async def execute(self, batch: Batch) -> list[Arrays | LadleError]:
        try:
            results = await super().execute(batch)
        except LadleError as exc:
            self._name_limit(exc)
            raise
        for result in results:
            if isinstance(result, LadleError):
                self._name_limit(result)
        return results

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            self.placement._stopped(self)

    def _name_limit(self, error: LadleError) -> None:
        if not self.limited or "out of memory" not in error.message.lower() or "MPS limit" in error.message:
            return
        model, version, instance = self.key
        error.message += (
            f" (MPS limit: {model}/{version} instance {instance} may hold "
            f"{format_bytes(self.assignment.limit_bytes)} on {self.assignment.gpu.device}, "
            "its gpu_memory plus headroom; raise resources.gpu_memory to give it more)"
        )
        error.args = (error.message,)
