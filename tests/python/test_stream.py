"""Stream semantics: label-set replacement, latest-only dropping, raw frames, frame policy, regions."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

PHOTO = "coffee_444.jpg"


@pytest.fixture(scope="module")
def photo(assets) -> bytes:
    return (assets / "images" / PHOTO).read_bytes()


def config(pb2, texts, mode, top_k=0):
    return pb2.StreamRequest(config=pb2.StreamConfig(texts=texts, mode=mode, options=pb2.ClassifyOptions(top_k=top_k)))


def frame(pb2, frame_id, image):
    return pb2.StreamRequest(frame=pb2.Frame(frame_id=frame_id, image=image))


def test_config_replacement(stubs, siglip, photo, labels):
    pb2, _ = stubs
    image = pb2.Image(encoded=photo)
    every = pb2.DELIVERY_MODE_EVERY_FRAME
    requests = [config(pb2, labels, every), frame(pb2, 0, image), config(pb2, labels[:2], every, top_k=1), frame(pb2, 1, image)]
    first, second = siglip.Stream(iter(requests), timeout=30)
    assert second.config_generation == first.config_generation + 1
    assert len(first.scores) == len(labels)
    (top,) = second.scores
    assert top.label == max((score for score in first.scores if score.index < 2), key=lambda score: score.probability).label


def test_latest_only_accounts_for_every_frame(stubs, siglip, photo, labels):
    pb2, _ = stubs
    image = pb2.Image(encoded=photo)
    sent = 40
    requests = [config(pb2, labels, pb2.DELIVERY_MODE_LATEST_ONLY)] + [frame(pb2, i, image) for i in range(sent)]
    responses = list(siglip.Stream(iter(requests), timeout=60))
    ids = [response.frame_id for response in responses]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[-1] == sent - 1, "the newest frame is never dropped"
    assert len(responses) + sum(response.skipped_frames for response in responses) == sent


def test_raw_frames_match_encoded(stubs, siglip, assets, labels):
    """Raw RGB8 and opaque RGBA8 frames classify like the PNG they came from; a translucent RGBA8
    frame classifies like a PNG of what transformers' own `convert_to_rgb` makes of it (the
    default, processor, convention composites it onto white)."""
    from transformers.image_transforms import convert_to_rgb

    pb2, _ = stubs
    encoded = (assets / "images" / "coffee_rgb8.png").read_bytes()
    rgb = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    height, width = rgb.shape[:2]
    opaque = np.dstack([rgb, np.full((height, width), 255, np.uint8)])
    translucent = np.dstack([rgb, np.full((height, width), 7, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(convert_to_rgb(translucent, return_numpy=True)).save(buf, format="PNG")

    def raw(data: np.ndarray, fmt: int) -> object:
        return pb2.Image(raw=pb2.RawFrame(width=width, height=height, format=fmt, data=data.tobytes()))

    images = [
        pb2.Image(encoded=encoded),
        raw(rgb, pb2.PIXEL_FORMAT_RGB8),
        raw(opaque, pb2.PIXEL_FORMAT_RGBA8),
        pb2.Image(encoded=buf.getvalue()),
        raw(translucent, pb2.PIXEL_FORMAT_RGBA8),
    ]
    requests = [config(pb2, labels, pb2.DELIVERY_MODE_EVERY_FRAME)] + [frame(pb2, i, image) for i, image in enumerate(images)]
    photo, from_rgb, from_rgba, white, from_translucent = siglip.Stream(iter(requests), timeout=30)
    assert [score.label for score in white.scores] != [score.label for score in photo.scores], "compositing changed nothing"
    for expected, raw_result in ((photo, from_rgb), (photo, from_rgba), (white, from_translucent)):
        assert not raw_result.HasField("error"), raw_result.error
        for want, got in zip(expected.scores, raw_result.scores, strict=True):
            assert got.label == want.label
            assert got.probability == pytest.approx(want.probability, abs=1e-5)


def test_max_fps_and_drop_counts(stubs, siglip, photo, labels):
    """29 frames 10 ms apart against max_fps 25: every fourth frame is answered, and each result
    counts the three frames before it under `rate`."""
    pb2, _ = stubs
    image = pb2.Image(encoded=photo)
    watch = pb2.StreamConfig(texts=labels, mode=pb2.DELIVERY_MODE_EVERY_FRAME, policy=pb2.FramePolicy(max_fps=25))
    requests = [pb2.StreamRequest(config=watch)]
    requests += [pb2.StreamRequest(frame=pb2.Frame(frame_id=k, timestamp_us=k * 10_000, image=image)) for k in range(29)]
    responses = list(siglip.Stream(iter(requests), timeout=60))
    assert [r.frame_id for r in responses] == list(range(0, 29, 4))
    assert [r.dropped.rate for r in responses] == [0] + [3] * 7
    assert all(r.skipped_frames == r.dropped.rate for r in responses)


CHUNK = 1 << 20


def frame_messages(pb2, frame_id, data, timestamp_us):
    """A frame of encoded `data`: one message, or chunks of 1 MiB where it is larger than that (past
    the server's message limit)."""
    if len(data) <= CHUNK:
        return [pb2.StreamRequest(frame=pb2.Frame(frame_id=frame_id, timestamp_us=timestamp_us,
                                                  image=pb2.Image(encoded=data)))]
    parts = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    return [pb2.StreamRequest(frame=pb2.Frame(frame_id=frame_id, timestamp_us=timestamp_us, chunk=part,
                                              last=i == len(parts) - 1))
            for i, part in enumerate(parts)]


def tiled_jpeg(data: bytes, tiles: int) -> bytes:
    """`data` (an encoded photo) tiled `tiles`×`tiles`, as a JPEG: about the same decoding cost per pixel."""
    photo = Image.open(io.BytesIO(data)).convert("RGB")
    out = Image.new("RGB", (photo.width * tiles, photo.height * tiles))
    for x in range(tiles):
        for y in range(tiles):
            out.paste(photo, (x * photo.width, y * photo.height))
    buf = io.BytesIO()
    out.save(buf, format="JPEG")
    return buf.getvalue()


def test_a_frame_that_cannot_be_ready_in_time_is_dropped_as_stale(stubs, siglip, assets, labels):
    """max_age_ms is 1, the least there is; the frame is a 3-megapixel photo, or the photo tiled until
    this server takes at least 4 ms to preprocess it (measured here), so that no frame can be ready in
    time whatever the decoder's speed."""
    pb2, _ = stubs
    photo = (assets / "images" / "coffee_2000x1500.jpg").read_bytes()
    big, tiles = photo, 1
    while True:
        plain = pb2.StreamConfig(texts=labels, mode=pb2.DELIVERY_MODE_EVERY_FRAME)
        requests = [pb2.StreamRequest(config=plain)]
        requests += [m for k in range(2) for m in frame_messages(pb2, k, big, k * 40_000)]
        took_us = min(r.timings.preprocess_us for r in siglip.Stream(iter(requests), timeout=60))
        if took_us >= 4_000:
            break
        # 2000×1500 tiled 4×4 is 48 megapixels, within the default 50.
        assert tiles < 4, f"premise broken: the photo tiled {tiles}×{tiles} is preprocessed in {took_us} µs, under 4 ms"
        tiles += 1
        big = tiled_jpeg(photo, tiles)
    watch = pb2.StreamConfig(texts=labels, mode=pb2.DELIVERY_MODE_EVERY_FRAME, policy=pb2.FramePolicy(max_age_ms=1))
    requests = [pb2.StreamRequest(config=watch)]
    requests += [m for k in range(3) for m in frame_messages(pb2, k, big, k * 40_000)]
    (last,) = siglip.Stream(iter(requests), timeout=60)
    assert last.heartbeat and not last.scores
    assert (last.frame_id, last.dropped.stale) == (2, 3)


def test_a_region_matches_transformers_on_pillows_crop(stubs, siglip, assets, photo, labels, manifest, tmp_path):
    """The seed's path on `Image.open(f).crop(box)`, computed in this run by transformers through the
    committed reference tooling (`siglip_export.reference`), in a process of its own: torch and grpcio
    in one process do not end cleanly."""
    from safetensors.numpy import load_file

    pb2, _ = stubs
    box = pb2.Region(x=101, y=37, width=250, height=180)
    out = tmp_path / "crop.safetensors"
    code = ("import json, sys; from pathlib import Path; from siglip_export.reference import reference; "
            "reference(sys.argv[1], [Path(sys.argv[2])], json.loads(sys.argv[3]), Path(sys.argv[4]), "
            "boxes=[tuple(json.loads(sys.argv[5]))])")
    args = [manifest["source"]["checkpoint"], str(assets / "images" / PHOTO), json.dumps(labels), str(out),
            json.dumps([box.x, box.y, box.width, box.height])]
    subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, timeout=300)
    want = load_file(str(out))["probs"][0].tolist()
    watch = pb2.StreamConfig(texts=labels, mode=pb2.DELIVERY_MODE_EVERY_FRAME, regions=[box])
    requests = [pb2.StreamRequest(config=watch), frame(pb2, 0, pb2.Image(encoded=photo))]
    (result,) = siglip.Stream(iter(requests), timeout=30)
    (region,) = result.regions
    assert region.region == box and not result.scores
    got = {score.index: score.probability for score in region.scores}
    assert [got[i] for i in range(len(labels))] == pytest.approx(want, abs=1e-6)
