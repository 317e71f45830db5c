"""Queue-depth autoscaling against fixed instance counts, side by side, under a step load.

The model sleeps 20 ms per row (a Python handler; warm-up sleeps ``--warmup`` seconds), served by
``ladle serve`` with the dynamic batcher at one row per batch, so one instance serves 50 requests/s
and more instances are the only way to more throughput. Contenders:

- ``queue-depth``: ``scaling = { name = "queue-depth", min_instances = 1, max_instances = 4,
  target_ongoing_requests = 2, upscale_delay = 0, downscale_delay = 300 }``, starting at 1;
- ``fixed-1`` and ``fixed-4``: the fixed policy with 1 and 4 instances.

Load: closed loop, ``N`` clients each sending its next request when the previous answer arrived,
every request with a deadline (``Ladle-Timeout-Ms``, ``--deadline-ms``, 100 by default: the SLA).
``1x`` is one client: it keeps one instance exactly busy. Each run holds 1x for ``--base`` seconds,
then steps to 8x (8 clients) for ``--ramp`` seconds (the ramp) and ``--after`` seconds more (after
the ramp). A request refused by admission (503, predicted to miss its deadline: the documented
shedding) is counted as shed and its client tries again after 50 ms instead of the 1 s Retry-After,
so the offered load stays at 8x. Anything else that is not a 200 (a 504, a 500, a timeout) counts
as failed.

Figures per contender (medians over ``--repeat`` repetitions, contenders interleaved in an order
rotated each repetition): seconds from the step until 4 instances are ready (queue-depth only,
next to the instance start time ladle measured: the target is start + 2 s), requests shed and
failed during the step, p50/p99 of the answered requests during the ramp and after it, and
throughput after it. Then, once, the queue-depth contender alone under a constant 5x load for
``--constant`` seconds (300 by default): the direction changes of its desired count (target: at
most one in 5 minutes). Ratios printed: queue-depth's p99 after the ramp over fixed-4's (target
<= 1.2).

Run: ``.venv/bin/python benchmarks/autoscaling.py [--repeat 3] [--quick] [--json results.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Contender, Launch, running

TOKEN = "bench-token"
HANDLER = """\
import time
import numpy as np


class Handler:
    def load(self, directory, options):
        self.row_seconds = float(options.get("row_seconds", 0.02))
        self.warm_seconds = float(options.get("warm_seconds", 0.5))

    def warmup(self):
        time.sleep(self.warm_seconds)

    def predict(self, batch):
        time.sleep(self.row_seconds * batch.rows)
        return {"y": np.asarray(batch.inputs["x"], dtype=np.float32) * 2}
"""
BODY = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
).encode()


def _scaling(name: str) -> str:
    if name == "queue-depth":
        return (
            'instances = 1\nscaling = { name = "queue-depth", min_instances = 1, max_instances = 4, '
            "target_ongoing_requests = 2, upscale_delay = 0, downscale_delay = 300 }\n"
        )
    return f"instances = {name.split('-')[1]}\n"


def write_service(root: Path, contender: str, warmup: float) -> Path:
    """A repository with the 20 ms model and a ladle.toml, for one contender."""
    version = root / contender / "models" / "m" / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "handler.py").write_text(HANDLER)
    (version.parent / "model.toml").write_text(
        textwrap.dedent(
            f"""\
            runtime = "python"
            trust_code = true
            options = {{ row_seconds = 0.02, warm_seconds = {warmup} }}
            batcher = {{ name = "dynamic", max_batch_size = 1 }}
            """
        )
        + _scaling(contender)
    )
    config = root / contender / "ladle.toml"
    config.write_text(f'[server]\nrepository = "models"\napi_token = "{TOKEN}"\n')
    return config


def contender(name: str, config: Path) -> Contender:
    def launch(port: int) -> Launch:
        argv = [sys.executable, "-m", "ladle.cli", "serve", str(config), "--port", str(port)]
        return Launch(argv, env={"LADLE_PLUGIN_DISTRIBUTIONS": "ladle"})

    return Contender(name, launch, "/v2/models/m/infer", startup_timeout=120)


# the load --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    sent: float
    latency: float
    status: int


@dataclass
class Run:
    contender: str
    repetition: int
    ready_s: float | None
    start_seconds: float | None
    shed: int
    failed: int
    ramp_p50_ms: float | None
    ramp_p99_ms: float | None
    after_p50_ms: float | None
    after_p99_ms: float | None
    after_rps: float
    failed_by_status: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, int, int]] = field(default_factory=list)


class ClosedLoop:
    """Clients that send back to back; ``clients`` can be raised while it runs."""

    def __init__(self, url: str, deadline_ms: int) -> None:
        self.url = url
        self.headers = {"content-type": "application/json", "ladle-timeout-ms": str(deadline_ms)}
        self.outcomes: list[Outcome] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = False
        self._client = httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=64))

    def add(self, count: int) -> None:
        for _ in range(count):
            self._tasks.append(asyncio.create_task(self._client_loop()))

    async def _client_loop(self) -> None:
        while not self._stop:
            sent = time.monotonic()
            try:
                response = await self._client.post(self.url, content=BODY, headers=self.headers)
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            self.outcomes.append(Outcome(sent, time.monotonic() - sent, status))
            if status in (429, 503):
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()


async def _watch(base: str, timeline: list[tuple[float, int, int]], stop: asyncio.Event) -> None:
    """(time, ready, desired) of the version every 0.1 s, from ``GET /api/v1/stats``."""
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as client:
        while not stop.is_set():
            try:
                versions = (await client.get("/api/v1/stats", params={"window": 5})).json()["versions"]
                entry = versions[0]
                desired = entry.get("desired_instances")
                timeline.append((time.monotonic(), int(entry.get("instances") or 0), int(desired or 0)))
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            await asyncio.sleep(0.1)


def _failures(outcomes: list[Outcome]) -> dict[str, int]:
    """Answers that were neither a 200 nor shed, by status ("0": no answer within 10 s)."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.status not in (200, 429, 503):
            counts[str(outcome.status)] = counts.get(str(outcome.status), 0) + 1
    return counts


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


