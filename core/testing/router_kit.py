"""The router conformance kit: what every router, built-in or third-party, must do.

Subclass :class:`RouterConformance`, name the router and its options::

    from ladle.testing.router_kit import RouterConformance

    class TestMyRouter(RouterConformance):
        router = "mine"
        options = {"sticky": True}

The checks: routes always target a version of the table (or another model's, for a router that
says so), a ``static`` router routes every request of one table alike, a router that
``splits_weights`` follows the weights within a few percent and sends a routing key to the same
version every time (and never to a version without weight), ``check_weights`` refuses only with a
4xx, shadow copies are never the primary, and ``describe`` is plain JSON.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..envelope import InferenceRequest
from ..errors import ClientError
from ..plugin_host import PluginHost
from ..routing import Router, RoutingTable

__all__ = ["RouterConformance"]


class RouterConformance:
    """Checks for one router; set ``router`` (its registered name) and, optionally, ``options``.

    ``foreign_models`` lists models other than the table's that routes may target (a cascade to
    another model, say); ``requests`` is how many requests the statistical checks send.
    """

    router: ClassVar[str]
    options: ClassVar[Mapping[str, Any]] = {}
    foreign_models: ClassVar[frozenset[str]] = frozenset()
    requests: ClassVar[int] = 4000

    def plugin_host(self) -> PluginHost:
        return PluginHost().discover()

    def make(self) -> Router:
        factory = self.plugin_host().load("router", self.router)
        router: Router = factory(dict(self.options))
        return router

    @staticmethod
    def request(key: str | None = None) -> InferenceRequest:
        return InferenceRequest("m", {"x": np.zeros((1, 2), np.float32)}, routing_key=key)

    def tables(self) -> list[RoutingTable]:
        """Tables the checks route against (override to give a router the tables it needs)."""
        return [
            RoutingTable("m", ("1",)),
            RoutingTable("m", ("1", "2"), {"1": 80.0, "2": 20.0}),
            RoutingTable("m", ("1", "2", "3"), {"1": 50.0, "3": 50.0}),
        ]

    def _routable(self, router: Router, table: RoutingTable) -> bool:
        weights = {v: w for v, w in table.weights.items() if w > 0}
        try:
            router.check_weights(weights or {table.latest: 100.0})
        except ClientError:
            return False
        return True

    def test_routes_target_versions_of_the_table(self) -> None:
        router = self.make()
        for table in self.tables():
            if not self._routable(router, table):
                continue
            for i in range(200):
                route = router.route(self.request(f"k{i}" if i % 2 else None), table)
                primary = route.primary
                if primary.model == table.model:
                    assert primary.version in table.versions, f"{primary} is not in {table.versions}"
                else:
                    assert primary.model in self.foreign_models, f"{primary} targets an undeclared model"
                assert primary not in route.shadows, "a shadow copy of the primary itself"

    def test_a_static_router_ignores_the_request(self) -> None:
        router = self.make()
        if not type(router).static:
            return
        for table in self.tables():
            routes = {router.route(self.request(key), table) for key in (None, "a", "b", "c")}
            assert len(routes) == 1, f"a static router routed one table {len(routes)} ways"

    def test_weights_are_followed_and_keys_stick(self) -> None:
        router = self.make()
        if not type(router).splits_weights:
            return
        table = RoutingTable("m", ("1", "2", "3"), {"1": 70.0, "2": 30.0, "3": 0.0})
        if not self._routable(router, table):
            return
        keyed = Counter(
            router.route(self.request(f"user-{i}"), table).primary.version for i in range(self.requests)
        )
        for version, share in (("1", 0.7), ("2", 0.3)):
            assert abs(keyed[version] / self.requests - share) < 0.05, f"keyed shares {dict(keyed)}"
        assert keyed["3"] == 0, "a version without weight was routed to"
        sticky = {router.route(self.request("user-42"), table).primary for _ in range(20)}
        assert len(sticky) == 1, "a routing key moved between versions under one table"

    def test_check_weights_refuses_with_a_client_error_or_accepts(self) -> None:
        router = self.make()
        for weights in ({"1": 100.0}, {"1": 50.0, "2": 50.0}):
            try:
                router.check_weights(weights)
            except ClientError as exc:
                assert 400 <= exc.status < 500
                assert exc.message

    def test_describe_is_plain_json(self) -> None:
        router = self.make()
        for table in self.tables():
            if self._routable(router, table):
                router.route(self.request(), table)
        json.dumps(router.describe())
        settings = router.shadow_settings()
        if settings is not None:
            assert settings.queue >= 1 and settings.concurrency >= 1 and settings.timeout > 0
