"""The canary router: traffic split by the routing table's weights.

Options: ``sticky`` (default ``true``): requests with a routing key (header ``Ladle-Routing-Key``)
always reach the same version for a given split, and a weight change moves only the keys it must.
``run`` (default 256) and ``run_ms`` (default 20): requests without a key are drawn in runs of up to
``run`` requests within ``run_ms`` milliseconds, so each version's share arrives together and
batches well (``ladle.WeightedRouter``); ``run = 1`` draws every request on its own.
"""

from __future__ import annotations

from typing import ClassVar

from ladle import WeightedRouter

__all__ = ["CanaryRouter"]


class CanaryRouter(WeightedRouter):
    name: ClassVar[str] = "canary"
