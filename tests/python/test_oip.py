"""The Open Inference Protocol (`inference.GRPCInferenceService`) as tritonclient sees it, beside
siglip.v1 on the same port.

Covered: `infer` and `async_infer` on each model's zero-shot, image-embedding and text-embedding
models (prefixed with the model's name and bare, for the default model); their outputs equal
Classify's, EmbedImage's and EmbedText's; the classification extension with `top_k` and
`threshold`; raw rgb8/rgba8 frames; ModelStreamInfer going on past a failing request; what
perf_analyzer reads (metadata, configuration, readiness); the errors Triton's clients expect
(unknown model or version, malformed tensors sent with tritonclient's own generated messages,
unknown parameters, the methods not implemented); bearer tokens and mutual TLS through
tritonclient's `headers` and `ssl` options.
"""

import io
import math
import queue
import secrets

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from conftest import run_server
from PIL import Image
from pki import CLIENT_EXT, SERVER_EXT, make_ca, make_leaf
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

PHOTOS = ["chelsea_progressive.jpg", "astronaut_384.png", "rocket.bmp", "coffee_444.jpg"]
KINDS = ["zero-shot", "image-embedding", "text-embedding"]
EXACT = 1e-6  # same model, same float32 arithmetic: OIP and siglip.v1 agree to this
RAW_TOL = 1e-5  # raw frames against the PNG they came from (as test_stream.py)
TIMEOUT_S = 30


@pytest.fixture(scope="module")
def name(model_dir) -> str:
    """The repository name of the default (only) model: the model directory's last component."""
    return model_dir.name


@pytest.fixture(scope="module")
def photos(assets) -> list[bytes]:
    return [(assets / "images" / photo).read_bytes() for photo in PHOTOS]


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server) as client:
        yield client


@pytest.fixture(scope="module")
def oip(channel):
    """tritonclient's generated stub, for requests tritonclient itself will not build."""
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def bytes_input(name: str, elements: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_))
    return tensor


def inputs_for(kind: str, images: list[bytes], texts: list[str]) -> list[triton.InferInput]:
    tensors = []
    if kind != "text-embedding":
        tensors.append(bytes_input("IMAGE", images))
    if kind != "image-embedding":
        tensors.append(bytes_input("TEXT", [text.encode() for text in texts]))
    return tensors


def zero_shot(client, model, images, texts, **kwargs) -> triton.InferResult:
    return client.infer(model, inputs_for("zero-shot", images, texts), client_timeout=TIMEOUT_S, **kwargs)


def classify(stubs, siglip, image, labels) -> dict[int, tuple[float, float]]:
    """siglip.v1 Classify of `image` (a pb2.Image): {label index: (probability, logit)}."""
    pb2, _ = stubs
    scores = siglip.Classify(pb2.ClassifyRequest(image=image, texts=labels), timeout=TIMEOUT_S).scores
    return {score.index: (score.probability, score.logit) for score in scores}


