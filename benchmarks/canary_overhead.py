"""What progressive delivery costs on the data path, side by side with a single version.

1. ``route+submit``: the admission pipeline (``Admission.infer``, what every protocol adapter
   calls) through a 90/10 sticky canary (every request has a routing key, hashed with BLAKE2b)
   against a model with one version, with a batcher that answers at once, so only routing and
   submission are timed. Also the routing decision alone, as the pipeline makes it (a ``static``
   router, such as the single version's, is asked once per routing table).
2. ``in-process``: the same two models behind the real dynamic batcher and a trivial runtime on
   its thread: one client awaiting each answer, then 32 concurrent clients.
   A third contender routes through the canary router with a 100/0 table: it pays the sticky
   routing but keeps one batcher, which separates the cost of routing from the effect of
   splitting the traffic over two batchers and two runtime threads.
3. ``shadow``: primary latency (p50/p99) of a model whose runtime does real work, under open-loop
   load at half of its measured capacity, with shadowing off (the plain path), through the
   shadow router at 0% (the delivery path alone), at 10% and at 100% (every request copied to a
   second version at low priority).

Every figure is the median of interleaved repetitions (contenders alternate within a repetition).
The end-to-end HTTP figure is measured by ``benchmarks/serving.py`` with a canary variant.

Run: ``python benchmarks/canary_overhead.py [--repeat 7] [--requests 20000] [--seconds 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from ladle import Arrays, Batch, Batcher, InferenceRequest, PluginHost, Runtime, hookimpl
from ladle.config import ServerConfig
from ladle.deployments.controller import DeploymentController
from ladle.serving import ModelEndpoint, ModelManager

Submit = Callable[[InferenceRequest], Awaitable[object]]


def _submitter(manager: ModelManager, endpoint: ModelEndpoint) -> Submit:
    """Route, check, queue and answer one request the way the server's protocol adapters do (an
    older build: route and queue it, which its adapters did before awaiting the future)."""
    admission = getattr(manager, "admission", None)  # releases before the admission pipeline lack it
    if admission is not None:
        return admission.infer  # type: ignore[no-any-return]
    return lambda request: endpoint.submit(request)[1]  # type: ignore[attr-defined,no-any-return]


class EchoRuntime(Runtime):
    """Returns its input, after ``work_ms`` of CPU work when configured."""

    name = "echo"

    def load(self) -> None:
        self.work = float(self.spec.options.get("work_ms", 0.0)) / 1e3
        self.matrix = np.random.default_rng(0).normal(size=(64, 64))

    def predict(self, batch: Batch) -> Arrays:
        if self.work:
            stop = time.perf_counter() + self.work
            while time.perf_counter() < stop:
                np.tanh(self.matrix @ self.matrix)
        return {"y": batch.inputs["x"]}


class AnsweringBatcher(Batcher):
    """Answers at once with the inputs: the benchmark times only what happens before the batcher."""

    def submit(self, request: InferenceRequest) -> asyncio.Future[Arrays]:
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        future.set_result(request.inputs)
        return future


class _Plugin:
    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        register("echo", EchoRuntime)

    @hookimpl
    def register_batchers(self, register: Any) -> None:
        register("answering", AnsweringBatcher)


def _repository(root: Path) -> Path:
    repo = root / "models"
    for model in ("single", "canary", "canary_one", "plain", "shadowed"):
        for version in ("v1", "v2") if model != "single" else ("v1",):
            (repo / model / version).mkdir(parents=True)
    return repo


def _config(repo: Path, batcher: str, work_ms: float) -> ServerConfig:
    defaults = {
        "runtime": "echo",
        "batcher": {"name": batcher, "max_queue_size": 100_000}
        if batcher != "answering"
        else {"name": "answering"},
        "version_policy": "all",
        "options": {"work_ms": work_ms},
    }
    models = {
        "canary": {"router": {"name": "canary"}},
        "canary_one": {"router": {"name": "canary"}},
        "plain": {"router": {"name": "single"}},
        "shadowed": {"router": {"name": "shadow", "shadow": "v2", "sample": 1.0, "queue": 1024}},
    }
    return ServerConfig.model_validate(
        {"server": {"repository": str(repo)}, "defaults": defaults, "models": models}
    )


async def _start(repo: Path, batcher: str, work_ms: float = 0.0) -> tuple[ModelManager, DeploymentController]:
    host = PluginHost()
    host.add_plugin(_Plugin(), "bench")
    host.discover()
    manager = ModelManager(_config(repo, batcher, work_ms), host)
    controller = DeploymentController(manager)
    await controller.start()
    manager.publish("canary", {"v1": 90.0, "v2": 10.0})
    manager.publish("canary_one", {"v1": 100.0})
    manager.publish("plain", {"v1": 100.0})
    manager.publish("shadowed", {"v1": 100.0})
    return manager, controller


def _requests(model: str, count: int) -> list[InferenceRequest]:
    x = np.ones((1, 8), dtype=np.float32)
    return [InferenceRequest(model, {"x": x}, routing_key=f"user-{i}") for i in range(count)]


def _timed(function: Callable[[], None]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start
    finally:
        gc.enable()


async def _timed_async(function: Callable[[], Awaitable[None]]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        await function()
        return time.perf_counter() - start
    finally:
        gc.enable()


async def route_and_submit(repo: Path, count: int, repeat: int) -> None:
    manager, controller = await _start(repo, "answering")
    endpoints = {
        "single version": manager.endpoint("single"),
        "canary 90/10 sticky": manager.endpoint("canary"),
    }
    submit_us: dict[str, list[float]] = {name: [] for name in endpoints}
    route_us: dict[str, list[float]] = {name: [] for name in endpoints}
    for rep in range(repeat):
        order = list(endpoints.items()) if rep % 2 == 0 else list(reversed(endpoints.items()))
        for name, endpoint in order:
            requests = _requests(endpoint.name, count)

            submit = _submitter(manager, endpoint)

            async def submit_all(
                submit: Submit = submit, requests: list[InferenceRequest] = requests
            ) -> None:
                for request in requests:  # each answer is ready at once: nothing waits
                    await submit(request)

            submit_us[name].append(await _timed_async(submit_all) / count * 1e6)
            requests = _requests(endpoint.name, count)
            # a static router's route is asked once per routing table (releases before that: never)
            fixed = getattr(endpoint, "fixed_route", None)

            def route_all(
                endpoint: ModelEndpoint = endpoint,
                requests: list[InferenceRequest] = requests,
                fixed: object = fixed,
            ) -> None:
                for request in requests:
                    if fixed is None:
                        endpoint.router.route(request, endpoint.table)

            route_us[name].append(_timed(route_all) / count * 1e6)
    canary = manager.endpoint("canary")
    routed = [canary.router.route(r, canary.table).primary.version for r in _requests("canary", count)]
    share = routed.count("v2") / count
    print(f"\n1. route+submit, {count} requests x {repeat} interleaved repetitions (median us/request)")
    print(f"   (canary share measured: {share:.1%} to v2)")
    _table(["", "route only", "route+submit"], [[n, route_us[n], submit_us[n]] for n in endpoints])
    await controller.close()
    await manager.close(5)


async def _closed_loop(submit: Submit, model: str, clients: int, count: int) -> float:
    requests = _requests(model, count)
    chunks = [requests[i::clients] for i in range(clients)]

    async def client(chunk: list[InferenceRequest]) -> None:
        for request in chunk:
            await submit(request)

    gc.collect()
    start = time.perf_counter()
    await asyncio.gather(*(client(chunk) for chunk in chunks))
    return (time.perf_counter() - start) / count * 1e6


async def in_process(repo: Path, count: int, repeat: int) -> None:
    manager, controller = await _start(repo, "dynamic")
    endpoints = {
        "single version": manager.endpoint("single"),
        "canary 100/0 sticky": manager.endpoint("canary_one"),
        "canary 90/10 sticky": manager.endpoint("canary"),
    }
    print(f"\n2. in-process, dynamic batcher + trivial runtime on its thread, x {repeat} (median us/request)")
    for clients in (1, 32):
        results: dict[str, list[float]] = {name: [] for name in endpoints}
        n = count // 4 if clients == 1 else count
        for rep in range(repeat):
            order = list(endpoints.items()) if rep % 2 == 0 else list(reversed(endpoints.items()))
            for name, endpoint in order:
                results[name].append(
                    await _closed_loop(_submitter(manager, endpoint), endpoint.name, clients, n)
                )
        _table([f"{clients} client(s)", "us/request"], [[name, results[name]] for name in endpoints])
    await controller.close()
    await manager.close(5)


async def _open_loop(submit: Submit, model: str, rate: float, seconds: float) -> list[float]:
    """Latencies (seconds) of requests sent at a steady ``rate``, whatever the answers' pace."""
    latencies: list[float] = []
    x = np.ones((1, 8), dtype=np.float32)
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int) -> None:
        request = InferenceRequest(model, {"x": x}, routing_key=f"user-{index}")
        start = time.perf_counter()
        await submit(request)
        latencies.append(time.perf_counter() - start)

    loop = asyncio.get_running_loop()
    begin = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - begin) < seconds:
        for _ in range(int(elapsed * rate) - sent):
            tasks.append(loop.create_task(one(sent)))
            sent += 1
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    return latencies


