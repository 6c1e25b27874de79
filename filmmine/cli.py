"""Command line: a thin layer over the library functions."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from .errors import FilmmineError

log = logging.getLogger("filmmine")


def _add_extract_args(p: argparse.ArgumentParser) -> None:
    from .flow.base import DEVICES  # the registries as they are when the parser is built

    p.add_argument("--recipe", default="default",
                   help="recipe name in pipelines/ or a TOML file (default: default)")
    p.add_argument("--set", action="append", metavar="TABLE.KEY=VALUE",
                   help="set a recipe key for this corpus, e.g. --set sampling.fps=1 "
                        "(repeatable; recorded in OUT/recipe.toml)")
    p.add_argument("--workers", type=int, default=None,
                   help="local Dask worker processes (default: CPU count, max 8; 0 = in-process)")
    p.add_argument("--scheduler", default=None,
                   help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="torch device for the flow backend")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log-jsonl", default=None, metavar="FILE",
                   help="append a JSON-lines log of the run's events to FILE")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


# Other commands live in their own modules: each registration function takes the subparsers
# and registers its subcommands with ``set_defaults(handler=fn)``; ``fn(args) -> int``. Help
# lists them in this order: the workflow's, then the helpers.
COMMANDS: list[str] = ["filmmine.tools.commands:add_probe", "extract",
                       "filmmine.tools.commands:add_parser", "trainer.cli:add_parser", "demo",
                       "filmmine.tools.bench_commands:add_parser"]
COMMAND_MODULES: list[str] = sorted({c.split(":")[0] for c in COMMANDS if ":" in c})

DESCRIPTION = """\
Mine monocular-depth training data from stereo (3D) films, and train on it.

extract decodes each film, detects shots, samples frames, filters them, computes disparity
between the two views with left-right and vertical checks, and writes WebDataset shards,
Parquet tables and a manifest (the corpus). Labels are relative disparity: valid up to an
unknown scale and shift, as in MiDaS (Ranftl et al., arXiv 1907.01341)."""

EPILOG = """\
a day's work:
  filmmine probe ~/films                      what extract would do with each film
  filmmine extract ~/films --out corpus/      mine them (rerun the same command to resume)
  filmmine inspect corpus/                    counts and rejection reasons per film
  filmmine preview corpus/ --out report.html  samples, rejected frames, histograms
  filmmine verify corpus/                     every shard hashed, read and decoded
  filmmine train --corpus corpus/ --out run/  a depth model on it (and other datasets)
  filmmine eval --checkpoint run/checkpoints/last.pt --dataset DIR
  filmmine predict photo.jpg --checkpoint run/checkpoints/last.pt --out predictions/

COMMAND --help says more about each."""


def _add_extract(sub) -> None:
    from .media.layout import LAYOUT_CHOICES
    from .media.probe import PROJECTION_CHOICES

    ex = sub.add_parser("extract", help="mine a film library into a corpus of shards",
                        description="Mine stereo films into a corpus (WebDataset shards, "
                                    "Parquet tables, manifest). Rerunning the same command "
                                    "resumes and changes no byte of finished work.")
    ex.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="video file, directory of videos, or library manifest (.json)")
    ex.add_argument("--out", required=True, metavar="CORPUS", help="corpus directory")
    ex.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES,
                    help="stereo layout of the films (default: auto: the container's side "
                         "data, else the aspect ratio and how alike the halves are; a layout "
                         "given here is still checked against them, with a warning)")
    ex.add_argument("--projection", default="auto", choices=PROJECTION_CHOICES,
                    help="what the films' frames are when the container does not say, or "
                         "says wrong (default: auto, from the spherical side data and sv3d "
                         "box): flat mines them as flat stereo; spherical ones are skipped "
                         "until reprojection to perspective views lands")
    ex.add_argument("--redo", action="append", default=[], metavar="FILM",
                    help="mine this film again in place (its id or path; repeatable): its "
                         "shards and tables are replaced. Films whose shards are missing or "
                         "that `verify` found damaged are mined again without it")
    ex.add_argument("--force", action="store_true",
                    help="mine every film of the command again in place (--redo for all)")
    ex.add_argument("--limit", type=int, default=None, metavar="N",
                    help="mine only the command's first N films (a quick trial; a later run "
                         "with a larger N or none mines on into the same corpus)")
    ex.add_argument("--max-duration", type=float, default=None, metavar="S",
                    help="mine only each film's first S seconds (a quick trial; the recipe "
                         "key decode.max_duration_s, so such a corpus takes only such runs)")
    _add_extract_args(ex)


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="generate a small stereo film library and mine it")
    demo.add_argument("--out", default="demo-corpus", metavar="CORPUS",
                      help="corpus directory (default: demo-corpus)")
    demo.add_argument("--library", default=None,
                      help="where to write the generated films (default: CORPUS/library)")
    _add_extract_args(demo)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    ap = argparse.ArgumentParser(prog="filmmine", description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"filmmine {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    local = {"extract": _add_extract, "demo": _add_demo}
    for c in COMMANDS:
        if c in local:
            local[c](sub)
        else:
            module, fn = c.split(":")
            getattr(importlib.import_module(module), fn)(sub)
    return ap


def _extract(inputs: list[str], args: argparse.Namespace, layout: str = "auto") -> int:
    from .recipe import parse_overrides
    from .run.extract import extract

    overrides = parse_overrides(args.set)
    if getattr(args, "max_duration", None) is not None:
        overrides.setdefault("decode", {})["max_duration_s"] = args.max_duration

    report = extract(inputs, args.out, layout=layout, recipe=args.recipe, workers=args.workers,
                     scheduler=args.scheduler, device=args.device, progress=not args.quiet,
                     debug=args.debug, log_jsonl=args.log_jsonl,
                     overrides=overrides, redo=getattr(args, "redo", None),
                     force=getattr(args, "force", False), limit=getattr(args, "limit", None),
                     projection=getattr(args, "projection", "auto"))
    print(report.summary())
    return report.exit_code


class Terminated(BaseException):
    """SIGTERM (a batch system's walltime, ``kill``): unwound like Ctrl-C, so the run closes
    its cluster and lock and says how to go on, instead of vanishing without a word."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("extract", "demo") or \
            threading.current_thread() is not threading.main_thread():
        return _main(args)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "handler", None) is not None:
            return int(args.handler(args))
        if args.command == "extract":
            return _extract(args.inputs, args, args.layout)
        if args.command == "demo":
            from .synth import write_library

            lib = Path(args.library) if args.library else Path(args.out) / "library"
            if not (lib / "library.json").is_file():
                print(f"writing a demo library of synthetic stereo films to {lib} ...")
                write_library(lib)
            code = _extract([str(lib / "library.json")], args)
            print(f"look at {args.out}/manifest.json (counts and reasons), "
                  f"{args.out}/frames.parquet and the shards in {args.out}/shards/")
            return code
    except FilmmineError as e:
        if debug:
            raise
        print(f"filmmine: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("filmmine: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Terminated:
        print("filmmine: terminated (SIGTERM); rerun the same command to resume",
              file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
