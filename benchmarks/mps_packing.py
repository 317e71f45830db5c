"""Four small models on one GPU: NVIDIA MPS against time-slicing, and against one process holding all four.

Each model is an MLP with random weights (``--depth`` layers of ``--width``, ~400 MB of fp32 at the
defaults), built in code. Three contenders serve the same four models, all loaded at once:

- ``mps``: one worker process per model through the ``mps`` placement, under its private MPS daemon;
- ``time-sliced``: the same worker processes without MPS (the placement with ``mps = false``);
- ``one-process``: the four models on four threads of one process (``ThreadExecutor``).

Load is closed-loop: ``--clients`` clients per model, each sending a batch of ``--batch`` rows and
waiting for its answer before the next. Reported per contender: aggregate requests/s and p50/p99
latency, medians over ``--repetitions`` rounds that interleave the contenders (order rotated each
round). The target: MPS at least 1.5x the time-sliced throughput at equal or better p99.

Needs a CUDA GPU and torch; ``nvidia-cuda-mps-control`` on PATH for the ``mps`` contender. Without a
GPU it says so and measures nothing. The GPU's compute mode is never changed.

Run: ``python benchmarks/mps_packing.py [--seconds 10] [--repetitions 3] [--batch 16] [--clients 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ladle import (
    Arrays,
    Batch,
    Instance,
    ModelConfig,
    PluginHost,
    Runtime,
    RuntimeSpec,
    ThreadExecutor,
    hookimpl,
)

MODELS = ("m0", "m1", "m2", "m3")
CONTENDERS = ("mps", "time-sliced", "one-process")


class RandomMLP(Runtime):
    """``depth`` ReLU layers of ``width`` units and a 16-unit head, random weights (seeded)."""

    name = "random-mlp"

    def load(self) -> None:
        import torch

        options = self.spec.options
        torch.manual_seed(int(options["seed"]))
        width, depth = int(options["width"]), int(options["depth"])
        layers: list[Any] = []
        for _ in range(depth):
            layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(width, 16))
        self.device = torch.device(self.spec.device)
        self.model = torch.nn.Sequential(*layers).to(self.device).eval()
        self.torch = torch

    def predict(self, batch: Batch) -> Arrays:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(batch.inputs["input"]).to(self.device)
            return {"output": self.model(x).cpu().numpy()}

    def memory_bytes(self) -> int:
        return int(self.torch.cuda.max_memory_allocated(self.device))


@hookimpl
def register_runtimes(register: Any) -> None:
    register("random-mlp", RandomMLP)


def cuda_problem() -> str | None:
    """Why this machine cannot run the benchmark, or ``None``."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def make_host() -> PluginHost:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # worker processes import this module
    host = PluginHost()
    host.add_module("mps_packing")
    host.add_module("ladle.plugins.scalers.mps")
    return host.collect()


def specs(args: argparse.Namespace) -> list[RuntimeSpec]:
    options = {"width": args.width, "depth": args.depth}
    return [
        RuntimeSpec("random-mlp", ".", model=m, version="1", device="cuda:0", options={**options, "seed": i})
        for i, m in enumerate(MODELS)
    ]


async def drive(
    instances: list[Instance], args: argparse.Namespace, seconds: float
) -> tuple[int, list[float]]:
    """Closed loop on every instance for ``seconds``: (answers, latencies in seconds)."""
    batch = Batch.of(
        {"input": np.random.default_rng(0).standard_normal((args.batch, args.width), np.float32)}
    )
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(instance: Instance) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            (result,) = await instance.execute(batch)
            if not isinstance(result, dict):
                raise RuntimeError(f"{instance.spec.model}: {result}")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client(i) for i in instances for _ in range(args.clients)))
    return len(latencies), latencies


async def run_contender(kind: str, host: PluginHost, args: argparse.Namespace) -> dict[str, float]:
    placement: Any = None
    if kind == "one-process":
        instances = [Instance(s, ThreadExecutor(s, host), name="0") for s in specs(args)]
    else:
        from ladle.plugins.scalers.mps.placement import MpsPlacement

        placement = MpsPlacement({"gpus": "1x1TiB", "mps": kind == "mps"}, host)  # room is not the question
        config = ModelConfig.model_validate(
            {"device": "cuda", "placement": "mps", "resources": {"gpu_memory": args.gpu_memory << 20}}
        )
        instances = [placement.create(spec, 0, config) for spec in specs(args)]
    try:
        await asyncio.gather(*(i.start() for i in instances))
        await drive(instances, args, args.warmup)
        count, latencies = await drive(instances, args, args.seconds)
    finally:
        await asyncio.gather(*(i.stop(10) for i in instances), return_exceptions=True)
        if placement is not None:
            await placement.close()
    ordered = np.asarray(latencies)
    return {
        "throughput": count / args.seconds,
        "p50_ms": float(np.percentile(ordered, 50) * 1e3),
        "p99_ms": float(np.percentile(ordered, 99) * 1e3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="measured seconds per contender and round"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds of load first")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="rows per request")
    parser.add_argument("--clients", type=int, default=1, help="closed-loop clients per model")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--gpu-memory", type=int, default=2048, help="MiB declared per model (its MPS limit)")
    args = parser.parse_args()
    problem = cuda_problem()
    if problem is not None:
        print(f"mps_packing needs a CUDA GPU: {problem}. Nothing was measured.", file=sys.stderr)
        return 2
    contenders = list(CONTENDERS)
    if shutil.which("nvidia-cuda-mps-control") is None:
        print("nvidia-cuda-mps-control is not on PATH: the mps contender is left out (unmeasured).")
        contenders.remove("mps")
    host = make_host()
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in contenders}
    for round_ in range(args.repetitions):
        order = contenders[round_ % len(contenders) :] + contenders[: round_ % len(contenders)]
        for kind in order:
            figures = asyncio.run(run_contender(kind, host, args))
            results[kind].append(figures)
            rate, tail = figures["throughput"], figures["p99_ms"]
            print(f"round {round_ + 1} {kind:12s} {rate:9.1f} req/s  p99 {tail:.2f} ms")
    median = {
        kind: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for kind, runs in results.items()
    }
    header = f"{'contender':12s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}"
    print(f"\n{header}   (medians of {args.repetitions} rounds)")
    for kind, figures in median.items():
        print(f"{kind:12s} {figures['throughput']:9.1f} {figures['p50_ms']:8.2f} {figures['p99_ms']:8.2f}")
    if "mps" in median:
        for other in ("time-sliced", "one-process"):
            speed = median["mps"]["throughput"] / median[other]["throughput"]
            tail = median["mps"]["p99_ms"] / median[other]["p99_ms"]
            print(f"mps vs {other}: {speed:.2f}x throughput, p99 {tail:.2f}x")
        speed = median["mps"]["throughput"] / median["time-sliced"]["throughput"]
        met = speed >= 1.5 and median["mps"]["p99_ms"] <= median["time-sliced"]["p99_ms"]
        verdict = "met" if met else "not met"
        print(f"target (mps >= 1.5x time-sliced throughput at equal or better p99): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
