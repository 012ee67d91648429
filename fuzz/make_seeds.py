"""Writes the committed seed corpus, fuzz/seeds/<target>/ (a few KB): tiny images in every
accepted format and variant the decoders branch on, and encoded requests of each kind.

    .venv/bin/python fuzz/make_seeds.py
"""

import io
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
from tritonclient.grpc import service_pb2 as oip  # noqa: E402
from tritonclient.utils import serialize_byte_tensor  # noqa: E402

from siglip_stubs import pb2  # noqa: E402


def model_infer(model: str, inputs: dict, parameters: dict | None = None, raw: bool = True) -> "oip.ModelInferRequest":
    """A ModelInferRequest with BYTES `inputs` ({name: [bytes]}), framed raw as tritonclient
    sends them, or listed in contents.bytes_contents."""
    import numpy as np

    request = oip.ModelInferRequest(model_name=model, id=model)
    for name, elements in inputs.items():
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[len(elements)])
        if raw:
            request.raw_input_contents.append(serialize_byte_tensor(np.array(elements, dtype=np.object_)).tobytes())
        else:
            tensor.contents.bytes_contents.extend(elements)
    for key, value in (parameters or {}).items():
        if isinstance(value, str):
            request.parameters[key].string_param = value
        elif isinstance(value, float):
            request.parameters[key].double_param = value
        else:
            request.parameters[key].int64_param = value
    return request


def picture(mode: str) -> Image.Image:
    rgba = Image.new("RGBA", (7, 5))
    rgba.putdata([(x * 36, y * 50, (x + y) * 20, 255 if (x + y) % 3 else 0) for y in range(5) for x in range(7)])
    return rgba.convert(mode)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


IMAGES = {
    "baseline.jpg": encode(picture("RGB"), "JPEG", quality=50),
    "progressive.jpg": encode(picture("RGB"), "JPEG", quality=50, progressive=True),
    "gray.jpg": encode(picture("L"), "JPEG"),
    "cmyk.jpg": encode(picture("CMYK"), "JPEG"),
    "exif6.jpg": encode(picture("RGB"), "JPEG", exif=exif_orientation(6)),
    "rgba.png": encode(picture("RGBA"), "PNG"),
    "palette_trns.png": encode(picture("RGB").convert("P"), "PNG", transparency=0),
    "gray16.png": encode(picture("L").convert("I;16"), "PNG"),
    "la.png": encode(picture("LA"), "PNG"),
    "transparent.gif": encode(picture("RGB").convert("P"), "GIF", transparency=1),
    "lossy.webp": encode(picture("RGB"), "WEBP", quality=50),
    "lossless_alpha.webp": encode(picture("RGBA"), "WEBP", lossless=True, exif=exif_orientation(8)),
    "rgba.bmp": encode(picture("RGBA"), "BMP"),
    "rgb.bmp": encode(picture("RGB"), "BMP"),
    "lzw.tiff": encode(picture("RGB"), "TIFF", compression="tiff_lzw"),
    "rgba.tiff": encode(picture("RGBA"), "TIFF"),
}


def write(target: str, name: str, data: bytes) -> None:
    folder = HERE / "seeds" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def main() -> None:
    # decode: the convention byte (even: processor, odd: pipeline), then the file.
    for i, (name, data) in enumerate(IMAGES.items()):
        write("decode", name, bytes([i % 2]) + data)

    # request: the message kind byte (0 Classify, 1 Upload, 2 Stream, 3 EmbedImage, 4 ModelInfer),
    # then the message.
    png, jpg = IMAGES["rgba.png"], IMAGES["progressive.jpg"]
    options = pb2.ClassifyOptions(threshold=0.1, top_k=2)
    texts = ["a photo of a cat", "a dog"]
    raw = pb2.RawFrame(width=2, height=1, format=pb2.PIXEL_FORMAT_RGBA8, data=bytes(range(8)))
    requests = {
        "classify_png": (0, pb2.ClassifyRequest(image=pb2.Image(encoded=png), texts=texts, options=options)),
        "classify_raw": (0, pb2.ClassifyRequest(image=pb2.Image(raw=raw), texts=texts)),
        "upload_header": (1, pb2.UploadRequest(header=pb2.UploadHeader(texts=texts, options=options, total_bytes=len(jpg)))),
        "stream_config": (2, pb2.StreamRequest(config=pb2.StreamConfig(texts=texts, mode=pb2.DELIVERY_MODE_LATEST_ONLY))),
        "stream_frame": (2, pb2.StreamRequest(frame=pb2.Frame(frame_id=7, timestamp_us=1, image=pb2.Image(encoded=jpg)))),
        "stream_chunk": (2, pb2.StreamRequest(frame=pb2.Frame(frame_id=8, chunk=IMAGES["lossy.webp"], last=True))),
        "stream_watch": (2, pb2.StreamRequest(config=pb2.StreamConfig(
            texts=texts, policy=pb2.FramePolicy(max_fps=12.5, max_age_ms=200), smoothing=pb2.Smoothing(median_k=4),
            events=pb2.Events(enter_threshold=0.6, leave_threshold=0.4, min_frames=3, events_only=True, heartbeat_ms=1000),
            regions=[pb2.Region(x=1, y=2, width=30, height=40)]))),
        "stream_regions": (2, pb2.StreamRequest(frame=pb2.Frame(frame_id=9, timestamp_us=2, image=pb2.Image(encoded=jpg),
                                                                regions=[pb2.Region(x=0, y=0, width=8, height=8),
                                                                         pb2.Region(x=3, y=5, width=2, height=1)]))),
        "embed_image": (3, pb2.EmbedImageRequest(images=[pb2.Image(encoded=IMAGES["rgb.bmp"]), pb2.Image(raw=raw)])),
        "model_infer_zero_shot": (4, model_infer("zero-shot", {"IMAGE": [png, jpg], "TEXT": [t.encode() for t in texts]},
                                                 {"threshold": 0.1, "top_k": 2, "triton_x": 1})),
        "model_infer_listed": (4, model_infer("m-text-embedding", {"TEXT": [t.encode() for t in texts]}, raw=False)),
        "model_infer_rgba8": (4, model_infer("m-image-embedding", {"IMAGE": [bytes(range(8))]},
                                             {"image_format": "rgba8", "image_width": 2, "image_height": 1})),
    }
    for name, (kind, message) in requests.items():
        write("request", name, bytes([kind]) + message.SerializeToString())

    # reassembly: bytes that `arbitrary` reads as limits and a sequence of operations.
    write("reassembly", "ops", bytes(range(256)))
    write("reassembly", "small_limits", bytes([8, 0, 16, 0]) + bytes(range(1, 200, 3)) * 2)


if __name__ == "__main__":
    main()
