"""The Ray Serve contender: the benchmark's XGBoost model as one Ray Serve deployment behind Serve's
own HTTP proxy, the way its documentation builds a model server.

One replica holds a ``Booster`` (one thread) and predicts the requests ``@serve.batch`` gathers
(up to 32, waiting at most 1 ms: the setting that favours throughput without making a lone request
wait long). The proxy and the replica run on a local Ray started here on loopback addresses only;
``/v2/health/ready`` answers once the deployment is ready.

Run: ``python benchmarks/servers/ray_serve_app.py --model model.ubj --name breast_cancer --port 8000``
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback addresses only

import numpy as np
import orjson
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
class XGBoostModel:
    def __init__(self, model_path: str, name: str) -> None:
        import xgboost

        self.booster = xgboost.Booster()
        self.booster.load_model(model_path)
        self.booster.set_param({"nthread": 1})
        self.name = name

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)
    async def predict(self, batches: list[np.ndarray]) -> list[list[float]]:
        rows = np.concatenate(batches)
        predictions = self.booster.inplace_predict(rows)
        out, start = [], 0
        for batch in batches:
            out.append(predictions[start : start + len(batch)].tolist())
            start += len(batch)
        return out

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":
            return Response(b'{"ready":true}', media_type="application/json")
        body = orjson.loads(await request.body())
        tensor = body["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        values = await self.predict(rows)
        payload: dict[str, Any] = {
            "model_name": self.name,
            "outputs": [{"name": "predict", "datatype": "FP32", "shape": [len(values)], "data": values}],
        }
        return Response(orjson.dumps(payload), media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="XGBoost model file (model.ubj)")
    parser.add_argument("--name", required=True, help="model name in the URL")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray")
    args = parser.parse_args()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(XGBoostModel.bind(args.model, args.name), route_prefix="/", blocking=False)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
