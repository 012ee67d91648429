"""Stream a video file frame by frame over siglip-serve's Stream RPC and print each frame's top labels.

    python stream_video.py --addr 127.0.0.1:50051 --video pan.mp4 [--mode every|latest] [--fps 15] [--raw]
        [--max-fps F] [--max-age-ms N] [--smooth ema:ALPHA|median:K] [--events ENTER:LEAVE[:MIN]]
        [--events-only] [--heartbeat-ms N] [--region x,y,w,h ...]
"""

import argparse
import io
import sys
import time
from collections.abc import Iterator, Sequence

import av
import grpc

from siglip_stubs import pb2, pb2_grpc

LABELS = ["a photo of an astronaut", "a photo of a cat", "a photo of a cup of coffee", "a photo of a rocket",
          "a photo of a dog"]
MODES = {"every": pb2.DELIVERY_MODE_EVERY_FRAME, "latest": pb2.DELIVERY_MODE_LATEST_ONLY}
EVENT_NAMES = {pb2.EVENT_KIND_ENTER: "ENTER", pb2.EVENT_KIND_LEAVE: "LEAVE"}


def smoothing(text: str) -> pb2.Smoothing:
    """`ema:ALPHA` or `median:K` (the server checks the ranges)."""
    method, _, value = text.partition(":")
    try:
        if method == "ema":
            return pb2.Smoothing(ema_alpha=float(value))
        if method == "median":
            return pb2.Smoothing(median_k=int(value))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: expected ema:ALPHA (e.g. ema:0.3) or median:K (e.g. median:5)")


def events(text: str) -> pb2.Events:
    """`ENTER:LEAVE[:MIN]`: thresholds on the (smoothed) probability, and the frames a change must last."""
    parts = text.split(":")
    try:
        if len(parts) in (2, 3):
            return pb2.Events(enter_threshold=float(parts[0]), leave_threshold=float(parts[1]),
                              min_frames=int(parts[2]) if len(parts) == 3 else 0)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: expected ENTER:LEAVE or ENTER:LEAVE:MIN (e.g. 0.6:0.4:3)")


def region(text: str) -> pb2.Region:
    """`x,y,w,h` in pixels of the decoded frame."""
    try:
        x, y, width, height = (int(v) for v in text.split(","))
        if min(x, y, width, height) >= 0:
            return pb2.Region(x=x, y=y, width=width, height=height)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: expected x,y,w,h (non-negative pixels, e.g. 0,0,160,120)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--video", required=True, help="any file PyAV (FFmpeg) can decode")
    parser.add_argument("--labels", nargs="+", default=LABELS)
    parser.add_argument("--mode", choices=MODES, default="every", help="latest: drop frames the server cannot keep up with")
    parser.add_argument("--fps", type=float, help="frames sent per second (default: the video's rate; 0: as fast as possible)")
    parser.add_argument("--raw", action="store_true", help="send raw RGB8 pixels instead of JPEG")
    watch = parser.add_argument_group("what the server watches (judged by the video's timestamps)")
    watch.add_argument("--max-fps", type=float, default=0, help="skip frames faster than this, in video time (0: all)")
    watch.add_argument("--max-age-ms", type=int, default=0, help="drop a frame whose inference has not started this long "
                       "after it arrived (0: never)")
    watch.add_argument("--smooth", type=smoothing, help="per-label smoothing: ema:ALPHA or median:K")
    watch.add_argument("--events", type=events, help="ENTER/LEAVE events: ENTER:LEAVE[:MIN] thresholds and run length")
    watch.add_argument("--events-only", action="store_true", help="with --events: a message only when an event fires, "
                       "plus heartbeats")
    watch.add_argument("--heartbeat-ms", type=int, help="with --events-only: heartbeat interval in video time (default 5000)")
    watch.add_argument("--region", type=region, action="append", default=[], dest="regions",
                       help="classify this rectangle x,y,w,h instead of the whole frame (repeatable)")
    args = parser.parse_args(argv)
    if args.events_only and args.events is None:
        parser.error("--events-only needs --events ENTER:LEAVE[:MIN]")
    if args.heartbeat_ms is not None and not args.events_only:
        parser.error("--heartbeat-ms needs --events-only")
    return args


def stream_config(args: argparse.Namespace) -> pb2.StreamConfig:
    """The stream's configuration; fields of flags not given stay unset (plain per-frame results)."""
    config = pb2.StreamConfig(texts=args.labels, mode=MODES[args.mode], options=pb2.ClassifyOptions(top_k=3),
                              regions=args.regions)
    if args.max_fps or args.max_age_ms:
        config.policy.CopyFrom(pb2.FramePolicy(max_fps=args.max_fps, max_age_ms=args.max_age_ms))
    if args.smooth is not None:
        config.smoothing.CopyFrom(args.smooth)
    if args.events is not None:
        config.events.CopyFrom(args.events)
        config.events.events_only = args.events_only
        config.events.heartbeat_ms = args.heartbeat_ms or 0
    return config


