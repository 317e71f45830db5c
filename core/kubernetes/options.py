"""What the operator chooses when rendering: names, image, replicas, autoscaler, storage, resources."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

__all__ = ["DEFAULT_PROMETHEUS", "RenderOptions", "derive_name", "format_quantity"]

DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
#: object names: a DNS-1035 label (Services need it), short enough for the suffixes added to it
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_MAX_NAME = 40
_QUANTITY = re.compile(r"(\d+(\.\d+)?|\.\d+)([KMGTPE]i|[numkMGTPE])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def derive_name(text: str) -> str:
    """A valid object name made from ``text`` (a model or folder name): lower case, ``-`` for the rest."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if not name or not name[0].isalpha():
        name = f"ladle-{name}".rstrip("-")
    return name[:_MAX_NAME].rstrip("-")


def format_quantity(value: float) -> str:
    """A Kubernetes quantity for a count: ``2``, or milli-units (``1500m``) when it has a fraction."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


@dataclass(frozen=True)
class RenderOptions:
    """``replicas`` is the minimum (and initial) replica count, ``max_replicas`` the autoscaler's
    ceiling (``autoscaler = "none"``: a fixed count of ``replicas``). ``models_claim`` mounts an
    existing PersistentVolumeClaim at the model repository instead of the models baked into the
    image. ``cpu`` / ``memory`` replace the estimates."""

    name: str
    image: str
    namespace: str | None = None
    replicas: int = 1
    max_replicas: int = 10
    autoscaler: Literal["keda", "hpa", "none"] = "keda"
    kserve: bool = False
    models_claim: str | None = None
    prometheus: str = DEFAULT_PROMETHEUS
    cpu: str | None = None
    memory: str | None = None

    def __post_init__(self) -> None:
        for key, value in (("name", self.name), ("namespace", self.namespace), ("claim", self.models_claim)):
            if value is not None and not (_NAME.fullmatch(value) and len(value) <= _MAX_NAME):
                raise ConfigError(
                    f"{key} {value!r} is not a valid object name: lower-case letters, digits and '-', "
                    f"starting with a letter, at most {_MAX_NAME} characters",
                    key=key,
                )
        if not self.image or any(c.isspace() for c in self.image):
            raise ConfigError(f"image {self.image!r} is not an image reference", key="image")
        if self.replicas < 1 or self.max_replicas < self.replicas:
            raise ConfigError(
                f"replicas must be at least 1 and at most max_replicas; got {self.replicas} and "
                f"{self.max_replicas}",
                key="replicas",
            )
        for key, quantity in (("cpu", self.cpu), ("memory", self.memory)):
            if quantity is not None and not _QUANTITY.fullmatch(quantity):
                raise ConfigError(
                    f"{key} {quantity!r} is not a Kubernetes quantity such as '2', '500m' or '4Gi'", key=key
                )
        if not self.prometheus.startswith(("http://", "https://")):
            raise ConfigError(f"prometheus {self.prometheus!r} must be an http(s) URL", key="prometheus")

    @staticmethod
    def label_value(text: str) -> bool:
        """Whether ``text`` may be a label value (model names become metric selector values)."""
        return len(text) <= 63 and bool(_LABEL_VALUE.fullmatch(text))
