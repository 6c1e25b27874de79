"""Decode throughput of MV-HEVC spatial video against the same two views as one SBS file.

The SBS file is made here from the MV-HEVC clip's own views (decoded, stacked side by side,
encoded with libx265 at the first fixed quantiser that reaches the clip's size), so both hold
the same pictures at about the same size. Each is decoded to raw frames as extract decodes:
both views side by side, every frame (the clip looped with -stream_loop for enough frames), by
the same FFmpeg (>= 7.1) with one decoder thread as in an extract worker, several times
alternating; the ratio of the median CPU times is printed.

    .venv/bin/python benchmarks/mvhevc_decode.py [--loops 30] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "spatial_mvhevc" / "water_180_mvhevc_5frames.mov"
BOTH_VIEWS = "[0:v:view:0][0:v:view:1]hstack=inputs=2[v]"


def decode_s(ffmpeg: str, args: list[str], loops: int, threads: int) -> float:
    """CPU seconds (user + system) of one decode: the machine's load does not enter."""
    before = os.times()
    subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-threads", str(threads),
                    "-filter_threads", "1", "-stream_loop", str(loops), *args, "-f", "rawvideo",
                    "-pix_fmt", "rgb24", "-y", "/dev/null"], check=True)
    after = os.times()
    return (after.children_user - before.children_user
            + after.children_system - before.children_system)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from filmmine.ffmpeg_bin import ffmpeg_version, multiview_ffmpeg

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", type=int, default=30, help="extra passes over the 5-frame clip")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="decoder threads (default 1: an extract worker's, one per core)")
    args = ap.parse_args()
    ffmpeg = multiview_ffmpeg()
    if ffmpeg is None or not CLIP.is_file():
        print("needs an FFmpeg >= 7.1 (pip install 'filmmine[spatial]') and " + str(CLIP))
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        sbs = Path(tmp) / "sbs.mp4"
        target = CLIP.stat().st_size
        for qp in range(32, 0, -2):   # the first quantiser that gives the clip's size
            subprocess.run([ffmpeg, "-v", "error", "-i", str(CLIP), "-filter_complex",
                            BOTH_VIEWS, "-map", "[v]", "-c:v", "libx265", "-preset", "medium",
                            "-x265-params", f"qp={qp}:log-level=error", "-tag:v", "hvc1", "-y",
                            str(sbs)], check=True)
            if sbs.stat().st_size >= 0.9 * target:
                break
        frames = 5 * (args.loops + 1)
        mv, sb = [], []
        for _ in range(args.repeat):
            mv.append(decode_s(ffmpeg, ["-i", str(CLIP), "-filter_complex", BOTH_VIEWS,
                                        "-map", "[v]"], args.loops, args.threads))
            sb.append(decode_s(ffmpeg, ["-i", str(sbs)], args.loops, args.threads))
        m, s = statistics.median(mv), statistics.median(sb)
        print(f"FFmpeg {ffmpeg_version(ffmpeg)}; {frames} frames of 2 x 1934x2160 each way")
        print(f"MV-HEVC {CLIP.stat().st_size / 1e3:.0f} kB: {frames / m:.1f} frames per CPU s "
              f"(runs {', '.join(f'{x:.2f}' for x in mv)} CPU s)")
        print(f"SBS HEVC {sbs.stat().st_size / 1e3:.0f} kB: {frames / s:.1f} frames per CPU s "
              f"(runs {', '.join(f'{x:.2f}' for x in sb)} CPU s)")
        print(f"ratio MV-HEVC / SBS decode CPU time: {m / s:.2f} (goal <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
