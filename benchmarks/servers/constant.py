"""The HTTP ceiling: a starlette route that reads the request body and returns a constant V2 response.

Everything a real server does per request except decoding the tensor and predicting; no server on
this stack can be faster. uvicorn with one worker, like the others.

Run: ``python benchmarks/servers/constant.py --name breast_cancer --value 0.5 --port 8000``
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app(name: str, value: float) -> Starlette:
    answer = orjson.dumps(
        {
            "model_name": name,
            "outputs": [{"name": "predict", "datatype": "FP32", "shape": [1], "data": [value]}],
        }
    )

    async def infer(request: Request) -> Response:
        await request.body()
        return Response(answer, media_type="application/json")

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
    parser.add_argument("--name", required=True, help="model name in the URL")
    parser.add_argument("--value", type=float, default=0.5, help="the prediction every response carries")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = create_app(args.name, args.value)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
