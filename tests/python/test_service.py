"""Health, reflection, model info and bad input, as any gRPC client sees them."""

import io
import json

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

SERVICE = "siglip.v1.Siglip"
MIB = 1 << 20
METHODS = {"Classify", "Upload", "Stream", "EmbedImage", "EmbedText", "GetModelInfo", "ListModels"}


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_serving(channel, service):
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service(channel):
    with pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# v1 and v1alpha share their messages; only the service name differs.
@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_services(channel, version):
    info = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (response,) = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    services = {service.name for service in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= services


def test_reflection_describes_siglip(channel):
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    assert {method.name for method in pool.FindServiceByName(SERVICE).methods} == METHODS


def test_model_info(stubs, siglip, manifest):
    pb2, _ = stubs
    info = siglip.GetModelInfo(pb2.GetModelInfoRequest(), timeout=5)
    assert info.model_id == manifest["model_id"]
    assert info.image_size == manifest["image"]["size"]
    assert info.embedding_dim == manifest["embedding_dim"]
    assert info.max_text_tokens == manifest["text"]["max_length"]
    assert info.random_weights == manifest["source"]["random_weights"]
    assert info.dtype == "float32" and "float32" in manifest["towers"]  # the server runs --dtype float32
    assert info.device and info.server_version
    # The tiny test model has no compiled (AOTInductor) vision tower: TorchScript runs it.
    assert "compiled_vision" not in manifest["towers"]["float32"] and info.backend == "torchscript"


# A configured limit is RESOURCE_EXHAUSTED, naming the flag; anything else malformed is INVALID_ARGUMENT.
OVER_LIMIT = {"bad/huge_dimensions.png": "--max-image-pixels"}


def expected_code(name: str) -> grpc.StatusCode:
    return grpc.StatusCode.RESOURCE_EXHAUSTED if name in OVER_LIMIT else grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def bad(assets) -> dict[str, bytes]:
    entries = json.loads((assets / "bad.json").read_text())
    return {entry["file"]: (assets / entry["file"]).read_bytes() for entry in entries}


def test_bad_images_classify(stubs, siglip, bad, labels):
    pb2, _ = stubs
    for name, data in bad.items():
        with pytest.raises(grpc.RpcError) as err:
            siglip.Classify(pb2.ClassifyRequest(image=pb2.Image(encoded=data), texts=labels), timeout=30)
        assert err.value.code() == expected_code(name), name
        assert err.value.details() and OVER_LIMIT.get(name, "") in err.value.details(), name


def test_bad_images_upload(stubs, siglip, bad, labels):
    pb2, _ = stubs
    for name, data in bad.items():
        requests = [pb2.UploadRequest(header=pb2.UploadHeader(texts=labels, total_bytes=len(data)))]
        requests += [pb2.UploadRequest(chunk=data)] if data else []
        with pytest.raises(grpc.RpcError) as err:
            siglip.Upload(iter(requests), timeout=30)
        assert err.value.code() == expected_code(name), name
        assert err.value.details() and OVER_LIMIT.get(name, "") in err.value.details(), name


def test_bad_frame_does_not_end_stream(stubs, siglip, bad, assets, labels):
    pb2, _ = stubs
    good = (assets / "images" / "chelsea_progressive.jpg").read_bytes()
    frames = [good, *bad.values(), good]
    requests = [pb2.StreamRequest(config=pb2.StreamConfig(texts=labels, mode=pb2.DELIVERY_MODE_EVERY_FRAME))]
    requests += [pb2.StreamRequest(frame=pb2.Frame(frame_id=i, image=pb2.Image(encoded=data))) for i, data in enumerate(frames)]
    responses = list(siglip.Stream(iter(requests), timeout=60))
    assert [response.frame_id for response in responses] == list(range(len(frames)))
    assert [response.HasField("error") for response in responses] == [False] + [True] * len(bad) + [False]
    for name, response in zip(bad, responses[1:-1], strict=True):
        assert response.error.code == expected_code(name).value[0] and response.error.message, name
        assert not response.scores, name
    assert responses[0].scores == responses[-1].scores


def test_image_over_message_limit_goes_through_upload(stubs, siglip, assets, labels):
    """A 4.4 MB BMP is over the 4 MiB message limit: Classify refuses it and points at Upload."""
    pb2, _ = stubs
    buf = io.BytesIO()
    Image.open(assets / "images" / "coffee_444.jpg").resize((1400, 1050)).save(buf, format="BMP")
    data = buf.getvalue()
    with pytest.raises(grpc.RpcError) as err:
        siglip.Classify(pb2.ClassifyRequest(image=pb2.Image(encoded=data), texts=labels), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Upload" in err.value.details()
    header = pb2.UploadRequest(header=pb2.UploadHeader(texts=labels, total_bytes=len(data)))
    chunks = [pb2.UploadRequest(chunk=data[i : i + MIB]) for i in range(0, len(data), MIB)]
    assert len(siglip.Upload(iter([header, *chunks]), timeout=30).scores) == len(labels)


def test_missing_texts(stubs, siglip, assets):
    pb2, _ = stubs
    image = pb2.Image(encoded=(assets / "images" / "chelsea_progressive.jpg").read_bytes())
    with pytest.raises(grpc.RpcError) as err:
        siglip.Classify(pb2.ClassifyRequest(image=image), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
