"""``ladle k8s render`` and ``ladle.kubernetes``: manifests rendered from real model repositories,
read back through the Kubernetes client's models (built-in kinds) and the CRD models (KEDA,
KServe), the pod's own ladle.toml served by a real server, and kubectl's typed decoding."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("kubernetes")
pytest.importorskip("yaml")
pytest.importorskip("tomli_w")

import yaml
from kubernetes import client as k8s
from pydantic import ValidationError

from ladle.cli import main
from ladle.config import ModelConfig, ServerConfig, ServerSection
from ladle.kubernetes import RenderOptions, derive_name, plan_service, render
from ladle.kubernetes.custom import InferenceService, ScaledObject, ServingRuntime
from ladle.kubernetes.plan import ModelNeeds, _model_needs
from ladle.repository import ModelPlan
from ladle.runtime import RuntimeSpec
from ladle.server import Server, load_config
from ladle.testing.models import build_python_handler
from ladle.testing.server import run_server

#: built-in kinds -> the client model that must hold every rendered field
CLIENT_MODELS = {
    "ConfigMap": "V1ConfigMap",
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "PodDisruptionBudget": "V1PodDisruptionBudget",
    "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler",
}
CUSTOM_MODELS = {
    "ScaledObject": ScaledObject,
    "ServingRuntime": ServingRuntime,
    "InferenceService": InferenceService,
}
API = k8s.ApiClient()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def cpu_service(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ladle.toml over a repository with one CPU model (python runtime, real files)."""
    root = tmp_path_factory.mktemp("cpu-service")
    build_python_handler(root / "models" / "scorer" / "1", handler_file=True)
    _write(root / "models" / "scorer" / "model.toml", 'runtime = "python"\ntrust_code = true\n')
    _write(
        root / "ladle.toml",
        '[server]\nport = 8000\nrepository = "models"\ndrain_timeout = 20.0\n'
        "[defaults]\ntimeout = 12.0\n"
        "[models.scorer]\ninstances = 2\nthreads = 2\n"
        "[models.scorer.options]\nfactor = 3.0\n",
    )
    return root


@pytest.fixture(scope="module")
def gpu_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare model repository: a CPU model and a causal-LM on ``cuda`` (never loaded here)."""
    root = tmp_path_factory.mktemp("gpu-repository")
    build_python_handler(root / "scorer" / "1", handler_file=True)
    _write(root / "scorer" / "model.toml", 'runtime = "python"\ntrust_code = true\n')
    _write(root / "chat" / "1" / "model.safetensors", "0" * 4096)
    _write(root / "chat" / "model.toml", 'runtime = "causal-lm"\ndevice = "cuda"\nbatcher = "continuous"\n')
    return root


def _render(path: Path, **options: Any) -> dict[str, dict[str, Any]]:
    config = load_config(path)
    rendered = render(plan_service(config), RenderOptions(**{"name": "svc", "image": "svc:1", **options}))
    return {m.kind: m.obj for m in rendered.manifests}


def _round_trip(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` read back by its model and written again: equal to ``obj`` only if every field is known."""
    kind = obj["kind"]
    if kind in CLIENT_MODELS:
        parsed = API.deserialize(json.dumps(obj), CLIENT_MODELS[kind], None)
        written: dict[str, Any] = API.sanitize_for_serialization(parsed)
        return written
    return CUSTOM_MODELS[kind].model_validate(obj).to_wire()


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


# every object is valid ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [{}, {"autoscaler": "hpa"}, {"kserve": True}, {"kserve": True, "autoscaler": "hpa"}],
    ids=["keda", "hpa", "kserve-keda", "kserve-hpa"],
)
@pytest.mark.parametrize("service", ["cpu_service", "gpu_repository"])
def test_every_rendered_object_reads_back_unchanged(
    request: pytest.FixtureRequest, service: str, variant: dict[str, Any], tmp_path: Path
) -> None:
    path = request.getfixturevalue(service)
    assert main(["k8s", "render", str(path), "--out", str(tmp_path / "out"), "--name", "svc"]) == 0
    objects = _render(path, **variant)
    kinds = set(objects)
    expected = {"ConfigMap", "PodDisruptionBudget"}
    expected |= {"ServingRuntime", "InferenceService"} if variant.get("kserve") else {"Deployment", "Service"}
    expected |= {"HorizontalPodAutoscaler"} if variant.get("autoscaler") == "hpa" else {"ScaledObject"}
    assert kinds == expected
    for obj in objects.values():
        text = yaml.safe_dump(obj)
        assert _round_trip(yaml.safe_load(text)) == obj, obj["kind"]


