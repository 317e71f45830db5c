"""The model repository on disk: ``REPO/<model>/<version>/...`` plus an optional ``<model>/model.toml``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import MODEL_CONFIG_FILE, ModelConfig, ServerConfig, merge_model_config, model_config_sources
from .errors import ConfigError, InvalidRequestError, ModelNotFoundError, PluginNotFoundError
from .plugin_host import PluginHost
from .runtime import RuntimeSpec

__all__ = ["ModelPlan", "ModelRepository", "check_name", "version_key"]

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_PARTS = re.compile(r"(\d+)")


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid model or version name, else raise ``InvalidRequestError`` (400)."""
    if not _NAME.fullmatch(value) or value in (".", "..") or set(value) == {"."}:
        raise InvalidRequestError(
            f"invalid {kind} name {value!r}: use letters, digits, '.', '_' and '-'", **{kind: value}
        )
    return value


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: ``v3.9 < v3.10`` and ``2 < 10``; numbers sort before text at the same place."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in _PARTS.split(version) if part)


@dataclass(frozen=True)
class ModelPlan:
    """A model resolved from the repository and config: what to serve and how."""

    name: str
    config: ModelConfig
    versions: tuple[str, ...]
    specs: dict[str, RuntimeSpec]
    #: Top-level config key -> the file (and table) that set it, for error messages.
    sources: Mapping[str, str] = field(default_factory=dict)

    def source(self, key: str) -> str:
        """Where ``key`` of this model's config was set (``"built-in default"`` when nowhere)."""
        return self.sources.get(key, "built-in default")


class ModelRepository:
    """Reads models and versions from a directory tree; refuses names that could escape it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        """The model folders, by name; hidden folders (``.git``, ``.ipynb_checkpoints``) are not models."""
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a directory", file=str(self.root))
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and _NAME.fullmatch(p.name)
        )

    def misnamed(self) -> list[str]:
        """Folders of the repository that ``models`` leaves out for their names (hidden ones aside)."""
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and not _NAME.fullmatch(p.name)
        )

    def versions(self, model: str) -> list[str]:
        """Every version directory of ``model``, in natural order."""
        directory = self.model_dir(model)
        found = [p.name for p in directory.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
        return sorted(found, key=version_key)

    def model_dir(self, model: str) -> Path:
        check_name("model", model)
        directory = self.root / model
        if not directory.is_dir():
            raise ModelNotFoundError(f"model {model!r} is not in the repository", model=model)
        return directory

    def version_dir(self, model: str, version: str) -> Path:
        check_name("version", version)
        directory = self.model_dir(model) / version
        if not directory.is_dir():
            raise ModelNotFoundError(
                f"version {version!r} of model {model!r} is not in the repository",
                model=model,
                version=version,
            )
        return directory

    def plan(self, model: str, server: ServerConfig, host: PluginHost) -> ModelPlan:
        """Resolve config, versions and a runtime spec per version (runtime inferred when not set)."""
        model_file = self.model_dir(model) / MODEL_CONFIG_FILE
        config = merge_model_config(server, model, model_file)
        sources = model_config_sources(server, model, model_file)
        selected = config.version_policy.select(self.versions(model))
        if not selected:
            raise ConfigError(
                f"model {model!r} has no version directory matching its version_policy",
                file=str(self.model_dir(model)),
            )
        if config.traffic:
            unknown = sorted(set(config.traffic) - set(selected))
            if unknown or abs(sum(config.traffic.values()) - 100) > 1e-6:
                source = sources.get("traffic", "")
                raise ConfigError(
                    f"{source}: traffic: model {model!r} must give percents summing to 100 to served "
                    f"versions {selected}; got {config.traffic}",
                    file=source,
                    key="traffic",
                )
            if config.router.name == "single":
                source = sources.get("router", sources.get("traffic", ""))
                raise ConfigError(
                    f"{source}: router: model {model!r} has a traffic split, which needs a weighted "
                    "router such as 'canary', not 'single'",
                    file=source,
                    key="router",
                )
        specs = {version: self.spec(model, version, config, host, sources) for version in selected}
        return ModelPlan(model, config, tuple(selected), specs, sources)

    def spec(
        self,
        model: str,
        version: str,
        config: ModelConfig,
        host: PluginHost,
        sources: Mapping[str, str] | None = None,
    ) -> RuntimeSpec:
        directory = self.version_dir(model, version)
        runtime = config.runtime or host.detect_runtime(directory)
        if runtime is None:
            raise ConfigError(
                f"{directory}: no runtime recognises these files; set runtime in "
                f"{self.model_dir(model) / MODEL_CONFIG_FILE}",
                file=str(directory),
                key="runtime",
            )
        try:
            host.get("runtime", runtime)  # fail at start on an unknown runtime name
        except PluginNotFoundError as exc:
            source = (sources or {}).get("runtime", str(self.model_dir(model) / MODEL_CONFIG_FILE))
            raise PluginNotFoundError(
                f"{source}: runtime: {exc.message}", file=source, key="runtime", **exc.details
            ) from None
        return RuntimeSpec(
            plugin=runtime,
            artifact=str(directory),
            model=model,
            version=version,
            options=dict(config.options),
            device=config.device,
            threads=config.threads or 1,
            trust_code=config.trust_code,
            signature=config.signature,
        )
