"""The built-in Kubernetes objects of a ladle service, built with the official client's models.

Every builder returns the object's wire form (``ApiClient().sanitize_for_serialization``), so the
client's models check each field's name and type as the object is made.

The pod runs ``ladle serve /etc/ladle/ladle.toml``: that ``ladle.toml`` comes from a ConfigMap and
names ``/models`` as its repository, so ``[defaults]``, ``[models.*]``, plugins and telemetry apply
in the pod exactly as where the manifests were rendered. ``/models`` holds the models baked into the
image by default (an image is then one immutable release of the service), or an existing
PersistentVolumeClaim (``RenderOptions.models_claim``) mounted read-only when models are published
apart from the image. The root filesystem is read-only; ``/tmp`` and ``/var/lib/ladle`` (the working
folder and ``$HOME``) are emptyDirs.
"""

from __future__ import annotations

import hashlib
from typing import Any

from kubernetes import client as k8s

from ..errors import ConfigError
from .options import RenderOptions, format_quantity
from .plan import POD_CONFIG_DIR, POD_CONFIG_FILE, POD_MODELS, POD_WORKDIR, MiB, ServicePlan

__all__ = [
    "CONTAINER",
    "GPU_RESOURCE",
    "USER_ID",
    "config_map",
    "config_text",
    "container",
    "deployment",
    "disruption_budget",
    "horizontal_autoscaler",
    "labels",
    "pod_annotations",
    "pod_security",
    "scaling_behavior",
    "selector",
    "service",
    "tolerations",
    "volumes",
    "wire",
]

CONTAINER = "ladle"
GPU_RESOURCE = "nvidia.com/gpu"
USER_ID = 10001  # the image's non-root user
_PROBE_PERIOD = 5
_API = k8s.ApiClient()


def wire(obj: Any) -> dict[str, Any]:
    """The JSON-ready form of a client model."""
    result: dict[str, Any] = _API.sanitize_for_serialization(obj)
    return result


def selector(options: RenderOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": options.name}


def labels(options: RenderOptions) -> dict[str, str]:
    return {
        **selector(options),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "ladle",
    }


def _metadata(options: RenderOptions, name: str | None = None) -> Any:
    return k8s.V1ObjectMeta(name=name or options.name, namespace=options.namespace, labels=labels(options))


def config_text(plan: ServicePlan) -> str:
    import tomli_w

    header = "# The ladle.toml of the pod, rendered by `ladle k8s render` from the service's own config.\n"
    return header + tomli_w.dumps(plan.pod_config)


def config_map(plan: ServicePlan, options: RenderOptions) -> dict[str, Any]:
    return wire(
        k8s.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=_metadata(options, f"{options.name}-config"),
            data={"ladle.toml": config_text(plan)},
        )
    )


def pod_annotations(plan: ServicePlan) -> dict[str, str]:
    """Prometheus scraping of ``/metrics`` on the HTTP port, and the config's digest (a changed
    ConfigMap then rolls the pods)."""
    digest = hashlib.sha256(config_text(plan).encode()).hexdigest()[:16]
    annotations = {"checksum/ladle-toml": digest}
    if plan.metrics:
        annotations.update(
            {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(plan.http_port),
                "prometheus.io/path": "/metrics",
            }
        )
    return annotations


def _resources(plan: ServicePlan, options: RenderOptions) -> Any:
    memory = options.memory or f"{plan.memory_bytes // MiB}Mi"
    requests = {"cpu": options.cpu or format_quantity(plan.cpu_cores), "memory": memory}
    limits = {"memory": memory}  # no CPU limit: throttling a busy server only adds latency
    if plan.gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(plan.gpus)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _http_probe(path: str, *, failures: int, period: int = _PROBE_PERIOD) -> Any:
    return k8s.V1Probe(
        http_get=k8s.V1HTTPGetAction(path=path, port="http"),
        period_seconds=period,
        timeout_seconds=3,
        failure_threshold=failures,
    )


