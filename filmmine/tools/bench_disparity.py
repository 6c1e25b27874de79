"""Disparity backends measured against ground truth: the table to pick a backend and thresholds.

Every backend runs the full disparity stage (``compute_disparity``: both flow directions,
left-right and vertical checks, speckle filter, post-filter) with the recipe's ``[disparity]``
table, on:

* Middlebury-format folders (``im0.png``, ``im1.png``, ``disp0GT.pfm``; optional
  ``disp0GTy.pfm`` vertical ground truth), e.g. MiddEval3's imperfectly rectified Motorcycle;
* Middlebury 2003 Cones (``left.png``, ``right.png``, ``disp_left.tif``) and a KITTI 2015 frame
  (``image_2_*``, ``image_3_*``, ``disp_occ_0_*``) as laid out in ``../shared/data``;
* scikit-image's Middlebury 2014 Motorcycle (perfect rectification);
* synthetic film frames (``filmmine.synth`` textured shots, exact truth, rendered in memory).

Metrics per pair, over pixels with both a label and ground truth: bad-k = % with
``|d - gt| > k`` px, EPE = mean ``|d - gt|`` px; density = % of ground-truth pixels that got a
label; ``vEPE`` = mean ``|v - gt_dy|`` of the vertical flow where vertical truth exists. A
dataset row averages its pairs; ``real`` averages the real pairs. ms/pair is the median wall
time of one ``compute_disparity`` call on one pair (after a warm-up call); pairs/s is measured
separately on batches of ``--batch`` pairs of the same size.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..flow import FlowBackend, backend_options, get_backend
from ..recipe import load_recipe, validate_recipe
from ..stages.disparity import compute_disparity

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
CPU_ONLY = ("dis", "sgbm")


@dataclass
class Pair:
    """A grey stereo pair with left-view ground truth (NaN = unknown)."""

    dataset: str
    name: str
    left: np.ndarray                 # [H, W] uint8
    right: np.ndarray                # [H, W] uint8
    gt: np.ndarray                   # [H, W] float32 px, d = x_left - x_right
    gt_dy: np.ndarray | None = None  # [H, W] float32 px, y_right - y_left
    real: bool = True
    occluded: np.ndarray | None = None  # [H, W] bool: ground truth seen by the left view only


# --------------------------------------------------------------------------------------------
# Datasets


def read_pfm(path: Path) -> np.ndarray:
    """One-channel PFM (Middlebury), flipped to top row first; +inf stays inf."""
    with Path(path).open("rb") as f:
        if f.readline().strip() != b"Pf":
            raise ValueError(f"{path}: not a one-channel PFM file")
        w, h = map(int, f.readline().split())
        scale = float(f.readline())
        data = np.fromfile(f, "<f4" if scale < 0 else ">f4", count=w * h)
    return np.flipud(data.reshape(h, w)).copy()


def _grey(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return img


def _finite(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a), a, np.nan).astype(np.float32)


def _mask(path: Path) -> np.ndarray | None:
    """A grey mask image, None when there is no such file."""
    if not path.is_file():
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"cannot read mask {path}")
    return mask


def load_middlebury(folder: Path) -> Pair:
    """``im0.png``, ``im1.png``, ``disp0GT.pfm`` (+inf = unknown), optional ``disp0GTy.pfm``
    and ``mask0nocc.png`` (255 = seen by both views, 128 = occluded)."""
    folder = Path(folder)
    dy = folder / "disp0GTy.pfm"
    mask = _mask(folder / "mask0nocc.png")
    return Pair(folder.name, folder.name, _grey(folder / "im0.png"), _grey(folder / "im1.png"),
                _finite(read_pfm(folder / "disp0GT.pfm")),
                _finite(read_pfm(dy)) if dy.is_file() else None,
                occluded=None if mask is None else mask == 128)


def load_middlebury2003(folder: Path) -> Pair:
    """``left.png``, ``right.png``, ``disp_left.tif`` (float32 px, 0 = unknown), optional
    ``occlusion.png`` (255 = seen by both views)."""
    import tifffile

    folder = Path(folder)
    gt = tifffile.imread(folder / "disp_left.tif").astype(np.float32)
    mask = _mask(folder / "occlusion.png")
    return Pair(folder.name, folder.name, _grey(folder / "left.png"),
                _grey(folder / "right.png"), np.where(gt > 0, gt, np.nan).astype(np.float32),
                occluded=None if mask is None else mask != 255)


# Middlebury 2001/2003 scenes: (left, right, left ground truth, the 8-bit scale), which the
# files do not hold (Scharstein & Szeliski's pages; SOURCES.md)
MIDDLEBURY_0103 = {"teddy": ("im2.png", "im6.png", "disp2.png", 4.0),
                   "cones": ("im2.png", "im6.png", "disp2.png", 4.0),
                   "tsukuba": ("im3.png", "im4.png", "disp3.pgm", 16.0),
                   "venus": ("im2.png", "im6.png", "disp2.pgm", 8.0)}


def _scaled_png(path: Path, scale: float) -> np.ndarray:
    """An integer disparity image as px (value / scale), NaN where 0 (no ground truth)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot read disparity {path}")
    if raw.ndim == 3:
        raw = raw[..., 0]
    return np.where(raw > 0, raw.astype(np.float32) / scale, np.nan).astype(np.float32)


