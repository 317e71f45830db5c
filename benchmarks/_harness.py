"""Machinery for side-by-side HTTP benchmarks: server processes, wrk runs, CPU accounting, summaries.

Nothing here knows about a particular server or model. A benchmark describes its contenders (how to
launch each one on a given port), and :func:`run_round_robin` starts them one at a time, checks each
once, drives it with ``wrk`` at every connection count, reads the server's CPU time around each run,
and returns every measurement. Repetitions interleave the contenders (round robin, with the order
rotated each repetition) so that drift of the machine spreads over all of them alike.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

__all__ = [
    "Contender",
    "Launch",
    "LoadResult",
    "Measurement",
    "RoundRobinResult",
    "RunningServer",
    "ServerFailed",
    "Summary",
    "free_port",
    "run_round_robin",
    "run_wrk",
    "summarise",
    "tree_cpu_seconds",
    "write_wrk_script",
    "wrk_threads",
]

WRK_MARKER = "WRK_RESULT "


class ServerFailed(RuntimeError):
    """A contender could not be started, did not become ready, or answered wrongly."""


@dataclass(frozen=True)
class Launch:
    """How to start one server process: argv, extra environment and working directory."""

    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass(frozen=True)
class Contender:
    """One server under test.

    ``launch`` builds the command for a port. ``check`` (optional) is called once, before the first
    load, with the server's base URL and raises ``ServerFailed`` if the answer is wrong. ``role``
    groups contenders for reporting (for example ``"subject"`` against ``"reference"``).
    """

    name: str
    launch: Callable[[int], Launch]
    path: str
    role: str = "reference"
    ready_path: str = "/v2/health/ready"
    startup_timeout: float = 60.0
    check: Callable[[str], None] | None = None
    description: str = ""


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run reported (latencies in milliseconds)."""

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int]

    @property
    def throughput(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class Measurement:
    """One contender at one connection count in one repetition."""

    contender: str
    connections: int
    repetition: int
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_us_per_request: float
    requests: int
    errors: int
    wrk_cpu_us_per_request: float
    other_cores: float  # CPU busy outside the server and wrk during the run, in cores (background load)


@dataclass(frozen=True)
class Summary:
    """Medians over the repetitions of one contender at one connection count."""

    contender: str
    connections: int
    runs: int
    throughput: float
    throughput_min: float
    throughput_max: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int
    other_cores: float


@dataclass
class RoundRobinResult:
    measurements: list[Measurement] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"measurements": [asdict(m) for m in self.measurements], "failures": dict(self.failures)}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, its threads and its descendants (live and reaped).

    psutil reads ``utime``/``stime`` (all threads) and ``cutime``/``cstime`` (waited-for children)
    from ``/proc/<pid>/stat``; live descendants are added one by one.
    """
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class RunningServer:
    """A contender's process on a port, started as a process-group leader and stopped with its whole group."""

    def __init__(self, contender: Contender, port: int, log_path: Path) -> None:
        self.contender = contender
        self.port = port
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.url = self.base_url + contender.path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        launch = self.contender.launch(self.port)
        env = {**os.environ, **launch.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                list(launch.argv),
                cwd=launch.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.contender.startup_timeout
        ready_url = self.base_url + self.contender.ready_path
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerFailed(f"exited with status {self.process.returncode}\n{self.log_tail()}")
                try:
                    if client.get(ready_url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise ServerFailed(f"not ready after {self.contender.startup_timeout:.0f} s\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return tree_cpu_seconds(self.process.pid)

    def stop(self, grace: float = 20.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
        # Children that outlived their parent (a worker pool, say) share its process group.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def running(contender: Contender, log_path: Path) -> Iterator[RunningServer]:
    server = RunningServer(contender, free_port(), log_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def write_wrk_script(
    path: Path, body: bytes, content_type: str = "application/json", key_header: str | None = None
) -> Path:
    """A wrk Lua script that POSTs ``body`` and prints its results as one JSON line at the end.

    With ``key_header``, every request carries that header with a fresh random value (a routing
    key, say), so sticky routers see as many keys as requests.
    """
    text = body.decode()
    if "]==]" in text:
        raise ValueError("request body contains the Lua long-bracket terminator ]==]")
    keyed = (
        f"""
math.randomseed(os.time())
request = function()
  wrk.headers["{key_header}"] = tostring(math.random(1, 2147483647))
  return wrk.format()
end
"""
        if key_header
        else ""
    )
    path.write_text(
        f"""wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
wrk.body = [==[{text}]==]
{keyed}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{WRK_MARKER}{{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,'
    .. '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""
    )
    return path


def wrk_threads(connections: int) -> int:
    """One wrk thread for one connection, two otherwise (wrk shares the machine with the server)."""
    return 1 if connections <= 1 else 2


def run_wrk(url: str, script: Path, connections: int, duration: float, timeout: float = 5.0) -> LoadResult:
    """Closed-loop load: ``connections`` connections, each sending its next request on the last answer."""
    argv = [
        "wrk",
        f"-t{wrk_threads(connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-s",
        str(script),
        url,
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout + 60)
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith(WRK_MARKER)), None)
    if completed.returncode != 0 or line is None:
        raise ServerFailed(
            f"wrk failed ({completed.returncode}): {completed.stderr.strip() or completed.stdout}"
        )
    raw = json.loads(line[len(WRK_MARKER) :])
    return LoadResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1e3,
        p90_ms=raw["p90_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        max_ms=raw["max_us"] / 1e3,
        mean_ms=raw["mean_us"] / 1e3,
        errors={k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
    )


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal")))


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    server: RunningServer, script: Path, connections: int, duration: float, repetition: int
) -> Measurement:
    """One wrk run with CPU time read before and after: the server's (process tree), wrk's (a reaped
    child of ours) and the whole machine's, whose remainder is load from elsewhere."""
    machine, children, before = _machine_busy_seconds(), _children_cpu_seconds(), server.cpu_seconds()
    load = run_wrk(server.url, script, connections, duration)
    spent = server.cpu_seconds() - before
    wrk = _children_cpu_seconds() - children
    other = _machine_busy_seconds() - machine - spent - wrk
    per_request = 1e6 / load.requests if load.requests else float("nan")
    return Measurement(
        contender=server.contender.name,
        connections=connections,
        repetition=repetition,
        throughput=load.throughput,
        p50_ms=load.p50_ms,
        p90_ms=load.p90_ms,
        p99_ms=load.p99_ms,
        cpu_us_per_request=spent * per_request,
        requests=load.requests,
        errors=load.error_count,
        wrk_cpu_us_per_request=wrk * per_request,
        other_cores=max(0.0, other) / load.duration_s if load.duration_s else float("nan"),
    )


_FAILURES = (ServerFailed, OSError, subprocess.SubprocessError, httpx.HTTPError)


def run_round_robin(
    contenders: Sequence[Contender],
    *,
    script: Path,
    connections: Sequence[int],
    repetitions: int,
    duration: float,
    warmup: float,
    log_dir: Path,
    report: Callable[[str], None] = print,
    together: bool = False,
) -> RoundRobinResult:
    """Measure every contender at every connection count, ``repetitions`` times, one server at a time.

    Each repetition starts, checks (first time only), warms up, measures and stops each contender
    in turn; the order rotates by one per repetition. A contender that fails is reported, left out
    of later repetitions, and kept in ``failures``.

    ``together`` starts, checks and warms up every contender once and keeps them all up (idle but
    for the one under load); the measurements then alternate between them, in an order that
    reverses every repetition, so that on a machine whose speed drifts over seconds, short
    measurements of the contenders lie close together in time.
    """
    result = RoundRobinResult()

    def prepare(server: RunningServer, check: bool) -> None:
        if check and server.contender.check is not None:
            server.contender.check(server.base_url)
        if warmup > 0:
            run_wrk(server.url, script, max(connections), warmup)

    def record(server: RunningServer, count: int, repetition: int) -> None:
        measurement = measure(server, script, count, duration, repetition + 1)
        result.measurements.append(measurement)
        report(_progress_line(measurement, repetitions))

    def failed(name: str, exc: Exception, log_path: Path) -> None:
        result.failures[name] = f"{type(exc).__name__}: {exc}"
        report(f"  {name}: FAILED ({result.failures[name].splitlines()[0]}); log: {log_path}")

    if together:
        with ExitStack() as stack:
            servers: list[RunningServer] = []
            for contender in contenders:
                log_path = log_dir / f"{contender.name}.log"
                try:
                    server = stack.enter_context(running(contender, log_path))
                    prepare(server, check=True)
                except _FAILURES as exc:
                    failed(contender.name, exc, log_path)
                else:
                    servers.append(server)
            for repetition in range(repetitions):
                order = servers if repetition % 2 == 0 else servers[::-1]
                for count in connections:
                    for server in order:
                        if server.contender.name in result.failures:
                            continue
                        try:
                            record(server, count, repetition)
                        except _FAILURES as exc:
                            failed(server.contender.name, exc, server.log_path)
        return result
    checked: set[str] = set()
    active = list(contenders)
    for repetition in range(repetitions):
        shift = repetition % len(active) if active else 0
        for contender in active[shift:] + active[:shift]:
            if contender.name in result.failures:
                continue
            log_path = log_dir / f"{contender.name}-{repetition + 1}.log"
            try:
                with running(contender, log_path) as server:
                    prepare(server, check=contender.name not in checked)
                    checked.add(contender.name)
                    for count in connections:
                        record(server, count, repetition)
            except _FAILURES as exc:
                failed(contender.name, exc, log_path)
        active = [c for c in active if c.name not in result.failures]
    return result


def _progress_line(m: Measurement, repetitions: int) -> str:
    errors = f", {m.errors} errors" if m.errors else ""
    return (
        f"  rep {m.repetition}/{repetitions} {m.contender:>12} c={m.connections:<3}"
        f"{m.throughput:8.0f} req/s  p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:7.2f} ms"
        f"{m.cpu_us_per_request:6.0f} CPU-us/req  background {m.other_cores:.2f} cores{errors}"
    )


def summarise(measurements: Iterable[Measurement]) -> list[Summary]:
    """Medians per (contender, connections), in the order the pairs first appear."""
    groups: dict[tuple[str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.contender, m.connections), []).append(m)
    summaries = []
    for (name, count), runs in groups.items():
        throughputs = [m.throughput for m in runs]
        summaries.append(
            Summary(
                contender=name,
                connections=count,
                runs=len(runs),
                throughput=statistics.median(throughputs),
                throughput_min=min(throughputs),
                throughput_max=max(throughputs),
                p50_ms=statistics.median(m.p50_ms for m in runs),
                p90_ms=statistics.median(m.p90_ms for m in runs),
                p99_ms=statistics.median(m.p99_ms for m in runs),
                cpu_us_per_request=statistics.median(m.cpu_us_per_request for m in runs),
                errors=sum(m.errors for m in runs),
                other_cores=statistics.median(m.other_cores for m in runs),
            )
        )
    return summaries
