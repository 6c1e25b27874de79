"""Commands to look at a corpus or a film before training: inspect, preview, verify, probe.

A thin layer: each handler calls one library function and prints its result. Errors that stop
a command (not a corpus, unknown film) are FilmmineError, shown by ``cli.main`` as one line
with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def _common(p: argparse.ArgumentParser) -> None:
    # cli.main reads args.debug for every command
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_parser(subparsers) -> None:
    """inspect, preview, verify (``add_probe`` registers probe, which comes first)."""
    p = subparsers.add_parser("inspect", help="totals and a per-film table of a corpus")
    p.add_argument("corpus", metavar="CORPUS",
                   help="a corpus directory written by filmmine extract")
    p.add_argument("--film", default=None, help="only this film")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)
    p.set_defaults(handler=run_inspect)

    p = subparsers.add_parser(
        "preview", help="contact sheet (PNG) or self-contained HTML report of a corpus")
    p.add_argument("corpus", metavar="CORPUS",
                   help="a corpus directory written by filmmine extract")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="FILE.png (contact sheet) or FILE.html (report)")
    p.add_argument("--n", type=int, default=24, help="frames to show (default: 24)")
    p.add_argument("--film", default=None, help="only this film")
    p.add_argument("--rejected", action="store_true",
                   help="show rejected frames (decoded from the source films) with their reason;"
                        " the HTML report always has both")
    _common(p)
    p.set_defaults(handler=run_preview)

    p = subparsers.add_parser(
        "verify", help="check every shard against the manifest and the tables")
    p.add_argument("corpus", metavar="CORPUS",
                   help="a corpus directory written by filmmine extract")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel processes (default: CPU count, max 8)")
    p.add_argument("--quick", action="store_true",
                   help="hash and read shards, parse JSON, but do not decode images")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)
    p.set_defaults(handler=run_verify)


def add_probe(subparsers) -> None:
    from ..media.layout import LAYOUT_CHOICES  # as they are when the parser is built
    from ..media.probe import PROJECTION_CHOICES

    p = subparsers.add_parser("probe", help="what extract would do with films: streams, "
                                            "layout and why, letterbox, stereo metadata")
    p.add_argument("inputs", nargs="+", metavar="FILM",
                   help="video file, directory of videos, or library manifest (.json)")
    p.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES,
                   help="the films' stereo layout (default: auto, from side data, aspect and "
                        "the halves; a layout given here is still checked against them)")
    p.add_argument("--projection", default="auto", choices=PROJECTION_CHOICES,
                   help="what the films' frames are when the container does not say "
                        "(default: auto; see extract --projection)")
    p.add_argument("--recipe", default="default",
                   help="recipe whose crop and sampling settings apply (default: default)")
    p.add_argument("--frames", type=int, default=5,
                   help="frames decoded to find letterbox bars (default: 5; 0 = none)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)
    p.set_defaults(handler=run_probe)


def run_inspect(args: argparse.Namespace) -> int:
    from .summary import format_summary, load_corpus, summarize

    summary = summarize(load_corpus(args.corpus), film=args.film)
    if args.json:
        print(json.dumps(summary.to_json(), indent=1))
    else:
        print(format_summary(summary))
    return 0


def run_preview(args: argparse.Namespace) -> int:
    from .preview import write_preview

    if args.n < 1:
        print("filmmine preview: --n must be at least 1", file=sys.stderr)
        return 2
    result = write_preview(args.corpus, args.out, n=args.n, film=args.film,
                           rejected=args.rejected)
    print(result)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from .verify import format_report, verify_corpus

    report = verify_corpus(args.corpus, workers=args.workers, decode=not args.quick)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(format_report(report))
    return report.exit_code


def run_probe(args: argparse.Namespace) -> int:
    from ..media.ffmpeg_bin import require_ffmpeg
    from ..recipe import load_recipe
    from .probe_report import format_probe, probe_inputs

    require_ffmpeg()
    reports = probe_inputs(args.inputs, load_recipe(args.recipe), args.layout, args.frames,
                           args.projection)
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=1))
    else:
        print("\n\n".join(format_probe(r) for r in reports))
    # as extract: a skipped input (2D, not a video) is not an error, a failed one is
    return 1 if any(r.status == "failed" for r in reports) else 0
