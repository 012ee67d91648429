"""Distributed tracing as a grpcio caller sees it: a Classify sent with a W3C `traceparent` in its
metadata arrives at an OTLP/gRPC receiver (a grpcio TraceService from the opentelemetry-proto
package) as a server span whose parent is the caller's span, with the call's stages under it.
The Rust tests (tests/grpc/traces.rs) cover the rest: B3, batches, frames, sampling, a collector
that goes away, secrets.
"""

import secrets
import threading
import time
from concurrent import futures

import grpc
import pytest
from conftest import run_server
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

TIMEOUT_S = 30


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (the generated servicer's method name)
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(grace=None)


@pytest.fixture(scope="module")
def traced(server_bin, model_dir, receiver, tmp_path_factory):
    _, port = receiver
    flags = ["--otlp-endpoint", f"http://127.0.0.1:{port}"]
    yield from run_server(server_bin, model_dir, tmp_path_factory.mktemp("traced"), flags)


def test_a_grpcio_callers_traceparent_is_the_parent_of_the_call_and_its_stages(traced, receiver, stubs, assets, labels):
    spans_of, _ = receiver
    pb2, pb2_grpc = stubs
    trace_id, caller = secrets.token_bytes(16), secrets.token_bytes(8)
    traceparent = f"00-{trace_id.hex()}-{caller.hex()}-01"
    image = (assets / "images" / "astronaut_224.jpg").read_bytes()
    request = pb2.ClassifyRequest(image=pb2.Image(encoded=image), texts=labels[:4])
    with grpc.insecure_channel(traced) as channel:
        answer = pb2_grpc.SiglipStub(channel).Classify(request, metadata=(("traceparent", traceparent),), timeout=30)
    assert len(answer.scores) == 4

    deadline = time.monotonic() + TIMEOUT_S
    while not any(s.name == "siglip.v1.Siglip/Classify" for s in spans_of.trace(trace_id)):
        assert time.monotonic() < deadline, "the call's span never arrived"
        time.sleep(0.1)
    spans = spans_of.trace(trace_id)
    call = next(s for s in spans if s.name == "siglip.v1.Siglip/Classify")
    assert call.parent_span_id == caller
    attributes = {a.key: a.value for a in call.attributes}
    assert attributes["rpc.system"].string_value == "grpc"
    assert attributes["rpc.grpc.status_code"].int_value == 0
    stages = {s.name for s in spans if s.parent_span_id == call.span_id}
    assert {"receive", "admission", "decode", "preprocess", "queue", "inference"} <= stages, stages
    assert stages & {"tokenize", "text_cache_hit"}, stages
