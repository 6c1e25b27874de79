"""``filmmine bench-disparity``: the disparity backends measured on pairs with ground truth."""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_BACKENDS = ("dis_sgbm", "dis", "sgbm", "census_sgm")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench-disparity",
        help="measure the disparity backends (bad-1/2/4, EPE, density, speed) on stereo "
             "pairs with ground truth",
        description="Runs every backend through the full disparity stage (both directions, "
                    "checks) on real pairs with ground truth and synthetic film frames; prints "
                    "one row per backend and dataset.")
    add_arguments(p)
    p.set_defaults(handler=bench_disparity)


def bench_disparity(args: argparse.Namespace) -> int:
    from .bench_disparity import Row, format_table, run

    try:
        report = run(args)
    except ValueError as e:
        print(f"filmmine bench-disparity: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(format_table([Row(**r) for r in report["rows"]]))
    print(f"device {report['device']}, torch threads {report['torch_threads']}, "
          f"batch {report['batch']}; density = % of ground-truth pixels labelled; "
          f"bad-k, EPE over labelled pixels with ground truth")
    if any(r["density_nocc"] == r["density_nocc"] for r in report["rows"]):  # not NaN
        print("noc: over the ground truth both views see; occ.%: share of the ground truth only "
              "the left view sees (pairs with an occlusion mask); bad-2 occ: labels there")
    for name, why in report["skipped"].items():
        print(f"skipped {name}: {why}")
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, got {text!r}") from None
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="*", default=None, metavar="DIR",
                   help="Middlebury-format folders or folders holding them, Middlebury 2003 / "
                        "KITTI folders (default: $FILMMINE_DATA or ../shared/data)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help="comma-separated backends (default: %(default)s; raft needs "
                        "--raft-weights)")
    p.add_argument("--recipe", default="default", help="recipe for the [disparity] table")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a [disparity] key, e.g. --set work_width=480 (repeatable)")
    p.add_argument("--sweep", metavar="KEY=V1,V2,...",
                   help="run every backend once per value of a [disparity] key, one row each "
                        "(e.g. --sweep sgbm_uniqueness=15,25,35): the bad-k / density trade-off "
                        "of a threshold")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument("--synthetic", type=int, default=8, metavar="N",
                   help="synthetic film frames (0 = none; default: %(default)s)")
    p.add_argument("--synthetic-size", type=_parse_size, default=(320, 180), metavar="WxH")
    p.add_argument("--no-real", action="store_true", help="synthetic frames only")
    p.add_argument("--batch", type=int, default=1,
                   help="pairs per call for the pairs/s column (default: %(default)s)")
    p.add_argument("--raft-weights", default=None, help="RAFT state-dict file")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
