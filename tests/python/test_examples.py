"""examples/make_video.py writes a real video; examples/stream_video.py streams it to the server."""

import re
import subprocess
import sys
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
