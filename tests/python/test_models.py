"""Several models in one server, as a grpcio client sees them: ListModels, the `model` field of each
request, the default model, an unknown name, per-model health, and a model's `serve.json`."""

import json
import shutil

import grpc
import pytest
from conftest import run_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

LABELS = ["a photo of a cat", "a rocket", "a cup of coffee"]


@pytest.fixture(scope="module")
def repository(model_dir, tmp_path_factory):
    """Two copies of the test model: `pil` as exported, `torchvision` with a serve.json that picks the
    torchvision image processor for it alone."""
    repo = tmp_path_factory.mktemp("repository")
    shutil.copytree(model_dir, repo / "pil")
    shutil.copytree(model_dir, repo / "torchvision")
    (repo / "torchvision" / "serve.json").write_text(json.dumps({"image_processor": "torchvision"}))
    return repo


@pytest.fixture(scope="module")
def two_models(server_bin, repository, tmp_path_factory):
    yield from run_server(server_bin, repository, tmp_path_factory.mktemp("two-models"), ["--default-model", "pil"])


@pytest.fixture(scope="module")
def client(stubs, two_models):
    with grpc.insecure_channel(two_models) as channel:
        yield stubs[1].SiglipStub(channel), health_pb2_grpc.HealthStub(channel)


def probabilities(pb2, stub, photo: bytes, model: str) -> dict[str, float]:
    reply = stub.Classify(pb2.ClassifyRequest(image=pb2.Image(encoded=photo), texts=LABELS, model=model), timeout=30)
    return {s.label: s.probability for s in reply.scores}


def test_list_models(stubs, client, manifest):
    pb2, _ = stubs
    stub, _ = client
    listed = stub.ListModels(pb2.ListModelsRequest(), timeout=5)
    assert listed.default_model == "pil"
    assert [m.name for m in listed.models] == ["pil", "torchvision"]
    for m in listed.models:
        assert m.state == pb2.MODEL_STATE_READY and m.serving and not m.reason
        assert m.info.name == m.name and m.info.model_id == manifest["model_id"]
        assert m.info.parameter_bytes > 0
    assert [m.info.image_processor for m in listed.models] == ["pil", "torchvision"]


def test_the_model_field_picks_the_model(stubs, client, assets):
    pb2, _ = stubs
    stub, _ = client
    photo = (assets / "images" / "chelsea_progressive.jpg").read_bytes()
    pil, torchvision = (probabilities(pb2, stub, photo, m) for m in ("pil", "torchvision"))
    assert probabilities(pb2, stub, photo, "") == pil, "no model named: the default"
    # Same weights, different resampler arithmetic: close, and not equal.
    assert all(abs(pil[k] - torchvision[k]) < 1e-2 for k in LABELS)
    assert pil != torchvision
    info = stub.GetModelInfo(pb2.GetModelInfoRequest(model="torchvision"), timeout=5)
    assert info.name == "torchvision" and info.image_processor == "torchvision"
    embedded = stub.EmbedText(pb2.EmbedTextRequest(texts=LABELS, model="torchvision"), timeout=30)
    assert len(embedded.embeddings) == len(LABELS)


def test_an_unknown_model_is_not_found(stubs, client):
    pb2, _ = stubs
    stub, health = client
    with pytest.raises(grpc.RpcError) as err:
        stub.EmbedText(pb2.EmbedTextRequest(texts=LABELS, model="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "(models: pil, torchvision)" in err.value.details()
    for name in ("", "siglip.v1.Siglip", "siglip.v1.Siglip/pil", "siglip.v1.Siglip/torchvision"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="siglip.v1.Siglip/nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
