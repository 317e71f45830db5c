"""Health, readiness and metadata over gRPC, with tritonclient, the gRPC health service and reflection."""

from __future__ import annotations

import time

import grpc
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_support import GrpcServer
from tritonclient.utils import InferenceServerException


def test_live_ready_and_model_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("bc")
    assert client.is_model_ready("echo", "2")


def test_model_ready_of_an_unknown_model_or_version_is_not_found(
    client: grpcclient.InferenceServerClient,
) -> None:
    for name, version in (("nope", ""), ("echo", "9")):
        with pytest.raises(InferenceServerException) as caught:
            client.is_model_ready(name, version)
        assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    from ladle import __version__

    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "ladle" and metadata["version"] == __version__


def test_model_metadata_matches_the_rest_endpoint(
    client: grpcclient.InferenceServerClient, served: GrpcServer
) -> None:
    import httpx

    over_grpc = client.get_model_metadata("bc", as_json=True)
    over_rest = httpx.get(f"{served.url}/v2/models/bc").json()
    assert over_grpc["name"] == over_rest["name"] == "bc"
    assert over_grpc["versions"] == over_rest["versions"] == ["1"]
    assert over_grpc["platform"] == over_rest["platform"] == "xgboost"
    # protobuf's JSON writes int64 as strings
    assert (
        [
            {"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t["shape"]]}
            for t in over_grpc["inputs"]
        ]
        == over_rest["inputs"]
        == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    )
    assert [t["name"] for t in over_grpc["outputs"]] == [t["name"] for t in over_rest["outputs"]]
    assert client.get_model_metadata("echo", "1", as_json=True)["versions"] == ["1"]
    assert client.get_model_metadata("echo", as_json=True)["versions"] == ["1", "2"]


def test_standard_health_service(served: GrpcServer) -> None:
    with grpc.insecure_channel(served.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
        inference = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        deadline = time.monotonic() + 5  # readiness reaches the health service within a refresh
        while health.Check(inference).status != serving and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health.Check(inference).status == serving
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_reflection_lists_the_services(served: GrpcServer) -> None:
    with grpc.insecure_channel(served.grpc) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
        answer = next(iter(stub.ServerReflectionInfo(iter(ask))))
        names = {service.name for service in answer.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        ask = [reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.ModelInferRequest")]
        answer = next(iter(stub.ServerReflectionInfo(iter(ask))))
        assert answer.file_descriptor_response.file_descriptor_proto  # a client can build its stubs


def test_methods_ladle_does_not_serve_are_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_repository_index()
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