def test_an_unknown_or_mistyped_field_fails_the_read_back(cpu_service: Path) -> None:
    objects = _render(cpu_service)
    deployment = json.loads(json.dumps(objects["Deployment"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    assert _round_trip(deployment) != deployment
    deployment = json.loads(json.dumps(objects["Deployment"]))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(ValidationError):
        _round_trip(deployment)
    scaled = json.loads(json.dumps(objects["ScaledObject"]))
    scaled["spec"]["triggers"][0]["metadata"].pop("threshold")
    with pytest.raises(ValidationError, match="threshold"):
        ScaledObject.model_validate(scaled)
    scaled = json.loads(json.dumps(objects["ScaledObject"]))
    scaled["spec"]["minReplicas"] = 1  # KEDA's field is minReplicaCount
    with pytest.raises(ValidationError, match="minReplicas"):
        ScaledObject.model_validate(scaled)
    runtime = json.loads(json.dumps(_render(cpu_service, kserve=True)["ServingRuntime"]))
    runtime["spec"]["containers"][0]["readinessProbe"]["bogus"] = 1
    with pytest.raises(ValidationError, match="V1Container"):
        ServingRuntime.model_validate(runtime)


# the pod ------------------------------------------------------------------------------------


def test_probes_ports_drain_and_security(cpu_service: Path) -> None:
    objects = _render(cpu_service)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    container = _container(objects)
    assert container["command"] == ["ladle", "serve", "/etc/ladle/ladle.toml"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 300  # room for the warm-up
    # preStop sleeps the drain grace (default 5 s), then ladle drains for up to drain_timeout (20 s)
    assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    assert pod["terminationGracePeriodSeconds"] > 5 + 5 + 20
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in objects["Service"]["spec"]["ports"]}
    assert service_ports == {"http": (8000, "http"), "grpc": (8001, "grpc")}
    assert objects["Service"]["spec"]["selector"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_cpu_requests_follow_the_merged_model_config(cpu_service: Path) -> None:
    resources = _container(_render(cpu_service))["resources"]
    assert resources["requests"]["cpu"] == "4"  # [models.scorer] instances = 2 x threads = 2
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert "nvidia.com/gpu" not in resources["requests"]
    assert "cpu" not in resources["limits"]
    assert "tolerations" not in _render(cpu_service)["Deployment"]["spec"]["template"]["spec"]
    override = _container(_render(cpu_service, cpu="500m", memory="3Gi"))["resources"]
    assert override["requests"] == {"cpu": "500m", "memory": "3Gi"}


def test_a_cuda_model_asks_for_a_gpu(gpu_repository: Path) -> None:
    objects = _render(gpu_repository)
    resources = _container(objects)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    tolerations = objects["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert tolerations == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]


CUDA = 'device = "cuda"\n'
SHARE = "[resources]\ngpu_share = "


def _gpus(root: Path, models: dict[str, str]) -> int:
    for name, toml in models.items():
        _write(root / name / "1" / "model.safetensors", "0")
        _write(root / name / "model.toml", f'runtime = "causal-lm"\nbatcher = "continuous"\n{toml}')
    return plan_service(load_config(root)).gpus


@pytest.mark.parametrize(
    ("models", "gpus"),
    [
        ({"a": 'device = "cuda"\n', "b": 'device = "cuda:0"\n'}, 2),  # one per GPU model
        ({"a": 'device = "cuda"\n[resources]\ngpus = 4\n'}, 4),
        ({"a": f"{CUDA}instances = 2\n[resources]\ngpu_share = 0.25\n", "b": f"{CUDA}{SHARE}0.5\n"}, 1),
        ({"a": f"{CUDA}{SHARE}0.75\n", "b": f"{CUDA}{SHARE}0.5\n"}, 2),
        ({"a": 'device = "cuda:3"\n'}, 4),  # cuda:3 needs four visible GPUs
        ({"a": 'device = "cpu"\n[resources]\ngpus = 2\n'}, 0),
    ],
    ids=["one-each", "declared", "shares-fit-one", "shares-need-two", "index", "cpu"],
)
def test_gpu_count_comes_from_devices_and_resources(
    tmp_path: Path, models: dict[str, str], gpus: int
) -> None:
    assert _gpus(tmp_path, models) == gpus


def test_the_scaling_target_comes_from_the_models_scaling_policy() -> None:
    spec = RuntimeSpec(plugin="python", artifact="/nonexistent", model="m", version="1")
    scaled = ModelConfig(scaling={"name": "queue-depth", "target_ongoing_requests": 1.5})
    plan = ModelPlan("m", scaled, ("1",), {"1": spec})
    needs: ModelNeeds = _model_needs(plan)
    assert needs.target_ongoing_requests == 1.5
    assert _model_needs(ModelPlan("m", ModelConfig(), ("1",), {"1": spec})).target_ongoing_requests == 2.0


def test_grpc_port_and_drain_grace_come_from_the_config(cpu_service: Path) -> None:
    config = load_config(cpu_service)
    section = ServerSection(**{**config.server.model_dump(), "grpc_port": 9001, "drain_grace": 12.0})
    plan = plan_service(config.model_copy(update={"server": section}))
    objects = {m.kind: m.obj for m in render(plan, RenderOptions(name="svc", image="svc:1")).manifests}
    container = _container(objects)
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"] == 9001
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "12"]
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 12 + 12 + 20
    assert plan.pod_config["server"]["grpc_port"] == 9001  # the pod listens where the Service sends
    without = plan_service(config.model_copy(update={"server": ServerSection(grpc_port=0)}))
    assert without.grpc_port is None


# the pod's ladle.toml ------------------------------------------------------------------------


def test_the_pod_config_serves_what_the_source_config_serves(cpu_service: Path, tmp_path: Path) -> None:
    objects = _render(cpu_service)
    text = objects["ConfigMap"]["data"]["ladle.toml"]
    pod_config = tomllib.loads(text)
    assert pod_config["server"]["repository"] == "/models"
    assert pod_config["server"]["host"] == "0.0.0.0"
    assert pod_config["models"]["scorer"] == {"instances": 2, "threads": 2, "options": {"factor": 3.0}}
    # The pod's file, with its repository moved to a local copy of the models, plans the same models
    # and starts a real server whose probe and metrics paths answer.
    shutil.copytree(cpu_service / "models", tmp_path / "models")
    pod_config["server"].update(repository=str(tmp_path / "models"), host="127.0.0.1", port=0)
    config = ServerConfig.model_validate({**pod_config, "source": str(tmp_path / "ladle.toml")})
    assert plan_service(config).models == plan_service(load_config(cpu_service)).models
    container = _container(objects)
    paths = [container[probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe")]
    paths.append(objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    with run_server(Server(config)) as running, httpx.Client(base_url=running.url, timeout=10) as http:
        for path in paths:
            assert http.get(path).status_code == 200, path
        metadata = http.get("/v2/models/scorer/config").json()
        assert metadata["instances"] == 2


def test_no_secret_goes_into_the_config_map(tmp_path: Path) -> None:
    build_python_handler(tmp_path / "models" / "m" / "1", handler_file=True)
    _write(tmp_path / "models" / "m" / "model.toml", 'runtime = "python"\ntrust_code = true\n')
    _write(tmp_path / "ladle.toml", '[server]\napi_token = "s3cret-token"\nstate = "deployments.db"\n')
    objects = _render(tmp_path)
    assert "s3cret-token" not in json.dumps(objects)
    pod_config = tomllib.loads(objects["ConfigMap"]["data"]["ladle.toml"])
    assert pod_config["server"]["state"] == "/var/lib/ladle/deployments.db"  # writable, not the ConfigMap
    env = {e["name"]: e for e in _container(objects)["env"]}
    assert env["LADLE_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"key": "token", "name": "svc-api-token"}


# autoscaling ---------------------------------------------------------------------------------


def test_keda_scales_on_ongoing_requests_per_model(gpu_repository: Path) -> None:
    scaled = _render(gpu_repository, replicas=2, max_replicas=6, namespace="ml")["ScaledObject"]
    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"] == {"name": "svc", "apiVersion": "apps/v1", "kind": "Deployment"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 6)
    queries = {t["metadata"]["query"]: t["metadata"]["threshold"] for t in spec["triggers"]}
    assert queries == {
        'sum(ladle_ongoing_requests{ladle_model_name="chat",namespace="ml"})': "2",
        'sum(ladle_ongoing_requests{ladle_model_name="scorer",namespace="ml"})': "2",
    }
    assert {t["type"] for t in spec["triggers"]} == {"prometheus"}
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert (
        behavior["scaleDown"]["stabilizationWindowSeconds"]
        > behavior["scaleUp"]["stabilizationWindowSeconds"]
    )


def test_hpa_uses_the_pods_metric(cpu_service: Path) -> None:
    hpa = _render(cpu_service, autoscaler="hpa", replicas=3)["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "svc"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"] == {
        "name": "ladle_ongoing_requests",
        "selector": {"matchLabels": {"ladle_model_name": "scorer"}},
    }
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "2"}


def test_no_autoscaler_and_no_metrics(tmp_path: Path) -> None:
    build_python_handler(tmp_path / "models" / "m" / "1", handler_file=True)
    _write(tmp_path / "models" / "m" / "model.toml", 'runtime = "python"\ntrust_code = true\n')
    _write(tmp_path / "ladle.toml", "[telemetry]\nmetrics = false\n")
    with pytest.raises(Exception, match="ladle_ongoing_requests"):
        _render(tmp_path)
    objects = _render(tmp_path, autoscaler="none", replicas=2)
    assert set(objects) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    assert objects["Deployment"]["spec"]["replicas"] == 2
    assert "prometheus.io/scrape" not in objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]


# KServe ---------------------------------------------------------------------------------------


def test_kserve_raw_deployment_runs_the_same_container(gpu_repository: Path) -> None:
    plain = _render(gpu_repository)
    objects = _render(gpu_repository, kserve=True)
    runtime, isvc = objects["ServingRuntime"], objects["InferenceService"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    formats = [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert isvc["spec"]["predictor"]["model"]["modelFormat"]["name"] in formats
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert {k: v for k, v in container.items() if k != "name"} == {
        k: v for k, v in _container(plain).items() if k != "name"
    }
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    pod = plain["Deployment"]["spec"]["template"]["spec"]
    predictor = isvc["spec"]["predictor"]
    assert predictor["terminationGracePeriodSeconds"] == pod["terminationGracePeriodSeconds"]
    assert runtime["spec"]["volumes"] == pod["volumes"]
    assert objects["ScaledObject"]["spec"]["scaleTargetRef"]["name"] == "svc-predictor"
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "svc"
    }


def test_models_from_a_claim_are_mounted_read_only(cpu_service: Path) -> None:
    objects = _render(cpu_service, models_claim="model-store")
    mounts = {m["name"]: m for m in _container(objects)["volumeMounts"]}
    assert mounts["models"] == {"mountPath": "/models", "name": "models", "readOnly": True}
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    assert "models" not in {m["name"] for m in _container(_render(cpu_service))["volumeMounts"]}


# the command ----------------------------------------------------------------------------------


def test_command_writes_one_file_per_object_and_replaces_only_with_force(
    cpu_service: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "manifests"
    assert main(["k8s", "render", str(cpu_service / "ladle.toml"), "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "10-configmap.yaml",
        "20-deployment.yaml",
        "30-service.yaml",
        "40-poddisruptionbudget.yaml",
        "50-scaledobject.yaml",
    ]
    deployment = yaml.safe_load((out / "20-deployment.yaml").read_text())
    assert deployment["metadata"]["name"] == "scorer"  # one model: named after it
    assert _container({"Deployment": deployment})["image"] == "scorer:latest"
    err = capsys.readouterr().err
    assert "kubectl apply -f" in err
    (out / "notes.txt").write_text("mine")
    assert main(["k8s", "render", str(cpu_service), "--out", str(out), "--hpa"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["k8s", "render", str(cpu_service), "--out", str(out), "--hpa", "--force"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "50-horizontalpodautoscaler.yaml" in names and "50-scaledobject.yaml" not in names
    assert "notes.txt" in names


def test_command_prints_a_stream(cpu_service: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["k8s", "render", str(cpu_service), "--out", "-", "--kserve", "--image", "reg/scorer:2"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in documents] == [
        "ConfigMap",
        "ServingRuntime",
        "InferenceService",
        "PodDisruptionBudget",
        "ScaledObject",
    ]
    assert documents[1]["spec"]["containers"][0]["image"] == "reg/scorer:2"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "Bad_Name"], "not a valid object name"),
        (["--replicas", "5", "--max-replicas", "2"], "at most max_replicas"),
        (["--memory", "lots"], "not a Kubernetes quantity"),
        (["--prometheus", "prometheus:9090"], "http(s) URL"),
    ],
)
def test_command_refuses_bad_options(
    cpu_service: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["k8s", "render", str(cpu_service), "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_command_reports_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_python_handler(tmp_path / "m" / "1", handler_file=True)
    _write(tmp_path / "m" / "model.toml", 'runtime = "python"\ninstancez = 2\n')
    assert main(["k8s", "render", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "instancez" in err and "unknown key" in err


def test_command_without_the_client_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, cpu_service: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # makes `import kubernetes` fail
    assert main(["k8s", "render", str(cpu_service), "--out", str(tmp_path / "o")]) == 1
    assert "pip install 'ladle[k8s]'" in capsys.readouterr().err


def test_names_are_derived_as_valid_object_names() -> None:
    assert derive_name("Churn_Model.v2") == "churn-model-v2"
    assert derive_name("1st") == "ladle-1st"
    assert derive_name("x" * 80) == "x" * 40


# kubectl ----------------------------------------------------------------------------------------


def _subset(ours: Any, theirs: Any) -> bool:
    """Whether every value in ``ours`` is in ``theirs`` (kubectl adds empty defaults, never drops)."""
    if isinstance(ours, dict):
        return isinstance(theirs, dict) and all(
            k in theirs and _subset(v, theirs[k]) for k, v in ours.items()
        )
    if isinstance(ours, list):
        return isinstance(theirs, list) and len(ours) == len(theirs) and all(map(_subset, ours, theirs))
    return bool(ours == theirs)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")
def test_kubectl_decodes_the_workload_with_its_own_types(cpu_service: Path, tmp_path: Path) -> None:
    """``kubectl apply --dry-run=client`` needs an API server even with ``--validate=false`` (it maps
    kinds through discovery), so it cannot run offline. ``kubectl set ... --local`` can: it decodes
    the file into kubectl's compiled-in Go types (a wrong type fails) and writes it back (a field
    those types do not know is dropped, which the subset check catches)."""
    out = tmp_path / "out"
    assert main(["k8s", "render", str(cpu_service), "--out", str(out), "--name", "svc"]) == 0
    deployment = yaml.safe_load((out / "20-deployment.yaml").read_text())
    _container({"Deployment": deployment})["image"] = "svc:checked"
    service = yaml.safe_load((out / "30-service.yaml").read_text())
    checks = {  # file -> (a change kubectl makes, the object expected with that change)
        "20-deployment.yaml": (["set", "image", "ladle=svc:checked"], deployment),
        "30-service.yaml": (["set", "selector", "app.kubernetes.io/name=svc"], service),  # unchanged
    }
    for name, (command, expected) in checks.items():
        result = subprocess.run(
            ["kubectl", *command, "--local", "-o", "json", "-f", str(out / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert _subset(expected, json.loads(result.stdout)), name
    # The check has teeth: a field kubectl's types lack is dropped, a wrong type is refused.
    unknown = json.loads(json.dumps(deployment))  # image svc:checked, as kubectl will set it
    _container({"Deployment": unknown})["bogusField"] = 1
    sent = json.loads(json.dumps(unknown))
    _container({"Deployment": sent})["image"] = "svc:latest"
    (tmp_path / "unknown.yaml").write_text(yaml.safe_dump(sent))
    result = _kubectl_set_image(tmp_path / "unknown.yaml")
    assert result.returncode == 0, result.stderr
    assert _container({"Deployment": json.loads(result.stdout)}) == _container({"Deployment": deployment})
    assert not _subset(unknown, json.loads(result.stdout))
    mistyped = (out / "20-deployment.yaml").read_text().replace("replicas: 1", "replicas: one")
    (tmp_path / "mistyped.yaml").write_text(mistyped)
    result = _kubectl_set_image(tmp_path / "mistyped.yaml")
    assert result.returncode != 0 and "replicas" in result.stderr


def _kubectl_set_image(path: Path) -> subprocess.CompletedProcess[str]:
    command = ["kubectl", "set", "image", "ladle=svc:checked", "--local", "-o", "json", "-f", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)
