"""The frame checks as a classifier, measured on real footage: ``filmmine bench-checks``.

A recipe's filters and disparity verdicts decide which frames become samples. This benchmark
runs them (the stages ``extract`` runs: crop and resize, filters, disparity with its checks)
on a labelled set made from the real data in ``../shared/data`` (``SOURCES.md``):

* **positives**: real rectified stereo, which a miner should keep: MiddEval3 and Middlebury
  2001/2003 scenes, KITTI and Argoverse (with ground truth), ETH3D, SouthKensington, the fence,
  the OAK-D video rectified with its factory calibration, and the cut clips in their three
  layouts (candidates on the recipe's sampling grid, not near a cut);
* **negatives**, which it should reject: the positives' right view moved down by 1-4 px,
  rotated by 0.25-1 degree about its centre, scaled vertically by 1 % (px and angles in the
  stored image, where labels live), a mono copy (right = left), a dark copy; the raw,
  unrectified OAK-D video and the shipboard pairs; the synthetic films' bad shots.

It prints, per recipe: the acceptance rate of each positive group, the rejection rate of each
negative group with its top reasons, and bad-2 / density / EPE of the accepted frames with
ground truth (per scene with ``--per-scene``). Recipes are compared in one run (``--recipes``);
``--data`` reads another folder laid out as ``../shared/data``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..flow import FlowBackend, get_backend
from ..recipe import apply_overrides, load_recipe
from ..run.unit import backend_options, prepare_views
from ..stages import filters
from ..stages.disparity import compute_disparity
from .bench_check_set import (
    NEGATIVE_GROUPS,
    POSITIVE_GROUPS,
    REPORT_ONLY,
    Pair,
    build_set,
)
from .bench_data import default_data_dir
from .bench_disparity import evaluate

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Running a recipe over the set


@dataclass
class Verdict:
    group: str
    name: str
    positive: bool
    accepted: bool
    reason: str | None
    stage: str
    evidence: dict[str, float]
    metrics: dict[str, float] | None = None   # against ground truth, when accepted and known


def _stored_gt(gt: np.ndarray, crop: tuple, size: tuple[int, int]) -> np.ndarray:
    """Ground truth of the stored image: cropped as the views, resized (nearest), scaled."""
    x, y, w, h = crop
    g = gt[y:y + h, x:x + w]
    if (w, h) != size:
        g = cv2.resize(np.nan_to_num(g, nan=-1e6), size, interpolation=cv2.INTER_NEAREST)
        g = np.where(g > -1e5, g * (size[0] / w), np.nan).astype(np.float32)
    return g


def judge(pairs: list[Pair], packed: dict[int, tuple[np.ndarray, str]], recipe: dict,
          backend: FlowBackend) -> Iterator[Verdict]:
    """The verdict on every pair: crop and resize, filters, disparity and its checks, as a
    work unit runs them (the frozen test sees the previous candidate of the pair's sequence)."""
    prev: dict[str, np.ndarray] = {}
    dcfg = recipe["disparity"]
    for p in pairs:
        if id(p) in packed:
            full, layout = packed[id(p)]
        else:
            full, layout = np.hstack([p.left, p.right]), "sbs"
        left, right, crop, _ = prepare_views(full, layout, recipe)
        if p.perturb is not None:
            right = p.perturb(right)
        gl, gr = filters.luma(left), filters.luma(right)
        before = prev.get(p.sequence) if p.sequence else None
        if p.sequence:
            prev[p.sequence] = gl
        scores = filters.score_frame(left, right, before, (gl, gr))
        reason = filters.decide(scores, recipe["filters"])
        if reason is not None:
            yield Verdict(p.group, p.name, p.positive, False, reason, "filter", scores)
            continue
        res = compute_disparity([gl], [gr], backend, dcfg)[0]
        metrics = None
        if res.reason is None and p.gt is not None:
            gt = _stored_gt(p.gt, crop, (left.shape[1], left.shape[0]))
            metrics = evaluate(res.disparity, gt)
        yield Verdict(p.group, p.name, p.positive, res.reason is None, res.reason,
                      "disparity", {**scores, **res.stats}, metrics)


def summarise(verdicts: list[Verdict]) -> dict:
    """Per group: frames, accepted, the rate that counts (acceptance of a positive group,
    rejection of a negative one), top reasons; ground-truth metrics of accepted frames."""
    by: dict[str, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        by[v.group].append(v)
    groups = {}
    for g, vs in by.items():
        acc = sum(v.accepted for v in vs)
        reasons = Counter(v.reason for v in vs if not v.accepted)
        row = {"frames": len(vs), "accepted": acc, "positive": vs[0].positive,
               "rate": (acc if vs[0].positive else len(vs) - acc) / len(vs),
               "reasons": dict(reasons.most_common())}
        gt = [v.metrics for v in vs if v.metrics is not None]
        if gt:
            row.update(gt_frames=len(gt), bad2=float(np.mean([m["bad2"] for m in gt])),
                       density=float(np.mean([m["density"] for m in gt])),
                       epe=float(np.mean([m["epe"] for m in gt])))
        groups[g] = row
    scenes = {f"{v.group}/{v.name}": {"accepted": v.accepted, "reason": v.reason,
                                       **({k: v.metrics[k] for k in ("bad2", "density", "epe")}
                                          if v.metrics else {})}
              for v in verdicts if (v.positive and v.metrics is not None) or
              (v.positive and v.group in ("middeval3", "middlebury01_03", "kitti",
                                          "argoverse"))}
    gt_all = [v.metrics for v in verdicts if v.metrics is not None]
    return {"groups": groups, "scenes": scenes,
            "gt_mean": ({"frames": len(gt_all),
                         "bad2": float(np.mean([m["bad2"] for m in gt_all])),
                         "density": float(np.mean([m["density"] for m in gt_all])),
                         "epe": float(np.mean([m["epe"] for m in gt_all]))} if gt_all else None)}


def run(recipes: list[str], data: Path | None = None, groups: set[str] | None = None,
        overrides: dict | None = None, device: str = "cpu",
        keep_verdicts: bool = False) -> dict:
    """Every recipe over the set, in one run."""
    data = Path(data) if data is not None else default_data_dir()
    report = {"data": str(data), "recipes": {}}
    for name in recipes:
        recipe = apply_overrides(load_recipe(name), overrides or {})
        t0 = time.perf_counter()
        cs = build_set(data, recipe, groups)
        backend = get_backend(recipe["disparity"]["backend"], device=device,
                              **backend_options(recipe))
        verdicts = list(judge(cs.pairs, cs.packed, recipe, backend))
        out = summarise(verdicts)
        out["seconds"] = time.perf_counter() - t0
        if keep_verdicts:
            out["verdicts"] = [v.__dict__ for v in verdicts]
        report["recipes"][name] = out
    return report


def format_report(report: dict, per_scene: bool = False) -> str:
    names = list(report["recipes"])
    groups: list[str] = []
    for r in report["recipes"].values():
        groups += [g for g in r["groups"] if g not in groups]
    order = [g for g in (*POSITIVE_GROUPS, *NEGATIVE_GROUPS) if g in groups] + \
        [g for g in groups if g not in POSITIVE_GROUPS + NEGATIVE_GROUPS]
    w = max(14, *(len(n) for n in names))
    lines = [f"{'group':20s} {'kind':8s} " + " ".join(f"{n:>{w}s}" for n in names)]

    def cell(r: dict | None) -> str:
        if r is None:
            return f"{'-':>{w}s}"
        hits = r["accepted"] if r["positive"] else r["frames"] - r["accepted"]
        return f"{r['rate'] * 100:5.1f}% ({hits}/{r['frames']})".rjust(w)

    for g in order:
        rows = [report["recipes"][n]["groups"].get(g) for n in names]
        first = next(r for r in rows if r is not None)
        kind = "accept" if first["positive"] else "reject"
        if g in REPORT_ONLY:
            kind += "*"
        lines.append(f"{g:20s} {kind:8s} " + " ".join(cell(r) for r in rows))
    lines.append("")
    lines.append("accepted frames with ground truth (mean over frames): bad-2 % / density % / "
                 "EPE px / frames")
    for n in names:
        m = report["recipes"][n]["gt_mean"]
        if m:
            lines.append(f"  {n:{w}s} {m['bad2']:6.2f} / {m['density']:5.1f} / "
                         f"{m['epe']:5.2f} / {m['frames']}")
        for g, r in report["recipes"][n]["groups"].items():
            if "gt_frames" in r:
                lines.append(f"    {g:18s} {r['bad2']:6.2f} / {r['density']:5.1f} / "
                             f"{r['epe']:5.2f} / {r['gt_frames']}")
    lines.append("")
    lines.append("top reasons (recipe: group: reason count, ...)")
    for n in names:
        for g in order:
            r = report["recipes"][n]["groups"].get(g)
            if r and r["reasons"]:
                top = ", ".join(f"{k} {c}" for k, c in list(r["reasons"].items())[:3])
                lines.append(f"  {n}: {g}: {top}")
    if per_scene:
        lines.append("")
        lines.append("ground-truth scenes (recipe: scene: accepted/reason, bad-2 %, density %)")
        for n in names:
            for s, r in report["recipes"][n]["scenes"].items():
                m = (f" {r['bad2']:6.2f} {r['density']:5.1f}" if "bad2" in r else "")
                lines.append(f"  {n}: {s:32s} {'ok' if r['accepted'] else r['reason']}{m}")
    lines.append("")
    lines.append("* reported, not a goal. Rates: accept = accepted share of a positive group, "
                 "reject = rejected share of a negative group.")
    return "\n".join(lines)
