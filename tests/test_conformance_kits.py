"""The batcher, router and step-able runtime conformance kits, run over the built-in plugins (the
runtime kit runs in each runtime's own tests); and each kit shown to catch a plugin that breaks its
contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from ladle import InferenceRequest, PluginHost, Route, Router, RoutingTable, RuntimeSpec, Target, hookimpl
from ladle.testing.batcher_kit import BatcherConformance
from ladle.testing.router_kit import RouterConformance
from ladle.testing.step_kit import StepRuntimeConformance


class TestDynamicBatcher(BatcherConformance):
    batcher = "dynamic"
    options: ClassVar[dict[str, Any]] = {"max_batch_size": 8}
    row_cap_option = "max_batch_size"


class TestPassthroughBatcher(BatcherConformance):
    batcher = "passthrough"


class TestSingleRouter(RouterConformance):
    router = "single"


class TestCanaryRouter(RouterConformance):
    router = "canary"


class TestShadowRouter(RouterConformance):
    router = "shadow"
    options: ClassVar[dict[str, Any]] = {"shadow": "2"}


class TestABRouter(RouterConformance):
    router = "ab"
    options: ClassVar[dict[str, Any]] = {"arms": {"control": "1", "treatment": "2"}}


class TestBlueGreenRouter(RouterConformance):
    router = "blue-green"


class TestCascadeRouter(RouterConformance):
    router = "cascade"
    options: ClassVar[dict[str, Any]] = {"small": "1", "large": "big:1"}


class TestCausalLMRuntime(StepRuntimeConformance):
    def make_spec(self, directory: Path) -> RuntimeSpec:
        pytest.importorskip("torch")
        from ladle.testing.lm import llama_config, write_checkpoint

        write_checkpoint(directory, llama_config())
        return RuntimeSpec("causal-lm", str(directory), options={"kv_cache_bytes": "8MiB"})


class AlwaysFirstRouter(Router):
    """Claims to split weights, yet sends everything to the first version, keyed or not."""

    splits_weights = True

    def route(self, request: InferenceRequest, table: RoutingTable) -> Route:
        return Route(Target(table.model, table.versions[0]))


class _Broken:
    @hookimpl
    def register_routers(self, register: Any) -> None:
        register("always-first", AlwaysFirstRouter)


def test_the_router_kit_catches_a_router_that_ignores_its_weights() -> None:
    class Kit(RouterConformance):
        router = "always-first"

        def plugin_host(self) -> PluginHost:
            host = PluginHost()
            host.add_plugin(_Broken(), "broken")
            return host.discover()

    with pytest.raises(AssertionError, match="keyed shares"):
        Kit().test_weights_are_followed_and_keys_stick()