def failure(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value


def rpc_failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def check_answer(result: triton.InferResult, kind, model, request_id, images, texts, dim) -> None:
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == (request_id, model, "1")
    shapes = {
        "zero-shot": {"PROBABILITY": (len(images), len(texts)), "LOGIT": (len(images), len(texts))},
        "image-embedding": {"EMBEDDING": (len(images), dim)},
        "text-embedding": {"EMBEDDING": (len(texts), dim)},
    }[kind]
    assert [output.name for output in response.outputs] == list(shapes)
    for output, shape in shapes.items():
        array = result.as_numpy(output)
        assert array.dtype == np.float32 and array.shape == shape, output
        assert np.isfinite(array).all(), output
    if kind == "zero-shot":
        probabilities = result.as_numpy("PROBABILITY")
        assert ((probabilities > 0) & (probabilities < 1)).all()
        np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-result.as_numpy("LOGIT").astype(np.float64))), atol=EXACT)
    else:
        np.testing.assert_allclose(np.linalg.norm(result.as_numpy("EMBEDDING"), axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("prefixed", [True, False], ids=["prefixed", "bare"])
@pytest.mark.parametrize("kind", KINDS)
def test_infer_and_async_infer_answer_every_kind(client, name, photos, labels, manifest, kind, prefixed):
    model = f"{name}-{kind}" if prefixed else kind
    images, texts = photos[:2], labels[:3]
    result = client.infer(model, inputs_for(kind, images, texts), request_id="sync-1", client_timeout=TIMEOUT_S)
    check_answer(result, kind, model, "sync-1", images, texts, manifest["embedding_dim"])

    answers = queue.Queue()
    client.async_infer(model, inputs_for(kind, images, texts), lambda result, error: answers.put((result, error)),
                       request_id="async-2", client_timeout=TIMEOUT_S)
    result, error = answers.get(timeout=TIMEOUT_S)
    assert error is None, error
    check_answer(result, kind, model, "async-2", images, texts, manifest["embedding_dim"])


def test_outputs_asked_for_come_in_the_order_asked(client, name, photos, labels):
    asked = [triton.InferRequestedOutput("LOGIT"), triton.InferRequestedOutput("PROBABILITY")]
    both = zero_shot(client, f"{name}-zero-shot", photos[:1], labels, outputs=asked)
    assert [output.name for output in both.get_response().outputs] == ["LOGIT", "PROBABILITY"]
    only = zero_shot(client, f"{name}-zero-shot", photos[:1], labels, outputs=[triton.InferRequestedOutput("LOGIT")])
    assert [output.name for output in only.get_response().outputs] == ["LOGIT"]
    np.testing.assert_array_equal(only.as_numpy("LOGIT"), both.as_numpy("LOGIT"))


def test_zero_shot_matches_classify(client, stubs, siglip, name, photos, labels, manifest):
    """Every photo against every label in one request: row i, column j is Classify's score of
    label j on photo i, probability and logit (the logit is exp(logit_scale) times a cosine, so to
    exp(logit_scale) times the cosine's tolerance)."""
    pb2, _ = stubs
    logit_tol = EXACT * math.exp(manifest["logit_scale"])
    result = zero_shot(client, f"{name}-zero-shot", photos, labels)
    probabilities, logits = result.as_numpy("PROBABILITY"), result.as_numpy("LOGIT")
    assert probabilities.shape == logits.shape == (len(PHOTOS), len(labels))
    for row, (photo, data) in enumerate(zip(PHOTOS, photos, strict=True)):
        expected = classify(stubs, siglip, pb2.Image(encoded=data), labels)
        assert sorted(expected) == list(range(len(labels)))
        for index, (probability, logit) in expected.items():
            assert probabilities[row, index] == pytest.approx(probability, abs=EXACT), (photo, labels[index])
            assert logits[row, index] == pytest.approx(logit, abs=logit_tol), (photo, labels[index])


def test_embeddings_match_embed_rpcs(client, stubs, siglip, name, photos, labels):
    pb2, _ = stubs
    images = client.infer(f"{name}-image-embedding", inputs_for("image-embedding", photos, []), client_timeout=TIMEOUT_S)
    texts = client.infer(f"{name}-text-embedding", inputs_for("text-embedding", [], labels), client_timeout=TIMEOUT_S)
    want_images = siglip.EmbedImage(pb2.EmbedImageRequest(images=[pb2.Image(encoded=data) for data in photos]),
                                    timeout=TIMEOUT_S)
    want_texts = siglip.EmbedText(pb2.EmbedTextRequest(texts=labels), timeout=TIMEOUT_S)
    np.testing.assert_allclose(images.as_numpy("EMBEDDING"), [e.values for e in want_images.embeddings], atol=EXACT, rtol=0)
    np.testing.assert_allclose(texts.as_numpy("EMBEDDING"), [e.values for e in want_texts.embeddings], atol=EXACT, rtol=0)


def parse_classes(array: np.ndarray) -> list[list[tuple[float, int, str] | None]]:
    """A classification output, BYTES "value:index:label" per element (b"" under the threshold)."""
    rows = []
    for row in array:
        parsed = []
        for element in row:
            if element == b"":
                parsed.append(None)
                continue
            value, index, label = element.decode().split(":", 2)
            parsed.append((float(value), int(index), label))
        rows.append(parsed)
    return rows


def classes(client, model, photos, labels, count, output="PROBABILITY", **parameters):
    asked = [triton.InferRequestedOutput(output, class_count=count)]
    result = zero_shot(client, model, photos, labels, outputs=asked, parameters=parameters or None)
    array = result.as_numpy(output)
    assert array.dtype == np.object_
    return array.shape, parse_classes(array)


def check_best_first(rows, matrix: np.ndarray, probabilities: np.ndarray, labels) -> None:
    """Each entry is its label's value in `matrix`, at its own index and with its own label; entries
    are the row's most probable labels, best first."""
    for row, entries in enumerate(rows):
        present = [entry for entry in entries if entry is not None]
        for value, index, label in present:
            assert label == labels[index]
            assert value == pytest.approx(float(matrix[row, index]), abs=EXACT, rel=EXACT)
        shown = [probabilities[row, index] for _, index, _ in present]
        assert shown == sorted(shown, reverse=True), row
        assert len({index for _, index, _ in present}) == len(present)
        hidden = [p for index, p in enumerate(probabilities[row]) if index not in {i for _, i, _ in present}]
        if present and len(present) == len(entries):
            assert all(p <= min(shown) for p in hidden), row


def test_classification_gives_the_best_labels(client, name, photos, labels):
    model = f"{name}-zero-shot"
    full = zero_shot(client, model, photos, labels)
    probabilities, logits = full.as_numpy("PROBABILITY"), full.as_numpy("LOGIT")

    shape, rows = classes(client, model, photos, labels, 3)
    assert shape == (len(photos), 3)
    check_best_first(rows, probabilities, probabilities, labels)
    # LOGIT's classes are ordered by probability too (the same order), with logits as values.
    shape, logit_rows = classes(client, model, photos, labels, 3, output="LOGIT")
    assert shape == (len(photos), 3)
    check_best_first(logit_rows, logits, probabilities, labels)
    assert [[entry[1] for entry in row] for row in logit_rows] == [[entry[1] for entry in row] for row in rows]
    # A count past the number of labels is every label.
    shape, every = classes(client, model, photos, labels, len(labels) + 5)
    assert shape == (len(photos), len(labels))
    check_best_first(every, probabilities, probabilities, labels)
    # top_k caps the count; the plain tensors ignore top_k and threshold.
    shape, capped = classes(client, model, photos, labels, 5, top_k=2)
    assert shape == (len(photos), 2)
    assert [[entry[1] for entry in row] for row in capped] == [[entry[1] for entry in row[:2]] for row in every]
    plain = zero_shot(client, model, photos, labels, parameters={"top_k": 2, "threshold": 0.99})
    np.testing.assert_array_equal(plain.as_numpy("PROBABILITY"), probabilities)


def test_classification_threshold_blanks_what_is_below(client, name, photos, labels):
    model = f"{name}-zero-shot"
    probabilities = zero_shot(client, model, photos, labels).as_numpy("PROBABILITY")
    best = np.sort(probabilities, axis=1)[:, ::-1][:, :4]
    threshold = float(np.median(best))  # some of the four best are under it, some not
    shape, rows = classes(client, model, photos, labels, 4, threshold=threshold)
    assert shape == (len(photos), 4)
    for row, entries in enumerate(rows):
        assert [entry is None for entry in entries] == [p < threshold for p in best[row]], row
        present = [entry for entry in entries if entry is not None]
        assert [probabilities[row, index] for _, index, _ in present] == list(best[row][: len(present)])
    flat = [entry for row in rows for entry in row]
    assert None in flat and any(entry is not None for entry in flat), "the threshold splits nothing"


def test_classification_keeps_colons_in_labels(client, name, photos):
    texts = ["time: 12:30", "a:b", "plain"]
    _, rows = classes(client, f"{name}-zero-shot", photos[:1], texts, 3)
    assert sorted(entry[2] for entry in rows[0]) == sorted(texts)
    assert all(texts[index] == label for _, index, label in rows[0])


def test_bad_outputs_are_invalid_argument(client, name, photos, labels):
    for kind, output in (("image-embedding", triton.InferRequestedOutput("EMBEDDING", class_count=2)),
                         ("zero-shot", triton.InferRequestedOutput("EMBEDDING")),
                         ("text-embedding", triton.InferRequestedOutput("PROBABILITY"))):
        err = failure(lambda kind=kind, output=output: client.infer(
            f"{name}-{kind}", inputs_for(kind, photos[:1], labels), outputs=[output], client_timeout=TIMEOUT_S))
        assert err.status() == "StatusCode.INVALID_ARGUMENT", (kind, err)


def test_raw_frames_match_the_encoded_image(client, stubs, siglip, name, assets, labels):
    """rgb8 and opaque rgba8 frames of a PNG's pixels classify like the PNG (as Classify sees it)."""
    pb2, _ = stubs
    encoded = (assets / "images" / "coffee_rgb8.png").read_bytes()
    rgb = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    height, width = rgb.shape[:2]
    rgba = np.dstack([rgb, np.full((height, width), 255, np.uint8)])
    expected = classify(stubs, siglip, pb2.Image(encoded=encoded), labels)
    want = [expected[index][0] for index in range(len(labels))]
    for image_format, pixels in (("rgb8", rgb), ("rgba8", rgba)):
        parameters = {"image_format": image_format, "image_width": width, "image_height": height}
        result = zero_shot(client, f"{name}-zero-shot", [pixels.tobytes()] * 2, labels, parameters=parameters)
        probabilities = result.as_numpy("PROBABILITY")
        assert probabilities.shape == (2, len(labels))
        for row in probabilities:
            assert row.tolist() == pytest.approx(want, abs=RAW_TOL), image_format
        embedded = client.infer(f"{name}-image-embedding", inputs_for("image-embedding", [pixels.tobytes()], []),
                                parameters=parameters, client_timeout=TIMEOUT_S)
        assert embedded.as_numpy("EMBEDDING").shape[0] == 1


def test_stream_goes_on_past_failing_requests(client, name, photos, labels):
    """Five requests on one stream: the second names an unknown model and the third carries a
    corrupt image; each is answered with an error, in order, and the rest are served."""
    answers = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    try:
        sent = [
            ("s0", f"{name}-zero-shot", inputs_for("zero-shot", photos[:2], labels)),
            ("s1", "nope-zero-shot", inputs_for("zero-shot", photos[:1], labels)),
            ("s2", f"{name}-zero-shot", inputs_for("zero-shot", [b"not an image at all"], labels)),
            ("s3", f"{name}-image-embedding", inputs_for("image-embedding", photos[2:], [])),
            ("s4", "text-embedding", inputs_for("text-embedding", [], labels[:2])),
        ]
        for request_id, model, inputs in sent:
            client.async_stream_infer(model, inputs, request_id=request_id)
        got = [answers.get(timeout=TIMEOUT_S) for _ in sent]
    finally:
        client.stop_stream()
    assert answers.empty()
    errors = [error for _, error in got]
    assert [error is None for error in errors] == [True, False, False, True, True], errors
    assert "Request for unknown model: 'nope-zero-shot' is not found" in errors[1].message()
    assert [result.get_response().id for result, _ in got if result is not None] == ["s0", "s3", "s4"]
    unary = zero_shot(client, f"{name}-zero-shot", photos[:2], labels)
    # Within the stream, s0 and s3 may be batched together: equal to the float32 arithmetic's noise.
    np.testing.assert_allclose(got[0][0].as_numpy("PROBABILITY"), unary.as_numpy("PROBABILITY"), atol=EXACT, rtol=0)
    assert got[3][0].as_numpy("EMBEDDING").shape[0] == len(photos) - 2
    assert got[4][0].as_numpy("EMBEDDING").shape[0] == 2


def raw_request(model: str, inputs: list[tuple[str, int]], raw=None, request_id="", **parameters):
    """A ModelInferRequest built by hand: `inputs` as (name, element count) BYTES tensors of shape
    [count], their data in `raw` (raw_input_contents)."""
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id, raw_input_contents=raw or [])
    for input_name, count in inputs:
        request.inputs.add(name=input_name, datatype="BYTES", shape=[count])
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    return request


def framed(*elements: bytes) -> bytes:
    return b"".join(len(element).to_bytes(4, "little") + element for element in elements)


def test_stream_errors_keep_their_request_id(oip, name, photos, labels):
    """On the wire, a failed request's response carries its id and model, beside error_message."""
    texts = framed(*(label.encode() for label in labels))
    requests = [
        raw_request(f"{name}-zero-shot", [("IMAGE", 1), ("TEXT", len(labels))], [framed(photos[0]), texts], "r0"),
        raw_request("nope-zero-shot", [("IMAGE", 1), ("TEXT", len(labels))], [framed(photos[0]), texts], "r1"),
        raw_request(f"{name}-text-embedding", [("TEXT", 1)], [b"\xff\0\0\0x"], "r2"),
        raw_request(f"{name}-text-embedding", [("TEXT", len(labels))], [texts], "r3"),
    ]
    responses = list(oip.ModelStreamInfer(iter(requests), timeout=TIMEOUT_S))
    assert [r.infer_response.id for r in responses] == ["r0", "r1", "r2", "r3"]
    assert [r.infer_response.model_name for r in responses] == [request.model_name for request in requests]
    assert [bool(r.error_message) for r in responses] == [False, True, True, False]
    assert "Request for unknown model: 'nope-zero-shot' is not found" in responses[1].error_message
    assert "length prefix" in responses[2].error_message


def test_server_metadata_and_readiness(client, name):
    metadata = client.get_server_metadata()
    assert metadata.name == "siglip-serve" and metadata.version
    assert sorted(metadata.extensions) == ["classification", "model_configuration", "parameters"]
    assert client.is_server_live() and client.is_server_ready()
    for kind in KINDS:
        assert client.is_model_ready(f"{name}-{kind}") and client.is_model_ready(kind), kind
        assert client.is_model_ready(kind, model_version="1"), kind
        assert not client.is_model_ready(kind, model_version="2"), kind
    for unknown in ("nope", "nope-zero-shot", name, f"{name}-zero-shot-x", "zero-shot-"):
        assert not client.is_model_ready(unknown), unknown


@pytest.mark.parametrize("kind", KINDS)
def test_model_metadata_and_config(client, name, manifest, kind):
    """What perf_analyzer and Triton's clients read: names, versions, tensors, max_batch_size 0
    and a model that is not decoupled."""
    model = f"{name}-{kind}"
    dim = manifest["embedding_dim"]
    inputs = {"zero-shot": ["IMAGE", "TEXT"], "image-embedding": ["IMAGE"], "text-embedding": ["TEXT"]}[kind]
    outputs = {"zero-shot": ["PROBABILITY", "LOGIT"]}.get(kind, ["EMBEDDING"])
    dims = [-1, -1] if kind == "zero-shot" else [-1, dim]

    for asked in (model, kind):
        metadata = client.get_model_metadata(asked, as_json=True)
        assert metadata["name"] == asked and metadata["versions"] == ["1"] and metadata["platform"] == "siglip"
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]] == [
            (input_name, "BYTES", [-1]) for input_name in inputs]
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["outputs"]] == [
            (output, "FP32", dims) for output in outputs]

    config = client.get_model_config(model, model_version="1").config
    assert config.name == model and config.platform == "siglip"
    assert config.max_batch_size == 0
    assert not config.model_transaction_policy.decoupled
    string, fp32 = triton.model_config_pb2.TYPE_STRING, triton.model_config_pb2.TYPE_FP32
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [(n, string, [-1]) for n in inputs]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [(n, fp32, dims) for n in outputs]
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["model"] == name and parameters["embedding_dim"] == str(dim)
    assert parameters["dtype"] == "float32" and parameters["device"] == "cpu"
    assert {"image_convention", "image_processor", "model_id"} <= set(parameters)