def load_middlebury0103(folder: Path) -> Pair:
    """A Middlebury 2001/2003 scene folder (``teddy``, ``cones``, ``tsukuba``, ``venus``), its
    8-bit ground truth divided by the scene's scale."""
    folder = Path(folder)
    lf, rf, gf, scale = MIDDLEBURY_0103[folder.name.lower()]
    return Pair("middlebury2001_2003", folder.name, _grey(folder / lf), _grey(folder / rf),
                _scaled_png(folder / gf, scale))


def load_argoverse(folder: Path) -> Pair:
    """An Argoverse 1.1 stereo pair: ``stereo_front_left_rect_N.jpg``, ``..._right_...`` and
    ``disparity_N.png`` (uint16, d = value / 256, 0 = none: sparse LiDAR)."""
    folder = Path(folder)
    left = sorted(folder.glob("stereo_front_left_rect_*.jpg"))[0]
    n = left.stem.rsplit("_", 1)[1]
    return Pair("argoverse", n, _grey(left), _grey(folder / f"stereo_front_right_rect_{n}.jpg"),
                _scaled_png(folder / f"disparity_{n}.png", 256.0))


def load_kitti(folder: Path) -> Pair:
    """KITTI 2015 frame: ``image_2_*`` left, ``image_3_*`` right, ``disp_occ_0_*`` (value/256,
    0 = no ground truth)."""
    folder = Path(folder)
    left = sorted(folder.glob("image_2_*.png"))[0]
    stem = left.name[len("image_2_"):]
    raw = cv2.imread(str(folder / f"disp_occ_0_{stem}"), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot read KITTI disparity in {folder}")
    gt = np.where(raw > 0, raw.astype(np.float32) / 256.0, np.nan).astype(np.float32)
    return Pair(folder.name, stem, _grey(left), _grey(folder / f"image_3_{stem}"), gt)


def load_motorcycle() -> Pair | None:
    """scikit-image's Middlebury 2014 Motorcycle (perfect rectification; +inf = unknown)."""
    try:
        from skimage import data
    except ImportError:
        return None
    left, right, gt = data.stereo_motorcycle()
    return Pair("skimage_motorcycle", "motorcycle", cv2.cvtColor(left, cv2.COLOR_RGB2GRAY),
                cv2.cvtColor(right, cv2.COLOR_RGB2GRAY), _finite(gt))


def synthetic_pairs(n: int, size: tuple[int, int] = (320, 180), seed: int = 0) -> list[Pair]:
    """``n`` frames of textured synthetic shots (``filmmine.synth``), exact ground truth."""
    from .. import synth

    out: list[Pair] = []
    w, h = size
    shot = 0
    while len(out) < n:
        spec = synth.FilmSpec(shots=(synth.ShotSpec("textured", 48, seed=seed + shot + 1),),
                              view_width=w, view_height=h, seed=seed + shot)
        for frame in (6, 30):
            if len(out) == n:
                break
            left, right, gt = synth.render_frame(spec, frame)
            out.append(Pair(f"synthetic_{w}x{h}", f"shot{shot}_f{frame}",
                            cv2.cvtColor(left, cv2.COLOR_RGB2GRAY),
                            cv2.cvtColor(right, cv2.COLOR_RGB2GRAY), gt, real=False))
        shot += 1
    return out


def default_data_dir() -> Path:
    return Path(os.environ.get("FILMMINE_DATA", REPO.parent / "shared" / "data"))


def _load_folder(folder: Path) -> Pair | None:
    """The pair a folder holds in one of the known layouts, else None."""
    if (folder / "im0.png").is_file() and (folder / "disp0GT.pfm").is_file():
        pair = load_middlebury(folder)
        # MiddEval3's scenes: its training folder's, and the imperfect Motorcycle beside it
        if folder.parent.name.lower().startswith("middeval3") or \
                folder.name.startswith("middlebury2014_"):
            scene = "Motorcycle" if folder.name.startswith("middlebury2014_") else folder.name
            pair.dataset, pair.name = "middeval3", scene
        return pair
    if (folder / "left.png").is_file() and (folder / "disp_left.tif").is_file():
        return load_middlebury2003(folder)
    if folder.name.lower() in MIDDLEBURY_0103 and \
            (folder / MIDDLEBURY_0103[folder.name.lower()][2]).is_file():
        return load_middlebury0103(folder)
    if list(folder.glob("image_2_*.png")) and list(folder.glob("disp_occ_0_*.png")):
        return load_kitti(folder)
    if list(folder.glob("stereo_front_left_rect_*.jpg")) and list(folder.glob("disparity_*.png")):
        return load_argoverse(folder)
    return None


def discover(paths: list[Path]) -> list[Pair]:
    """Pairs found in the given folders, their subfolders and theirs (a data folder holding
    MiddEval3's ``trainingQ/SCENE``, Middlebury 2001/2003's ``SCENE``, KITTI, Argoverse)."""
    pairs: list[Pair] = []
    for root in paths:
        root = Path(root)
        level = [root]
        for _depth in range(3):
            below = []
            for folder in level:
                pair = _load_folder(folder)
                if pair is not None:
                    pairs.append(pair)
                elif folder.is_dir():
                    below += sorted(p for p in folder.iterdir() if p.is_dir())
            level = below
    return pairs


# --------------------------------------------------------------------------------------------
# Metrics


def evaluate(disparity: np.ndarray, gt: np.ndarray, vertical: np.ndarray | None = None,
             gt_dy: np.ndarray | None = None,
             occluded: np.ndarray | None = None) -> dict[str, float]:
    """bad-1/2/4 (%), EPE (px), density (% of ground-truth pixels labelled), vEPE (px); with an
    occlusion mask also bad-2 and density over the ground truth both views see (``_nocc``),
    the share of the ground truth that is occluded and bad-2 of the labels there (``_occ``)."""
    has_gt = np.isfinite(gt)
    labelled = np.isfinite(disparity)
    both = labelled & has_gt
    err = np.abs(disparity - gt)[both]
    nan = float("nan")
    out = {
        "bad1": float((err > 1).mean() * 100) if err.size else nan,
        "bad2": float((err > 2).mean() * 100) if err.size else nan,
        "bad4": float((err > 4).mean() * 100) if err.size else nan,
        "epe": float(err.mean()) if err.size else nan,
        "density": float(both.sum() / max(has_gt.sum(), 1) * 100),
        "vepe": nan, "bad2_nocc": nan, "density_nocc": nan, "occluded": nan, "bad2_occ": nan,
    }
    if occluded is not None:
        with np.errstate(invalid="ignore"):
            wrong = np.abs(disparity - gt) > 2                     # NaN compares False
        for part, where in (("nocc", has_gt & ~occluded), ("occ", has_gt & occluded)):
            got = where & labelled
            if got.any():
                out[f"bad2_{part}"] = float(wrong[got].mean() * 100)
            if part == "nocc":
                out["density_nocc"] = float(got.sum() / max(where.sum(), 1) * 100)
        out["occluded"] = float((has_gt & occluded).sum() / max(has_gt.sum(), 1) * 100)
    if vertical is not None and gt_dy is not None:
        vb = both & np.isfinite(gt_dy) & np.isfinite(vertical)
        if vb.any():
            out["vepe"] = float(np.abs(vertical - gt_dy)[vb].mean())
    return out


@dataclass
class Row:
    backend: str
    dataset: str
    pairs: int
    bad1: float
    bad2: float
    bad4: float
    epe: float
    density: float
    vepe: float
    ms_per_pair: float
    pairs_per_s: float
    device: str
    setting: str = ""        # the --sweep value of this row ("" = the recipe's)
    # over the pairs with an occlusion mask (NaN: none): bad-2 and density on the ground truth
    # both views see, the share of the ground truth only the left view sees, bad-2 there
    bad2_nocc: float = float("nan")
    density_nocc: float = float("nan")
    occluded: float = float("nan")
    bad2_occ: float = float("nan")


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if np.isfinite(r[key])]
    return float(np.mean(vals)) if vals else float("nan")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_backend(backend: FlowBackend, pairs: list[Pair], cfg: dict, device: str,
                  batch: int, setting: str = "") -> list[Row]:
    """Rows per scene, per dataset of several scenes (its mean) and ``real`` (the mean over
    every real pair) for one backend."""
    name = backend.name
    # warm-up: lazy allocations, cuDNN/kernel selection
    compute_disparity([pairs[0].left], [pairs[0].right], backend, cfg)
    per: dict[str, list[dict]] = {}
    scenes: dict[str, list[dict]] = {}
    for p in pairs:
        _sync(device)
        t0 = time.perf_counter()
        res = compute_disparity([p.left], [p.right], backend, cfg)[0]
        _sync(device)
        ms = (time.perf_counter() - t0) * 1000
        m = evaluate(res.disparity, p.gt, res.vertical, p.gt_dy, p.occluded)
        m["ms"] = ms
        per.setdefault(p.dataset, []).append(m)
        if p.real:
            scenes[f"{p.dataset}/{p.name}"] = [m]
        log.info("%s %s/%s: %s", name, p.dataset, p.name, m)
    groups: dict[str, list[dict]] = {}
    for ds, ms in per.items():
        # a real dataset of several scenes: a row per scene, then the set's mean
        many = [k for k in scenes if k.startswith(f"{ds}/")]
        if len(many) > 1:
            groups.update({k: scenes[k] for k in many})
        groups[ds if len(many) <= 1 else f"{ds} (mean)"] = ms
    real_sets = {p.dataset for p in pairs if p.real}
    real = [m for ds, ms in per.items() if ds in real_sets for m in ms]
    if real and len(groups) > 1:
        groups["real"] = real
    rows = []
    for ds, ms in groups.items():
        if batch > 1:
            key = ds.removesuffix(" (mean)").split("/")[0]
            same = [p for p in pairs if p.dataset == key] or [p for p in pairs if p.real]
            rate = throughput(backend, same[0], cfg, device, batch)
        else:
            rate = 1000.0 * len(ms) / sum(m["ms"] for m in ms)
        rows.append(Row(name, ds, len(ms), _mean(ms, "bad1"), _mean(ms, "bad2"),
                        _mean(ms, "bad4"), _mean(ms, "epe"), _mean(ms, "density"),
                        _mean(ms, "vepe"), float(np.median([m["ms"] for m in ms])), rate,
                        device, setting, *(_mean(ms, k) for k in OCCLUSION_KEYS)))
    return rows


