"""The single router (ladle.plugins.routers.single): everything to the latest version."""

from __future__ import annotations

import numpy as np
import pytest

from ladle import (
    ConfigError,
    InferenceRequest,
    ModelConfig,
    ModelNotReadyError,
    PluginHost,
    Route,
    RoutingTable,
    Target,
)
from ladle.plugins.routers.single.router import SingleRouter
from ladle.serving import ModelEndpoint


def request() -> InferenceRequest:
    return InferenceRequest("m", {"x": np.zeros((1, 2), dtype=np.float32)}, routing_key="user-7")


def test_the_only_version_takes_everything() -> None:
    route = SingleRouter({}).route(request(), RoutingTable("m", ("1",)))
    assert route == Route(Target("m", "1"))
    assert route.shadows == ()


def test_the_latest_version_takes_everything_whatever_the_weights() -> None:
    router = SingleRouter({})
    table = RoutingTable("m", ("1", "2", "10"), weights={"1": 90.0, "10": 10.0})
    assert {router.route(request(), table).primary for _ in range(50)} == {Target("m", "10")}


def test_it_is_static_so_the_core_asks_once_per_table_and_follows_a_swap_at_once() -> None:
    router = SingleRouter({})
    assert SingleRouter.static
    endpoint = ModelEndpoint("m", ModelConfig(), router)
    endpoint.set_table(RoutingTable("m", ("1", "2")))
    assert endpoint.fixed_route == Route(Target("m", "2"))  # computed once, when the table changed
    endpoint.set_table(RoutingTable("m", ("1", "2", "3")))
    assert endpoint.fixed_route == Route(Target("m", "3"))
    endpoint.set_table(RoutingTable("m", ()))
    assert endpoint.fixed_route is None  # no version: the pipeline answers 503


def test_a_table_without_versions_answers_503() -> None:
    with pytest.raises(ModelNotReadyError, match="'m' has no version") as caught:
        SingleRouter({}).route(request(), RoutingTable("m", ()))
    assert caught.value.status == 503


def test_options_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"router 'single'.*weights: unknown key"):
        SingleRouter({"weights": {"1": 100}})


def test_the_single_router_is_registered(ladle_host: PluginHost) -> None:
    assert ladle_host.load("router", "single") is SingleRouter
