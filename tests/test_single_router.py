"""The single router (ladle.plugins.routers.single): everything to the latest version."""

from __future__ import annotations

import numpy as np
import pytest

from ladle import ConfigError, InferenceRequest, ModelNotReadyError, PluginHost, Route, RoutingTable, Target
from ladle.plugins.routers.single.router import SingleRouter


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


def test_a_swapped_table_is_followed_at_once() -> None:
    router = SingleRouter({})
    old = RoutingTable("m", ("1", "2"))
    first = router.route(request(), old)
    assert router.route(request(), old) is first  # computed once per table
    assert router.route(request(), RoutingTable("m", ("1", "2", "3"))).primary == Target("m", "3")
    assert router.route(request(), RoutingTable("m", ("1",))).primary == Target("m", "1")


def test_a_table_without_versions_answers_503() -> None:
    with pytest.raises(ModelNotReadyError, match="'m' has no version") as caught:
        SingleRouter({}).route(request(), RoutingTable("m", ()))
    assert caught.value.status == 503


def test_options_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"router 'single'.*weights: unknown key"):
        SingleRouter({"weights": {"1": 100}})


def test_the_single_router_is_registered(ladle_host: PluginHost) -> None:
    assert ladle_host.load("router", "single") is SingleRouter
