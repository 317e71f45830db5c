"""Resource gauges (psutil, NVML) and the ``[telemetry]`` table."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ladle.config import load_server_config
from ladle.errors import ConfigError
from ladle.telemetry import ResourceMonitor, Telemetry


def test_process_figures_of_this_process_and_a_worker() -> None:
    monitor = ResourceMonitor(gpu=False)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        monitor.add_process(child.pid)
        figures = {p.pid: p for p in monitor.processes()}
        assert figures[os.getpid()].role == "front" and figures[child.pid].role == "worker"
        assert figures[os.getpid()].memory_rss > 1_000_000
        assert figures[os.getpid()].threads >= 1
        child.kill()
        child.wait(10)
        assert child.pid not in {p.pid for p in monitor.processes()}  # a dead worker drops out
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert monitor.gpus() == []


class _Memory:
    def __init__(self, total: int, used: int) -> None:
        self.total, self.used, self.free = total, used, total - used


def fake_nvml(devices: list[tuple[str, int, int]]) -> types.ModuleType:
    """A stand-in for ``pynvml`` with the calls the monitor makes (the real one needs a driver)."""
    module = types.ModuleType("pynvml")
    state = {"up": False}

    def init() -> None:
        state["up"] = True

    def utilization(handle: int) -> Any:
        if handle == 1:
            raise RuntimeError("not supported")
        return types.SimpleNamespace(gpu=40)

    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: state.update(up=False)  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda index: index  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda h: devices[h][0].encode()  # type: ignore[attr-defined]
    module.nvmlDeviceGetUUID = lambda h: f"GPU-{h}"  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda h: _Memory(devices[h][1], devices[h][2])  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = utilization  # type: ignore[attr-defined]
    module.state = state  # type: ignore[attr-defined]
    return module


def test_gpu_memory_per_device_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_nvml([("H100", 80 << 30, 10 << 30), ("A10", 24 << 30, 1 << 30)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    telemetry = Telemetry({})
    try:
        gpus = telemetry.resources.gpus()  # type: ignore[union-attr]
        assert [(g.name, g.memory_used, g.memory_free, g.utilization) for g in gpus] == [
            ("H100", 10 << 30, 70 << 30, 0.4),
            ("A10", 1 << 30, 23 << 30, None),
        ]
        body = telemetry.prometheus_text()[0].decode()
        samples = {
            (s.name, s.labels.get("hw_id")): s.value
            for f in text_string_to_metric_families(body)
            for s in f.samples
        }
        assert samples[("hw_gpu_memory_usage_bytes", "GPU-0")] == 10 << 30
        assert samples[("hw_gpu_memory_limit_bytes", "GPU-1")] == 24 << 30
        assert samples[("hw_gpu_utilization", "GPU-0")] == 0.4
        assert ("hw_gpu_utilization", "GPU-1") not in samples
        assert telemetry.snapshot()["resources"]["gpus"][1]["memory_free"] == 23 << 30
    finally:
        telemetry.close()
    assert nvml.state == {"up": False}  # type: ignore[attr-defined]


def test_no_nvml_means_no_gpu_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = fake_nvml([])
    broken.nvmlInit = lambda: (_ for _ in ()).throw(RuntimeError("driver not loaded"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    monitor = ResourceMonitor()
    assert not monitor.has_gpu_figures and monitor.gpus() == []


def test_defaults_metrics_on_logs_and_traces_off() -> None:
    telemetry = Telemetry()
    try:
        assert telemetry.metrics is not None
        assert telemetry.logs is None and telemetry.spans is None and telemetry.quality is None
        assert telemetry.resources is not None
    finally:
        telemetry.close()


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"traces": {"ratoi": 0.5}}, "telemetry.traces.ratoi"),
        ({"traces": {"ratio": 2}}, "telemetry.traces.ratio"),
        ({"logs": {"buffer": 0}}, "telemetry.logs.buffer"),
        ({"latency_buckets": [1.0, 0.5]}, "telemetry.latency_buckets"),
        ({"quality": {"checks": "maybe"}}, "telemetry.quality.checks"),
    ],
)
def test_bad_keys_are_config_errors_naming_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Telemetry(table)
    assert key in caught.value.message
    assert caught.value.details["problems"][0]["key"] == key


def test_built_from_ladle_toml_with_paths_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "ladle.toml").write_text(
        '[telemetry]\nservice_name = "edge"\nlatency_buckets = [0.001, 0.1]\n'
        '[telemetry.logs]\nenabled = true\npath = "state/logs.db"\n'
    )
    telemetry = Telemetry.from_server_config(load_server_config(tmp_path / "ladle.toml"))
    try:
        assert telemetry.logs is not None and telemetry.logs.path == tmp_path / "state" / "logs.db"
        assert telemetry.stats.request_duration.bounds == (0.001, 0.1)
        assert b'service_name="edge"' in telemetry.prometheus_text()[0]
    finally:
        telemetry.close()
