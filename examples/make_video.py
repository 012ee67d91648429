"""Write a short real video: a camera pan across scikit-image photos (astronaut, cat, coffee, rocket).

    python make_video.py --out pan.mp4 [--seconds 4] [--fps 15] [--width 320] [--height 240]
"""

import argparse

import av
import numpy as np
from PIL import Image
from skimage import data

PHOTOS = [data.astronaut, data.chelsea, data.coffee, data.rocket]


def panorama(height: int) -> np.ndarray:
    """The photos side by side, each scaled to `height`."""
    strips = []
    for load in PHOTOS:
        photo = Image.fromarray(load())
        strips.append(np.asarray(photo.resize((round(photo.width * height / photo.height), height), Image.Resampling.BICUBIC)))
    return np.hstack(strips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output file (.mp4)")
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--width", type=int, default=320, help="even")
    parser.add_argument("--height", type=int, default=240, help="even")
    args = parser.parse_args()

    strip = panorama(args.height)
    frames = round(args.seconds * args.fps)
    with av.open(args.out, mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=args.fps)
        stream.width, stream.height, stream.pix_fmt = args.width, args.height, "yuv420p"
        for i in range(frames):
            x = round(i * (strip.shape[1] - args.width) / max(frames - 1, 1))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(strip[:, x : x + args.width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    print(f"wrote {args.out}: {frames} frames, {args.width}x{args.height} at {args.fps} fps ({stream.codec_context.name})")


if __name__ == "__main__":
    main()
