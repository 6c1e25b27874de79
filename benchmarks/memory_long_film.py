"""Peak memory of one worker vs film length: streaming decode must keep it flat.

Generates 720p side-by-side films (2 x 1280x720, 24 fps) of 1 and 10 minutes with ffmpeg's
test source (the right view is the left stretched by 1.5 %, a scene change every 20 s), then mines
each as ONE work unit (decode.chunk_s = 0: the whole film through one decoder) in a fresh
process and reports that process's peak RSS. Goal: within 20 % of each other.

    .venv/bin/python benchmarks/memory_long_film.py [--minutes 1 10] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def make_film(cache: Path, minutes: float) -> Path:
    film = cache / f"mem2_sbs_720p_{minutes:g}min.mp4"
    if film.is_file():
        return film
    cache.mkdir(parents=True, exist_ok=True)
    dur = minutes * 60
    # scenes change every 20 s (hue), the right view is the left stretched by 1.5 %: disparity
    # grows linearly across the frame (0..19 px), so frames pass the checks and get stored
    src = (f"testsrc2=size=1280x720:rate=24:duration={dur},"
           "hue=H=2*PI*floor(t/20)/5:s=1,noise=alls=60:allf=p,boxblur=1")
    graph = ("[0:v]split[a][b];[a]crop=1280:720:0:0[l];[b]crop=1280:720:0:0,"
             "scale=1299:720,crop=1280:720:0:0[r];[l][r]hstack=inputs=2[v]")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", src,
                    "-filter_complex", graph, "-map", "[v]", "-c:v", "libx264", "-preset",
                    "ultrafast", "-crf", "23", "-pix_fmt", "yuv420p", str(film)], check=True)
    return film


CHILD = r"""
import json, resource, sys, tempfile
from pathlib import Path
from filmmine.run.unit import mine_unit
from filmmine.run.plan import plan_units
from filmmine.media.probe import probe_film
from filmmine.recipe import load_recipe
film = sys.argv[1]
recipe = load_recipe(sys.argv[2])
recipe["decode"]["chunk_s"] = 0.0
probe = probe_film("mem", (film,), "sbs")
(unit,) = plan_units(probe, 0.0)
with tempfile.TemporaryDirectory() as d:
    marker = mine_unit(probe, unit, recipe, Path(d))
rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"frames": probe.n_frames, "samples": marker.samples,
                  "candidates": len(marker.frames), "peak_rss_mib": rss_kib / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "filmmine-bench"))
    ap.add_argument("--recipe", default="preview",
                    help="recipe for the run (default: preview, to keep the 10 min run short)")
    args = ap.parse_args()
    rows = []
    for minutes in args.minutes:
        film = make_film(Path(args.cache), minutes)
        out = subprocess.run([sys.executable, "-c", CHILD, str(film), args.recipe],
                             check=True, capture_output=True, text=True).stdout
        row = {"minutes": minutes, **json.loads(out.strip().splitlines()[-1])}
        rows.append(row)
        print(f"{minutes:g} min: {row['frames']} frames, {row['candidates']} candidates, "
              f"{row['samples']} samples, peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)
    lo, hi = min(r["peak_rss_mib"] for r in rows), max(r["peak_rss_mib"] for r in rows)
    print(f"peak RSS spread: {100 * (hi - lo) / lo:.1f} % (goal <= 20 %)")


if __name__ == "__main__":
    main()