def test_unknown_model_is_invalid_argument(client, name, photos, labels):
    for model in ("nope", "nope-zero-shot", name):
        err = failure(lambda model=model: zero_shot(client, model, photos[:1], labels))
        assert err.status() == "StatusCode.INVALID_ARGUMENT", model
        assert f"Request for unknown model: '{model}' is not found" in err.message(), model
        for call in (client.get_model_metadata, client.get_model_config):
            err = failure(lambda call=call, model=model: call(model))
            assert err.status() == "StatusCode.INVALID_ARGUMENT", (call, model)


def test_unknown_version_is_not_found(client, name, photos, labels):
    for version in ("1", ""):
        zero_shot(client, f"{name}-zero-shot", photos[:1], labels, model_version=version)
    err = failure(lambda: zero_shot(client, f"{name}-zero-shot", photos[:1], labels, model_version="2"))
    assert err.status() == "StatusCode.NOT_FOUND"
    err = failure(lambda: client.get_model_metadata("zero-shot", model_version="2"))
    assert err.status() == "StatusCode.NOT_FOUND"


def test_unknown_parameters_are_invalid_argument(client, name, photos, labels):
    for model, parameters in ((f"{name}-zero-shot", {"topk": 2}), (f"{name}-zero-shot", {"image_fromat": "rgb8"}),
                              ("image-embedding", {"top_k": 1})):
        kind = model.removeprefix(f"{name}-")
        err = failure(lambda model=model, kind=kind, parameters=parameters: client.infer(
            model, inputs_for(kind, photos[:1], labels), parameters=parameters, client_timeout=TIMEOUT_S))
        assert err.status() == "StatusCode.INVALID_ARGUMENT", parameters
        assert "unknown parameter" in err.message(), parameters


