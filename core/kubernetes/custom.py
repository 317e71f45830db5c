"""Custom resources of other projects: KEDA's ``ScaledObject`` and KServe's ``ServingRuntime`` and
``InferenceService``.

Neither project ships Python models, so each resource is built as a pydantic model written from the
fields its CRD documents (``keda.sh/v1alpha1``; ``serving.kserve.io/v1alpha1`` and ``v1beta1``),
with unknown fields refused. Fields whose type is a Kubernetes core type (metadata, containers,
volumes, tolerations, pod security, HPA behaviour) are checked by the official client's models: a
field those models do not know, or a value of the wrong type, fails the build.

KServe runs in RawDeployment mode: it makes a plain Deployment ``<name>-predictor`` and a Service
from the ServingRuntime's pod template. Its own autoscaler is switched off
(``serving.kserve.io/autoscalerClass: external``) so that the KEDA ScaledObject or HPA rendered
beside it scales that Deployment on ladle's own metric.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from kubernetes import client as k8s
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .options import RenderOptions
from .plan import ServicePlan
from .workload import (
    container,
    labels,
    pod_annotations,
    pod_security,
    scaling_behavior,
    tolerations,
    volumes,
    wire,
)

__all__ = [
    "DEPLOYMENT_MODE",
    "KSERVE_MODEL_FORMAT",
    "InferenceService",
    "ScaledObject",
    "ServingRuntime",
    "inference_service",
    "kserve_pod_labels",
    "kserve_target",
    "scaled_object",
    "serving_runtime",
]

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
KSERVE_MODEL_FORMAT = "ladle"
_API = k8s.ApiClient()


def _checked(model: str) -> AfterValidator:
    """A dict field that must survive a round trip through the client model ``model`` unchanged."""

    def check(value: Any) -> Any:
        parsed = _API.deserialize(json.dumps(value), model, None)
        if wire(parsed) != value:
            raise ValueError(f"not a valid {model}: fields it does not know or cannot hold")
        return value

    return AfterValidator(check)


ObjectMeta = Annotated[dict[str, Any], _checked("V1ObjectMeta")]
Container = Annotated[dict[str, Any], _checked("V1Container")]
Volume = Annotated[dict[str, Any], _checked("V1Volume")]
Toleration = Annotated[dict[str, Any], _checked("V1Toleration")]
PodSecurityContext = Annotated[dict[str, Any], _checked("V1PodSecurityContext")]
Behavior = Annotated[dict[str, Any], _checked("V2HorizontalPodAutoscalerBehavior")]
Int32 = Annotated[int, Field(ge=0, le=2**31 - 1)]


class _Resource(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, strict=True
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


# KEDA --------------------------------------------------------------------------------------


class ScaleTargetRef(_Resource):
    name: str = Field(min_length=1)
    api_version: str | None = None
    kind: str | None = None
    env_source_container_name: str | None = None


class AuthenticationRef(_Resource):
    name: str
    kind: Literal["TriggerAuthentication", "ClusterTriggerAuthentication"] | None = None


class ScaleTrigger(_Resource):
    type: str = Field(min_length=1)
    metadata: dict[str, str]
    name: str | None = None
    metric_type: Literal["AverageValue", "Value", "Utilization"] | None = None
    use_cached_metrics: bool | None = None
    authentication_ref: AuthenticationRef | None = None

    @model_validator(mode="after")
    def _prometheus_fields(self) -> ScaleTrigger:
        if self.type == "prometheus":
            missing = {"serverAddress", "query", "threshold"} - set(self.metadata)
            if missing:
                raise ValueError(f"a prometheus trigger needs metadata {sorted(missing)}")
            float(self.metadata["threshold"])  # KEDA parses it as a number
        return self


class HorizontalPodAutoscalerConfig(_Resource):
    name: str | None = None
    behavior: Behavior | None = None


class AdvancedConfig(_Resource):
    horizontal_pod_autoscaler_config: HorizontalPodAutoscalerConfig | None = None
    restore_to_original_replica_count: bool | None = None


class Fallback(_Resource):
    failure_threshold: Int32
    replicas: Int32


class ScaledObjectSpec(_Resource):
    scale_target_ref: ScaleTargetRef
    triggers: list[ScaleTrigger] = Field(min_length=1)
    polling_interval: Int32 | None = None
    cooldown_period: Int32 | None = None
    initial_cooldown_period: Int32 | None = None
    idle_replica_count: Int32 | None = None
    min_replica_count: Int32 | None = None
    max_replica_count: Int32 | None = None
    fallback: Fallback | None = None
    advanced: AdvancedConfig | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ScaledObjectSpec:
        low, high = self.min_replica_count or 0, self.max_replica_count or 100
        if low > high:
            raise ValueError(f"minReplicaCount {low} is above maxReplicaCount {high}")
        return self


class ScaledObject(_Resource):
    api_version: Literal["keda.sh/v1alpha1"] = "keda.sh/v1alpha1"
    kind: Literal["ScaledObject"] = "ScaledObject"
    metadata: ObjectMeta
    spec: ScaledObjectSpec


# KServe ------------------------------------------------------------------------------------


class SupportedModelFormat(_Resource):
    name: str = Field(min_length=1)
    version: str | None = None
    auto_select: bool | None = None
    priority: int | None = Field(default=None, ge=1)


Protocol = Literal["v1", "v2", "grpc-v1", "grpc-v2"]


class ServingRuntimeSpec(_Resource):
    containers: list[Container] = Field(min_length=1)
    supported_model_formats: list[SupportedModelFormat] = Field(default_factory=list)
    multi_model: bool | None = None
    disabled: bool | None = None
    protocol_versions: list[Protocol] | None = None
    volumes: list[Volume] | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class ServingRuntime(_Resource):
    api_version: Literal["serving.kserve.io/v1alpha1"] = "serving.kserve.io/v1alpha1"
    kind: Literal["ServingRuntime"] = "ServingRuntime"
    metadata: ObjectMeta
    spec: ServingRuntimeSpec


class ModelFormat(_Resource):
    name: str = Field(min_length=1)
    version: str | None = None


class ModelSpec(_Resource):
    model_format: ModelFormat
    runtime: str | None = None
    protocol_version: Protocol | None = None
    storage_uri: str | None = None


class PredictorSpec(_Resource):
    model: ModelSpec
    min_replicas: Int32 | None = None
    max_replicas: Int32 | None = None
    termination_grace_period_seconds: int | None = Field(default=None, ge=0)
    security_context: PodSecurityContext | None = None
    service_account_name: str | None = None
    tolerations: list[Toleration] | None = None
    node_selector: dict[str, str] | None = None


class InferenceServiceSpec(_Resource):
    predictor: PredictorSpec


class InferenceService(_Resource):
    api_version: Literal["serving.kserve.io/v1beta1"] = "serving.kserve.io/v1beta1"
    kind: Literal["InferenceService"] = "InferenceService"
    metadata: ObjectMeta
    spec: InferenceServiceSpec

    @model_validator(mode="after")
    def _mode(self) -> InferenceService:
        mode = self.metadata.get("annotations", {}).get(DEPLOYMENT_MODE)
        if mode not in (None, "Serverless", "RawDeployment", "Standard", "ModelMeshDeployment"):
            raise ValueError(f"unknown {DEPLOYMENT_MODE} {mode!r}")
        return self


# builders ----------------------------------------------------------------------------------


def _metadata(options: RenderOptions, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return wire(
        k8s.V1ObjectMeta(
            name=options.name, namespace=options.namespace, labels=labels(options), annotations=annotations
        )
    )


def kserve_target(options: RenderOptions) -> str:
    """The Deployment KServe makes for the InferenceService in RawDeployment mode."""
    return f"{options.name}-predictor"


def kserve_pod_labels(options: RenderOptions) -> dict[str, str]:
    return {"serving.kserve.io/inferenceservice": options.name}


def _ongoing_requests_query(model: str, options: RenderOptions) -> str:
    matchers = [f'ladle_model_name="{model}"']
    if options.namespace:
        matchers.append(f'namespace="{options.namespace}"')
    return f"sum(ladle_ongoing_requests{{{','.join(matchers)}}})"


def scaled_object(plan: ServicePlan, options: RenderOptions, target: str) -> dict[str, Any]:
    """One Prometheus trigger per model: replicas = ceil(queued + running requests / target per
    replica), the largest over the models."""
    triggers = [
        ScaleTrigger(
            type="prometheus",
            name=f"ongoing-requests-{index}",
            metric_type="AverageValue",
            metadata={
                "serverAddress": options.prometheus,
                "query": _ongoing_requests_query(model.name, options),
                "threshold": f"{model.target_ongoing_requests:g}",
            },
        )
        for index, model in enumerate(plan.models)
    ]
    spec = ScaledObjectSpec(
        scale_target_ref=ScaleTargetRef(api_version="apps/v1", kind="Deployment", name=target),
        polling_interval=15,
        min_replica_count=options.replicas,
        max_replica_count=options.max_replicas,
        advanced=AdvancedConfig(
            horizontal_pod_autoscaler_config=HorizontalPodAutoscalerConfig(behavior=wire(scaling_behavior()))
        ),
        triggers=triggers,
    )
    return ScaledObject(metadata=_metadata(options), spec=spec).to_wire()


def serving_runtime(plan: ServicePlan, options: RenderOptions) -> dict[str, Any]:
    protocols: list[Protocol] = ["v2", "grpc-v2"] if plan.grpc_port is not None else ["v2"]
    spec = ServingRuntimeSpec(
        supported_model_formats=[SupportedModelFormat(name=KSERVE_MODEL_FORMAT, version="1")],
        multi_model=False,
        protocol_versions=protocols,
        containers=[wire(container(plan, options, name="kserve-container"))],
        volumes=[wire(volume) for volume in volumes(options)],
        tolerations=[wire(t) for t in tolerations(plan) or []] or None,
        labels=labels(options),
        annotations=pod_annotations(plan),
    )
    return ServingRuntime(metadata=_metadata(options), spec=spec).to_wire()


def inference_service(plan: ServicePlan, options: RenderOptions) -> dict[str, Any]:
    annotations = {DEPLOYMENT_MODE: "RawDeployment", AUTOSCALER_CLASS: "external"}
    predictor = PredictorSpec(
        model=ModelSpec(
            model_format=ModelFormat(name=KSERVE_MODEL_FORMAT, version="1"),
            runtime=options.name,
            protocol_version="v2",
        ),
        min_replicas=options.replicas,
        max_replicas=options.max_replicas,
        termination_grace_period_seconds=plan.termination_grace_seconds,
        security_context=wire(pod_security()),
    )
    return InferenceService(
        metadata=_metadata(options, annotations), spec=InferenceServiceSpec(predictor=predictor)
    ).to_wire()
