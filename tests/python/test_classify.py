"""The three classify RPCs agree with each other and with the core runtime, on real photos."""

import math
import re
import subprocess

import numpy as np
import pytest

PHOTOS = ["chelsea_progressive.jpg", "coffee_2000x1500.jpg", "rocket.bmp", "astronaut_384.png"]
UPLOAD_CHUNK = 64 * 1024
FRAME_CHUNK = 16 * 1024
PROB_TOL = 1e-5
CLI_LOGIT_TOL = 2e-3  # the CLI prints logits with 3 decimals


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def by_label(scores) -> dict[str, tuple[float, float]]:
    return {score.label: (score.probability, score.logit) for score in scores}


@pytest.fixture(scope="module")
def photos(assets) -> dict[str, bytes]:
    return {name: (assets / "images" / name).read_bytes() for name in PHOTOS}


def classify_unary(siglip, pb2, data, labels):
    return siglip.Classify(pb2.ClassifyRequest(image=pb2.Image(encoded=data), texts=labels), timeout=30).scores


def classify_upload(siglip, pb2, data, labels):
    header = pb2.UploadHeader(texts=labels, total_bytes=len(data))
    requests = [pb2.UploadRequest(header=header)] + [pb2.UploadRequest(chunk=chunk) for chunk in chunks(data, UPLOAD_CHUNK)]
    return siglip.Upload(iter(requests), timeout=30).scores


def stream_frames(pb2, photos: list[bytes]):
    """Each photo twice: whole, then split into chunks."""
    frame_id = 0
    for data in photos:
        yield pb2.StreamRequest(frame=pb2.Frame(frame_id=frame_id, timestamp_us=1000 * frame_id,
                                                image=pb2.Image(encoded=data)))
        frame_id += 1
        parts = chunks(data, FRAME_CHUNK)
        for i, part in enumerate(parts):
            yield pb2.StreamRequest(frame=pb2.Frame(frame_id=frame_id, timestamp_us=1000 * frame_id, chunk=part,
                                                    last=i == len(parts) - 1))
        frame_id += 1


@pytest.fixture(scope="module")
def results(stubs, siglip, photos, labels) -> dict[str, list]:
    """Scores per RPC, one entry per photo in PHOTOS order."""
    pb2, _ = stubs
    config = pb2.StreamRequest(config=pb2.StreamConfig(texts=labels, mode=pb2.DELIVERY_MODE_EVERY_FRAME))
    requests = [config, *stream_frames(pb2, list(photos.values()))]
    responses = list(siglip.Stream(iter(requests), timeout=60))
    assert [response.frame_id for response in responses] == list(range(2 * len(PHOTOS)))
    assert [response.timestamp_us for response in responses] == [1000 * response.frame_id for response in responses]
    assert not any(response.HasField("error") for response in responses), [response.error for response in responses]
    return {
        "Classify": [classify_unary(siglip, pb2, data, labels) for data in photos.values()],
        "Upload": [classify_upload(siglip, pb2, data, labels) for data in photos.values()],
        "Stream": [response.scores for response in responses[0::2]],
        "Stream (chunked frames)": [response.scores for response in responses[1::2]],
    }


def test_scores_are_complete_and_ordered(results, labels):
    for rpc, per_photo in results.items():
        for scores in per_photo:
            assert sorted(score.index for score in scores) == list(range(len(labels))), rpc
            assert all(labels[score.index] == score.label for score in scores), rpc
            probabilities = [score.probability for score in scores]
            assert probabilities == sorted(probabilities, reverse=True), rpc
            for score in scores:
                assert score.probability == pytest.approx(1 / (1 + math.exp(-score.logit)), abs=PROB_TOL), rpc


@pytest.mark.parametrize("rpc", ["Upload", "Stream", "Stream (chunked frames)"])
def test_rpcs_agree_with_classify(results, rpc):
    for photo, expected, got in zip(PHOTOS, results["Classify"], results[rpc], strict=True):
        expected, got = by_label(expected), by_label(got)
        for label, (probability, _) in expected.items():
            assert got[label][0] == pytest.approx(probability, abs=PROB_TOL), (photo, label)


def test_matches_embeddings(stubs, siglip, photos, labels, manifest, results):
    """probability = sigmoid(exp(logit_scale) * <image, text> + logit_bias) from EmbedImage/EmbedText."""
    pb2, _ = stubs
    images = siglip.EmbedImage(pb2.EmbedImageRequest(images=[pb2.Image(encoded=data) for data in photos.values()]), timeout=30)
    texts = siglip.EmbedText(pb2.EmbedTextRequest(texts=labels), timeout=30)
    image_emb = np.array([embedding.values for embedding in images.embeddings], dtype=np.float64)
    text_emb = np.array([embedding.values for embedding in texts.embeddings], dtype=np.float64)
    assert image_emb.shape == (len(PHOTOS), manifest["embedding_dim"])
    assert text_emb.shape == (len(labels), manifest["embedding_dim"])
    np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_emb, axis=1), 1, atol=1e-5)

    logits = math.exp(manifest["logit_scale"]) * image_emb @ text_emb.T + manifest["logit_bias"]
    probabilities = 1 / (1 + np.exp(-logits))
    for row, (photo, scores) in enumerate(zip(PHOTOS, results["Classify"], strict=True)):
        for score in scores:
            assert score.probability == pytest.approx(probabilities[row, score.index], abs=PROB_TOL), (photo, score.label)
            assert score.logit == pytest.approx(logits[row, score.index], abs=1e-4), (photo, score.label)


def parse_cli(output: str) -> dict[str, dict[str, float]]:
    """`siglip-serve classify` output -> {image file name: {label: logit}}."""
    parsed, current = {}, None
    for line in output.splitlines():
        if header := re.match(r"^(\S.*) \(\d+x\d+\)$", line):
            current = parsed.setdefault(header.group(1).rsplit("/", 1)[-1], {})
        elif score := re.match(r"^\s+[\d.]+%\s+logit\s+(-?[\d.]+)\s+(.+)$", line):
            current[score.group(2)] = float(score.group(1))
    return parsed


def test_matches_core_runtime_cli(server_bin, model_dir, assets, labels, results):
    cmd = [str(server_bin), "classify", "--model-dir", str(model_dir), "--dtype", "float32",
           *(str(assets / "images" / photo) for photo in PHOTOS), "--labels", *labels]
    cli = parse_cli(subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout)
    assert set(cli) == set(PHOTOS)
    for photo, scores in zip(PHOTOS, results["Classify"], strict=True):
        assert set(cli[photo]) == set(labels), photo
        for score in scores:
            assert score.logit == pytest.approx(cli[photo][score.label], abs=CLI_LOGIT_TOL), (photo, score.label)
