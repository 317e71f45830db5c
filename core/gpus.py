"""GPUs and memory sizes: ``"20GiB"``-style strings, ``--gpus``-style specs, and NVML.

NVML (``nvidia-ml-py``, the ``nvml`` extra) is imported only when a function here reads it, and its
absence (or a machine without a driver) gives ``None``, never an error. Nothing here touches a GPU.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import ConfigError

__all__ = [
    "GiB",
    "Gpu",
    "MiB",
    "format_bytes",
    "machine_gpus",
    "memory_bytes",
    "nvml_process_memory",
    "parse_gpus",
    "parse_memory",
]

MiB = 1 << 20
GiB = 1 << 30

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_GPUS = re.compile(r"\s*(?:(\d+)\s*[xX*]\s*)?(.+)")


# memory strings ------------------------------------------------------------------------------


def memory_bytes(value: object) -> int:
    """Bytes from ``"20GiB"``, ``"500MB"``, ``"80GB"``, ``"8Gi"`` or a plain positive integer.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary ones (KiB/Ki ... TiB/Ti) powers of 1024;
    case does not matter. Raises ``ValueError`` saying what is accepted (for pydantic validators).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected bytes as an integer or a string such as '20GiB', got {value!r}")
    if isinstance(value, int):
        number = Decimal(value)
        unit = ""
    else:
        match = _MEMORY.fullmatch(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{value!r} is not a memory size: use a number and a unit such as '20GiB', '500MB', "
                "'80GB', '8Gi', or plain bytes"
            )
        try:
            number = Decimal(match.group(1))
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimal numbers
            raise ValueError(f"{value!r} is not a memory size") from None
    result = math.ceil(number * _UNITS[unit])
    if result <= 0:
        raise ValueError(f"a memory size must be positive, got {value!r}")
    return result


def parse_memory(value: object, key: str = "gpu_memory") -> int:
    """``memory_bytes``, raising a ``ConfigError`` that names ``key``."""
    try:
        return memory_bytes(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}", key=key) from None


def format_bytes(size: int) -> str:
    """``"21.5 GiB"``, ``"512 MiB"``: binary units, for people."""
    if size >= GiB:
        return f"{size / GiB:.1f} GiB"
    if size >= MiB:
        return f"{size / MiB:.0f} MiB"
    return f"{size} B"


# GPUs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    """One GPU of the machine: its index (NVML / PCI bus order) and memory."""

    index: int
    memory_bytes: int
    name: str = ""

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"


def parse_gpus(spec: str, key: str = "--gpus") -> tuple[Gpu, ...]:
    """GPUs from ``"4x80GiB"``, ``"80GiB,40GiB"`` or ``"2x80GiB,40GB"``, indexed in the order given."""
    gpus: list[Gpu] = []
    for part in spec.split(","):
        match = _GPUS.fullmatch(part)
        if not part.strip() or match is None:
            raise ConfigError(
                f"{key}: expected GPUs such as '4x80GiB' or '80GiB,40GiB', got {spec!r}", key=key
            )
        count = int(match.group(1) or 1)
        if count < 1:
            raise ConfigError(f"{key}: a GPU count must be at least 1, got {part.strip()!r}", key=key)
        try:
            size = memory_bytes(match.group(2).strip())
        except ValueError as exc:
            raise ConfigError(f"{key}: in {spec!r}: {exc}", key=key) from None
        start = len(gpus)
        gpus.extend(Gpu(start + i, size) for i in range(count))
    return tuple(gpus)


def _nvml() -> Any:
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception:  # absent package, no driver or no device: NVMLError subclasses, one per cause
        return None
    return nvml


def machine_gpus() -> tuple[Gpu, ...] | None:
    """This machine's GPUs through NVML (total memory each); ``None`` without NVML or a driver."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            gpus.append(Gpu(index, total, name.decode() if isinstance(name, bytes) else str(name)))
        return tuple(gpus)
    except Exception:
        return None
    finally:
        nvml.nvmlShutdown()


def nvml_process_memory(pid: int) -> int | None:
    """Device memory NVML attributes to process ``pid`` on all GPUs (as an MPS client too); ``None``
    when NVML is absent or does not see the process (another PID namespace, no accounting)."""
    nvml = _nvml()
    if nvml is None:
        return None
    total = 0
    seen = False
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            listings = ["nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetMPSComputeRunningProcesses"]
            for listing in listings:
                try:
                    processes = getattr(nvml, listing)(handle)
                except Exception:  # an older library or driver without this listing
                    continue
                for process in processes:
                    used = getattr(process, "usedGpuMemory", None)
                    if process.pid == pid and isinstance(used, int):
                        total += used
                        seen = True
                if seen:
                    break
        return total if seen else None
    except Exception:
        return None
    finally:
        nvml.nvmlShutdown()
