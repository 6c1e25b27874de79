"""``filmmine train | eval | predict``: argument parsing only; the work is in ``train``,
``evaluate`` and ``predict`` (imported when a command runs, so ``filmmine --help`` stays
fast)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from . import TrainerError

log = logging.getLogger("trainer")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    tr = subparsers.add_parser(
        "train", help="train a MiDaS-style depth model on a corpus mixed with other datasets",
        description="Train on mined corpora and other depth datasets (disparity space, unknown "
                    "scale and shift). Flags override the config file.")
    tr.add_argument("--corpus", action="append", default=[], metavar="DIR",
                    help="a filmmine corpus (repeatable)")
    tr.add_argument("--data", action="append", default=[], metavar="SPEC",
                    help="another dataset, TYPE:PATH[,key=value...] with TYPE corpus, wds, "
                         "folder or middlebury and keys weight, label (disparity|depth), scale, "
                         "offset, invalid, name, crop, images, labels, image_key, label_key; "
                         "e.g. folder:/data/nyu,label=depth,scale=0.001 (repeatable)")
    tr.add_argument("--config", default="default",
                    help="config name in trainer/configs/ (default, small, tiny) or a .toml file")
    tr.add_argument("--steps", type=int, default=None, help="optimizer steps (total, with resume)")
    tr.add_argument("--out", required=True, metavar="RUN", help="run directory")
    tr.add_argument("--resume", action="store_true",
                    help="continue RUN from RUN/checkpoints/last.pt with the run's saved config "
                         "(only --steps changes it)")
    tr.add_argument("--mix", choices=["naive", "balanced", "pareto"], default=None)
    tr.add_argument("--balance", choices=["share", "per_batch"], default=None,
                    help="balanced mixing: equal share per batch, or one dataset per batch")
    tr.add_argument("--batch-size", type=int, default=None, help="per rank")
    tr.add_argument("--crop", type=int, default=None, help="training crop side, px")
    tr.add_argument("--workers", type=int, default=None, help="DataLoader workers per rank")
    tr.add_argument("--encoder", default=None, help="timm model name")
    tr.add_argument("--features", type=int, default=None, help="decoder width F")
    tr.add_argument("--weights", default=None,
                    help="local encoder weights (state dict of the same timm model)")
    tr.add_argument("--pretrained", action="store_true",
                    help="fetch the encoder's pretrained weights through timm (needs network)")
    tr.add_argument("--lr", type=float, default=None, help="new layers")
    tr.add_argument("--lr-pretrained", type=float, default=None, help="pretrained layers")
    tr.add_argument("--amp", choices=["auto", "off", "fp16", "bf16"], default=None)
    tr.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    tr.add_argument("--seed", type=int, default=None)
    tr.add_argument("--log-every", type=int, default=None)
    tr.add_argument("--ckpt-every", type=int, default=None)
    tr.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard")
    tr.add_argument("--quiet", action="store_true", help="no progress lines")
    _common(tr)
    tr.set_defaults(handler=_run_train)

    ev = subparsers.add_parser(
        "eval", help="zero-shot evaluation of a checkpoint on a dataset with ground truth",
        description="Predict, fit scale and shift by least squares in disparity space per "
                    "image, convert to depth (capped) for depth datasets, and report AbsRel, "
                    "delta > 1.25 (%%), RMSE and, for ordinal labels, WHDR (%%) as JSON.")
    ev.add_argument("--checkpoint", required=True, metavar="CK")
    ev.add_argument("--dataset", required=True, metavar="DIR",
                    help="Middlebury-format scenes, or DIR/images + DIR/labels")
    ev.add_argument("--type", default="auto", choices=["auto", "middlebury", "folder", "wds"])
    ev.add_argument("--label", choices=["disparity", "depth"], default="disparity")
    ev.add_argument("--scale", type=float, default=1.0, help="stored label unit -> m or px")
    ev.add_argument("--invalid", type=float, default=None, help="stored value with no label")
    ev.add_argument("--cap", type=float, default=0.0,
                    help="depth cap in metres (paper: 10 NYU/TUM, 72 ETH3D/Sintel, 80 KITTI)")
    ev.add_argument("--size", type=int, default=None, help="inference longer side (default 384)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ev.add_argument("--out", default=None, metavar="FILE", help="also write the JSON here")
    _common(ev)
    ev.set_defaults(handler=_run_eval)

    pr = subparsers.add_parser("predict", help="write coloured disparity maps for images")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--checkpoint", required=True, metavar="CK")
    pr.add_argument("--out", required=True, metavar="DIR")
    pr.add_argument("--size", type=int, default=None, help="inference longer side (default 384)")
    pr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _common(pr)
    pr.set_defaults(handler=_run_predict)


def _common(p: argparse.ArgumentParser) -> None:
    # filmmine.cli.main reads args.debug for every command
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except TrainerError as e:
            if getattr(args, "debug", False):
                raise
            print(f"filmmine: error: {e}", file=sys.stderr)
            return 2
    return run


def _out_dir(path: str, what: str) -> None:
    """``--out`` names a directory (new or not): a file there is one line, not a traceback."""
    from pathlib import Path

    if Path(path).exists() and not Path(path).is_dir():
        raise TrainerError(f"--out {path} is a file; give a directory for the {what}")


def train_config(args: argparse.Namespace):
    """The config file, then the flags that were given; on --resume the run's own config
    (RUN/config.json) with only --steps changed."""
    from pathlib import Path

    from .config import TrainConfig, load_config
    from .sources import DatasetSpec

    saved = Path(args.out) / "config.json"
    if args.resume and (Path(args.out) / "checkpoints" / "last.pt").is_file() and saved.is_file():
        try:
            cfg = TrainConfig.from_dict(json.loads(saved.read_text()))
        except ValueError as e:
            raise TrainerError(f"{saved}: {e}") from None
        if args.steps is not None:
            cfg.run.steps = args.steps
        return cfg
    cfg = load_config(args.config)
    specs = [DatasetSpec(type="corpus", path=p) for p in args.corpus]
    specs += [DatasetSpec.parse(s) for s in args.data]
    if specs:
        cfg.data.datasets = specs
    sets = [
        ("steps", cfg.run, "steps"), ("mix", cfg.data.mix, "mode"),
        ("balance", cfg.data.mix, "balance"), ("batch_size", cfg.data.mix, "batch_size"),
        ("crop", cfg.data.augment, "crop"), ("workers", cfg.data, "workers"),
        ("encoder", cfg.model, "encoder"), ("features", cfg.model, "features"),
        ("weights", cfg.model, "weights"), ("lr", cfg.optim, "lr"),
        ("lr_pretrained", cfg.optim, "lr_pretrained"), ("amp", cfg.optim, "amp"),
        ("device", cfg.run, "device"), ("seed", cfg.run, "seed"),
        ("log_every", cfg.run, "log_every"), ("ckpt_every", cfg.run, "ckpt_every"),
    ]
    for arg, obj, attr in sets:
        v = getattr(args, arg, None)
        if v is not None:
            setattr(obj, attr, v)
    if args.pretrained:
        cfg.model.pretrained = True
    if args.tensorboard:
        cfg.run.tensorboard = True
    cfg.run.check()
    return cfg


@_guard
def _run_train(args: argparse.Namespace) -> int:
    if not args.quiet:
        log.setLevel(logging.INFO)
        if not log.handlers:
            h = logging.StreamHandler()
            h.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(h)
            log.propagate = False
    from .train import train

    _out_dir(args.out, "run (checkpoints, metrics)")
    res = train(train_config(args), args.out, resume=args.resume)
    if not args.quiet:
        print(f"{res.step} steps; checkpoint {res.out}/checkpoints/last.pt, "
              f"metrics {res.out}/metrics.jsonl")
    return 0


@_guard
def _run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint
    from .sources import DatasetSpec, detect_type

    typ = detect_type(args.dataset) if args.type == "auto" else args.type
    if typ == "corpus":
        raise TrainerError("a mined corpus has labels only up to scale and shift (and of both "
                           "signs); evaluate on data with true disparity or depth")
    spec = DatasetSpec(type=typ, path=args.dataset, label=args.label, scale=args.scale,
                       invalid=args.invalid, cap=args.cap)
    report = evaluate_checkpoint(args.checkpoint, spec, size=args.size, device=args.device)
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.out:
        from .atomic import write_text

        write_text(args.out, text + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "per_image"}, indent=2,
                     sort_keys=True))
    return 0


@_guard
def _run_predict(args: argparse.Namespace) -> int:
    from .predict import predict_files

    _out_dir(args.out, "predictions")
    written = predict_files(args.images, args.checkpoint, args.out, size=args.size,
                            device=args.device)
    for p in written:
        print(p)
    return 0 if len(written) == len(args.images) else 1