def test_reserved_parameters_are_accepted(client, name, photos, labels):
    """What tritonclient sends of its own (sequence_*, priority, timeout) changes nothing."""
    plain = zero_shot(client, f"{name}-zero-shot", photos[:1], labels).as_numpy("PROBABILITY")
    reserved = zero_shot(client, f"{name}-zero-shot", photos[:1], labels, priority=3, timeout=10_000_000,
                         sequence_id=7, sequence_start=True, sequence_end=True)
    np.testing.assert_array_equal(reserved.as_numpy("PROBABILITY"), plain)


def malformed(name: str, photo: bytes) -> dict[str, service_pb2.ModelInferRequest]:
    """Requests tritonclient would not send, each with what the error must name."""
    model, text = f"{name}-zero-shot", framed(b"a cat")
    both = [("IMAGE", 1), ("TEXT", 1)]
    overrun = raw_request(model, both, [framed(photo), b"\x10\0\0\0a cat"])
    mixed = raw_request(model, both, [framed(photo), text])
    mixed.inputs[1].contents.bytes_contents.append(b"a cat")
    fp32 = raw_request(model, both, [framed(photo), text])
    fp32.inputs[0].datatype = "FP32"
    listed = raw_request(model, both)
    listed.inputs[0].contents.bytes_contents.append(photo)
    listed.inputs[1].contents.bytes_contents.extend([b"a cat", b"a dog"])
    return {
        "length prefix": overrun,
        "mixes": mixed,
        "datatype": fp32,
        "is missing": raw_request(model, [("IMAGE", 1)], [framed(photo)]),
        "unknown input": raw_request(f"{name}-text-embedding", [("TEXT", 1), ("IMAGE", 1)], [text, framed(photo)]),
        "left over": raw_request(model, [("IMAGE", 1), ("TEXT", 0)], [framed(photo), text]),
        "bytes_contents has 2": listed,
        "need image_width": raw_request(model, both, [framed(photo), text], image_format="rgb8"),
    }


