"""The splitting routers: weights, sticky keys with a stable hash, minimal movement, and each
router's own rule (A/B arms, blue-green switches, shadow copies, cascade escalation)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from ladle import ConfigError, InferenceRequest, InvalidRequestError, Route, RoutingTable, Target
from ladle.plugins.routers.ab.router import ABRouter
from ladle.plugins.routers.blue_green.router import BlueGreenRouter
from ladle.plugins.routers.canary.router import CanaryRouter
from ladle.plugins.routers.cascade.router import CascadeRouter
from ladle.plugins.routers.shadow.router import ShadowRouter
from ladle.splits import BUCKETS, WeightedSplit, normalise_weights, stable_bucket

from .harness import make_host


def request(key: str | None = None) -> InferenceRequest:
    return InferenceRequest("m", {"x": np.zeros((1, 4), dtype=np.float32)}, routing_key=key)


def table(**weights: float) -> RoutingTable:
    return RoutingTable("m", tuple(weights), dict(weights))


KEYS = [f"user-{i}" for i in range(20_000)]


def test_every_router_is_registered_by_its_plugin() -> None:
    host = make_host()
    names = {r.name for r in host.registrations("router")}
    assert {"canary", "shadow", "blue-green", "ab", "cascade"} <= names
    assert host.load("router", "canary") is CanaryRouter


def test_the_bucket_of_a_key_is_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; the router's hash must not be.
    code = "from ladle.splits import stable_bucket; print([stable_bucket(f'k{i}') for i in range(50)])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str([stable_bucket(f"k{i}") for i in range(50)])
    assert all(0 <= stable_bucket(f"k{i}") < BUCKETS for i in range(1000))


def test_a_keys_route_is_the_owner_of_its_stable_bucket() -> None:
    split = WeightedSplit(table(**{"1": 70.0, "2": 20.0, "3": 10.0}))
    assert all(split.for_key(k) is split.for_bucket(stable_bucket(k)) for k in KEYS[:2000])


def test_random_requests_follow_the_weights() -> None:
    router = CanaryRouter({"run": 1})
    t = table(**{"1": 90.0, "2": 10.0})
    counts = Counter(router.route(request(), t).primary.version for _ in range(20_000))
    assert counts["2"] / 20_000 == pytest.approx(0.10, abs=0.015)


def test_keyless_requests_are_drawn_in_runs_that_follow_the_weights() -> None:
    router = CanaryRouter({"run": 8, "run_ms": 60_000})
    t = table(**{"1": 90.0, "2": 10.0})
    versions = [router.route(request(), t).primary.version for _ in range(80_000)]
    runs = [versions[i : i + 8] for i in range(0, len(versions), 8)]
    assert all(len(set(run)) == 1 for run in runs)  # one draw per run of 8
    assert Counter(run[0] for run in runs)["2"] / len(runs) == pytest.approx(0.10, abs=0.01)
    # keyed requests are not part of any run: each goes where its key's bucket says
    split = router.split(t)
    assert all(router.route(request(k), t) is split.for_key(k) for k in KEYS[:2000])


def test_a_run_ends_after_run_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    import ladle.splits as split_module

    now = [100.0]
    monkeypatch.setattr(split_module.time, "monotonic", lambda: now[0])
    draws = []
    original = WeightedSplit.pick
    monkeypatch.setattr(WeightedSplit, "pick", lambda self: draws.append(now[0]) or original(self))
    router = CanaryRouter({"run": 1000, "run_ms": 5})
    t = table(**{"1": 50.0, "2": 50.0})
    for moment in (100.0, 100.001, 100.0049, 100.006, 100.0061, 100.02):
        now[0] = moment
        router.route(request(), t)
    assert draws == [100.0, 100.006, 100.02]


def test_ab_draws_every_keyless_request_and_run_options_are_checked() -> None:
    assert ABRouter({}).run == 1 and CanaryRouter({}).run == 256
    for options in ({"run": 0}, {"run": 2.5}, {"run_ms": 0}, {"run_ms": "5"}):
        with pytest.raises(ConfigError, match="run"):
            CanaryRouter(options)


def test_a_key_keeps_its_version_across_requests() -> None:
    router = CanaryRouter({})
    t = table(**{"1": 50.0, "2": 50.0})
    first = {key: router.route(request(key), t).primary.version for key in KEYS[:2000]}
    again = {key: router.route(request(key), t).primary.version for key in KEYS[:2000]}
    assert first == again
    assert 0.45 < sum(v == "2" for v in first.values()) / 2000 < 0.55


def test_moving_ten_percent_moves_about_ten_percent_of_the_keys() -> None:
    router = CanaryRouter({})
    before = table(**{"1": 90.0, "2": 10.0})
    after = table(**{"1": 80.0, "2": 20.0})
    old = {key: router.route(request(key), before).primary.version for key in KEYS}
    new = {key: router.route(request(key), after).primary.version for key in KEYS}
    moved = [key for key in KEYS if old[key] != new[key]]
    assert len(moved) / len(KEYS) == pytest.approx(0.10, abs=0.01)
    # Only towards the version that gained traffic: no key bounces from 2 back to 1.
    assert all(old[key] == "1" and new[key] == "2" for key in moved)


def test_a_three_way_split_moves_only_what_the_change_needs() -> None:
    router = CanaryRouter({})
    before = table(**{"1": 70.0, "2": 20.0, "3": 10.0})
    after = table(**{"1": 70.0, "2": 10.0, "3": 20.0})  # 10% from 2 to 3, its neighbour
    old = {key: router.route(request(key), before).primary.version for key in KEYS}
    new = {key: router.route(request(key), after).primary.version for key in KEYS}
    moved = [k for k in KEYS if old[k] != new[k]]
    assert len(moved) / len(KEYS) == pytest.approx(0.10, abs=0.01)
    assert {(old[k], new[k]) for k in moved} == {("2", "3")}


def test_sticky_false_ignores_the_key() -> None:
    router = CanaryRouter({"sticky": False, "run": 1})
    t = table(**{"1": 50.0, "2": 50.0})
    assert len({router.route(request("same-user"), t).primary.version for _ in range(200)}) == 2


def test_weights_of_versions_not_in_the_table_are_ignored() -> None:
    # A version that failed to load keeps its weight in the store but is not in the table.
    t = RoutingTable("m", ("1",), {"1": 50.0, "2": 50.0})
    assert {CanaryRouter({}).route(request(k), t).primary.version for k in KEYS[:100]} == {"1"}
    assert WeightedSplit(RoutingTable("m", ("1", "2"))).share("2") == 1.0  # no weights: the latest


def test_unknown_router_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="stickyy"):
        CanaryRouter({"stickyy": True})


def test_normalise_weights_names_what_is_wrong() -> None:
    assert normalise_weights({"a": 50, "b": 50.0}, ["a", "b"]) == {"a": 50.0, "b": 50.0}
    with pytest.raises(InvalidRequestError, match="unknown version 'c'"):
        normalise_weights({"a": 50, "c": 50}, ["a", "b"])
    with pytest.raises(InvalidRequestError, match="sum to 100"):
        normalise_weights({"a": 50, "b": 40}, ["a", "b"])
    with pytest.raises(InvalidRequestError, match="from 0 to 100"):
        normalise_weights({"a": "50", "b": 50}, ["a", "b"])
    with pytest.raises(InvalidRequestError, match="from 0 to 100"):
        normalise_weights({"a": 150, "b": -50}, ["a", "b"])


def test_ab_counts_the_arm_of_every_request() -> None:
    router = ABRouter({"arms": {"control": "1", "treatment": "2"}})
    t = table(**{"1": 50.0, "2": 50.0})
    routed = Counter(router.route(request(key), t).primary.version for key in KEYS[:1000])
    assert router.counts == {"control": routed["1"], "treatment": routed["2"]}
    assert router.arm_of("2") == "treatment" and router.arm_of("3") == "3"
    assert router.describe() == {"arms": router.counts}


def test_blue_green_sends_everything_to_the_live_version_and_refuses_splits() -> None:
    router = BlueGreenRouter({})
    assert {router.route(request(k), table(blue=100.0, green=0.0)).primary.version for k in KEYS[:50]} == {
        "blue"
    }
    assert {router.route(request(k), table(blue=0.0, green=100.0)).primary.version for k in KEYS[:50]} == {
        "green"
    }
    router.check_weights({"blue": 0.0, "green": 100.0})
    with pytest.raises(InvalidRequestError, match="one version"):
        router.check_weights({"blue": 50.0, "green": 50.0})


def test_shadow_adds_a_copy_to_the_sampled_requests_only() -> None:
    t = RoutingTable("m", ("1", "2"), {"1": 100.0})
    always = ShadowRouter({})
    assert always.route(request(), t) == Route(Target("m", "1"), (Target("m", "2"),))
    never = ShadowRouter({"sample": 0.0})
    assert never.route(request(), t).shadows == ()
    half = ShadowRouter({"sample": 0.5, "shadow": "2"})
    shadowed = sum(bool(half.route(request(), t).shadows) for _ in range(4000))
    assert shadowed / 4000 == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ConfigError, match="sample"):
        ShadowRouter({"sample": 2})


def test_a_shadow_never_mirrors_to_itself() -> None:
    t = RoutingTable("m", ("1", "2"), {"1": 50.0, "2": 50.0})
    router = ShadowRouter({"shadow": "2"})
    for key in KEYS[:200]:
        route = router.route(request(key), t)
        assert route.shadows == (() if route.primary.version == "2" else (Target("m", "2"),))


def test_cascade_escalates_only_unsure_answers() -> None:
    router = CascadeRouter({"small": "1", "large": "big:2", "band": [0.3, 0.7]})
    assert router.route(request(), RoutingTable("m", ("1",))).primary == Target("m", "1")
    sure = {"score": np.array([0.05, 0.95], dtype=np.float32)}
    unsure = {"score": np.array([0.05, 0.5], dtype=np.float32)}
    assert router.escalate(request(), sure) is None
    assert router.escalate(request(), unsure) == Target("big", "2")
    # [rows, classes]: the top probability is the score
    probabilities = {"p": np.array([[0.6, 0.4]], dtype=np.float32)}
    assert router.escalate(request(), probabilities) == Target("big", "2")
    assert router.describe() == {"answered_by_small": 1, "escalated": 2}
    with pytest.raises(ConfigError, match="large"):
        CascadeRouter({"small": "1"})
