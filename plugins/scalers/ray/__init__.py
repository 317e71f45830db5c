"""Ray scaler plugin: a placement that runs each instance as a Ray actor (``pip install 'ladle[ray]'``)."""

from __future__ import annotations

from ladle import Register, hookimpl


@hookimpl
def register_placements(register: Register) -> None:
    register(
        "ray",
        "ladle.plugins.scalers.ray.placement:RayPlacement",
        requires=("ray",),
        extra="ray",
        description="each instance a Ray actor rebuilt from its spec (num_cpus, num_gpus, runtime_env "
        "per model), on a Ray cluster (`address`) or a local Ray started for the server",
    )
