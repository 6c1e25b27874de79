"""Disparity backends measured against ground truth: the table to pick a backend and thresholds.

Every backend runs the full disparity stage (``compute_disparity``: both flow directions,
left-right and vertical checks, speckle filter, post-filter) with the recipe's ``[disparity]``
table, on the pairs with ground truth of ``bench_data``: real ones (Middlebury, KITTI,
Argoverse, as laid out in ``../shared/data``; scikit-image's Motorcycle) and synthetic film
frames.

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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..flow import FlowBackend, backend_options, get_backend
from ..recipe import load_recipe, validate_recipe
from ..stages.disparity import compute_disparity
from .bench_data import Pair, default_data_dir, discover, load_motorcycle, synthetic_pairs

log = logging.getLogger(__name__)

CPU_ONLY = ("dis", "sgbm")


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
