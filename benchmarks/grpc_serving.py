"""Side-by-side gRPC serving benchmark: ladle's KServe V2 gRPC against ladle's REST and MLServer's gRPC.

Every contender serves the same XGBoost breast-cancer classifier (200 trees, depth 6). Each
measurement is one (server, protocol, rows per request, concurrent streams) cell under closed-loop
load from a load generator in its own process (``ghz`` is not available here, so it is a small
``grpc.aio`` client on uvloop sending pre-serialized ``ModelInferRequest`` bytes over one channel,
and, for REST, an asyncio HTTP/1.1 client sending the V2 binary-tensor request that
``tritonclient.http`` sends, one keep-alive connection per stream). Servers run one at a time,
interleaved round robin in each repetition (the order rotates; ladle's two protocols alternate
too); medians over repetitions and ratios are printed at the end.

One more contender, ``grpc.aio floor``, is what the gRPC stack itself costs: a bare ``grpc.aio``
server on uvloop whose ModelInfer decodes the request and answers at once with an output of the
model's shape (no model, no pipeline). No gRPC server built on grpc.aio can serve more than it, so
its req/s beside ladle REST's says how far the ``VS_REST`` goal is reachable on this machine.

    python benchmarks/grpc_serving.py            # 3 repetitions of 5 s per cell (~6 min)
    python benchmarks/grpc_serving.py --quick    # 1 repetition of 3 s
    python benchmarks/grpc_serving.py --skip-mlserver --skip-floor --json out.json

The machine's CPUs are shared, so absolute req/s move from run to run; the ratios between
contenders measured in the same run, and the server CPU per request, are the figures to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _contenders  # noqa: E402
from _harness import Contender, Launch, RunningServer, ServerFailed, free_port  # noqa: E402

MODEL = _contenders.MODEL_NAME
METHOD = "/inference.GRPCInferenceService/ModelInfer"
ROWS = (1, 32)
STREAMS = (1, 64)
# Goals printed beside the results (never asserted).
HIGH_LOAD = 64
VS_MLSERVER = 3.0
VS_REST = 0.9
P99_LIMIT_MS = 15.0


# requests ------------------------------------------------------------------------------------------


def batch_of(rows: int, row: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(row[None, :], rows, axis=0), dtype=np.float32)


def grpc_request(batch: np.ndarray) -> bytes:
    """What ``tritonclient.grpc`` sends for ``batch``: FP32 in ``raw_input_contents``."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
    request.raw_input_contents.append(batch.tobytes())
    return bytes(request.SerializeToString())


def rest_request(batch: np.ndarray, port: int) -> bytes:
    """What ``tritonclient.http`` sends for ``batch``: V2 JSON header plus binary tensor data,
    binary outputs."""
    raw = batch.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(batch.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + raw
    head = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# the load generator (runs in its own process: `grpc_serving.py --load ...`) -------------------------


async def _grpc_load(
    target: str, payload: bytes, streams: int, seconds: float
) -> tuple[int, list[float], int]:
    from grpc import aio

    async with aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)
        await call(payload)  # connect before the clock starts
        latencies: list[float] = []
        errors = 0
        stop = time.perf_counter() + seconds

        async def stream() -> None:
            nonlocal errors
            while (start := time.perf_counter()) < stop:
                try:
                    await call(payload)
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(stream() for _ in range(streams)))
        return len(latencies), latencies, errors


async def _rest_load(port: int, payload: bytes, streams: int, seconds: float) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (start := time.perf_counter()) < stop:
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(streams)))
    return len(latencies), latencies, errors


def run_load(protocol: str, address: str, payload: bytes, streams: int, seconds: float) -> dict[str, Any]:
    """One closed-loop run in this process; its figures as a dict (latencies in ms)."""
    import uvloop

    cpu = os.times()
    started = time.perf_counter()
    if protocol == "grpc":
        done, latencies, errors = uvloop.run(_grpc_load(address, payload, streams, seconds))
    else:
        done, latencies, errors = uvloop.run(_rest_load(int(address), payload, streams, seconds))
    elapsed = time.perf_counter() - started
    after = os.times()
    spent = (after.user - cpu.user) + (after.system - cpu.system)
    ordered = sorted(latencies) or [float("nan")]

    def percentile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return {
        "requests": done,
        "seconds": elapsed,
        "errors": errors,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "loader_cpu_s": spent,
    }


