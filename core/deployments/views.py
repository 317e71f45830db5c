"""What the deployment controller answers about a model: its state, its history, and the labels
fed back for the accuracy guard of a running rollout.

Mixed into ``DeploymentController``; these only read (``feedback`` records a label in the rollout's
samples, never in the store).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidRequestError, ModelNotFoundError
from ..repository import check_name, version_key
from .errors import UnknownRequestError
from .events import EventLog, iso_time
from .resources import versions_view
from .router_policy import current_split, version_status
from .store import DeploymentStore

if TYPE_CHECKING:
    from ..scaling_loop import ScalingLoop
    from ..serving import ModelManager
    from .delivery import Delivery
    from .rollout import GuardedRollout

__all__ = ["DeploymentViews"]


class DeploymentViews:
    """The controller's reads: ``describe``, ``describe_all``, ``history`` and ``feedback``."""

    manager: ModelManager
    store: DeploymentStore | None
    deliveries: dict[str, Delivery]
    rollouts: dict[str, GuardedRollout]
    events: EventLog
    scaling: ScalingLoop | None
    _deploying: dict[tuple[str, str], float]

    @property
    def mode(self) -> str:
        raise NotImplementedError

    def feedback(self, model: str, request_id: str, label: Any) -> dict[str, Any]:
        """Record the true label of a served request, for the accuracy guard of a running rollout."""
        self.manager.endpoint(model)
        delivery = self.deliveries.get(model)
        predictions = delivery.predictions if delivery is not None else None
        if delivery is None or predictions is None or delivery.samples is None:
            return {"recorded": False, "reason": f"no rollout of model {model!r} is judging accuracy now"}
        entry = predictions.pop(request_id, None)
        if entry is None:
            raise UnknownRequestError(
                f"request {request_id!r} of model {model!r} is unknown or too old for feedback",
                request_id=request_id,
            )
        version, predicted = entry
        try:
            labels = np.asarray(label).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidRequestError("label must be a value or a list with one value per row") from None
        if labels.size == 1 and predicted.size > 1:
            labels = np.repeat(labels, predicted.size)
        if labels.shape != predicted.shape or labels.dtype.kind not in "iufb":
            raise InvalidRequestError(
                f"label must be a number or {predicted.size} numbers (one per row)", rows=int(predicted.size)
            )
        correct = int(np.count_nonzero(labels == predicted))
        samples = delivery.samples.get(version)
        if samples is not None:
            samples.record_label(correct, int(predicted.size))
        return {
            "recorded": samples is not None,
            "version": version,
            "correct": correct,
            "rows": int(predicted.size),
        }

    async def describe(self, model: str, *, history: bool = True, limit: int = 50) -> dict[str, Any]:
        """The state of one model: traffic, versions, router, rollout, data-path figures, history."""
        endpoint = self.manager.models.get(model)
        store = self.store
        records = await asyncio.to_thread(store.deployments, model) if store is not None else []
        if endpoint is None and not records:
            check_name("model", model)
            raise ModelNotFoundError(
                f"model {model!r} is not deployed", model=model, available=sorted(self.manager.models)
            )
        traffic = current_split(endpoint) if endpoint is not None else {}
        versions: dict[str, dict[str, Any]] = {}
        for record in records:
            versions[record.version] = {
                "version": record.version,
                "status": record.status,
                "traffic": traffic.get(record.version, 0.0),
                "loaded": endpoint is not None and record.version in endpoint.versions,
                "ready": bool(
                    endpoint
                    and record.version in endpoint.versions
                    and endpoint.versions[record.version].ready
                ),
                "deployed_at": iso_time(record.deployed_at),
                "options": record.options,
            }
        if endpoint is not None:
            for version, served in endpoint.versions.items():
                versions.setdefault(
                    version,
                    {
                        "version": version,
                        "status": version_status(version, traffic, None),
                        "traffic": traffic.get(version, 0.0),
                        "loaded": True,
                        "ready": served.ready,
                    },
                )
        rollout = self.rollouts.get(model)
        ordered = sorted(versions.values(), key=lambda v: version_key(v["version"]))
        described: dict[str, Any] = {
            "name": model,
            "mode": self.mode,
            "router": endpoint.router_name if endpoint is not None else None,
            "traffic": traffic,
            "versions": ordered,
            "deployments": versions_view(
                model, ordered, endpoint, records, self.scaling, self._deploying, traffic
            ),
            "rollout": rollout.describe() if rollout is not None else None,
        }
        if rollout is None and store is not None:
            saved = await asyncio.to_thread(store.rollout, model)
            if saved is not None:
                described["rollout"] = {
                    "canary": saved.canary,
                    "stable": saved.stable,
                    "state": saved.state,
                    "step": saved.step,
                    "reason": saved.reason,
                }
        delivery = self.deliveries.get(model)
        if delivery is not None:
            described["delivery"] = delivery.describe()
        elif endpoint is not None and (figures := endpoint.router.describe()):
            described["delivery"] = {"router": figures}
        if history:
            described["history"] = await self.history(model, limit)
        return described

    async def describe_all(self) -> dict[str, Any]:
        names = set(self.manager.models)
        if self.store is not None:
            names.update(m.name for m in await asyncio.to_thread(self.store.models))
        return {
            "mode": self.mode,
            "models": [await self.describe(name, history=False) for name in sorted(names)],
        }

    async def history(self, model: str, limit: int = 50) -> dict[str, Any]:
        return await self.events.history(model, limit)