def throughput(backend, pair: Pair, cfg: dict, device: str, batch: int) -> float:
    """Pairs per second on one call with ``batch`` copies of a pair (after a warm-up call)."""
    lefts, rights = [pair.left] * batch, [pair.right] * batch
    compute_disparity(lefts, rights, backend, cfg)
    _sync(device)
    t0 = time.perf_counter()
    compute_disparity(lefts, rights, backend, cfg)
    _sync(device)
    return batch / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# Report

OCCLUSION_KEYS = ("bad2_nocc", "density_nocc", "occluded", "bad2_occ")
COLUMNS = (("backend", "{:<11}"), ("dataset", "{:<32}"), ("pairs", "{:>5}"),
           ("bad1", "{:>6.2f}"), ("bad2", "{:>6.2f}"), ("bad4", "{:>6.2f}"), ("epe", "{:>6.3f}"),
           ("density", "{:>7.1f}"), ("vepe", "{:>6.3f}"), ("ms_per_pair", "{:>9.0f}"),
           ("pairs_per_s", "{:>8.2f}"), ("device", "{:<6}"))
# shown when some pair has an occlusion mask
OCCLUSION_COLUMNS = (("bad2_nocc", "{:>9.2f}"), ("density_nocc", "{:>9.1f}"),
                     ("occluded", "{:>6.1f}"), ("bad2_occ", "{:>8.1f}"))
