"""Frame filters: score, then decide (scores are stored beside every decision).

Pure numpy on the cropped, stored-resolution views. Order of decision: credits (white text on
black, checked before "dark" because such frames are mostly black), dark, low texture, mono,
frozen. The first failing test names the reason.
"""

from __future__ import annotations

import cv2
import numpy as np

REASONS = ("credits", "dark", "low_texture", "mono", "frozen")


def luma(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def score_frame(left_rgb: np.ndarray, right_rgb: np.ndarray,
                previous_left_grey: np.ndarray | None,
                grey: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """All filter scores of one stereo frame. Pure. ``grey``: the views' ``luma`` when the
    caller has them already; ``previous_left_grey``: the shot's previous candidate's (uint8, or
    float).

    uint8 OpenCV reductions where they give the same quantities: float32 numpy copies are
    slower."""
    gl, gr = grey if grey is not None else (luma(left_rgb), luma(right_rgb))
    n = gl.size
    hsv = cv2.cvtColor(left_rgb, cv2.COLOR_RGB2HSV)
    white = cv2.inRange(hsv, (0, 0, 180), (255, 60, 255))  # V >= 180 and S <= 60
    gx = cv2.Sobel(gl, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gl, cv2.CV_32F, 0, 1, ksize=3)
    lr_diff = cv2.mean(cv2.absdiff(gl, gr))[0]
    # what a 2 px horizontal parallax would change: the scale a real stereo pair differs by
    self_diff = cv2.mean(cv2.absdiff(gl[:, 2:], gl[:, :-2]))[0]
    scores = {
        "mean_luma": cv2.mean(gl)[0],
        "black_frac": np.count_nonzero(gl <= 24) / n,
        "white_frac": cv2.countNonZero(white) / n,
        "texture": _mean_magnitude(gx, gy) / 8.0,   # Sobel 3x3 sums 8 px steps
        "lr_diff": lr_diff,
        "mono_ratio": lr_diff / max(self_diff, 1e-3),
        "frozen_diff": float("nan"),
        "motion": float("nan"),
    }
    prev = previous_left_grey
    if prev is not None and prev.shape == gl.shape:
        if prev.dtype == np.uint8:
            diff = cv2.absdiff(gl, prev)
        else:
            diff = np.abs(gl.astype(np.float32) - prev)
        scores["frozen_diff"] = float(diff.mean())
        scores["motion"] = block_motion(diff)
    return scores


MOTION_BLOCK = 16   # px


def block_motion(diff: np.ndarray) -> float:
    """The 99th percentile over 16 px blocks of the mean absolute difference to the previous
    candidate: a figure walking through a static shot moves a few blocks a lot, which the
    frame's mean hides; a frozen frame moves none beyond compression noise."""
    h, w = diff.shape[:2]
    bw, bh = max(1, w // MOTION_BLOCK), max(1, h // MOTION_BLOCK)
    blocks = cv2.resize(diff[: bh * MOTION_BLOCK, : bw * MOTION_BLOCK].astype(np.float32),
                        (bw, bh), interpolation=cv2.INTER_AREA)
    return float(np.percentile(blocks, 99))


def _mean_magnitude(gx: np.ndarray, gy: np.ndarray) -> float:
    """Mean of hypot(gx, gy) (float32 arrays, overwritten) in numpy: OpenCV's ``magnitude`` and
    float ``mean`` change in the last bits with OpenCV's thread count, and a score must not
    (byte-identical corpora from any number of workers)."""
    np.multiply(gx, gx, out=gx)
    gx += np.multiply(gy, gy, out=gy)
    return float(np.sqrt(gx, out=gx).mean())


def decide(scores: dict[str, float], cfg: dict) -> str | None:
    """Reason for rejecting a frame with these scores, or None. ``cfg`` = recipe['filters']."""
    if (scores["black_frac"] >= cfg["credits_min_black"]
            and cfg["credits_min_white"] <= scores["white_frac"] <= cfg["credits_max_white"]):
        return "credits"
    if scores["mean_luma"] <= cfg["dark_max_luma"]:
        return "dark"
    if scores["texture"] < cfg["lowtex_min_grad"]:
        return "low_texture"
    if scores["mono_ratio"] < cfg["mono_max_ratio"]:
        return "mono"
    fd, motion = scores["frozen_diff"], scores.get("motion", float("nan"))
    # NaN when there is no previous frame; a frame without the motion score (an older
    # corpus's row) is judged by the mean alone
    if fd == fd and fd <= cfg["frozen_max_diff"] and not motion > cfg["frozen_max_motion"]:
        return "frozen"
    return None