def load_in_process(
    protocol: str, address: str, payload: bytes, streams: int, seconds: float
) -> dict[str, Any]:
    """``run_load`` in a child process of its own (the load generator never shares the server's)."""
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(payload)
    try:
        argv = [sys.executable, __file__, "--load", protocol, address, f.name, str(streams), str(seconds)]
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    finally:
        os.unlink(f.name)
    if completed.returncode != 0:
        raise ServerFailed(f"load generator failed: {completed.stderr.strip()[-500:]}")
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


# servers -------------------------------------------------------------------------------------------


@dataclass
class Served:
    """A contender and the gRPC port of its latest launch; ``serves_model``: its answers are the
    model's (checked against the Booster before the first load)."""

    contender: Contender
    protocols: tuple[str, ...]
    grpc_port: int = 0
    serves_model: bool = True


def ladle_contender(repository: Path) -> Served:
    """``ladle serve REPO --port P --grpc-port G``, measured over gRPC and over REST."""
    script = Path(sys.executable).parent / "ladle"
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "ladle.cli"]

    def launch(port: int) -> Launch:
        served.grpc_port = free_port()
        grpc_port = str(served.grpc_port)
        return Launch([*argv, "serve", str(repository), "--port", str(port), "--grpc-port", grpc_port])

    contender = Contender(name="ladle", launch=launch, path="/", role="ladle", description="ladle serve")
    served = Served(contender, ("grpc", "rest"))
    return served


def floor_contender() -> Served:
    """The bare ``grpc.aio`` server of this script (``--floor``; see the module docstring)."""

    def launch(port: int) -> Launch:
        served.grpc_port = free_port()
        return Launch([sys.executable, __file__, "--floor", str(port), str(served.grpc_port)])

    contender = Contender(name="floor", launch=launch, path="/", description="bare grpc.aio server")
    served = Served(contender, ("grpc",), serves_model=False)
    return served