@pytest.mark.parametrize("says", list(malformed("m", b"x")))
def test_malformed_requests_are_invalid_argument(oip, name, photos, says):
    request = malformed(name, photos[0])[says]
    err = rpc_failure(lambda: oip.ModelInfer(request, timeout=TIMEOUT_S))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert says in err.details()


def test_listed_bytes_contents_are_accepted(oip, client, name, photos, labels):
    """Inputs in contents.bytes_contents (not raw) answer as tritonclient's raw ones do."""
    request = raw_request(f"{name}-zero-shot", [("IMAGE", 1), ("TEXT", len(labels))], request_id="listed")
    request.inputs[0].contents.bytes_contents.append(photos[0])
    request.inputs[1].contents.bytes_contents.extend(label.encode() for label in labels)
    response = oip.ModelInfer(request, timeout=TIMEOUT_S)
    assert response.id == "listed" and response.model_version == "1"
    got = triton.InferResult(response).as_numpy("PROBABILITY")
    np.testing.assert_array_equal(got, zero_shot(client, f"{name}-zero-shot", photos[:1], labels).as_numpy("PROBABILITY"))


def test_a_corrupt_image_is_invalid_argument(client, name, labels):
    err = failure(lambda: zero_shot(client, f"{name}-zero-shot", [b"not an image at all"], labels))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize("method", ["get_model_repository_index", "get_inference_statistics",
                                    "get_system_shared_memory_status", "get_cuda_shared_memory_status",
                                    "get_trace_settings", "get_log_settings"])
