"""Real clients beside thousands of idle and slow connections: their latency with and without them.

One ``ladle serve`` serves the serving benchmark's XGBoost model. A separate attacker process opens
``--idle`` connections that never send anything and ``--slow`` connections that send a request line
and then one header line a second (slowloris), and holds them; with ``--reconnect`` each one the
server closes is opened again a second later, so the pressure stays up (a connection flood: the
server then pays for every accept and close). Meanwhile a real client measures, one request at a time, the
latency of V2 requests on a keep-alive connection and on a new connection per request (what a
load balancer's probe or a short-lived client sees). Conditions are interleaved: quiet, hostile,
quiet, ... within each repetition; medians over repetitions and the hostile/quiet ratios are printed.

    python benchmarks/slow_clients.py                         # 3 x 8 s, 10,000 idle + 2,000 slow
    python benchmarks/slow_clients.py --quick                 # 1 x 4 s, 2,000 idle + 500 slow
    python benchmarks/slow_clients.py --baseline DIR          # the same against an older ladle too
    python benchmarks/slow_clients.py --reconnect             # the attacker reopens what is closed

``--baseline DIR`` (``pip install --no-deps --target DIR`` of an older commit) runs that ladle as a
second contender, e.g. one without connection limits. Nothing here is asserted; read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _contenders
from _harness import running
from rich.console import Console
from rich.table import Table

SLOW_HEADER_EVERY = 1.0  # seconds between two header lines of a slow connection
REOPEN_AFTER = 1.0  # seconds before the attacker reopens a connection the server closed


# the attacker (run as a separate process: `slow_clients.py --attack PORT --idle N --slow M`) ---------


@dataclass
class AttackStats:
    opened: int = 0
    closed_by_server: int = 0
    refused: int = 0
    held_at_stop: int = 0


async def _idle(port: int, stats: AttackStats, stop: asyncio.Event, reconnect: bool) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats.refused += 1
            await asyncio.sleep(REOPEN_AFTER)
            continue
        stats.opened += 1
        reading = asyncio.ensure_future(reader.read(65536))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if reading.done():
            stats.closed_by_server += 1
        reading.cancel()
        stopping.cancel()
        writer.close()
        if not reconnect:
            return
        await asyncio.sleep(REOPEN_AFTER)


async def _slow(port: int, stats: AttackStats, stop: asyncio.Event, reconnect: bool) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats.refused += 1
            await asyncio.sleep(REOPEN_AFTER)
            continue
        stats.opened += 1
        writer.write(b"POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: ladle\r\n")
        line = 0
        try:
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(65536), SLOW_HEADER_EVERY)
                except TimeoutError:
                    line += 1
                    writer.write(b"X-Pad-%d: x\r\n" % line)
                    continue
                if data or reader.at_eof():
                    stats.closed_by_server += 1
                    break
        except (ConnectionError, OSError):
            stats.closed_by_server += 1
        writer.close()
        if not reconnect:
            return
        await asyncio.sleep(REOPEN_AFTER)


async def _attack(port: int, idle: int, slow: int, reconnect: bool) -> AttackStats:
    stats = AttackStats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent closes our stdin (or writes) to stop us
    tasks = []
    for index in range(idle + slow):
        attacker = _idle if index < idle else _slow
        tasks.append(asyncio.ensure_future(attacker(port, stats, stop, reconnect)))
        if index % 200 == 199:
            await asyncio.sleep(0.01)  # open at a pace the listen backlog takes
    while stats.opened < idle + slow and not stop.is_set():
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await stop.wait()
    stats.held_at_stop = sum(not task.done() for task in tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def attack_main(port: int, idle: int, slow: int, reconnect: bool) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stats = asyncio.run(_attack(port, idle, slow, reconnect))
    print(json.dumps(stats.__dict__), flush=True)


class Attacker:
    """The attacker process, started and stopped around one hostile measurement."""

    def __init__(self, port: int, idle: int, slow: int, reconnect: bool) -> None:
        argv = [sys.executable, __file__, "--attack", str(port), "--idle", str(idle), "--slow", str(slow)]
        self.process = subprocess.Popen(
            [*argv, "--reconnect"] if reconnect else argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"attacker did not start: {line!r}")

    def stop(self) -> AttackStats:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.close()
        last = self.process.stdout.read().strip().splitlines()
        self.process.wait(timeout=60)
        return AttackStats(**json.loads(last[-1])) if last else AttackStats()


# the real client ------------------------------------------------------------------------------------


@dataclass
class ClientFigures:
    keep_alive: list[float] = field(default_factory=list)
    new_connection: list[float] = field(default_factory=list)
    errors: int = 0

    @staticmethod
    def quantile(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


class RawClient:
    """A minimal HTTP/1.1 client on a plain socket, so that client-side overhead stays small and
    the same in every condition."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.closing = request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        self.sock: socket.socket | None = None

    def post(self, keep_alive: bool) -> bool:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        try:
            sock.sendall(self.request if keep_alive else self.closing)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                rest += chunk
            ok = head.startswith(b"HTTP/1.1 200")
            if not keep_alive or b"connection: close" in head.lower():
                self.close()
            return ok
        except (OSError, ValueError, IndexError):
            self.close()
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def measure_client(port: int, body: bytes, duration: float) -> ClientFigures:
    """Half the time on one keep-alive connection, half with a new connection per request."""
    figures = ClientFigures()
    request = (
        b"POST %s HTTP/1.1\r\nHost: ladle\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (_contenders.INFER_PATH.encode(), len(body), body)
    )
    client = RawClient(port, request)
    for keep_alive, samples in ((True, figures.keep_alive), (False, figures.new_connection)):
        end = time.monotonic() + duration / 2
        while time.monotonic() < end:
            start = time.perf_counter()
            ok = client.post(keep_alive)
            samples.append(time.perf_counter() - start)
            figures.errors += not ok
        client.close()
    return figures


