"""Decode throughput of MV-HEVC spatial video against the same two views as one SBS file.

The SBS file is made here from the MV-HEVC clip's own views (decoded, stacked side by side,
encoded with libx265 at the first fixed quantiser that reaches the clip's size), so both hold
the same pictures at about the same size. Each is decoded as extract decodes a work unit
(``filmmine.media.decode.iter_frames``: the low-resolution pass over every frame, full-resolution
frames on the sampling grid), by the same FFmpeg (>= 7.1, one decoder thread as in an extract
worker), the clip over and over, alternating; the decoders' CPU time is compared (the
machine's load does not enter), at two grid steps: every frame, and the default recipe's at
the clip's 90 fps (4 a second: 1 frame in 22).

    .venv/bin/python benchmarks/mvhevc_decode.py [--runs 40] [--repeat 3]
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


def cpu_s(probe, grid_step: int, runs: int) -> float:
    """CPU seconds (user + system) of ``runs`` decodes of the whole clip by its ffmpegs."""
    from filmmine.media.decode import iter_frames

    before = os.times()
    for _ in range(runs):
        for _frame in iter_frames(probe, grid_step=grid_step, lowres_width=160):
            pass
    after = os.times()
    return (after.children_user - before.children_user
            + after.children_system - before.children_system)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from filmmine.media.ffmpeg_bin import ffmpeg_version, multiview_ffmpeg

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40, help="decodes of the 5-frame clip a sample")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ffmpeg = multiview_ffmpeg()
    if ffmpeg is None or not CLIP.is_file():
        print("needs an FFmpeg >= 7.1 (pip install 'filmmine[spatial]') and " + str(CLIP))
        return 1
    os.environ["FILMMINE_FFMPEG"] = ffmpeg   # the SBS file by the same decoder
    os.environ["FILMMINE_DECODE_THREADS"] = "1"   # as in an extract worker on a CPU node
    from filmmine.media.probe import probe_film

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
        mv = probe_film("mv", (str(CLIP),))
        sb = probe_film("sbs", (str(sbs),), requested="sbs")
        print(f"FFmpeg {ffmpeg_version(ffmpeg)}, one decoder thread; {args.runs} decodes of "
              f"5 frames of 2 x 1934x2160 a sample; MV-HEVC {target / 1e3:.0f} kB, SBS HEVC "
              f"{sbs.stat().st_size / 1e3:.0f} kB")
        for step in (1, 22):
            m, s = [], []
            for _ in range(args.repeat):
                m.append(cpu_s(mv, step, args.runs))
                s.append(cpu_s(sb, step, args.runs))
            ratio = statistics.median(m) / statistics.median(s)
            print(f"grid step {step:2d}: MV-HEVC {', '.join(f'{x:.2f}' for x in m)} CPU s, "
                  f"SBS {', '.join(f'{x:.2f}' for x in s)} CPU s: ratio {ratio:.2f} "
                  "(goal <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