async def step_run(base: str, url: str, args: argparse.Namespace, name: str, repetition: int) -> Run:
    load = ClosedLoop(url, args.deadline_ms)
    timeline: list[tuple[float, int, int]] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch(base, timeline, stop))
    load.add(1)
    await asyncio.sleep(args.base)
    step = time.monotonic()
    load.add(7)
    await asyncio.sleep(args.ramp + args.after)
    await load.stop()
    stop.set()
    await watcher
    async with httpx.AsyncClient(
        base_url=base, timeout=5.0, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as c:
        state = (await c.get("/api/v1/deployments/m")).json()
    start_seconds = state["versions"][0].get("scaling", {}).get("start_seconds")
    during = [o for o in load.outcomes if o.sent >= step]
    ramp = [o.latency for o in during if o.sent < step + args.ramp and o.status == 200]
    after = [o.latency for o in during if o.sent >= step + args.ramp and o.status == 200]
    ready = next((t - step for t, r, _ in timeline if t >= step and r >= 4), None)
    return Run(
        contender=name,
        repetition=repetition,
        ready_s=ready if name == "queue-depth" else None,
        start_seconds=start_seconds,
        shed=sum(1 for o in during if o.status in (429, 503)),
        failed=sum(1 for o in during if o.status not in (200, 429, 503)),
        ramp_p50_ms=_quantile(ramp, 0.5),
        ramp_p99_ms=_quantile(ramp, 0.99),
        after_p50_ms=_quantile(after, 0.5),
        after_p99_ms=_quantile(after, 0.99),
        after_rps=len(after) / args.after,
        failed_by_status=_failures(during),
        timeline=[(round(t - step, 2), r, d) for t, r, d in timeline],
    )


async def constant_run(base: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The queue-depth contender under a constant 5x load: direction changes of its desired count."""
    load = ClosedLoop(url, args.deadline_ms)
    load.add(5)
    started = time.time()
    await asyncio.sleep(args.constant)
    await load.stop()
    async with httpx.AsyncClient(
        base_url=base, timeout=5.0, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as c:
        events = (await c.get("/api/v1/deployments/m", params={"limit": 1000})).json()["history"]["events"]
    scaled = [e["details"] for e in reversed(events) if e["kind"] == "scaled"]
    directions = [1 if d["to"] > d["from"] else -1 for d in scaled]
    changes = sum(1 for a, b in itertools.pairwise(directions) if a != b)
    return {
        "seconds": args.constant,
        "scale_events": [(d["from"], d["to"], d["reason"]) for d in scaled],
        "direction_changes": changes,
        "answered": sum(1 for o in load.outcomes if o.status == 200),
        "shed": sum(1 for o in load.outcomes if o.status in (429, 503)),
        "failed": sum(1 for o in load.outcomes if o.status not in (200, 429, 503)),
        "failed_by_status": _failures(load.outcomes),
        "started": started,
    }


# reporting ---------------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(runs: list[Run], constant: dict[str, Any] | None) -> None:
    names = ["queue-depth", "fixed-1", "fixed-4"]
    print()
    header = (
        f"{'contender':<12} {'runs':>4} {'ready s':>8} {'start s':>8} {'shed':>6} {'failed':>6} "
        f"{'ramp p50':>9} {'ramp p99':>9} {'after p50':>10} {'after p99':>10} {'after req/s':>12}"
    )
    print(header)
    print("-" * len(header))
    medians: dict[str, dict[str, float | None]] = {}
    for name in names:
        mine = [r for r in runs if r.contender == name]
        if not mine:
            continue
        row = {
            "ready_s": _median([r.ready_s for r in mine]),
            "start_seconds": _median([r.start_seconds for r in mine]),
            "shed": _median([float(r.shed) for r in mine]),
            "failed": _median([float(r.failed) for r in mine]),
            "ramp_p50_ms": _median([r.ramp_p50_ms for r in mine]),
            "ramp_p99_ms": _median([r.ramp_p99_ms for r in mine]),
            "after_p50_ms": _median([r.after_p50_ms for r in mine]),
            "after_p99_ms": _median([r.after_p99_ms for r in mine]),
            "after_rps": _median([r.after_rps for r in mine]),
        }
        medians[name] = row
        print(
            f"{name:<12} {len(mine):>4} {_fmt(row['ready_s'], 2):>8} {_fmt(row['start_seconds'], 2):>8} "
            f"{_fmt(row['shed'], 0):>6} {_fmt(row['failed'], 0):>6} {_fmt(row['ramp_p50_ms']):>9} "
            f"{_fmt(row['ramp_p99_ms']):>9} {_fmt(row['after_p50_ms']):>10} {_fmt(row['after_p99_ms']):>10} "
            f"{_fmt(row['after_rps']):>12}"
        )
    print("(latencies in ms, of answered requests; ready s: from the step until 4 instances are ready)")
    qd, f4 = medians.get("queue-depth"), medians.get("fixed-4")
    if qd and f4 and qd["after_p99_ms"] and f4["after_p99_ms"]:
        print(
            f"\np99 after the ramp, queue-depth / fixed-4: "
            f"{qd['after_p99_ms'] / f4['after_p99_ms']:.2f}x (target <= 1.2)"
        )
    if qd and qd["ready_s"] is not None and qd["start_seconds"] is not None:
        limit = qd["start_seconds"] + 2.0
        verdict = "within" if qd["ready_s"] <= limit else "OVER"
        print(f"ready {qd['ready_s']:.2f} s after the step: {verdict} the start time + 2 s ({limit:.2f} s)")
    if constant is not None:
        print(
            f"constant 5x load for {constant['seconds']:.0f} s: {constant['direction_changes']} direction "
            f"change(s) (target <= 1); scale events {constant['scale_events']}; "
            f"shed {constant['shed']}, failed {constant['failed']} {constant['failed_by_status']} "
            f"of {constant['answered']} answered"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base", type=float, default=4.0, help="seconds at 1x before the step")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds after the step counted as the ramp")
    parser.add_argument("--after", type=float, default=15.0, help="seconds after the ramp")
    parser.add_argument("--constant", type=float, default=300.0, help="seconds of constant load (0: skip)")
    parser.add_argument("--deadline-ms", type=int, default=100, help="each request's deadline")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds the model's warm-up takes")
    parser.add_argument("--quick", action="store_true", help="1 repetition, shorter phases, 60 s constant")
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument("--workdir", type=Path, help="keep configs and server logs here")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.base, args.ramp, args.after, args.constant = 1, 3.0, 4.0, 8.0, 60.0
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ladle-autoscaling-"))
    names = ["queue-depth", "fixed-1", "fixed-4"]
    configs = {name: write_service(root, name, args.warmup) for name in names}
    runs: list[Run] = []
    for repetition in range(args.repeat):
        order = names[repetition % len(names) :] + names[: repetition % len(names)]
        for name in order:
            with running(
                contender(name, configs[name]), root / "logs" / f"{name}-{repetition}.log"
            ) as server:
                run = asyncio.run(step_run(server.base_url, server.url, args, name, repetition))
            runs.append(run)
            print(
                f"[{repetition + 1}/{args.repeat}] {name:<12} ready {_fmt(run.ready_s, 2)} s, "
                f"shed {run.shed}, failed {run.failed}, p99 after {_fmt(run.after_p99_ms)} ms, "
                f"{run.after_rps:.0f} req/s; failures by status {run.failed_by_status}",
                flush=True,
            )
    constant = None
    if args.constant > 0:
        with running(
            contender("queue-depth", configs["queue-depth"]), root / "logs" / "constant.log"
        ) as server:
            constant = asyncio.run(constant_run(server.base_url, server.url, args))
    report(runs, constant)
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs], "constant": constant}, indent=2))


if __name__ == "__main__":
    main()
