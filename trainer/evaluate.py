"""Zero-shot evaluation (paper, "Zero-shot evaluation").

Per image: predict at the longer side ``size`` (sides multiples of 32), resize the prediction to
the ground truth, fit scale and shift by least squares in disparity space on the valid pixels
(ground truth > 0), then for depth datasets clamp the aligned disparity at ``1 / cap`` and
invert to depth. Metrics per image, averaged over images: AbsRel, delta > 1.25 (% of pixels
with max(p/g, g/p) > 1.25), RMSE (in the label's unit: metres for depth, px for disparity), and
WHDR (%) for ordinal labels. The metric functions are pure numpy.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from . import TrainerError
from .sources import DatasetSpec, FolderSource, SampleError, build_source, decode_image

log = logging.getLogger(__name__)

DISP_FLOOR = 1e-6  # aligned disparity floor (relative to the largest label) for ratios


# ----------------------------------------------------------------------------- metrics

def align_least_squares(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray
                        ) -> tuple[float, float]:
    """(s, t) minimising sum over mask of (s * pred + t - gt)^2."""
    p, g = pred[mask].astype(np.float64), gt[mask].astype(np.float64)
    if p.size < 2:
        raise ValueError("fewer than 2 valid pixels")
    a = np.stack([p, np.ones_like(p)], 1)
    (s, t), *_ = np.linalg.lstsq(a, g, rcond=None)
    return float(s), float(t)


def absrel(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    p, g = pred[mask].astype(np.float64), gt[mask].astype(np.float64)
    return float(np.mean(np.abs(p - g) / g))


def delta_pct(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, threshold: float = 1.25
              ) -> float:
    """% of valid pixels with max(p / g, g / p) > threshold."""
    p, g = pred[mask].astype(np.float64), gt[mask].astype(np.float64)
    return float(100.0 * np.mean(np.maximum(p / g, g / p) > threshold))


def rmse(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    p, g = pred[mask].astype(np.float64), gt[mask].astype(np.float64)
    return float(np.sqrt(np.mean((p - g) ** 2)))


def whdr_pct(depth: np.ndarray, pairs: Sequence[Sequence], tau: float = 0.03) -> float:
    """Weighted human disagreement rate (%, unit weights): pairs ``(yA, xA, yB, xB, rel)`` with
    ``rel`` '<' (A closer than B), '>' (A further) or '='; the predicted relation is '='
    when the depth ratio is within 1 + tau."""
    if not pairs:
        raise ValueError("no ordinal pairs")
    wrong = 0
    for ya, xa, yb, xb, rel in pairs:
        da, db = float(depth[int(ya), int(xa)]), float(depth[int(yb), int(xb)])
        ratio = da / db if db > 0 else math.inf
        got = ">" if ratio > 1 + tau else "<" if ratio < 1 / (1 + tau) else "="
        wrong += got != rel
    return 100.0 * wrong / len(pairs)


def image_metrics(pred_disp: np.ndarray, gt_disp: np.ndarray, valid: np.ndarray, label: str,
                  cap: float = 0.0) -> dict[str, float]:
    """Align ``pred_disp`` to ``gt_disp`` (disparity, [H, W]) and score it in the label's
    space: depth (1 / disparity, the aligned disparity clamped at 1 / cap) or disparity."""
    mask = valid & np.isfinite(gt_disp) & (gt_disp > 0)
    s, t = align_least_squares(pred_disp, gt_disp, mask)
    aligned = s * pred_disp.astype(np.float64) + t
    if label == "depth":
        floor = 1.0 / cap if cap > 0 else DISP_FLOOR * float(gt_disp[mask].max())
        pred = 1.0 / np.maximum(aligned, floor)
        gt = np.divide(1.0, gt_disp, out=np.zeros(gt_disp.shape), where=mask)
    else:
        pred = np.maximum(aligned, DISP_FLOOR * float(gt_disp[mask].max()))
        gt = gt_disp.astype(np.float64)
    return {"absrel": absrel(pred, gt, mask), "delta_1.25_pct": delta_pct(pred, gt, mask),
            "rmse": rmse(pred, gt, mask), "scale": s, "shift": t,
            "valid_px": int(mask.sum())}


# ----------------------------------------------------------------------------- inference

def inference_size(h: int, w: int, size: int) -> tuple[int, int]:
    """Longer side ``size``, aspect kept, both sides multiples of 32."""
    s = size / max(h, w)
    return max(32, round(h * s / 32) * 32), max(32, round(w * s / 32) * 32)


@torch.no_grad()
def predict_disparity(model: torch.nn.Module, image: np.ndarray, size: int,
                      device: torch.device) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H, W] float32 relative disparity at the image's resolution."""
    h, w = image.shape[:2]
    ih, iw = inference_size(h, w, size)
    interp = cv2.INTER_AREA if ih < h else cv2.INTER_CUBIC
    x = cv2.resize(image, (iw, ih), interpolation=interp)
    t = torch.from_numpy(x).permute(2, 0, 1)[None].float().div_(255).to(device)
    pred = model(t)[0].float().cpu().numpy()  # [ih, iw]
    return cv2.resize(pred, (w, h), interpolation=cv2.INTER_LINEAR)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainerError("device cuda requested but torch sees no CUDA device")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- datasets