def encode(frame: av.VideoFrame, raw: bool) -> pb2.Image:
    if raw:
        pixels = frame.to_ndarray(format="rgb24")
        return pb2.Image(raw=pb2.RawFrame(width=frame.width, height=frame.height, format=pb2.PIXEL_FORMAT_RGB8,
                                          data=pixels.tobytes()))
    buf = io.BytesIO()
    frame.to_image().save(buf, format="JPEG", quality=90)
    return pb2.Image(encoded=buf.getvalue())


def timestamp_us(frame: av.VideoFrame, frame_id: int, rate: float) -> int:
    """The frame's presentation time; without one, its position at the video's rate. --max-fps and
    heartbeats are judged by it, so it must advance with the video."""
    if frame.time is not None:
        return round(frame.time * 1e6)
    return round(frame_id * 1e6 / rate) if rate > 0 else 0


def requests(args: argparse.Namespace, sent_at: dict[int, float]) -> Iterator[pb2.StreamRequest]:
    """The configuration, then one frame per video frame, paced at --fps; records when each frame left."""
    yield pb2.StreamRequest(config=stream_config(args))
    with av.open(args.video) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 0)
        fps = rate if args.fps is None else args.fps
        start = time.monotonic()
        for frame_id, frame in enumerate(container.decode(stream)):
            if fps > 0:
                time.sleep(max(0.0, start + frame_id / fps - time.monotonic()))
            image = encode(frame, args.raw)
            sent_at[frame_id] = time.monotonic()
            yield pb2.StreamRequest(frame=pb2.Frame(frame_id=frame_id, timestamp_us=timestamp_us(frame, frame_id, rate),
                                                    image=image))


def top(scores) -> str:
    def one(s: pb2.LabelScore) -> str:
        smoothed = f" (~{s.smoothed_probability:6.1%})" if s.HasField("smoothed_probability") else ""
        return f"{s.probability:6.1%}{smoothed} {s.label}"

    return "  ".join(one(s) for s in scores)


def drops(dropped: pb2.DropCounts) -> str:
    """The reasons beyond `superseded` (which skipped= already covers), when any is non-zero."""
    if not (dropped.rate or dropped.stale or dropped.error):
        return ""
    reasons = ("superseded", "rate", "stale", "error")
    return "  dropped " + " ".join(f"{r}={getattr(dropped, r)}" for r in reasons if getattr(dropped, r))


def describe(response: pb2.StreamResponse, latency_ms: float) -> str:
    head = f"frame {response.frame_id:4d}  t={response.timestamp_us / 1e6:6.3f}s"
    tail = f"skipped={response.skipped_frames}{drops(response.dropped)}  latency={latency_ms:6.1f} ms"
    if response.HasField("error"):
        return f"{head}  error {response.error.code}: {response.error.message}  {tail}"
    if response.heartbeat:
        return f"{head}  heartbeat  classified={response.classified_frames}  {tail}"
    if response.regions:
        per_region = "  |  ".join(f"region {r.index}: {top(r.scores)}" for r in response.regions)
        return f"{head}  {per_region}  {tail}"
    return f"{head}  {top(response.scores)}  {tail}"


def describe_event(event: pb2.LabelEvent) -> str:
    where = f"  region {event.region}" if event.HasField("region") else ""
    return (f"frame {event.frame_id}  t={event.timestamp_us / 1e6:.2f}s  {EVENT_NAMES.get(event.kind, event.kind)}  "
            f'"{event.label}"{where}  p={event.probability:.3f}')


def main() -> int:
    args = parse_args()
    sent_at: dict[int, float] = {}
    results = skipped = fired = 0
    with grpc.insecure_channel(args.addr) as channel:
        try:
            for response in pb2_grpc.SiglipStub(channel).Stream(requests(args, sent_at)):
                print(describe(response, (time.monotonic() - sent_at[response.frame_id]) * 1e3), flush=True)
                for event in response.events:
                    print(describe_event(event), flush=True)
                results += 1
                skipped += response.skipped_frames
                fired += len(response.events)
        except grpc.RpcError as err:
            print(f"stream failed: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    events_part = f", {fired} events" if args.events is not None else ""
    print(f"{len(sent_at)} frames sent, {results} results, {skipped} skipped{events_part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