@dataclass(frozen=True)
class Row:
    contender: str
    condition: str
    keep_p50: float
    keep_p99: float
    new_p50: float
    new_p99: float
    requests: int
    errors: int
    attacker_opened: int
    closed_by_server: int
    server_cpu: float  # seconds of the server's CPU during the measurement (attack set-up included)


def row_of(
    contender: str, condition: str, figures: ClientFigures, stats: AttackStats | None, cpu: float
) -> Row:
    return Row(
        contender,
        condition,
        ClientFigures.quantile(figures.keep_alive, 0.5),
        ClientFigures.quantile(figures.keep_alive, 0.99),
        ClientFigures.quantile(figures.new_connection, 0.5),
        ClientFigures.quantile(figures.new_connection, 0.99),
        len(figures.keep_alive) + len(figures.new_connection),
        figures.errors,
        stats.opened if stats else 0,
        stats.closed_by_server if stats else 0,
        cpu,
    )


def median_row(rows: list[Row]) -> Row:
    def med(name: str) -> Any:
        return statistics.median(getattr(r, name) for r in rows)

    return Row(
        rows[0].contender,
        rows[0].condition,
        med("keep_p50"),
        med("keep_p99"),
        med("new_p50"),
        med("new_p99"),
        int(med("requests")),
        int(med("errors")),
        int(med("attacker_opened")),
        int(med("closed_by_server")),
        med("server_cpu"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle", type=int, help="idle connections (default 10000; --quick 2000)")
    parser.add_argument("--slow", type=int, help="slowloris connections (default 2000; --quick 500)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds of client load per condition (default 8)")
    parser.add_argument("--quick", action="store_true", help="1 repetition of 4 s, fewer connections")
    parser.add_argument("--baseline", type=Path, help="an older ladle installed with pip --target DIR")
    parser.add_argument("--reconnect", action="store_true", help="the attacker reopens what is closed")
    parser.add_argument("--attack", type=int, help=argparse.SUPPRESS)  # the attacker process
    args = parser.parse_args()
    idle = args.idle if args.idle is not None else (2000 if args.quick else 10_000)
    slow = args.slow if args.slow is not None else (500 if args.quick else 2000)
    if args.attack is not None:
        attack_main(args.attack, idle, slow, args.reconnect)
        return
    reps = args.reps or (1 if args.quick else 3)
    duration = args.duration or (4.0 if args.quick else 8.0)
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="ladle-slow-clients-"))
    model = _contenders.build_model(workdir / "model")
    repository = _contenders.write_repository(workdir / "models", model)
    body = _contenders.v2_body(model.row)
    contenders = [_contenders.ladle("ladle", repository, model)]
    if args.baseline is not None:
        contenders.append(_contenders.ladle("baseline", repository, model, installed=args.baseline))
    rows: dict[tuple[str, str], list[Row]] = {}
    console.print(
        f"{idle} idle + {slow} slow connections ({'reopened' if args.reconnect else 'held'}), "
        f"{reps} x {duration:g} s per condition"
    )
    for contender in contenders:
        with running(contender, workdir / "logs" / f"{contender.name}.log") as server:
            measure_client(server.port, body, 1.0)  # warm-up
            for rep in range(reps):
                order = ("quiet", "hostile") if rep % 2 == 0 else ("hostile", "quiet")
                for condition in order:
                    stats = None
                    cpu_before = server.cpu_seconds()
                    attacker = (
                        Attacker(server.port, idle, slow, args.reconnect) if condition == "hostile" else None
                    )
                    try:
                        figures = measure_client(server.port, body, duration)
                    finally:
                        if attacker is not None:
                            stats = attacker.stop()
                    cpu = server.cpu_seconds() - cpu_before
                    row = row_of(contender.name, condition, figures, stats, cpu)
                    rows.setdefault((contender.name, condition), []).append(row)
                    console.print(
                        f"  {contender.name} rep {rep + 1} {condition}: keep-alive p50 "
                        f"{row.keep_p50:.2f} ms, new connection p50 {row.new_p50:.2f} ms, "
                        f"errors {row.errors}, "
                        f"server closed {row.closed_by_server} of {row.attacker_opened} attacker connections"
                    )
                    time.sleep(1.0)  # let the server close what the attacker left
    table = Table(title="real client latency (ms, medians over repetitions)")
    for column in (
        "contender",
        "condition",
        "keep-alive p50",
        "keep-alive p99",
        "new conn p50",
        "new conn p99",
        "requests",
        "errors",
        "attacker conns",
        "closed by server",
        "server CPU s",
    ):
        table.add_column(column)
    summary = {key: median_row(value) for key, value in rows.items()}
    for row in summary.values():
        table.add_row(
            row.contender,
            row.condition,
            f"{row.keep_p50:.2f}",
            f"{row.keep_p99:.2f}",
            f"{row.new_p50:.2f}",
            f"{row.new_p99:.2f}",
            str(row.requests),
            str(row.errors),
            str(row.attacker_opened),
            str(row.closed_by_server),
            f"{row.server_cpu:.2f}",
        )
    console.print(table)
    for contender in contenders:
        quiet, hostile = summary[(contender.name, "quiet")], summary[(contender.name, "hostile")]
        console.print(
            f"{contender.name}: hostile/quiet  keep-alive p50 {hostile.keep_p50 / quiet.keep_p50:.2f}x, "
            f"p99 {hostile.keep_p99 / quiet.keep_p99:.2f}x; new connection p50 "
            f"{hostile.new_p50 / quiet.new_p50:.2f}x, p99 {hostile.new_p99 / quiet.new_p99:.2f}x"
        )


if __name__ == "__main__":
    main()