def _env(plan: ServicePlan, options: RenderOptions) -> list[Any]:
    env = [
        k8s.V1EnvVar(name="HOME", value=POD_WORKDIR),
        k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
    ]
    if plan.needs_token:
        secret = k8s.V1SecretKeySelector(name=f"{options.name}-api-token", key="token")
        env.append(k8s.V1EnvVar(name="LADLE_API_TOKEN", value_from=k8s.V1EnvVarSource(secret_key_ref=secret)))
    return env


def container(plan: ServicePlan, options: RenderOptions, name: str = CONTAINER) -> Any:
    """The serving container (a client model): probes, ports, drain hook, resources, mounts."""
    ports = [k8s.V1ContainerPort(name="http", container_port=plan.http_port, protocol="TCP")]
    if plan.grpc_port is not None:
        ports.append(k8s.V1ContainerPort(name="grpc", container_port=plan.grpc_port, protocol="TCP"))
    mounts = [
        k8s.V1VolumeMount(name="config", mount_path=POD_CONFIG_DIR, read_only=True),
        k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
        k8s.V1VolumeMount(name="work", mount_path=POD_WORKDIR),
    ]
    if options.models_claim:
        mounts.append(k8s.V1VolumeMount(name="models", mount_path=POD_MODELS, read_only=True))
    return k8s.V1Container(
        name=name,
        image=options.image,
        image_pull_policy="IfNotPresent",
        command=["ladle", "serve", POD_CONFIG_FILE],
        working_dir=POD_WORKDIR,
        ports=ports,
        env=_env(plan, options),
        resources=_resources(plan, options),
        # While models load the server is live but not ready: readiness gates traffic, and the
        # startup probe allows the whole warm-up before liveness may restart the container.
        startup_probe=_http_probe("/v2/health/ready", failures=-(-plan.startup_seconds // _PROBE_PERIOD)),
        readiness_probe=_http_probe("/v2/health/ready", failures=2),
        liveness_probe=_http_probe("/v2/health/live", failures=3, period=10),
        # Endpoints drop a terminating pod while this sleeps; SIGTERM then starts ladle's drain.
        lifecycle=k8s.V1Lifecycle(
            pre_stop=k8s.V1LifecycleHandler(
                _exec=k8s.V1ExecAction(command=["sleep", str(plan.pre_stop_seconds)])
            )
        ),
        volume_mounts=mounts,
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
    )


def volumes(options: RenderOptions) -> list[Any]:
    found = [
        k8s.V1Volume(name="config", config_map=k8s.V1ConfigMapVolumeSource(name=f"{options.name}-config")),
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
        k8s.V1Volume(name="work", empty_dir=k8s.V1EmptyDirVolumeSource()),
    ]
    if options.models_claim:
        claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=options.models_claim, read_only=True)
        found.append(k8s.V1Volume(name="models", persistent_volume_claim=claim))
    return found


def pod_security() -> Any:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=USER_ID,
        run_as_group=USER_ID,
        fs_group=USER_ID,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def tolerations(plan: ServicePlan) -> list[Any] | None:
    """GPU nodes are commonly tainted ``nvidia.com/gpu``; a pod that asks for GPUs tolerates it."""
    if not plan.gpus:
        return None
    return [k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")]


def deployment(plan: ServicePlan, options: RenderOptions) -> dict[str, Any]:
    template = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=labels(options), annotations=pod_annotations(plan)),
        spec=k8s.V1PodSpec(
            containers=[container(plan, options)],
            volumes=volumes(options),
            security_context=pod_security(),
            termination_grace_period_seconds=plan.termination_grace_seconds,
            tolerations=tolerations(plan),
            enable_service_links=False,
        ),
    )
    return wire(
        k8s.V1Deployment(
            api_version="apps/v1",
            kind="Deployment",
            metadata=_metadata(options),
            spec=k8s.V1DeploymentSpec(
                replicas=options.replicas,
                selector=k8s.V1LabelSelector(match_labels=selector(options)),
                # Never below the wanted capacity while a new pod warms up.
                strategy=k8s.V1DeploymentStrategy(
                    type="RollingUpdate",
                    rolling_update=k8s.V1RollingUpdateDeployment(max_surge=1, max_unavailable=0),
                ),
                template=template,
            ),
        )
    )