def test_unimplemented_methods(client, method):
    err = failure(getattr(client, method))
    assert err.status() == "StatusCode.UNIMPLEMENTED", err


def test_load_and_unload_are_unimplemented(client, name):
    for call in (client.load_model, client.unload_model):
        err = failure(lambda call=call: call(f"{name}-zero-shot"))
        assert err.status() == "StatusCode.UNIMPLEMENTED", err


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    """name -> (certificate, key) PEM paths, as test_tls.py makes them."""
    folder = tmp_path_factory.mktemp("oip-pki")
    ca = make_ca(folder, "test-ca")
    return {
        "ca": ca,
        "server": make_leaf(folder, "localhost", ca, SERVER_EXT),
        "client": make_leaf(folder, "python-client", ca, CLIENT_EXT),
    }


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def secure_server(server_bin, model_dir, pki, token, tmp_path_factory):
    """Mutual TLS and bearer tokens."""
    folder = tmp_path_factory.mktemp("oip-secure")
    tokens = folder / "tokens"
    tokens.write_text(f"{token} oip\n")
    flags = ["--tls-cert", pki["server"][0], "--tls-key", pki["server"][1], "--tls-client-ca", pki["ca"][0],
             "--auth-tokens-file", tokens]
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"][0].read_bytes(), private_key=pki["client"][1].read_bytes(),
                                         certificate_chain=pki["client"][0].read_bytes())
    yield from run_server(server_bin, model_dir, folder, flags, lambda addr: grpc.secure_channel(addr, creds))


