"""The canary router: traffic split by the routing table's weights.

Options: ``sticky`` (default ``true``): requests with a routing key (header ``Ladle-Routing-Key``)
always reach the same version for a given split, and a weight change moves only the keys it must.
"""

from __future__ import annotations

from typing import ClassVar

from ladle.deployments.split import WeightedRouter

__all__ = ["CanaryRouter"]


class CanaryRouter(WeightedRouter):
    name: ClassVar[str] = "canary"
