"""The queue-depth policy on its own: readings in, desired counts out, on a clock the test drives."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ladle import ConfigError, PluginHost, ScalingPolicy, VersionMetrics


def policy(**options: Any) -> ScalingPolicy:
    host = PluginHost().discover()
    built: ScalingPolicy = host.load("scaling_policy", "queue-depth")(options)
    return built


def reading(instances: int, ongoing: int, now: float, **extra: Any) -> VersionMetrics:
    return VersionMetrics("m", "1", instances, queue_depth=ongoing, now=now, **extra)


class Driver:
    """Feeds a policy one reading per tick and applies its answers, as the scaling loop does."""

    def __init__(self, scaler: ScalingPolicy, instances: int = 1, tick: float = 0.5) -> None:
        self.scaler = scaler
        self.instances = instances
        self.tick = tick
        self.now = 0.0
        self.changes: list[tuple[float, int, int]] = []

    def run(self, seconds: float, ongoing: int | Any, **extra: Any) -> int:
        end = self.now + seconds
        while self.now < end:
            load = ongoing(self.now) if callable(ongoing) else ongoing
            desired = self.scaler.desired(reading(self.instances, load, self.now, **extra))
            if desired != self.instances:
                self.changes.append((self.now, self.instances, desired))
                self.instances = desired
            self.now += self.tick
        return self.instances

    @property
    def direction_changes(self) -> int:
        directions = [1 if new > old else -1 for _, old, new in self.changes]
        return sum(1 for a, b in itertools.pairwise(directions) if a != b)


def test_scales_up_to_ceil_of_ongoing_over_target_within_one_tick() -> None:
    driver = Driver(policy(min_instances=1, max_instances=4, target_ongoing_requests=2))
    assert driver.run(0.5, ongoing=7) == 4  # ceil(7 / 2) = 4, in one step
    assert driver.changes == [(0.0, 1, 4)]


def test_upscale_delay_holds_a_short_burst_back() -> None:
    driver = Driver(policy(max_instances=8, target_ongoing_requests=2, upscale_delay=2))
    assert driver.run(1.5, ongoing=10) == 1
    assert driver.run(1.0, ongoing=10) == 5


def test_scales_down_only_after_downscale_delay_and_one_step_at_a_time() -> None:
    driver = Driver(policy(min_instances=1, max_instances=4, downscale_delay=300), instances=4)
    assert driver.run(299.5, ongoing=0) == 4
    driver.run(2.0, ongoing=0)
    steps = [(old, new) for _, old, new in driver.changes]
    assert steps == [(4, 3), (3, 2), (2, 1)]


def test_one_reading_at_target_starts_the_downscale_wait_over() -> None:
    driver = Driver(policy(max_instances=4, downscale_delay=10), instances=3)
    driver.run(9.0, ongoing=2)  # wants 1
    driver.run(0.5, ongoing=6)  # wants 3 again: the wait starts over
    assert driver.run(9.0, ongoing=2) == 3
    assert driver.run(2.0, ongoing=2) < 3


def test_a_noisy_constant_load_changes_direction_at_most_once_in_five_minutes() -> None:
    # ongoing jitters between 3 and 6 requests (wanting 2 or 3 instances at a target of 2)
    noise = [3, 5, 4, 6, 3, 4, 5, 3, 6, 4]
    driver = Driver(policy(max_instances=8, downscale_delay=300))
    driver.run(300.0, ongoing=lambda now: noise[int(now * 2) % len(noise)])
    assert driver.direction_changes <= 1
    assert driver.instances == 3


def test_bounds_clamp_and_an_operator_count_is_the_floor() -> None:
    driver = Driver(policy(min_instances=2, max_instances=3, downscale_delay=0), instances=2)
    assert driver.run(0.5, ongoing=100) == 3
    assert driver.run(5, ongoing=0) == 2
    assert driver.run(0.5, ongoing=0, requested=3) == 3  # `ladle scale m 1 3` raised the floor at once
    assert driver.scaler.reason == "bounds"
    assert driver.run(0.5, ongoing=100, requested=5) == 5  # a floor above max_instances wins


def test_without_min_instances_the_models_instances_are_the_floor() -> None:
    driver = Driver(policy(max_instances=8, downscale_delay=0), instances=5)
    assert driver.run(3, ongoing=0, configured=2) == 2


def test_scale_to_zero_and_the_first_request_wakes_one_at_once() -> None:
    driver = Driver(policy(min_instances=0, max_instances=2, downscale_delay=5, upscale_delay=60))
    assert driver.run(6, ongoing=0) == 0
    assert driver.run(0.5, ongoing=1) == 1  # no instance and a request waiting: no upscale delay


def test_a_warm_pool_keeps_spare_instances() -> None:
    driver = Driver(policy(min_instances=0, max_instances=4, warm_pool=1, downscale_delay=0), instances=3)
    assert driver.run(3, ongoing=0) == 1
    assert driver.run(0.5, ongoing=4) == 3  # ceil(4 / 2) + 1


def test_p99_above_the_slo_adds_one_instance_per_window_and_blocks_scale_down() -> None:
    driver = Driver(policy(max_instances=4, latency_slo=0.1, downscale_delay=0))
    assert driver.run(0.5, ongoing=1, p99_latency=0.5) == 2
    assert driver.scaler.reason == "latency"
    assert driver.run(5, ongoing=1, p99_latency=0.5) == 2  # the new instance shows in p99 first
    assert driver.run(6, ongoing=1, p99_latency=0.5) == 3
    assert driver.run(5, ongoing=1, p99_latency=0.5) == 3  # load wants 1, but latency is over the SLO
    assert driver.run(0.5, ongoing=1, p99_latency=0.05) == 2  # back under the SLO: one step down


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"min_instances": 5, "max_instances": 4}, r"min_instances \(5\) must be <= max_instances \(4\)"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests"),
        ({"downscale_delay": -1}, "downscale_delay"),
        ({"max_replicas": 4}, "max_replicas"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        policy(**options)
