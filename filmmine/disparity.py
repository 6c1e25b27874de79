"""Disparity stage: flow both ways, left-right consistency, vertical checks, frame verdict.

Label convention: ``d = x_left - x_right`` in pixels of the stored image (so ``d = -u`` of the
left-to-right flow), NaN where a check failed. Pure numpy given a flow backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .flow import FlowBackend

REASONS = ("vertical_misaligned", "few_valid", "flat")


@dataclass
class DisparityResult:
    disparity: np.ndarray            # [H, W] float32 px, NaN = invalid
    reason: str | None               # None = accepted
    stats: dict[str, float] = field(default_factory=dict)


def sample_at(field_hw: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a [H, W] or [H, W, C] float field at (map_x, map_y); NaN outside."""
    h, w = field_hw.shape[:2]
    # replicate, not NaN, at the border: a match exactly on the last row/column is inside
    out = cv2.remap(field_hw, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    outside = (map_x < 0) | (map_x > w - 1) | (map_y < 0) | (map_y > h - 1)
    out[outside] = np.nan
    return out


def check_flows(flow_lr: np.ndarray, flow_rl: np.ndarray, cfg: dict,
                stored_width: int) -> DisparityResult:
    """Verdict and label from the two flows [H, W, 2]. ``cfg`` = recipe['disparity']."""
    h, w = flow_lr.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    u, v = flow_lr[..., 0], flow_lr[..., 1]
    # where each left pixel lands in the right view, and the backward flow found there
    back = sample_at(flow_rl, xs + u, ys + v)
    lr_err = np.abs(u + back[..., 0])               # NaN where the match leaves the image
    vmax = cfg["vertical_max_px"]
    vert_fail_lr = np.abs(v) > vmax
    vert_fail_rl = np.abs(flow_rl[..., 1]) > vmax
    lr_ok = lr_err < cfg["lr_max_px"]               # NaN compares False: invalid
    valid = lr_ok & ~vert_fail_lr
    disparity = np.where(valid, -u, np.nan).astype(np.float32)

    vertical_fail_frac = float(max(vert_fail_lr.mean(), vert_fail_rl.mean()))
    valid_frac = float(valid.mean())
    stats: dict[str, float] = {
        "valid_fraction": valid_frac,
        "lr_pass_fraction": float(lr_ok.mean()),
        "vertical_fail_fraction": vertical_fail_frac,
        "vertical_median_px": float(np.median(v)),
        "vertical_abs_p95_px": float(np.percentile(np.abs(v), 95)),
        "range_px": 0.0,
        "disp_p1_px": float("nan"),
        "disp_p50_px": float("nan"),
        "disp_p99_px": float("nan"),
    }
    if valid.any():
        lo_p, hi_p = cfg["range_percentiles"]
        vals = disparity[valid]
        p1, p50, p99 = np.percentile(vals, [lo_p, 50.0, hi_p])
        stats.update(range_px=float(p99 - p1), disp_p1_px=float(p1), disp_p50_px=float(p50),
                     disp_p99_px=float(p99))
    min_range = cfg["min_range_px"] * stored_width / cfg["range_ref_width"]
    reason = None
    if vertical_fail_frac > cfg["max_vertical_frac"]:
        reason = "vertical_misaligned"
    elif valid_frac <= cfg["min_valid_frac"]:
        reason = "few_valid"
    elif stats["range_px"] < min_range:
        reason = "flat"
    return DisparityResult(disparity, reason, stats)


def compute_disparity(left_grey: list[np.ndarray], right_grey: list[np.ndarray],
                      backend: FlowBackend, cfg: dict) -> list[DisparityResult]:
    """Disparity for a batch of grey stereo pairs (both flow directions in one backend call)."""
    n = len(left_grey)
    flows = backend.flow([*left_grey, *right_grey], [*right_grey, *left_grey])
    return [check_flows(flows[i], flows[n + i], cfg, left_grey[i].shape[1]) for i in range(n)]
