"""Stream a video file frame by frame over siglip-serve's Stream RPC and print each frame's top labels.

    python stream_video.py --addr 127.0.0.1:50051 --video pan.mp4 [--mode every|latest] [--fps 15] [--raw]
"""

import argparse
import io
import sys
import time
from collections.abc import Iterator

import av
import grpc

from siglip_stubs import pb2, pb2_grpc

LABELS = ["a photo of an astronaut", "a photo of a cat", "a photo of a cup of coffee", "a photo of a rocket",
          "a photo of a dog"]
MODES = {"every": pb2.DELIVERY_MODE_EVERY_FRAME, "latest": pb2.DELIVERY_MODE_LATEST_ONLY}


def encode(frame: av.VideoFrame, raw: bool) -> pb2.Image:
    if raw:
        pixels = frame.to_ndarray(format="rgb24")
        return pb2.Image(raw=pb2.RawFrame(width=frame.width, height=frame.height, format=pb2.PIXEL_FORMAT_RGB8,
                                          data=pixels.tobytes()))
    buf = io.BytesIO()
    frame.to_image().save(buf, format="JPEG", quality=90)
    return pb2.Image(encoded=buf.getvalue())


def requests(args: argparse.Namespace, sent_at: dict[int, float]) -> Iterator[pb2.StreamRequest]:
    """The configuration, then one frame per video frame, paced at --fps; records when each frame left."""
    config = pb2.StreamConfig(texts=args.labels, mode=MODES[args.mode], options=pb2.ClassifyOptions(top_k=3))
    yield pb2.StreamRequest(config=config)
    with av.open(args.video) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0) if args.fps is None else args.fps
        start = time.monotonic()
        for frame_id, frame in enumerate(container.decode(stream)):
            if fps > 0:
                time.sleep(max(0.0, start + frame_id / fps - time.monotonic()))
            timestamp_us = round(frame.time * 1e6) if frame.time is not None else 0
            image = encode(frame, args.raw)
            sent_at[frame_id] = time.monotonic()
            yield pb2.StreamRequest(frame=pb2.Frame(frame_id=frame_id, timestamp_us=timestamp_us, image=image))


def describe(response: pb2.StreamResponse, latency_ms: float) -> str:
    head = f"frame {response.frame_id:4d}  t={response.timestamp_us / 1e6:6.3f}s"
    tail = f"skipped={response.skipped_frames}  latency={latency_ms:6.1f} ms"
    if response.HasField("error"):
        return f"{head}  error {response.error.code}: {response.error.message}  {tail}"
    top = "  ".join(f"{s.probability:6.1%} {s.label}" for s in response.scores)
    return f"{head}  {top}  {tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--video", required=True, help="any file PyAV (FFmpeg) can decode")
    parser.add_argument("--labels", nargs="+", default=LABELS)
    parser.add_argument("--mode", choices=MODES, default="every", help="latest: drop frames the server cannot keep up with")
    parser.add_argument("--fps", type=float, help="frames sent per second (default: the video's rate; 0: as fast as possible)")
    parser.add_argument("--raw", action="store_true", help="send raw RGB8 pixels instead of JPEG")
    args = parser.parse_args()

    sent_at: dict[int, float] = {}
    results = skipped = 0
    with grpc.insecure_channel(args.addr) as channel:
        try:
            for response in pb2_grpc.SiglipStub(channel).Stream(requests(args, sent_at)):
                print(describe(response, (time.monotonic() - sent_at[response.frame_id]) * 1e3), flush=True)
                results += 1
                skipped += response.skipped_frames
        except grpc.RpcError as err:
            print(f"stream failed: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(f"{len(sent_at)} frames sent, {results} results, {skipped} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
