"""Queue-depth scaler plugin: a policy that scales a version on its queued plus running requests."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_scaling_policies(register: Register) -> None:
    register(
        "queue-depth",
        "ladle.plugins.scalers.queue_depth.policy:QueueDepthPolicy",
        description="desired = ceil(ongoing requests / target_ongoing_requests), up at once, down slowly; "
        "optional p99 latency SLO, scale to zero and a warm pool",
    )
