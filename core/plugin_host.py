"""The plugin host: finds, loads, lists, enables and disables plugins.

Built-in plugins and pip-installed ones go the same way: each is an entry point in the ``ladle``
group. Entry points are enumerated here rather than by pluggy, because pluggy skips a duplicate name
silently and lets one failing import break every other plugin.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pluggy

from . import hookspecs
from .errors import (
    ConfigError,
    DuplicatePluginError,
    MissingDependencyError,
    PluginError,
    PluginNotFoundError,
)

__all__ = [
    "API_VERSION",
    "FAMILIES",
    "Family",
    "PluginHost",
    "PluginRecord",
    "Register",
    "Registration",
    "RuntimeCapabilities",
]

#: Environment variable: comma-separated distributions whose entry points load (all when unset).
DISTRIBUTIONS_VARIABLE = "LADLE_PLUGIN_DISTRIBUTIONS"
#: The plugin API this ladle speaks; a registration asking for a newer one is refused.
API_VERSION = 1

Family = Literal["runtime", "batcher", "router", "scaling_policy", "placement"]
FAMILIES: dict[Family, str] = {
    "runtime": "register_runtimes",
    "batcher": "register_batchers",
    "router": "register_routers",
    "scaling_policy": "register_scaling_policies",
    "placement": "register_placements",
}
Detector = Callable[[Path], bool]


@dataclass(frozen=True)
class RuntimeCapabilities:
    """What a runtime declares at registration, so the front process knows it without importing the
    runtime (and its framework): ``preferred_batcher`` serves the model when its config keeps the
    default batcher; ``pads``: requests of different non-batch shapes may share a zero-padded batch;
    ``max_batch_rows`` caps every batch (an instance may lower it after load); ``steps``: the runtime
    is driven step by step (a ``ladle.StepRuntime``) by a batcher that runs beside it, in-process."""

    preferred_batcher: str | None = None
    pads: bool = False
    max_batch_rows: int | None = None
    steps: bool = False

    @classmethod
    def parse(cls, plugin: str, name: str, values: Mapping[str, Any]) -> RuntimeCapabilities:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PluginError(
                f"plugin {plugin!r} declared unknown capabilities {unknown} for runtime {name!r}; "
                f"known: {sorted(known)}",
                plugin=plugin,
            )
        rows = values.get("max_batch_rows")
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise PluginError(f"runtime {name!r}: max_batch_rows must be an integer >= 1", plugin=plugin)
        return cls(**dict(values))


@dataclass(frozen=True)
class Registration:
    """One thing a plugin registered: a runtime, batcher, router, scaling policy or placement."""

    family: Family
    name: str
    factory: Any
    plugin: str
    requires: tuple[str, ...] = ()
    extra: str | None = None
    api_version: int = API_VERSION
    detect: Detector | None = None
    description: str = ""
    distribution: str = ""
    #: Declared capabilities (runtimes only; other families declare theirs on their classes).
    capabilities: RuntimeCapabilities = RuntimeCapabilities()

    def missing(self) -> list[str]:
        """Required modules that cannot be found (checked without importing them)."""
        return [name for name in self.requires if _find_spec(name) is None]

    def load(self) -> Any:
        """The factory, imported on first use; raises ``MissingDependencyError`` naming the extra."""
        missing = self.missing()
        if missing:
            raise MissingDependencyError(
                self._missing_message(f"needs {', '.join(missing)}", missing),
                plugin=self.plugin,
                missing=missing,
                extra=self.extra,
            )
        if isinstance(self.factory, str):
            module_name, _, attribute = self.factory.partition(":")
            try:
                target: Any = importlib.import_module(module_name)
                for part in attribute.split(".") if attribute else ():
                    target = getattr(target, part)
            except ImportError as exc:
                absent = [exc.name] if isinstance(exc, ModuleNotFoundError) and exc.name else []
                raise MissingDependencyError(
                    self._missing_message(f"failed to import: {exc}", absent),
                    plugin=self.plugin,
                    extra=self.extra,
                ) from exc
            return target
        return self.factory

    def install_hint(self, missing: list[str]) -> str:
        """What to install: ``pip install 'dist[extra]'`` whenever the registration names an extra (the
        distribution found from the factory's package when the plugin was added without one), else
        ``pip install`` of the missing modules; ``""`` when there is nothing to name."""
        if self.extra:
            distribution = self.distribution or _distribution_of(self.factory)
            if distribution:
                return f"pip install '{distribution}[{self.extra}]'"
        return f"pip install {' '.join(missing)}" if missing else ""

    def _missing_message(self, problem: str, missing: list[str]) -> str:
        """``problem`` plus how to fix it; the extra is named even where no distribution is known."""
        hint = self.install_hint(missing)
        message = f"{self.family} {self.name!r} (plugin {self.plugin!r}) {problem}" + (
            f": {hint}" if hint else ""
        )
        if self.extra and f"[{self.extra}]" not in hint:
            message += f" (the {self.extra!r} extra of the package that provides plugin {self.plugin!r})"
        return message


def _distribution_of(factory: Any) -> str:
    """The installed distribution that ships ``factory``'s top-level package, if exactly one does."""
    module = factory.partition(":")[0] if isinstance(factory, str) else getattr(factory, "__module__", "")
    return _distribution_of_package(str(module or "").partition(".")[0])


@functools.lru_cache(maxsize=64)
def _distribution_of_package(package: str) -> str:
    names = set(metadata.packages_distributions().get(package, ())) if package else set()
    return names.pop() if len(names) == 1 else ""


def _find_spec(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


class Register:
    """The callback handed to registration hooks; records which plugin registered what."""

    def __init__(self, host: PluginHost, family: Family, plugin: str) -> None:
        self._host = host
        self._family = family
        self._plugin = plugin

    def __call__(
        self,
        name: str,
        factory: Any,
        *,
        requires: Iterable[str] = (),
        extra: str | None = None,
        api_version: int = API_VERSION,
        detect: Detector | None = None,
        description: str = "",
        capabilities: Mapping[str, Any] | None = None,
    ) -> None:
        if (
            not isinstance(name, str)
            or not name
            or not name.replace("-", "_").replace(".", "_").isidentifier()
        ):
            raise PluginError(f"plugin {self._plugin!r} registered an invalid {self._family} name {name!r}")
        record = self._host.records.get(self._plugin)
        if api_version > API_VERSION:
            raise PluginError(
                f"plugin {self._plugin!r} needs ladle plugin API {api_version}, "
                f"this ladle speaks {API_VERSION}",
                plugin=self._plugin,
            )
        if capabilities and self._family != "runtime":
            raise PluginError(
                f"plugin {self._plugin!r}: only runtimes declare capabilities at registration "
                f"({self._family} {name!r} declares its own on its class)",
                plugin=self._plugin,
            )
        self._host._add(
            Registration(
                self._family,
                name,
                factory,
                self._plugin,
                tuple(requires),
                extra,
                api_version,
                detect,
                description,
                record.distribution if record is not None else "",
                RuntimeCapabilities.parse(self._plugin, name, capabilities or {}),
            )
        )


@dataclass
class PluginRecord:
    """What the host knows about one plugin, for ``ladle plugins``."""

    name: str
    source: str
    version: str = ""
    status: Literal["loaded", "disabled", "failed"] = "loaded"
    error: str = ""
    hooks: list[str] = field(default_factory=list)
    distribution: str = ""

    def to_dict(self, registrations: list[Registration]) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "hooks": self.hooks,
            "registers": [
                {
                    "family": r.family,
                    "name": r.name,
                    "requires": list(r.requires),
                    "missing": r.missing(),
                    "extra": r.extra,
                    "install": r.install_hint(r.missing()) if r.missing() else "",
                    "description": r.description,
                }
                for r in registrations
                if r.plugin == self.name
            ],
        }


class PluginHost:
    """A fresh plugin manager and registry; make one per server or per test, never a global.

    ``disabled`` names plugins (entry-point names) not to load; a third party replaces a built-in by
    disabling it and registering the same name.
    """

    def __init__(self, disabled: Iterable[str] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = set(disabled)
        self.records: dict[str, PluginRecord] = {}
        self._registry: dict[Family, dict[str, Registration]] = {family: {} for family in FAMILIES}
        self._collected = False

    # discovery -------------------------------------------------------------------------------

    def discover(self) -> PluginHost:
        """Load every ``ladle`` entry point that is not disabled, then collect registrations.

        With ``LADLE_PLUGIN_DISTRIBUTIONS`` set (comma-separated distribution names), only entry
        points of those distributions load: a test suite or a locked-down server stays hermetic
        against whatever else is installed.
        """
        seen: dict[str, str] = {}
        allowed = {
            d.strip().lower() for d in os.environ.get(DISTRIBUTIONS_VARIABLE, "").split(",") if d.strip()
        }
        for ep in sorted(metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else ""
            if allowed and dist.lower() not in allowed:
                continue
            version = ep.dist.version if ep.dist is not None else ""
            if ep.name in seen and seen[ep.name] != ep.value:
                raise DuplicatePluginError(
                    f"two plugins are named {ep.name!r}: {seen[ep.name]} and {ep.value} (from {dist})",
                    plugin=ep.name,
                )
            if ep.name in seen:
                continue
            seen[ep.name] = ep.value
            if ep.name in self.disabled:
                self.records[ep.name] = PluginRecord(
                    ep.name, ep.value, version, "disabled", distribution=dist
                )
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                self.records[ep.name] = PluginRecord(
                    ep.name, ep.value, version, "failed", f"{type(exc).__name__}: {exc}", distribution=dist
                )
                continue
            self.add_plugin(module, ep.name, source=ep.value, version=version, distribution=dist)
        return self.collect()

    def add_plugin(
        self, plugin: Any, name: str, *, source: str = "", version: str = "", distribution: str = ""
    ) -> None:
        """Register a plugin object or module directly (tests, ``plugins.modules`` in config)."""
        if name in self.disabled:
            self.records[name] = PluginRecord(name, source, version, "disabled")
            return
        if self.pm.is_registered(plugin):
            return  # already loaded under its entry-point name: one plugin, once
        if name in self.records and self.records[name].status == "loaded":
            raise DuplicatePluginError(
                f"two plugins are named {name!r}: {self.records[name].source} and {source}", plugin=name
            )
        self.pm.register(plugin, name=name)
        hooks = sorted(impl.name for impl in self.pm.get_hookcallers(plugin) or ())
        if not source:
            source = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__qualname__
        self.records[name] = PluginRecord(
            name, source, version, "loaded", hooks=hooks, distribution=distribution
        )
        self._collected = False

    def add_module(self, module_name: str) -> None:
        """Import ``module_name`` and register it as a plugin named after the module."""
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            self.records[module_name] = PluginRecord(
                module_name, module_name, "", "failed", f"{type(exc).__name__}: {exc}"
            )
            return
        self.add_plugin(module, module_name, source=module_name)

    def collect(self) -> PluginHost:
        """Call every registration hook once per plugin, recording who registered what."""
        self.pm.check_pending()
        self._registry = {family: {} for family in FAMILIES}
        for family, hook_name in FAMILIES.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                function: Callable[..., Any] = impl.function
                function(register=Register(self, family, impl.plugin_name))
        self._collected = True
        return self

    def _add(self, registration: Registration) -> None:
        table = self._registry[registration.family]
        existing = table.get(registration.name)
        if existing is not None:
            raise DuplicatePluginError(
                f"{registration.family} {registration.name!r} is registered by both "
                f"{existing.plugin!r} and {registration.plugin!r}; "
                "disable one in ladle.toml [plugins] disabled",
                family=registration.family,
                name=registration.name,
                plugins=[existing.plugin, registration.plugin],
            )
        table[registration.name] = registration

    # lookup ----------------------------------------------------------------------------------

    def registrations(self, family: Family | None = None) -> list[Registration]:
        if not self._collected:
            self.collect()
        families = [family] if family else list(FAMILIES)
        return [r for f in families for r in self._registry[f].values()]

    def get(self, family: Family, name: str) -> Registration:
        if not self._collected:
            self.collect()
        try:
            return self._registry[family][name]
        except KeyError:
            known = sorted(self._registry[family])
            raise PluginNotFoundError(
                f"no {family} named {name!r}; available: {', '.join(known) or 'none'}",
                family=family,
                name=name,
                available=known,
            ) from None

    def load(self, family: Family, name: str) -> Any:
        """The factory registered under ``name`` (imports it; raises if its dependency is missing)."""
        return self.get(family, name).load()

    def detect_runtime(self, directory: Path) -> str | None:
        """The runtime whose ``detect`` recognises the artifact in ``directory``; ``None`` when none
        does. When several do, the choice is never silent: ``ConfigError`` names them all (set
        ``runtime`` in the model's config, or disable one plugin)."""
        claimed = []
        for registration in sorted(self.registrations("runtime"), key=lambda r: r.name):
            if registration.detect is not None:
                try:
                    if registration.detect(directory):
                        claimed.append(registration)
                except OSError:
                    continue
        if len(claimed) > 1:
            names = ", ".join(f"{r.name!r} (plugin {r.plugin!r})" for r in claimed)
            raise ConfigError(
                f"{directory}: several runtimes recognise these files: {names}; set runtime in the "
                "model's model.toml, or disable one of the plugins in ladle.toml [plugins] disabled",
                file=str(directory),
                key="runtime",
                runtimes=[r.name for r in claimed],
            )
        return claimed[0].name if claimed else None

    def describe(self) -> list[dict[str, Any]]:
        """One dict per plugin: name, version, status, hooks, what it registers and what it is missing."""
        registrations = self.registrations()
        return [self.records[name].to_dict(registrations) for name in sorted(self.records)]

    @property
    def hook(self) -> Any:
        return self.pm.hook
