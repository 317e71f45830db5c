"""Latency objectives per model version, judged on the stats layer's windows.

``slo_report`` compares a version's windowed figures with its ``latency_slo`` (``ladle.config.
LatencySlo``): request p99 against ``p99``, time to first token and inter-token latency (95th
percentiles) against ``ttft`` and ``itl``. The same report feeds ``/api/v1/stats``, ``ladle top``
and the scaling loop (``VersionMetrics.slo_breached``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import LatencySlo
from .series import HistogramSnapshot
from .stats import StatsRegistry

__all__ = ["ITL", "TTFT", "breached", "slo_report"]

TTFT = "ladle.generation.time_to_first_token"
ITL = "ladle.generation.inter_token_latency"


def _quantile(
    stats: StatsRegistry, family: str, model: str, version: str, q: float, seconds: float
) -> float | None:
    if family not in stats.families:
        return None
    window = stats.family_window(family, model, version, seconds)
    return window.quantile(q) if isinstance(window, HistogramSnapshot) and window.count else None


def slo_report(
    stats: StatsRegistry, model: str, version: str, slo: LatencySlo | None, seconds: float
) -> dict[str, dict[str, Any]]:
    """Per objective set: ``{"target", "value", "met"}`` (``value`` and ``met`` are ``None`` without data)."""
    if slo is None:
        return {}
    seconds = min(seconds, stats.horizon)
    figures: dict[str, tuple[float | None, Callable[[], float | None]]] = {
        "p99": (slo.p99, lambda: stats.window(model, version, seconds).latency_p99),
        "ttft": (slo.ttft, lambda: _quantile(stats, TTFT, model, version, 0.95, seconds)),
        "itl": (slo.itl, lambda: _quantile(stats, ITL, model, version, 0.95, seconds)),
    }
    report: dict[str, dict[str, Any]] = {}
    for name, (target, read) in figures.items():
        if target is None:
            continue
        value = read()
        report[name] = {"target": target, "value": value, "met": None if value is None else value <= target}
    return report


def breached(report: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """The objectives of a report that are missed now."""
    return tuple(name for name, entry in report.items() if entry["met"] is False)
