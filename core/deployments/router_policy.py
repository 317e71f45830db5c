"""Which router serves a model's traffic split, chosen by the routers' declared capabilities.

A split that gives traffic to anything but the latest loaded version needs a router that
``splits_weights``; when the model's router does not (``single``, say), the model switches to its
``split_router`` (``canary`` by default; any registered router that splits weights will do, a
third party's included). Whatever router results is asked to ``check_weights`` before anything
changes. The helpers below compute and record splits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError, InvalidRequestError, PluginError
from ..plugin_host import PluginHost
from ..repository import version_key
from ..routing import Router
from .errors import ConflictError
from .store import Transaction

if TYPE_CHECKING:
    from ..serving import ModelEndpoint

__all__ = ["RouterChoice", "RouterPolicy", "current_split", "scaled", "version_status", "write_split"]


class RouterChoice(BaseModel):
    """A router plugin by name, with its options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


#: (router to switch to or ``None`` to keep the current one, its name, its options)
Choice = tuple["Router | None", str, dict[str, Any]]


class RouterPolicy:
    """Builds routers by name and picks the one a split needs."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host

    def build(self, name: str, options: Mapping[str, Any]) -> Router:
        """A router plugin instance; ``InvalidRequestError`` naming the router when it cannot be built."""
        try:
            factory = self.host.load("router", name)
            router: Router = factory(dict(options))
        except (ConfigError, PluginError) as exc:
            raise InvalidRequestError(f"router {name!r}: {exc.message}", router=name) from None
        return router

    def choose(
        self,
        endpoint: ModelEndpoint,
        chosen: RouterChoice | None,
        weights: Mapping[str, float],
        extra: str | None = None,
    ) -> Choice:
        """The router a deployment asks for, else the one ``fit`` picks; checked against ``weights``."""
        if chosen is not None:
            router: Router | None = self.build(chosen.name, chosen.options)
            name, options = chosen.name, chosen.options
        else:
            router, name, options = self.fit(endpoint, weights, extra)
        (router or endpoint.router).check_weights(weights)
        return router, name, options

    def fit(self, endpoint: ModelEndpoint, weights: Mapping[str, float], extra: str | None = None) -> Choice:
        """The model's ``split_router`` when its router cannot split weights and ``weights`` (with
        ``extra`` loaded too) give traffic to anything but the latest version; else keep the router."""
        current: Choice = (None, endpoint.router_name, {})
        if type(endpoint.router).splits_weights:
            return current
        loaded = sorted({*endpoint.versions, *([extra] if extra else [])}, key=version_key)
        live = [v for v, w in weights.items() if w > 0]
        if not loaded or live == [loaded[-1]]:
            return current
        name = endpoint.config.split_router
        router = self.build(name, {})
        if not type(router).splits_weights:
            raise ConflictError(
                f"model {endpoint.name!r}: split_router {name!r} does not split traffic by weight; "
                "name a router that does",
                model=endpoint.name,
                router=name,
            )
        return router, name, {}


def current_split(endpoint: ModelEndpoint) -> dict[str, float]:
    """The effective split of an endpoint: its table's weights, or 100 to the latest."""
    table = endpoint.table
    if table.weights:
        live = {v: float(w) for v, w in table.weights.items() if w > 0 and v in table.versions}
        if live:
            return live
    return {table.versions[-1]: 100.0} if table.versions else {}


def scaled(current: Mapping[str, float], version: str, share: float) -> dict[str, float]:
    """``version`` at ``share`` percent; the others keep their proportions within the rest."""
    others = {v: w for v, w in current.items() if v != version and w > 0}
    rest = 100.0 - share
    total = sum(others.values())
    if rest > 0 and total <= 0:
        raise ConflictError(
            f"no other version serves the remaining {rest:g}% of the traffic; deploy with traffic 100",
        )
    weights = {v: w * rest / total for v, w in others.items()} if rest > 0 else {}
    weights[version] = share
    return {v: round(w, 6) for v, w in weights.items() if w > 0}


def version_status(version: str, weights: Mapping[str, float], rolled_back: list[str] | None) -> str:
    """A version's deployment status under a split."""
    if weights.get(version, 0) > 0:
        return "serving"
    if rolled_back and version in rolled_back:
        return "rolled_back"
    return "standby"


def write_split(
    tx: Transaction,
    model: str,
    before: Mapping[str, float],
    after: Mapping[str, float],
    reason: str,
    rolled_back: list[str] | None = None,
) -> None:
    """Record a new split; versions that gain traffic serve, those that lose it stand by (or are
    marked rolled back); the status of the others stays as it was."""
    for version in set(before) | set(after):
        if (before.get(version, 0) > 0) != (after.get(version, 0) > 0) or version in (rolled_back or ()):
            tx.upsert_deployment(model, version, status=version_status(version, after, rolled_back))
    tx.set_split(model, {v: w for v, w in after.items() if w > 0}, reason)