def service(plan: ServicePlan, options: RenderOptions) -> dict[str, Any]:
    ports = [k8s.V1ServicePort(name="http", port=plan.http_port, target_port="http", app_protocol="http")]
    if plan.grpc_port is not None:
        ports.append(
            k8s.V1ServicePort(name="grpc", port=plan.grpc_port, target_port="grpc", app_protocol="grpc")
        )
    return wire(
        k8s.V1Service(
            api_version="v1",
            kind="Service",
            metadata=_metadata(options),
            spec=k8s.V1ServiceSpec(type="ClusterIP", selector=selector(options), ports=ports),
        )
    )


def disruption_budget(options: RenderOptions, pods: dict[str, str]) -> dict[str, Any]:
    """At most one pod of the service down at a time for voluntary disruptions (node drains); never
    blocks a drain outright, even at one replica."""
    return wire(
        k8s.V1PodDisruptionBudget(
            api_version="policy/v1",
            kind="PodDisruptionBudget",
            metadata=_metadata(options),
            spec=k8s.V1PodDisruptionBudgetSpec(
                max_unavailable=1, selector=k8s.V1LabelSelector(match_labels=pods)
            ),
        )
    )


def scaling_behavior() -> Any:
    """Up fast (double every 15 s), down slowly (one pod a minute after 5 minutes of lower demand)."""
    return k8s.V2HorizontalPodAutoscalerBehavior(
        scale_up=k8s.V2HPAScalingRules(
            stabilization_window_seconds=0,
            policies=[k8s.V2HPAScalingPolicy(type="Percent", value=100, period_seconds=15)],
        ),
        scale_down=k8s.V2HPAScalingRules(
            stabilization_window_seconds=300,
            policies=[k8s.V2HPAScalingPolicy(type="Pods", value=1, period_seconds=60)],
        ),
    )


def horizontal_autoscaler(plan: ServicePlan, options: RenderOptions, target: str) -> dict[str, Any]:
    """An ``autoscaling/v2`` HPA on ``ladle_ongoing_requests`` per pod (a Pods metric through the
    custom metrics API, e.g. prometheus-adapter), one metric per model at its own target."""
    for model in plan.models:
        if not RenderOptions.label_value(model.name):
            raise ConfigError(
                f"model name {model.name!r} cannot be a label value, so no HPA metric can select it: "
                "start and end it with a letter or digit (at most 63 characters), or use KEDA",
                model=model.name,
            )
    metrics = [
        k8s.V2MetricSpec(
            type="Pods",
            pods=k8s.V2PodsMetricSource(
                metric=k8s.V2MetricIdentifier(
                    name="ladle_ongoing_requests",
                    selector=k8s.V1LabelSelector(match_labels={"ladle_model_name": model.name}),
                ),
                target=k8s.V2MetricTarget(
                    type="AverageValue", average_value=format_quantity(model.target_ongoing_requests)
                ),
            ),
        )
        for model in plan.models
    ]
    return wire(
        k8s.V2HorizontalPodAutoscaler(
            api_version="autoscaling/v2",
            kind="HorizontalPodAutoscaler",
            metadata=_metadata(options),
            spec=k8s.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=k8s.V2CrossVersionObjectReference(
                    api_version="apps/v1", kind="Deployment", name=target
                ),
                min_replicas=options.replicas,
                max_replicas=options.max_replicas,
                metrics=metrics,
                behavior=scaling_behavior(),
            ),
        )
    )
