"""The ``[telemetry]`` table of ``ladle.toml``, validated (keys are documented in ``ladle.telemetry``)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import validation_error

__all__ = [
    "LogsConfig",
    "OtlpConfig",
    "QualityConfig",
    "ResourcesConfig",
    "TelemetryConfig",
    "TracesConfig",
    "parse_telemetry_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OtlpConfig(_Strict):
    endpoint: str | None = Field(default=None, description="base URL of an OTLP/HTTP collector")
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=10.0, gt=0)
    metrics_interval: float = Field(default=30.0, ge=0, description="seconds between metric exports; 0: none")


class TracesConfig(_Strict):
    enabled: bool = False
    ratio: float = Field(default=0.01, ge=0.0, le=1.0)
    exporter: Literal["otlp", "console", "none"] = "otlp"


class LogsConfig(_Strict):
    enabled: bool = False
    path: str = "inference-logs.sqlite3"
    sample: float = Field(default=1.0, ge=0.0, le=1.0)
    inputs: bool = False
    outputs: bool = False
    buffer: int = Field(default=10_000, ge=1)
    flush_interval: float = Field(default=1.0, gt=0)
    max_age: float | None = Field(default=7 * 24 * 3600.0, gt=0)
    max_rows: int | None = Field(default=1_000_000, ge=1)


Bound = float | list[float]


class QualityConfig(_Strict):
    enabled: bool = False
    outputs: bool = True
    inputs: bool = False
    sample: float = Field(default=1.0, ge=0.0, le=1.0)
    bins: int = Field(default=10, ge=2, le=100)
    reference_rows: int = Field(default=1000, ge=10)
    references: dict[str, str] = Field(default_factory=dict)
    window: float = Field(default=300.0, ge=10.0)
    min_count: int = Field(default=100, ge=1)
    max_columns: int = Field(default=16, ge=1)
    checks: Literal["off", "count", "reject"] = "off"
    ranges: dict[str, dict[str, tuple[Bound, Bound]]] = Field(default_factory=dict)


class ResourcesConfig(_Strict):
    enabled: bool = True
    gpu: bool = True


class TelemetryConfig(_Strict):
    enabled: bool = True
    metrics: bool = True
    service_name: str = "ladle"
    horizon: float = Field(default=300.0, ge=10.0, le=3600.0)
    latency_buckets: list[float] | None = None
    otlp: OtlpConfig = OtlpConfig()
    traces: TracesConfig = TracesConfig()
    logs: LogsConfig = LogsConfig()
    quality: QualityConfig = QualityConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @field_validator("latency_buckets")
    @classmethod
    def _increasing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(b <= a for a, b in itertools.pairwise(value))):
            raise ValueError("must be a non-empty, strictly increasing list of seconds")
        return value


def parse_telemetry_config(
    data: Mapping[str, Any] | TelemetryConfig | None, source: str = "ladle.toml"
) -> TelemetryConfig:
    """Validate a ``[telemetry]`` table; raises ``ConfigError`` naming each bad key."""
    if isinstance(data, TelemetryConfig):
        return data
    try:
        return TelemetryConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise validation_error(source, exc, prefix="telemetry") from None