def _ordinal_items(spec: DatasetSpec) -> Iterator[tuple[str, np.ndarray, list]]:
    for unit in FolderSource(spec).units():
        image_path, label_path = unit.split("\n")
        key = Path(image_path).name.split(".")[0]
        try:
            pairs = json.loads(Path(label_path).read_text())["pairs"]
            yield key, decode_image(Path(image_path).read_bytes()), pairs
        except (OSError, KeyError, TypeError, ValueError) as e:
            log.warning("%s: skipping %s: %s", spec.name, key, e)


def _is_ordinal(spec: DatasetSpec) -> bool:
    if spec.type != "folder":
        return False
    units = FolderSource(spec).units()
    return bool(units) and units[0].endswith(".json")


def evaluate_model(model: torch.nn.Module, spec: DatasetSpec, size: int = 384,
                   device: torch.device | None = None) -> dict[str, Any]:
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    per_image: list[dict[str, Any]] = []
    skipped = 0
    if _is_ordinal(spec):
        for key, image, pairs in _ordinal_items(spec):
            disp = predict_disparity(model, image, size, device)
            depth = 1.0 / np.maximum(disp, DISP_FLOOR * max(float(disp.max()), 1e-12))
            try:
                per_image.append({"key": key, "whdr_pct": whdr_pct(depth, pairs)})
            except (ValueError, IndexError) as e:
                skipped += 1
                log.warning("%s: skipping %s: %s", spec.name, key, e)
    else:
        for sample in build_source(spec):
            disp = predict_disparity(model, sample.image, size, device)
            try:
                m = image_metrics(disp, sample.disparity, sample.valid, spec.label, spec.cap)
            except (ValueError, SampleError, np.linalg.LinAlgError) as e:
                skipped += 1
                log.warning("%s: skipping %s: %s", spec.name, sample.key, e)
                continue
            per_image.append({"key": sample.key, **m})
    if not per_image:
        raise TrainerError(f"no image of {spec.path} could be evaluated")
    names = [k for k in ("absrel", "delta_1.25_pct", "rmse", "whdr_pct") if k in per_image[0]]
    return {
        "dataset": spec.path, "type": spec.type, "label": spec.label,
        "cap": spec.cap or None, "size": size, "images": len(per_image), "skipped": skipped,
        "metrics": {k: float(np.mean([r[k] for r in per_image])) for k in names},
        "per_image": per_image,
    }


def evaluate_checkpoint(checkpoint: str | Path, spec: DatasetSpec, size: int | None = None,
                        device: str = "auto") -> dict[str, Any]:
    from .checkpoint import load_checkpoint, model_from_checkpoint

    ck = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ck)
    report = evaluate_model(model, spec, size or cfg.eval_size, pick_device(device))
    return {"checkpoint": str(checkpoint), "step": int(ck["step"]), **report}
