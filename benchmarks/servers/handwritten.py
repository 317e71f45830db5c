"""The baseline: a hand-written starlette server predicting one request at a time.

An XGBoost ``Booster`` on one thread, ``inplace_predict`` inline in the async handler, orjson both
ways, uvicorn with one worker. This is what a careful engineer writes without a serving framework.

Run: ``python benchmarks/servers/handwritten.py --model model.ubj --name breast_cancer --port 8000``
"""

from __future__ import annotations

import argparse

import numpy as np
import orjson
import uvicorn
import xgboost
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app(model_path: str, name: str) -> Starlette:
    booster = xgboost.Booster()
    booster.load_model(model_path)
    booster.set_param({"nthread": 1})

    async def infer(request: Request) -> Response:
        body = orjson.loads(await request.body())
        tensor = body["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        predictions = booster.inplace_predict(rows)
        payload = {
            "model_name": name,
            "outputs": [
                {
                    "name": "predict",
                    "datatype": "FP32",
                    "shape": [len(predictions)],
                    "data": predictions.tolist(),
                }
            ],
        }
        return Response(orjson.dumps(payload), media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    return Starlette(
        routes=[
            Route(f"/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="XGBoost model file (model.ubj)")
    parser.add_argument("--name", required=True, help="model name in the URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = create_app(args.model, args.name)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
