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
    add_checks_parser(subparsers)


def add_checks_parser(subparsers) -> None:
    from ..flow.base import DEVICES  # as it is when the parser is built

    p = subparsers.add_parser(
        "bench-checks",
        help="measure the frame checks as a classifier on real footage: acceptance of good "
             "frames, rejection of bad ones, labels of the accepted",
        description="Runs each recipe's filters and disparity verdicts over a labelled set made "
                    "from the real data (rectified positives; misaligned, mono, dark, "
                    "unrectified negatives; see filmmine/tools/bench_check_set.py) and prints, per "
                    "recipe, the acceptance rate of each positive group, the rejection rate "
                    "of each negative group, and bad-2 / density / EPE of the accepted frames "
                    "with ground truth. The way to tune a recipe for a library.")
    p.add_argument("--recipes", default="default,paper",
                   help="comma-separated recipe names or files, compared in one run "
                        "(default: %(default)s)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="the real data folder (default: $FILMMINE_DATA or ../shared/data)")
    p.add_argument("--groups", default=None,
                   help="comma-separated groups to run (default: all; e.g. "
                        "middeval3,shift_2px,cut_clips_sbs)")
    p.add_argument("--set", action="append", metavar="TABLE.KEY=VALUE",
                   help="override a recipe key in every recipe, e.g. --set "
                        "disparity.min_consistency=0.9 (repeatable)")
    p.add_argument("--per-scene", action="store_true",
                   help="also list every ground-truth scene's verdict and labels")
    p.add_argument("--device", default="cpu",
                   help=f"torch device for torch backends ({' or '.join(DEVICES)})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=bench_checks)


def bench_checks(args: argparse.Namespace) -> int:
    from ..errors import RecipeError
    from ..recipe import parse_overrides
    from .bench_check_set import NEGATIVE_GROUPS, POSITIVE_GROUPS
    from .bench_checks import format_report, run

    groups = None
    if args.groups:
        groups = {g.strip() for g in args.groups.split(",") if g.strip()}
        unknown = sorted(groups - set(POSITIVE_GROUPS) - set(NEGATIVE_GROUPS))
        if unknown:
            print(f"filmmine bench-checks: error: unknown group(s) {', '.join(unknown)}; "
                  f"choose from {', '.join(POSITIVE_GROUPS + NEGATIVE_GROUPS)}",
                  file=sys.stderr)
            return 2
    try:
        report = run([r.strip() for r in args.recipes.split(",") if r.strip()], args.data,
                     groups, parse_overrides(args.set), args.device)
    except (ValueError, KeyError, RecipeError) as e:
        print(f"filmmine bench-checks: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print(format_report(report, per_scene=args.per_scene))
    return 0


def bench_disparity(args: argparse.Namespace) -> int:
    from ..errors import RecipeError
    from .bench_disparity import Row, format_table, run

    try:
        report = run(args)
    except (ValueError, RecipeError) as e:
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
    from ..flow import BACKENDS  # the registries as they are when the parser is built
    from ..flow.base import DEVICES

    p.add_argument("--data", nargs="*", default=None, metavar="DIR",
                   help="Middlebury-format folders or folders holding them, Middlebury 2003 / "
                        "KITTI folders (default: $FILMMINE_DATA or ../shared/data)")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help=f"comma-separated backends ({', '.join(BACKENDS)}; default: "
                        "%(default)s; raft needs --raft-weights)")
    p.add_argument("--recipe", default="default", help="recipe for the [disparity] table")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a [disparity] key, e.g. --set work_width=480 (repeatable)")
    p.add_argument("--sweep", metavar="KEY=V1,V2,...",
                   help="run every backend once per value of a [disparity] key, one row each "
                        "(e.g. --sweep sgbm_uniqueness=15,25,35): the bad-k / density trade-off "
                        "of a threshold")
    p.add_argument("--device", default="cpu", help=f"torch device: {' or '.join(DEVICES)}")
    p.add_argument("--synthetic", type=int, default=8, metavar="N",
                   help="synthetic film frames (0 = none; default: %(default)s)")
    p.add_argument("--synthetic-size", type=_parse_size, default=(320, 180), metavar="WxH",
                   help="size of the synthetic pairs (default: 320x180)")
    p.add_argument("--no-real", action="store_true", help="synthetic frames only")
    p.add_argument("--batch", type=int, default=1,
                   help="pairs per call for the pairs/s column (default: %(default)s)")
    p.add_argument("--raft-weights", default=None, help="RAFT state-dict file")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