HEADERS = {"bad1": "bad-1%", "bad2": "bad-2%", "bad4": "bad-4%", "epe": "EPE",
           "density": "dens.%", "vepe": "vEPE", "ms_per_pair": "ms/pair",
           "pairs_per_s": "pairs/s", "bad2_nocc": "bad-2 noc", "density_nocc": "dens. noc",
           "occluded": "occ.%", "bad2_occ": "bad-2 occ"}


def _width(fmt: str) -> int:
    spec = fmt.split(":")[1].rstrip("}").lstrip("<>")
    return int(spec.split(".")[0])


def format_table(rows: list[Row]) -> str:
    def cell(key: str, fmt: str, value) -> str:
        if isinstance(value, float) and not np.isfinite(value):
            return "-".rjust(_width(fmt))
        return fmt.format(value)

    columns = COLUMNS
    if any(np.isfinite(r.density_nocc) for r in rows):
        columns = (*COLUMNS[:-3], *OCCLUSION_COLUMNS, *COLUMNS[-3:])
    if any(r.setting for r in rows):  # a sweep: its value after the backend
        wide = max(len(r.setting) for r in rows)
        columns = (columns[0], ("setting", f"{{:<{max(wide, 7)}}}"), *columns[1:])
    head = [(HEADERS.get(k, k).ljust(_width(f)) if "<" in f else HEADERS.get(k, k).rjust(_width(f)))
            for k, f in columns]
    lines = [" ".join(head).rstrip()]
    for r in rows:
        d = asdict(r)
        lines.append(" ".join(cell(k, f, d[k]) for k, f in columns).rstrip())
    return "\n".join(lines)


