"""Process and GPU resources, read at collection time: psutil for CPU and memory of this process
(and of worker processes added with ``add_process``), NVML (``nvidia-ml-py``, extra ``nvml``) for
GPU memory and utilisation per device. Either library may be absent; its figures are then absent.

Exported under the OpenTelemetry semantic-convention names ``process.cpu.time``,
``process.cpu.utilization``, ``process.memory.usage``, ``process.memory.virtual``,
``process.thread.count``, ``hw.gpu.memory.usage``, ``hw.gpu.memory.limit`` and
``hw.gpu.utilization`` (free GPU memory is limit minus usage; ``snapshot()`` states it).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["GpuFigures", "ProcessFigures", "ResourceMonitor"]


@dataclass(frozen=True)
class ProcessFigures:
    pid: int
    role: str
    cpu_user: float
    cpu_system: float
    cpu_utilization: float | None
    memory_rss: int
    memory_virtual: int
    threads: int


@dataclass(frozen=True)
class GpuFigures:
    index: int
    uuid: str
    name: str
    memory_used: int
    memory_free: int
    memory_total: int
    utilization: float | None


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


class ResourceMonitor:
    """Reads resource figures on demand; holds no thread of its own."""

    def __init__(self, gpu: bool = True) -> None:
        self._psutil = _optional("psutil")
        self._processes: dict[int, tuple[str, Any]] = {}
        self._last_cpu: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()
        if self._psutil is not None:
            self._processes[os.getpid()] = ("front", self._psutil.Process())
        self._nvml: Any = None
        self._handles: list[Any] = []
        if gpu:
            self._start_nvml()

    @property
    def has_process_figures(self) -> bool:
        return self._psutil is not None

    @property
    def has_gpu_figures(self) -> bool:
        return self._nvml is not None

    def _start_nvml(self) -> None:
        nvml = _optional("pynvml")
        if nvml is None:
            return
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception:  # no driver or no device: NVMLError subclasses, raised per cause
            return
        self._nvml = nvml

    def add_process(self, pid: int, role: str = "worker") -> None:
        """Also report a worker process (until it exits or ``remove_process`` is called)."""
        if self._psutil is None:
            return
        try:
            process = self._psutil.Process(pid)
        except self._psutil.Error:
            return
        with self._lock:
            self._processes[pid] = (role, process)

    def remove_process(self, pid: int) -> None:
        with self._lock:
            self._processes.pop(pid, None)
            self._last_cpu.pop(pid, None)

    def processes(self) -> list[ProcessFigures]:
        """CPU and memory of the front process and registered workers (dead ones are dropped)."""
        if self._psutil is None:
            return []
        figures = []
        with self._lock:
            tracked = list(self._processes.items())
        now = time.monotonic()
        for pid, (role, process) in tracked:
            try:
                with process.oneshot():
                    cpu = process.cpu_times()
                    memory = process.memory_info()
                    threads = process.num_threads()
            except self._psutil.Error:
                self.remove_process(pid)
                continue
            used = cpu.user + cpu.system
            previous = self._last_cpu.get(pid)
            utilization = None
            if previous is not None and now > previous[0]:
                cpus = self._psutil.cpu_count() or 1
                utilization = max(0.0, (used - previous[1]) / ((now - previous[0]) * cpus))
            if previous is None or now - previous[0] >= 0.5:  # keep a baseline at least 0.5 s old
                self._last_cpu[pid] = (now, used)
            figures.append(
                ProcessFigures(pid, role, cpu.user, cpu.system, utilization, memory.rss, memory.vms, threads)
            )
        return figures

    def gpus(self) -> list[GpuFigures]:
        """Memory and utilisation per GPU seen by NVML (empty without NVML or devices)."""
        nvml = self._nvml
        if nvml is None:
            return []
        figures = []
        for index, handle in enumerate(self._handles):
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                name = nvml.nvmlDeviceGetName(handle)
                uuid = nvml.nvmlDeviceGetUUID(handle)
            except Exception:  # NVMLError: device lost or busy; skip it this time
                continue
            try:
                utilization: float | None = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            except Exception:  # not supported on some devices (MIG instances)
                utilization = None
            figures.append(
                GpuFigures(
                    index,
                    uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    name.decode() if isinstance(name, bytes) else str(name),
                    int(memory.used),
                    int(memory.free),
                    int(memory.total),
                    utilization,
                )
            )
        return figures

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the stats endpoint."""
        return {"processes": [asdict(p) for p in self.processes()], "gpus": [asdict(g) for g in self.gpus()]}

    def register(self, meter: Any) -> None:
        """Observable instruments on an OpenTelemetry meter, read at collection time."""
        from opentelemetry.metrics import Observation

        def processes(field: str, **extra: str) -> Any:
            def read(_options: Any) -> Iterator[Observation]:
                for p in self.processes():
                    value = getattr(p, field)
                    if value is not None:
                        yield Observation(
                            value, {"process.pid": p.pid, "ladle.process.role": p.role, **extra}
                        )

            return read

        def gpus(read_value: Any) -> Any:
            def read(_options: Any) -> Iterator[Observation]:
                for g in self.gpus():
                    value = read_value(g)
                    if value is not None:
                        yield Observation(
                            value,
                            {
                                "hw.id": g.uuid,
                                "hw.name": f"gpu{g.index}",
                                "hw.model": g.name,
                                "hw.vendor": "nvidia",
                                "hw.type": "gpu",
                            },
                        )

            return read

        if self._psutil is not None:
            meter.create_observable_counter(
                "process.cpu.time",
                [
                    processes("cpu_user", **{"cpu.mode": "user"}),
                    processes("cpu_system", **{"cpu.mode": "system"}),
                ],
                unit="s",
                description="CPU seconds used by the process",
            )
            meter.create_observable_gauge(
                "process.cpu.utilization",
                [processes("cpu_utilization")],
                unit="1",
                description="CPU used by the process since the last reading, as a share of all CPUs",
            )
            meter.create_observable_up_down_counter(
                "process.memory.usage",
                [processes("memory_rss")],
                unit="By",
                description="Physical memory in use (resident set size)",
            )
            meter.create_observable_up_down_counter(
                "process.memory.virtual",
                [processes("memory_virtual")],
                unit="By",
                description="Virtual memory committed",
            )
            meter.create_observable_up_down_counter(
                "process.thread.count",
                [processes("threads")],
                unit="{thread}",
                description="Threads",
            )
        if self._nvml is not None:
            meter.create_observable_up_down_counter(
                "hw.gpu.memory.usage",
                [gpus(lambda g: g.memory_used)],
                unit="By",
                description="GPU memory used",
            )
            meter.create_observable_up_down_counter(
                "hw.gpu.memory.limit",
                [gpus(lambda g: g.memory_total)],
                unit="By",
                description="GPU memory size",
            )
            meter.create_observable_gauge(
                "hw.gpu.utilization",
                [gpus(lambda g: g.utilization)],
                unit="1",
                description="Share of time a kernel was running on the GPU",
            )

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):  # already shut down elsewhere in the process
                self._nvml.nvmlShutdown()
            self._nvml = None