async def _floor_server(http_port: int, grpc_port: int) -> None:
    """ModelInfer answered at once (an FP32 output of one value per row), and a readiness answer
    on ``http_port`` for the harness."""
    import grpc
    from tritonclient.grpc import service_pb2

    response_type = service_pb2.ModelInferResponse

    async def infer(request: Any, context: Any) -> Any:
        rows = request.inputs[0].shape[0] if request.inputs else 1
        response = response_type(model_name=request.model_name, model_version="1", id=request.id)
        response.outputs.add(name="probability", datatype="FP32", shape=[rows])
        response.raw_output_contents.append(bytes(4 * rows))
        return response

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                infer,
                request_deserializer=service_pb2.ModelInferRequest.FromString,
                response_serializer=response_type.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()

    async def ready(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async with await asyncio.start_server(ready, "127.0.0.1", http_port):
        await server.wait_for_termination()


def mlserver_contender(executable: Path, model: _contenders.BenchModel, workdir: Path) -> Served:
    base = _contenders.mlserver(executable, model, workdir)
    served = Served(base, ("grpc",))

    def launch(port: int) -> Launch:
        launched = base.launch(port)
        served.grpc_port = int(launched.env["MLSERVER_GRPC_PORT"])
        return launched

    served.contender = Contender(
        name="mlserver",
        launch=launch,
        path=base.path,
        ready_path=base.ready_path,
        startup_timeout=base.startup_timeout,
        description=base.description,
    )
    return served


def check(served: Served, http_port: int, model: _contenders.BenchModel) -> None:
    """The server's answers over each protocol match the Booster's own predictions."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    for row, expected in model.check_rows:
        batch = batch_of(1, row)
        if "grpc" in served.protocols:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
            tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            result = client.infer(MODEL, [tensor])
            got = float(result.as_numpy(result.get_response().outputs[0].name).reshape(-1)[0])
            client.close()
            if abs(got - expected) > _contenders.TOLERANCE:
                raise ServerFailed(
                    f"{served.contender.name} over gRPC predicted {got}, the Booster {expected}"
                )
        if "rest" in served.protocols:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
            tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch, binary_data=True)
            result = client.infer(MODEL, [tensor])
            got = float(result.as_numpy(result.get_response()["outputs"][0]["name"]).reshape(-1)[0])
            client.close()
            if abs(got - expected) > _contenders.TOLERANCE:
                raise ServerFailed(
                    f"{served.contender.name} over REST predicted {got}, the Booster {expected}"
                )


# measuring -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    contender: str
    protocol: str
    rows: int
    streams: int
    repetition: int
    throughput: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float
    loader_cpu_us: float
    errors: int

    @property
    def label(self) -> str:
        return f"{self.contender}-{self.protocol}"


def measure(
    server: RunningServer,
    served: Served,
    protocol: str,
    rows: int,
    streams: int,
    model: Any,
    args: Any,
    rep: int,
) -> Cell:
    batch = batch_of(rows, model.row)
    if protocol == "grpc":
        address, payload = f"127.0.0.1:{served.grpc_port}", grpc_request(batch)
    else:
        address, payload = str(server.port), rest_request(batch, server.port)
    before = server.cpu_seconds()
    figures = load_in_process(protocol, address, payload, streams, args.duration)
    spent = server.cpu_seconds() - before
    done = max(1, figures["requests"])
    return Cell(
        served.contender.name,
        protocol,
        rows,
        streams,
        rep,
        figures["requests"] / figures["seconds"],
        figures["p50_ms"],
        figures["p99_ms"],
        spent / done * 1e6,
        figures["loader_cpu_s"] / done * 1e6,
        figures["errors"],
    )


def run(args: argparse.Namespace, report: Callable[[str], None] = print) -> list[Cell]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ladle-grpc-bench-"))
    model = _contenders.build_model(workdir / "model")
    repository = _contenders.write_repository(workdir / "repository", model)
    if args.batch_delay is not None:  # let batches form while requests trickle in
        config = f'[batcher]\nname = "dynamic"\nmax_queue_delay = {args.batch_delay}\n'
        (repository / MODEL / "model.toml").write_text(config)
    contenders = [ladle_contender(repository)]
    if not args.skip_floor:
        contenders.append(floor_contender())
    if not args.skip_mlserver:
        try:
            executable = _contenders.mlserver_environment(args.cache_dir, report)
            contenders.append(mlserver_contender(executable, model, workdir))
        except _contenders.Unavailable as exc:
            report(f"MLServer left out: {exc}")
    cells: list[Cell] = []
    checked: set[str] = set()
    for rep in range(args.reps):
        shift = rep % len(contenders)
        for served in contenders[shift:] + contenders[:shift]:
            name = served.contender.name
            server = RunningServer(served.contender, free_port(), workdir / "logs" / f"{name}-{rep + 1}.log")
            try:
                server.start()
                if name not in checked and served.serves_model:
                    check(served, server.port, model)
                    checked.add(name)
                protocols = served.protocols if rep % 2 == 0 else tuple(reversed(served.protocols))
                for protocol in protocols:
                    warm_batch = batch_of(1, model.row)
                    if protocol == "grpc":
                        load_in_process(
                            "grpc", f"127.0.0.1:{served.grpc_port}", grpc_request(warm_batch), 64, args.warmup
                        )
                    else:
                        load_in_process(
                            "rest", str(server.port), rest_request(warm_batch, server.port), 64, args.warmup
                        )
                    for rows in ROWS:
                        for streams in STREAMS:
                            cell = measure(server, served, protocol, rows, streams, model, args, rep)
                            cells.append(cell)
                            report(f"  rep {rep + 1} {describe(cell)}")
            finally:
                server.stop()
    return cells


def describe(cell: Cell) -> str:
    return (
        f"{cell.label:14} rows {cell.rows:2} streams {cell.streams:2}: {cell.throughput:8.0f} req/s  "
        f"p50 {cell.p50_ms:6.2f} ms  p99 {cell.p99_ms:6.2f} ms  server {cell.server_cpu_us:5.0f} us/req  "
        f"errors {cell.errors}"
    )


# summary -------------------------------------------------------------------------------------------


def summarise(cells: list[Cell]) -> dict[tuple[str, int, int], dict[str, float]]:
    groups: dict[tuple[str, int, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.label, cell.rows, cell.streams), []).append(cell)
    return {
        key: {
            "throughput": statistics.median(c.throughput for c in runs),
            "p50_ms": statistics.median(c.p50_ms for c in runs),
            "p99_ms": statistics.median(c.p99_ms for c in runs),
            "server_cpu_us": statistics.median(c.server_cpu_us for c in runs),
            "loader_cpu_us": statistics.median(c.loader_cpu_us for c in runs),
            "errors": sum(c.errors for c in runs),
            "runs": len(runs),
        }
        for key, runs in groups.items()
    }


def print_summary(summary: dict[tuple[str, int, int], dict[str, float]]) -> None:
    print("\nmedians (server CPU per request is the steadiest figure on a shared machine)")
    print(
        f"{'contender':16} {'rows':>4} {'streams':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'server us/req':>13} {'loader us/req':>13} {'errors':>6}"
    )
    for (label, rows, streams), s in summary.items():
        print(
            f"{label:16} {rows:4} {streams:7} {s['throughput']:9.0f} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} "
            f"{s['server_cpu_us']:13.0f} {s['loader_cpu_us']:13.0f} {int(s['errors']):6}"
        )
    print("\nratios of ladle-grpc (req/s; server CPU per request, lower is better)")
    for rows in ROWS:
        for streams in STREAMS:
            mine = summary.get(("ladle-grpc", rows, streams))
            if mine is None:
                continue
            for other in ("ladle-rest", "mlserver-grpc", "floor-grpc"):
                theirs = summary.get((other, rows, streams))
                if theirs is None:
                    continue
                speed = mine["throughput"] / theirs["throughput"]
                cpu = mine["server_cpu_us"] / theirs["server_cpu_us"]
                print(
                    f"  rows {rows:2} streams {streams:2} vs {other:14}: "
                    f"{speed:5.2f}x req/s, {cpu:5.2f}x CPU/req"
                )
    print(f"\ntargets at {HIGH_LOAD} streams (printed, never asserted)")
    for rows in ROWS:
        mine = summary.get(("ladle-grpc", rows, HIGH_LOAD))
        if mine is None:
            continue
        for other, goal in (("mlserver-grpc", VS_MLSERVER), ("ladle-rest", VS_REST)):
            theirs = summary.get((other, rows, HIGH_LOAD))
            if theirs is not None:
                ratio = mine["throughput"] / theirs["throughput"]
                verdict = "met" if ratio >= goal else "NOT met"
                print(f"  rows {rows:2}: >= {goal}x {other} req/s: {ratio:.2f}x ({verdict})")
        verdict = "met" if mine["p99_ms"] <= P99_LIMIT_MS else "NOT met"
        print(f"  rows {rows:2}: p99 <= {P99_LIMIT_MS} ms: {mine['p99_ms']:.2f} ms ({verdict})")
        floor = summary.get(("floor-grpc", rows, HIGH_LOAD))
        rest = summary.get(("ladle-rest", rows, HIGH_LOAD))
        if floor is not None and rest is not None:
            reach = floor["throughput"] / rest["throughput"]
            verdict = "beyond any grpc.aio server here" if reach < VS_REST else "within the stack's reach"
            print(
                f"  rows {rows:2}: the grpc.aio floor (no model) serves {reach:.2f}x ladle REST's req/s, "
                f"p99 {floor['p99_ms']:.2f} ms: the {VS_REST}x goal is {verdict}"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3, help="repetitions (servers interleaved in each)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load per protocol")
    parser.add_argument("--quick", action="store_true", help="1 repetition of 3 s per cell (1 s warm-up)")
    parser.add_argument("--skip-mlserver", action="store_true", help="leave MLServer out")
    parser.add_argument("--skip-floor", action="store_true", help="leave the bare grpc.aio server out")
    parser.add_argument(
        "--batch-delay", type=float, metavar="MS", help="ladle's dynamic batcher max_queue_delay (default 0)"
    )
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache", help="MLServer's environment")
    parser.add_argument("--workdir", type=Path, help="keep model and server logs here (default: temporary)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="save every cell as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.duration, args.warmup = 1, 3.0, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--load":  # the load generator's own process
        protocol, address, payload_file, streams, seconds = argv[1:6]
        payload = Path(payload_file).read_bytes()
        print(json.dumps(run_load(protocol, address, payload, int(streams), float(seconds))))
        return 0
    if argv and argv[0] == "--floor":  # the bare grpc.aio server's own process
        import uvloop

        uvloop.run(_floor_server(int(argv[1]), int(argv[2])))
        return 0
    args = parse_args(argv)
    cpus = os.cpu_count()
    print(f"gRPC serving benchmark: {args.reps} repetition(s) x {args.duration:g} s per cell; {cpus} CPUs")
    cells = run(args)
    summary = summarise(cells)
    print_summary(summary)
    if args.json is not None:
        args.json.write_text(json.dumps({"cells": [asdict(c) for c in cells]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
