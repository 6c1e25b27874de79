"""Spherical films: what cutting the eyes into views and fitting their rotation cost, against
the whole work unit (issue 22: reprojection <= 10 % of the run's CPU time on the CPU path).

One film is mined as one work unit in this process, one thread (as an extract worker runs it);
the unit's CPU time includes its ffmpeg decoder's; its own stage timings (wall clock: run it on
an idle machine) split it. Default film: the shared 360° congo.mp4.

    .venv/bin/python benchmarks/spherical_cost.py [FILM] [--projection auto] [--layout auto]
        [--seconds 10] [--recipe default]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import cv2

from filmmine.media.probe import probe_film
from filmmine.recipe import load_recipe
from filmmine.run.plan import plan_units, trial_span
from filmmine.run.unit import mine_unit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def cpu_s() -> float:
    """This process's CPU seconds and its finished children's (the ffmpeg decoder)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("film", nargs="?", default=str(SHARED / "real_360_topbottom" / "congo.mp4"))
    ap.add_argument("--projection", default="auto")
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--seconds", type=float, default=10.0, help="of the film mined (0: all)")
    ap.add_argument("--recipe", default="default")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    recipe = load_recipe(args.recipe)
    probe = probe_film(Path(args.film).stem, (args.film,), args.layout,
                       projection=args.projection)
    if probe.projection == "flat":
        raise SystemExit(f"{args.film} is not a spherical film (give --projection)")
    probe = trial_span(probe, args.seconds)
    (unit,) = plan_units(probe, 0.0)
    with tempfile.TemporaryDirectory() as d:
        c0, w0 = cpu_s(), time.perf_counter()
        marker = mine_unit(probe, unit, recipe, Path(d))
        cpu, wall = cpu_s() - c0, time.perf_counter() - w0
    t = marker.timings
    staged = sum(t.values())
    cut, rect = t.get("views", 0.0), t.get("rectify", 0.0)
    print(json.dumps({
        "film": args.film, "projection": probe.projection, "frames": probe.n_frames,
        "candidate_views": len(marker.frames), "samples": marker.samples,
        "unit_cpu_s": round(cpu, 2), "unit_wall_s": round(wall, 2),
        "stages_s": {k: round(v, 3) for k, v in sorted(t.items())},
        "views_share_of_cpu": round(cut / cpu, 4),
        "rectify_share_of_cpu": round(rect / cpu, 4),
        "views_and_rectify_share_of_cpu": round((cut + rect) / cpu, 4),
        "staged_share_of_wall": round(staged / wall, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