@pytest.fixture(scope="module")
def secure_client(secure_server, pki):
    with triton.InferenceServerClient(secure_server, ssl=True, root_certificates=str(pki["ca"][0]),
                                      private_key=str(pki["client"][1]),
                                      certificate_chain=str(pki["client"][0])) as client:
        yield client


def test_tls_and_token_are_served(secure_client, photos, labels, token):
    headers = {"authorization": f"Bearer {token}"}
    assert secure_client.is_server_ready(headers=headers)
    result = secure_client.infer("zero-shot", inputs_for("zero-shot", photos[:1], labels), headers=headers,
                                 request_id="tls", client_timeout=TIMEOUT_S)
    assert result.get_response().id == "tls" and result.as_numpy("PROBABILITY").shape == (1, len(labels))
    answers = queue.Queue()
    secure_client.start_stream(lambda result, error: answers.put((result, error)), headers=headers)
    try:
        secure_client.async_stream_infer("text-embedding", inputs_for("text-embedding", [], labels), request_id="tls-stream")
        result, error = answers.get(timeout=TIMEOUT_S)
    finally:
        secure_client.stop_stream()
    assert error is None, error
    assert result.get_response().id == "tls-stream"


@pytest.mark.parametrize("sent", ["none", "wrong"])
def test_without_the_token_is_unauthenticated(secure_client, photos, labels, token, sent):
    wrong = secrets.token_urlsafe(32)
    headers = {"authorization": f"Bearer {wrong}"} if sent == "wrong" else None
    for call in (lambda: secure_client.infer("zero-shot", inputs_for("zero-shot", photos[:1], labels), headers=headers,
                                             client_timeout=TIMEOUT_S),
                 lambda: secure_client.get_model_metadata("zero-shot", headers=headers),
                 lambda: secure_client.is_server_live(headers=headers)):
        err = failure(call)
        assert err.status() == "StatusCode.UNAUTHENTICATED", err
        assert token not in str(err) and wrong not in str(err)


def test_our_protos_are_wire_compatible_with_tritonclients():
    """proto/inference against the descriptors tritonclient's wheel ships (python/check_oip_proto.py)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "python" / "check_oip_proto.py"
    checked = subprocess.run([sys.executable, str(script), "--quiet"], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