def _parse_set(items: list[str]) -> dict:
    import tomllib

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value                          # a bare string
    return out


def _parse_sweep(text: str | None, cfg: dict) -> tuple[str, list]:
    """``KEY=V1,V2,...`` -> (key, values); no sweep: ("", [None])."""
    if not text:
        return "", [None]
    key, sep, values = text.partition("=")
    if not sep or not values:
        raise ValueError(f"--sweep takes KEY=V1,V2,..., got {text!r}")
    if key not in cfg:
        raise ValueError(f"unknown [disparity] key in --sweep: {key!r}")
    return key, [_parse_set([f"{key}={v.strip()}"])[key] for v in values.split(",")]


def run(args: argparse.Namespace) -> dict:
    """Build the pairs, run every backend; returns the JSON-able report."""
    recipe = load_recipe(args.recipe)
    cfg = dict(recipe["disparity"])
    overrides = _parse_set(args.set or [])
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown [disparity] keys in --set: {unknown}")
    cfg.update(overrides)
    validate_recipe({**recipe, "disparity": cfg})
    sweep_key, sweep_values = _parse_sweep(getattr(args, "sweep", None), cfg)
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs: list[Pair] = []
    if not args.no_real:
        data = [Path(p) for p in args.data] if args.data else [default_data_dir()]
        pairs += discover([p for p in data if p.exists()])
        moto = load_motorcycle()
        if moto is not None:
            pairs.insert(0, moto)
    if args.synthetic:
        pairs += synthetic_pairs(args.synthetic, args.synthetic_size)
    if not pairs:
        raise ValueError("no stereo pairs found (give --data or --synthetic N)")
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    for name in names:
        options = {}
        if name == "raft":
            weights = args.raft_weights or cfg.get("raft_weights", "")
            if not weights:
                skipped[name] = "no RAFT weights (give --raft-weights PATH)"
                continue
            options["raft_weights"] = weights
        # the OpenCV baselines run on the CPU whatever --device says (the row tells)
        device = "cpu" if name in CPU_ONLY else args.device
        for value in sweep_values:
            c = cfg if value is None else dict(cfg, **{sweep_key: value})
            try:
                backend = get_backend(name, device=device, **dict(backend_options(c), **options))
            except ValueError as e:            # a backend that cannot run here: say so, go on
                skipped[name] = str(e)
                break
            setting = "" if value is None else f"{sweep_key}={value}"
            rows += bench_backend(backend, pairs, c, device, args.batch, setting)
    return {"device": args.device, "torch_threads": torch.get_num_threads(),
            "batch": args.batch, "overrides": overrides,
            "sweep": {sweep_key: sweep_values} if sweep_key else None,
            "rows": [asdict(r) for r in rows],
            "skipped": skipped,
            "pairs": [{"dataset": p.dataset, "name": p.name, "size": [p.left.shape[1],
                                                                      p.left.shape[0]]}
                      for p in pairs]}