async def _capacity(submit: Submit, model: str, clients: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    x = np.ones((1, 8), dtype=np.float32)

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await submit(InferenceRequest(model, {"x": x}))
            done += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done / seconds


async def shadow(repo: Path, seconds: float, repeat: int, work_ms: float, clients: int) -> None:
    manager, controller = await _start(repo, "dynamic", work_ms)
    plain, shadowed = manager.endpoint("plain"), manager.endpoint("shadowed")
    router: Any = shadowed.router
    capacity = await _capacity(_submitter(manager, plain), plain.name, clients, seconds)
    rate = capacity / 2
    modes = {
        "shadow off": (plain, 0.0),
        "shadow router, 0%": (shadowed, 0.0),
        "shadow 10%": (shadowed, 0.1),
        "shadow 100%": (shadowed, 1.0),
    }
    p50: dict[str, list[float]] = {m: [] for m in modes}
    p99: dict[str, list[float]] = {m: [] for m in modes}
    for rep in range(repeat):
        order = list(modes.items()) if rep % 2 == 0 else list(reversed(modes.items()))
        for name, (endpoint, sample) in order:
            router.sample = sample
            latencies = await _open_loop(_submitter(manager, endpoint), endpoint.name, rate, seconds)
            await asyncio.sleep(0.3)  # let queued shadow copies finish before the next contender
            p50[name].append(float(np.percentile(latencies, 50)) * 1e3)
            p99[name].append(float(np.percentile(latencies, 99)) * 1e3)
    mirror = controller.deliveries[shadowed.name].mirror if shadowed.name in controller.deliveries else None
    print(
        f"\n3. shadow: runtime work {work_ms} ms/batch; open-loop load at {rate:.0f} req/s, half of the "
        f"capacity measured with {clients} clients; {seconds} s x {repeat} (median primary latency, ms)"
    )
    _table(["", "p50", "p99"], [[m, p50[m], p99[m]] for m in modes])
    if mirror is not None:
        stats = mirror.describe()
        compared = stats["versions"].get("v2", {}).get("compared", 0)
        print(
            f"   shadow copies: offered {stats['offered']}, dropped {stats['dropped']}, compared {compared}"
        )
    await controller.close()
    await manager.close(5)


#: Every printed table's medians, ``{table: {row: {column: median}}}`` (written by ``--json``).
RESULTS: dict[str, dict[str, dict[str, float]]] = {}


def _table(header: list[str], rows: list[list[Any]]) -> None:
    """Rows of medians; each numeric column also as a ratio to the first row."""
    medians = [[row[0], *[statistics.median(cell) for cell in row[1:]]] for row in rows]
    RESULTS[f"{len(RESULTS) + 1}. {header[0] or 'table'}"] = {
        str(row[0]): dict(zip(header[1:], row[1:], strict=True)) for row in medians
    }
    print("   " + " | ".join(f"{h:>22}" for h in header))
    for row in medians:
        cells = [f"{row[0]:>22}"]
        for index, value in enumerate(row[1:], start=1):
            base = medians[0][index]
            cells.append(f"{value:>12.3f} ({value / base:4.2f}x)")
        print("   " + " | ".join(cells))


def main() -> None:
    faulthandler.dump_traceback_later(1200, exit=True)  # a stuck run says where, instead of hanging
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="interleaved repetitions (at least 5)")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per repetition")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per shadow run")
    parser.add_argument(
        "--work-ms", type=float, default=0.5, help="runtime work per batch in the shadow runs"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the shadow runs")
    parser.add_argument("--json", type=Path, help="also write every table's medians to this file")
    parser.add_argument("--repeat-min", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeat = max(args.repeat_min, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        repo = _repository(Path(tmp))
        asyncio.run(route_and_submit(repo, args.requests, repeat))
        asyncio.run(in_process(repo, args.requests, repeat))
        asyncio.run(shadow(repo, args.seconds, repeat, args.work_ms, args.clients))
    if args.json is not None:
        args.json.write_text(json.dumps(RESULTS, indent=2))


if __name__ == "__main__":
    main()
