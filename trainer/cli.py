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

# train flag -> the config key it sets
TRAIN_FLAGS = {
    "steps": "run.steps", "mix": "data.mix.mode", "balance": "data.mix.balance",
    "batch_size": "data.mix.batch_size", "crop": "data.augment.crop", "workers": "data.workers",
    "encoder": "model.encoder", "features": "model.features", "weights": "model.weights",
    "lr": "optim.lr", "lr_pretrained": "optim.lr_pretrained", "amp": "optim.amp",
    "device": "run.device", "seed": "run.seed", "log_every": "run.log_every",
    "ckpt_every": "run.ckpt_every", "tensorboard": "run.tensorboard",
    "val_every": "val.every", "val_metric": "val.metric",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    # light modules (numpy, cv2; no torch), read as they are when the parser is built
    from .names import AMP_MODES, BALANCE_MODES, DEVICES, MIX_MODES, RAW_FORMATS, VAL_METRICS
    from .sources import LABEL_KINDS, SOURCES

    tr = subparsers.add_parser(
        "train", help="train a MiDaS-style depth model on a corpus mixed with other datasets",
        description="Train on mined corpora and other depth datasets (disparity space, unknown "
                    "scale and shift). Flags override the config file.")
    tr.add_argument("--corpus", action="append", default=[], metavar="DIR",
                    help="a filmmine corpus (repeatable)")
    tr.add_argument("--data", action="append", default=[], metavar="SPEC",
                    help=f"another dataset, TYPE:PATH[,key=value...] with TYPE one of "
                         f"{', '.join(SOURCES)} (layouts: eval --help) and keys weight, label "
                         "(disparity|depth), scale, offset, invalid, name, crop, images, labels, "
                         "image_key, label_key (unset: the type's own); e.g. "
                         "kitti:/data/kitti2015, folder:/data/x,label=depth,scale=0.001 "
                         "(repeatable)")
    tr.add_argument("--config", default=None,
                    help="config name in trainer/configs/ (default, small, tiny) or a .toml file "
                         "(default: default, sized for a GPU; tiny trains on a CPU)")
    tr.add_argument("--steps", type=int, default=None, help="optimizer steps (total, with resume)")
    tr.add_argument("--out", required=True, metavar="RUN", help="run directory")
    tr.add_argument("--resume", action="store_true",
                    help="continue RUN from RUN/checkpoints/last.pt with the run's saved config; "
                         "--steps, --log-every, --ckpt-every, --workers, --device, --val-every "
                         "and --[no-]tensorboard apply, other flags (and --config) that differ "
                         "from the saved values are refused")
    tr.add_argument("--mix", choices=MIX_MODES, default=None,
                    help="how datasets are mixed: naive (one pool, sampling weights), "
                         "balanced (an equal share of each per batch: the paper's naive "
                         "mixing), pareto (the paper's Pareto-optimal mixing of their losses)")
    tr.add_argument("--balance", choices=BALANCE_MODES, default=None,
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
    tr.add_argument("--amp", choices=AMP_MODES, default=None,
                    help="mixed precision (auto: fp16 on CUDA, off on the CPU)")
    tr.add_argument("--device", choices=DEVICES, default=None,
                    help="where to train (auto: CUDA when there is one)")
    tr.add_argument("--seed", type=int, default=None,
                    help="seed of the data order, augmentation and initial weights")
    tr.add_argument("--log-every", type=int, default=None, metavar="N",
                    help="a progress line and a metrics.jsonl record every N steps")
    tr.add_argument("--ckpt-every", type=int, default=None, metavar="N",
                    help="write RUN/checkpoints/last.pt every N steps")
    tr.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                    help="also log to RUN/tensorboard (needs pip install tensorboard)")
    tr.add_argument("--val", action="append", default=[], metavar="SPEC",
                    help="a validation dataset with true labels, TYPE:PATH[,key=value...] as "
                         "--data (not a corpus), scored as eval does; RUN/checkpoints/best.pt "
                         "keeps the best step (repeatable)")
    tr.add_argument("--val-every", type=int, default=None, metavar="N",
                    help="validate every N steps (and at the last)")
    tr.add_argument("--val-metric", default=None, choices=VAL_METRICS,
                    help="the metric best.pt minimises, mean over the --val datasets "
                         "(default absrel)")
    tr.add_argument("--quiet", action="store_true", help="no progress lines")
    _common(tr)
    tr.set_defaults(handler=_run_train)

    ev = subparsers.add_parser(
        "eval", help="zero-shot evaluation of a checkpoint on a dataset with ground truth",
        description="Predict, fit scale and shift by least squares in disparity space per "
                    "image, convert to depth (capped) for depth datasets, and report AbsRel, "
                    "delta > 1.25 (%), RMSE and, for ordinal labels, WHDR (%) as JSON.")
    ev.add_argument("--checkpoint", required=True, metavar="CK",
                    help="a checkpoint written by filmmine train (RUN/checkpoints/*.pt)")
    ev.add_argument("--dataset", required=True, metavar="DIR",
                    help="a dataset with ground truth, in one of the layouts of --type")
    ev.add_argument("--type", default="auto", choices=["auto", *SOURCES],
                    help="the dataset's layout (default: detected, in this order): "
                         + "; ".join(f"{k}: {c.help}" for k, c in SOURCES.items()))
    ev.add_argument("--label", choices=LABEL_KINDS, default=None,
                    help="what the labels are (default: the type's own; nyu: depth, others: "
                         "disparity)")
    ev.add_argument("--scale", type=float, default=None,
                    help="stored label unit -> m or px (default: the type's own, e.g. kitti "
                         "1/256, nyu PNG 0.001, middlebury0103 per scene, others 1)")
    ev.add_argument("--invalid", type=float, default=None, help="stored value with no label")
    ev.add_argument("--cap", type=float, default=None,
                    help="depth cap in metres (default: nyu 10, others none; paper: 10 "
                         "NYU/TUM, 72 ETH3D/Sintel, 80 KITTI)")
    ev.add_argument("--size", type=int, default=None, help="inference longer side (default 384)")
    ev.add_argument("--device", choices=DEVICES, default="auto",
                    help="where to run the model (auto: CUDA when there is one)")
    ev.add_argument("--out", default=None, metavar="FILE", help="also write the JSON here")
    _common(ev)
    ev.set_defaults(handler=_run_eval)

    pr = subparsers.add_parser(
        "predict", help="write disparity maps for images, folders, globs and videos",
        description="Relative disparity (near = bright) per image, and per kept frame of a "
                    "video: OUT/NAME.png coloured, and with --raw NAME.disp16.png (16-bit, "
                    "normalised per image), NAME.npy and NAME.pfm (float32). NAME is the "
                    "input's stem (a frame: STEM_fNNNNNN); inputs sharing a stem get their "
                    "folders in it (a/x.jpg, b/x.jpg: a_x, b_x). OUT is made only when "
                    "something is written.")
    pr.add_argument("images", nargs="+", metavar="INPUT",
                    help="an image, a directory (its images and videos, recursively), a quoted "
                         "glob ('shots/**/*.jpg') or a video")
    pr.add_argument("--checkpoint", required=True, metavar="CK",
                    help="a checkpoint written by filmmine train (RUN/checkpoints/*.pt)")
    pr.add_argument("--out", required=True, metavar="DIR",
                    help="folder for the predictions (made when the first one is written)")
    pr.add_argument("--every", type=int, default=None, metavar="N",
                    help="videos: predict every Nth frame from the first (default: one frame "
                         "per second, N = the rounded frame rate)")
    pr.add_argument("--raw", default="", metavar="FORMATS",
                    help="also write the raw prediction beside the coloured PNG: any of "
                         f"{', '.join(RAW_FORMATS)}, comma-separated")
    pr.add_argument("--size", type=int, default=None, help="inference longer side (default 384)")
    pr.add_argument("--device", choices=DEVICES, default="auto",
                    help="where to run the model (auto: CUDA when there is one)")
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
    """The config file, then the flags that were given. On --resume the run's own config
    (RUN/config.json): the flags in config.RESUMABLE apply; others (and --config) that differ
    from the saved values are refused, so none is silently ignored."""
    from pathlib import Path

    from .config import TrainConfig, load_config, resumed_config

    saved_path = Path(args.out) / "config.json"
    last = Path(args.out) / "checkpoints" / "last.pt"
    if not (args.resume and last.is_file() and saved_path.is_file()):
        return _with_flags(load_config(args.config or "default"), args)
    try:
        saved = TrainConfig.from_dict(json.loads(saved_path.read_text()))
    except ValueError as e:
        raise TrainerError(f"{saved_path}: {e}") from None
    base = saved
    if args.config:  # compared with the run's config; its run settings are not flags
        base = resumed_config(load_config(args.config), saved)
        base.data.datasets = base.data.datasets or saved.data.datasets
        base.val.datasets = base.val.datasets or saved.val.datasets
    cfg = _with_flags(TrainConfig.from_dict(base.to_dict()), args)
    _refuse_changes(saved, cfg, args)
    return cfg


def _with_flags(cfg, args: argparse.Namespace):
    from .sources import DatasetSpec

    specs = [DatasetSpec(type="corpus", path=p) for p in args.corpus]
    specs += [DatasetSpec.parse(s) for s in args.data]
    if specs:
        cfg.data.datasets = specs
    if args.val:
        cfg.val.datasets = [DatasetSpec.parse(s) for s in args.val]
    for arg, key in TRAIN_FLAGS.items():
        v = getattr(args, arg, None)
        if v is not None:
            *path, name = key.split(".")
            obj = cfg
            for part in path:
                obj = getattr(obj, part)
            setattr(obj, name, v)
    if args.pretrained:
        cfg.model.pretrained = True
    cfg.run.check()
    cfg.val.check()
    return cfg


def _refuse_changes(saved, cfg, args: argparse.Namespace) -> None:
    """One line naming each flag whose value differs from the resumed run's, with both."""
    from .config import resume_conflicts

    changed = resume_conflicts(saved, cfg)
    if not changed:
        return
    given = {key: "--" + arg.replace("_", "-") for arg, key in TRAIN_FLAGS.items()
             if getattr(args, arg, None) is not None}
    for key, flag, value in (("data.datasets", "--corpus/--data", args.corpus + args.data),
                             ("val.datasets", "--val", args.val),
                             ("model.pretrained", "--pretrained", args.pretrained)):
        if value:
            given[key] = flag

    def show(v) -> str:
        if isinstance(v, list) and all(isinstance(d, dict) for d in v):
            return " ".join(f"{d['type']}:{d['path']}" for d in v) or "none"
        return str(v)

    parts = [f"{given.get(k, f'--config {args.config}: {k}')} {show(want)} (saved {show(was)})"
             for k, (want, was) in changed.items()]
    raise TrainerError(f"--resume continues {args.out} with its saved config, and these "
                       f"differ: {'; '.join(parts)}; leave them out, or train into a new --out")


def _progress_to_stderr(quiet: bool) -> None:
    """Plain lines on the current stderr (a caller or a test may have replaced it since the
    last command in this process)."""
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    for h in [h for h in log.handlers if h.get_name() == "filmmine-progress"]:
        log.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.set_name("filmmine-progress")
    h.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(h)
    log.propagate = False


@_guard
def _run_train(args: argparse.Namespace) -> int:
    _progress_to_stderr(args.quiet)
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
    from .predict import parse_raw, predict_files

    _out_dir(args.out, "predictions")
    report = predict_files(args.images, args.checkpoint, args.out, size=args.size,
                           device=args.device, every=args.every, raw=parse_raw(args.raw))
    for p in report.written:
        print(p)
    return 1 if report.skipped else 0  # some input could not be read (each logged)
