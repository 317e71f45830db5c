"""The serving benchmark's model, request and contenders: ladle (and its variants), a hand-written
starlette server, a constant route, and MLServer in a virtual environment of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import venv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
from _harness import Contender, Launch, ServerFailed, free_port

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers"
MODEL_NAME = "breast_cancer"
INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
# uvloop 0.22 and later refuse asyncio.get_event_loop() outside a loop, which MLServer 1.7's parallel
# inference workers call at start: with them, parallel_workers >= 1 cannot load any model.
MLSERVER_PINS = ("mlserver==1.7.1", "mlserver-xgboost==1.7.1", "uvloop==0.21.0")
TOLERANCE = 1e-5


class Unavailable(RuntimeError):
    """A contender cannot run on this machine (the message says why)."""


@dataclass(frozen=True)
class BenchModel:
    """The XGBoost classifier every contender serves, and the rows used to check answers."""

    path: Path
    row: np.ndarray  # the row every benchmark request carries
    expected: float  # the Booster's own prediction for ``row``
    check_rows: tuple[tuple[np.ndarray, float], ...]  # (row, prediction) pairs for the correctness check


def build_model(directory: Path, trees: int = 200, depth: int = 6) -> BenchModel:
    """Train the breast-cancer classifier (binary:logistic) and save it as ``model.ubj``."""
    import xgboost
    from sklearn.datasets import load_breast_cancer

    raw, labels = load_breast_cancer(return_X_y=True)
    features = raw.astype(np.float32)  # what every server decodes FP32 data into
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": depth, "nthread": 2},
        xgboost.DMatrix(features, label=labels),
        num_boost_round=trees,
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.ubj"
    booster.save_model(str(path))
    booster.set_param({"nthread": 1})
    predictions = booster.inplace_predict(features)
    # The benchmarked row, plus one of the other class so a constant answer cannot pass.
    other = int(np.argmax((predictions > 0.5) != (predictions[0] > 0.5)))
    # Requests carry the data set's own decimals (17.99, not 17.989999771118164), as a client would.
    pairs = tuple((raw[i], float(predictions[i])) for i in (0, other))
    return BenchModel(path=path, row=raw[0], expected=float(predictions[0]), check_rows=pairs)


def v2_body(row: np.ndarray) -> bytes:
    """A one-row KServe V2 JSON request."""
    return orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, row.shape[0]], "data": row.tolist()}]}
    )


def write_repository(root: Path, model: BenchModel, versions: int = 1) -> Path:
    """A ladle model repository ``root/<model>/<version>/model.ubj`` with identical versions 1..N."""
    for version in range(1, versions + 1):
        directory = root / MODEL_NAME / str(version)
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.path, directory / "model.ubj")
    return root


@dataclass(frozen=True)
class ContenderCheck:
    """Posts rows one at a time and compares the first output value with the Booster's prediction.

    With ``exact=False`` (the constant route) only the V2 response shape is checked.
    """

    model: BenchModel
    exact: bool

    def __call__(self, base_url: str) -> None:
        rows = self.model.check_rows if self.exact else self.model.check_rows[:1]
        with httpx.Client(timeout=10.0) as client:
            for row, expected in rows:
                response = client.post(
                    base_url + INFER_PATH, content=v2_body(row), headers={"content-type": "application/json"}
                )
                if response.status_code != 200:
                    raise ServerFailed(
                        f"check request answered {response.status_code}: {response.text[:300]}"
                    )
                try:
                    outputs = response.json()["outputs"]
                    values = np.asarray(outputs[0]["data"], dtype=np.float64).ravel()
                except (KeyError, IndexError, TypeError, ValueError) as exc:
                    raise ServerFailed(f"not a V2 response ({exc!r}): {response.text[:300]}") from None
                if values.size != 1:
                    raise ServerFailed(f"expected one prediction, got {values.size}: {response.text[:300]}")
                if self.exact and abs(values[0] - expected) > TOLERANCE:
                    raise ServerFailed(f"predicted {values[0]!r}, the Booster says {expected!r}")


def _ladle_argv() -> list[str]:
    script = Path(sys.executable).parent / "ladle"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ladle.cli"]


def ladle(
    name: str, target: Path, model: BenchModel, description: str = "", installed: Path | None = None
) -> Contender:
    """``ladle serve TARGET --port P``; ``TARGET`` is a model repository or a ``ladle.toml``.

    ``installed`` runs another ladle instead of this one: a folder it was installed into with
    ``pip install --no-deps --target DIR`` (an older commit, to compare releases side by side).
    """
    if installed is not None:
        argv = [sys.executable, "-m", "ladle.cli"]
        env = {"PYTHONPATH": str(installed.resolve())}
    else:
        argv, env = _ladle_argv(), {}
    return Contender(
        name=name,
        role="ladle",
        path=INFER_PATH,
        launch=lambda port: Launch([*argv, "serve", str(target), "--port", str(port)], env=env),
        check=ContenderCheck(model, exact=True),
        description=description or f"ladle serve {target.name}",
    )


def ladle_variant(name: str, config: Path, repository: Path, workdir: Path, model: BenchModel) -> Contender:
    """ladle with another ``ladle.toml``.

    A file that names no ``[server] repository`` is copied next to (a link to) the benchmark's
    repository, so it serves the benchmark model; relative paths in it then resolve in that copy's
    directory. A file that names a repository serves it as it is (it must hold ``breast_cancer``).
    """
    with config.open("rb") as f:
        data = tomllib.load(f)
    if "repository" in data.get("server", {}):
        return ladle(name, config.resolve(), model, description=f"ladle serve {config}")
    directory = workdir / "variants" / name
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, directory / "ladle.toml")
    link = directory / "models"
    if not link.exists():
        link.symlink_to(repository.resolve(), target_is_directory=True)
    return ladle(
        name, directory / "ladle.toml", model, description=f"ladle serve {config} (benchmark models)"
    )


def handwritten(model: BenchModel) -> Contender:
    script = SERVERS / "handwritten.py"
    return Contender(
        name="handwritten",
        path=INFER_PATH,
        launch=lambda port: Launch(
            [
                sys.executable,
                str(script),
                "--model",
                str(model.path),
                "--name",
                MODEL_NAME,
                "--port",
                str(port),
            ]
        ),
        check=ContenderCheck(model, exact=True),
        description="starlette + Booster.inplace_predict per request, nthread=1",
    )


def constant(model: BenchModel) -> Contender:
    script = SERVERS / "constant.py"
    return Contender(
        name="constant",
        path=INFER_PATH,
        launch=lambda port: Launch(
            [
                sys.executable,
                str(script),
                "--name",
                MODEL_NAME,
                "--value",
                repr(model.expected),
                "--port",
                str(port),
            ]
        ),
        check=ContenderCheck(model, exact=False),
        description="starlette route returning a constant V2 response (HTTP ceiling)",
    )


def mlserver_environment(cache_dir: Path, report: Callable[[str], None] = print) -> Path:
    """The ``mlserver`` executable of a virtual environment under ``cache_dir``, built on first use.

    Raises ``Unavailable`` with pip's own words when it cannot be built (no network, say).
    """
    import xgboost

    pins = (*MLSERVER_PINS, f"xgboost=={xgboost.__version__}")
    home = cache_dir / "mlserver-venv"
    executable = home / "bin" / "mlserver"
    stamp = home / "installed.txt"
    if executable.is_file() and stamp.is_file() and stamp.read_text().split() == list(pins):
        return executable
    report(f"building MLServer environment in {home} ({', '.join(pins)}); about a minute, once")
    shutil.rmtree(home, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(home)
    completed = subprocess.run(
        [
            str(home / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *pins,
        ],
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0 or not executable.is_file():
        output = (completed.stderr or completed.stdout).strip().splitlines()
        errors = [line for line in output if "ERROR" in line] or output[-5:]
        raise Unavailable("pip install failed: " + " | ".join(errors[-5:]))
    stamp.write_text("\n".join(pins) + "\n")
    return executable


def mlserver(
    executable: Path,
    model: BenchModel,
    workdir: Path,
    *,
    max_batch_size: int | None = None,
    max_batch_time: float | None = None,
    parallel_workers: int | None = None,
) -> Contender:
    """MLServer's xgboost runtime with adaptive batching; settings from ``servers/mlserver``.

    Ports (HTTP, gRPC, metrics) are chosen free at each start. XGBoost predicts on one thread
    (``OMP_NUM_THREADS=1``), as in the other contenders.
    """
    directory = workdir / "mlserver" / MODEL_NAME
    directory.mkdir(parents=True, exist_ok=True)
    settings = json.loads((SERVERS / "mlserver" / "settings.json").read_text())
    model_settings = json.loads((SERVERS / "mlserver" / "model-settings.json").read_text())
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    if max_batch_size is not None:
        model_settings["max_batch_size"] = max_batch_size
    if max_batch_time is not None:
        model_settings["max_batch_time"] = max_batch_time
    (directory / "settings.json").write_text(json.dumps(settings, indent=2))
    (directory / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    shutil.copyfile(model.path, directory / "model.ubj")

    def launch(port: int) -> Launch:
        grpc_port, metrics_port = _other_ports(port, 2)
        env = {
            "MLSERVER_HTTP_PORT": str(port),
            "MLSERVER_GRPC_PORT": str(grpc_port),
            "MLSERVER_METRICS_PORT": str(metrics_port),
            "OMP_NUM_THREADS": "1",
        }
        return Launch([str(executable), "start", str(directory)], env=env, cwd=directory)

    return Contender(
        name="mlserver",
        path=INFER_PATH,
        launch=launch,
        check=ContenderCheck(model, exact=True),
        ready_path=f"/v2/models/{MODEL_NAME}/ready",  # /v2/health/ready is 200 even if the model failed
        startup_timeout=120.0,
        description=(
            f"MLServer 1.7 xgboost runtime, adaptive batching (max_batch_size "
            f"{model_settings['max_batch_size']}, max_batch_time {model_settings['max_batch_time']} s), "
            f"parallel_workers {settings['parallel_workers']}"
        ),
    )


def _other_ports(taken: int, count: int) -> list[int]:
    """``count`` free ports, distinct from each other and from ``taken``."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port != taken and port not in ports:
            ports.append(port)
    return ports
