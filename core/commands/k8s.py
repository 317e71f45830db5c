"""``ladle k8s render``: Kubernetes manifests from a ladle config, as a dry run (nothing is applied).

    ladle k8s render CONFIG --out DIR [--kserve] [--hpa | --no-autoscaling] [--image IMAGE]
                     [--replicas N] [--max-replicas N] [--name NAME] [--namespace NS]
                     [--models-claim PVC] [--prometheus URL] [--cpu Q] [--memory Q] [--force]

CONFIG is a ``ladle.toml``, a folder holding one, or a model repository. ``--out -`` prints one YAML
stream instead of writing files. Then: ``kubectl apply -f DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import LadleError

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    render = actions.add_parser(
        "render",
        help="write the manifests of a service (a dry run)",
        description="Render Kubernetes manifests for serving CONFIG; nothing is applied to a cluster.",
    )
    render.add_argument("config", type=Path, help="a ladle.toml, a folder holding one, or a model repository")
    render.add_argument("--out", required=True, help="folder to write, one file per object ('-': stdout)")
    render.add_argument("--name", help="object name (default: the model's name, or the config folder's)")
    render.add_argument("--namespace", help="namespace of every object (default: kubectl's)")
    render.add_argument("--image", help="image with ladle and the models (default: NAME:latest)")
    render.add_argument("--replicas", type=int, default=1, help="minimum and initial replicas (default: 1)")
    render.add_argument("--max-replicas", type=int, help="autoscaler ceiling (default: max(10, replicas))")
    scaling = render.add_mutually_exclusive_group()
    scaling.add_argument(
        "--hpa", action="store_true", help="an autoscaling/v2 HPA (custom metrics API) instead of KEDA"
    )
    scaling.add_argument(
        "--no-autoscaling", action="store_true", help="a fixed number of replicas, no autoscaler"
    )
    render.add_argument(
        "--kserve", action="store_true", help="a KServe ServingRuntime + InferenceService (RawDeployment)"
    )
    render.add_argument(
        "--models-claim", help="mount this PersistentVolumeClaim at /models instead of the image's models"
    )
    render.add_argument("--prometheus", help="Prometheus URL that KEDA queries")
    render.add_argument("--cpu", help="CPU request (default: instances x threads of every model)")
    render.add_argument("--memory", help="memory request and limit (default: estimated from the models)")
    render.add_argument("--force", action="store_true", help="replace an earlier render in --out")


def _default_name(config_path: Path, models: list[str]) -> str:
    from ..kubernetes import derive_name

    if len(models) == 1:
        return derive_name(models[0])
    folder = config_path.resolve()
    return derive_name((folder.parent if folder.is_file() else folder).name or "ladle")


def run(args: argparse.Namespace) -> int:
    try:
        import kubernetes  # noqa: F401
        import tomli_w  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as exc:
        print(f"error: ladle k8s needs {exc.name}: pip install 'ladle[k8s]'", file=sys.stderr)
        return 1
    from ..kubernetes import DEFAULT_PROMETHEUS, RenderOptions, plan_service, render, to_yaml, write
    from ..server import load_config

    try:
        config = load_config(args.config)
        plan = plan_service(config)
        name = args.name or _default_name(args.config, [m.name for m in plan.models])
        options = RenderOptions(
            name=name,
            image=args.image or f"{name}:latest",
            namespace=args.namespace,
            replicas=args.replicas,
            max_replicas=args.max_replicas or max(10, args.replicas),
            autoscaler="none" if args.no_autoscaling else "hpa" if args.hpa else "keda",
            kserve=args.kserve,
            models_claim=args.models_claim,
            prometheus=args.prometheus or DEFAULT_PROMETHEUS,
            cpu=args.cpu,
            memory=args.memory,
        )
        rendered = render(plan, options)
        if args.out == "-":
            sys.stdout.write(to_yaml(rendered.manifests))
            written = []
        else:
            written = write(rendered, Path(args.out), replace=args.force)
    except LadleError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    plan = rendered.plan
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    extras = ",".join(plan.ladle_extras) or "''"
    summary = [
        f"{len(plan.models)} model(s): {', '.join(m.name for m in plan.models)}",
        f"GPUs per pod: {plan.gpus}" if plan.gpus else "CPU only",
        f"image {options.image}: build it with --build-arg LADLE_EXTRAS={extras}",
        *plan.notes,
    ]
    if plan.needs_token:
        summary.append(
            f"the API token comes from Secret {name}-api-token (key 'token'): "
            f"kubectl create secret generic {name}-api-token --from-literal=token=..."
        )
    if written:
        summary.append(f"apply with: kubectl apply -f {args.out}")
    print("\n".join(f"  {line}" for line in summary), file=sys.stderr)
    return 0
