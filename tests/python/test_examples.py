"""examples/make_video.py writes a real video; examples/stream_video.py streams it to the server and builds its
config from the command line."""

import importlib
import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import av
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[str, int]:
    path = tmp_path_factory.mktemp("video") / "pan.mp4"
    cmd = [sys.executable, EXAMPLES / "make_video.py", "--out", path, "--seconds", "2", "--fps", "15"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 30
    return str(path), frames


@pytest.mark.parametrize("encoding", [[], ["--raw"]], ids=["jpeg", "raw"])
def test_stream_video_every_frame(server, video, encoding):
    path, frames = video
    cmd = [sys.executable, EXAMPLES / "stream_video.py", "--addr", server, "--video", path, "--mode", "every", "--fps", "0",
           *encoding]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("frame ")]
    assert [int(line.split()[1]) for line in lines] == list(range(frames))
    assert all(re.search(r"(\d+\.\d% .+){3}skipped=0  latency=", line) for line in lines), lines


def test_stream_video_watches_regions_with_events_only(server, video, stream_video):
    """Every watch flag against the server on the pan (320x240, 15 fps, 30 frames). An enter threshold
    below any probability makes every (region, label) ENTER on the first frame and never leave, so the
    output is known exactly: those events, then heartbeats only (one per second of video), and the last
    message counting the rest; max_fps 10 keeps two frames of every three."""
    path, frames = video
    cmd = [sys.executable, EXAMPLES / "stream_video.py", "--addr", server, "--video", path, "--mode", "every", "--fps", "0",
           "--max-fps", "10", "--smooth", "ema:0.5", "--events", "0.0001:0.00005", "--events-only", "--heartbeat-ms", "1000",
           "--region", "0,0,160,240", "--region", "160,0,160,240"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    enters = [line for line in lines if "  ENTER  " in line]
    assert len(enters) == 2 * len(stream_video.LABELS), lines
    assert all(line.startswith("frame 0 ") for line in enters), enters
    assert not any("  LEAVE  " in line for line in lines), lines
    results = [line for line in lines if line.startswith("frame ") and line not in enters]
    beats = [line for line in results if "  heartbeat  " in line]
    assert len(results) == len(beats) + 1 >= 3, "one message with the events, then heartbeats"
    assert lines[-1] == f"{frames} frames sent, {len(results)} results, 10 skipped, {len(enters)} events", lines[-1]


@pytest.fixture(scope="module")
def stream_video():
    """examples/stream_video.py as a module (its main() only runs as a script)."""
    sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("stream_video")


def test_stream_video_without_watch_flags_sends_a_plain_config(stream_video):
    args = stream_video.parse_args(["--video", "v.mp4", "--mode", "latest"])
    config = stream_video.stream_config(args)
    assert list(config.texts) == stream_video.LABELS
    assert config.options.top_k == 3
    assert config.mode == stream_video.MODES["latest"]
    assert not any(config.HasField(f) for f in ("policy", "smoothing", "events"))
    assert not config.regions


def test_stream_video_watch_flags_fill_the_config(stream_video):
    args = stream_video.parse_args(["--video", "v.mp4", "--max-fps", "5", "--max-age-ms", "250", "--smooth", "ema:0.3",
                                     "--events", "0.6:0.4:3", "--events-only", "--heartbeat-ms", "2000",
                                     "--region", "0,0,160,120", "--region", "160,120,160,120"])
    config = stream_video.stream_config(args)
    assert (config.policy.max_fps, config.policy.max_age_ms) == (5, 250)
    assert config.smoothing.WhichOneof("method") == "ema_alpha"
    assert config.smoothing.ema_alpha == pytest.approx(0.3)
    events = config.events
    assert (events.enter_threshold, events.leave_threshold) == (pytest.approx(0.6), pytest.approx(0.4))
    assert (events.min_frames, events.events_only, events.heartbeat_ms) == (3, True, 2000)
    assert [(r.x, r.y, r.width, r.height) for r in config.regions] == [(0, 0, 160, 120), (160, 120, 160, 120)]

    args = stream_video.parse_args(["--video", "v.mp4", "--max-age-ms", "100", "--smooth", "median:4", "--events", "0.7:0.2"])
    config = stream_video.stream_config(args)
    assert (config.policy.max_fps, config.policy.max_age_ms) == (0, 100)
    assert config.smoothing.WhichOneof("method") == "median_k" and config.smoothing.median_k == 4
    assert (config.events.min_frames, config.events.events_only, config.events.heartbeat_ms) == (0, False, 0)


@pytest.mark.parametrize("flags", [
    ["--smooth", "ema"], ["--smooth", "mean:3"], ["--smooth", "median:1.5"],
    ["--events", "0.6"], ["--events", "0.6:0.4:3:1"], ["--events", "high:low"],
    ["--region", "0,0,10"], ["--region", "-1,0,10,10"], ["--region", "a,b,c,d"],
    ["--events-only"], ["--events", "0.6:0.4", "--heartbeat-ms", "1000"],
], ids=lambda flags: " ".join(flags))
def test_stream_video_refuses_malformed_watch_flags(stream_video, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        stream_video.parse_args(["--video", "v.mp4", *flags])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_stream_video_prints_events_and_drop_reasons(stream_video):
    pb2 = stream_video.pb2
    event = pb2.LabelEvent(label="a photo of a cat", index=1, kind=pb2.EVENT_KIND_ENTER, frame_id=42, timestamp_us=1_400_000,
                           probability=0.7312, region=0)
    assert stream_video.describe_event(event) == 'frame 42  t=1.40s  ENTER  "a photo of a cat"  region 0  p=0.731'
    event.ClearField("region")
    event.kind = pb2.EVENT_KIND_LEAVE
    assert stream_video.describe_event(event) == 'frame 42  t=1.40s  LEAVE  "a photo of a cat"  p=0.731'

    plain = pb2.StreamResponse(frame_id=7, skipped_frames=2, dropped=pb2.DropCounts(superseded=2))
    assert "dropped" not in stream_video.describe(plain, 1.0)
    assert "skipped=2  latency=" in stream_video.describe(plain, 1.0)
    rated = pb2.StreamResponse(frame_id=7, skipped_frames=5, dropped=pb2.DropCounts(superseded=2, rate=3))
    assert "skipped=5  dropped superseded=2 rate=3  latency=" in stream_video.describe(rated, 1.0)


def test_stream_video_frames_carry_the_videos_timestamps(stream_video, video):
    path, frames = video
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate)
        stamps = [stream_video.timestamp_us(frame, i, rate) for i, frame in enumerate(container.decode(stream))]
    assert len(stamps) == frames
    # 15 fps: 66 667 µs apart (within the container's time-base rounding), never equal.
    assert all(abs(b - a - 1e6 / 15) <= 1000 for a, b in pairwise(stamps)), stamps
