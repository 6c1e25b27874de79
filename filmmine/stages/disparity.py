"""Disparity stage: flow both ways, left-right consistency, vertical checks, frame verdict.

Label convention: ``d = x_left - x_right`` in pixels of the stored image (so ``d = -u`` of the
left-to-right flow), NaN where a check failed.

Per batch of stereo pairs (``compute_disparity``):

1. **Resolution policy.** Labels are produced at ``out_size`` (default: the images' size).
   Flow is computed on the images resized to ``work_width`` px wide (their aspect kept; 0 = as
   given), resampled to ``out_size`` and scaled exactly: ``u * out_w / work_w``,
   ``v * out_h / work_h``. A half-width (squeezed) view given as is with ``out_size`` at full
   aspect gets its disparities doubled; a half-height one, its vertical flow.
2. **Flow** both ways from the backend in one call (``FlowBackend.stereo``).
3. **Checks** (torch on CUDA; numpy/OpenCV on the CPU, where an OpenCV backend never imports
   torch): left-right consistency (a left pixel's match
   must map back within ``lr_max_px``), per-pixel vertical flow (``|v| > vertical_max_px``
   fails), occlusion (an inconsistent pixel whose match sees something nearer), and a
   speckle filter (consistent islands smaller than ``speckle_max_px`` pixels are dropped).
4. **Confidence** ``exp(-lr_err / lr_max_px) * match confidence`` in [0, 1], 0 where invalid
   (``confidence_to_uint8`` gives the ``KEY.conf.png`` values).
5. Optional **edge-aware post-filter** (guided filter, normalised over valid pixels only): it
   smooths labels inside valid regions and never gives a value to an invalid pixel.
6. **Verdict** per frame: vertical_misaligned, few_valid, flat, or accepted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..flow import Batch, FlowBackend, StereoFlows
from ..flow.base import pixel_grid
from .alignment import NO_FIT, VerticalFit, measure_vertical

if TYPE_CHECKING:
    import torch

REASONS = ("vertical_misaligned", "inconsistent", "few_valid", "flat")
POST_FILTERS = ("none", "guided")
# frame verdicts: "paper" (the published rules over every pixel: > max_vertical_frac of
# pixels with |v| > vertical_max_px; <= min_valid_frac valid), "evidence" (alignment fitted
# on confident matches, consistency over the pixels the matcher could match)
VERDICTS = ("paper", "evidence")


@dataclass
class DisparityResult:
    disparity: np.ndarray            # [H, W] float32 px, NaN = invalid
    reason: str | None               # None = accepted
    stats: dict[str, float] = field(default_factory=dict)
    confidence: np.ndarray | None = None   # [H, W] float32 in [0, 1]; 0 = invalid
    vertical: np.ndarray | None = None     # [H, W] float32 px, left->right vertical flow
    occluded: np.ndarray | None = None     # [H, W] bool: inconsistent and seen nearer in the
                                           # right view (occlusion rather than mismatch)


def sample_at(field_hw: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a [H, W] or [H, W, C] float field at (map_x, map_y); NaN outside
    [0, W - 1] x [0, H - 1] and where a coordinate is NaN."""
    h, w = field_hw.shape[:2]
    # replicate, not NaN, at the border: a match exactly on the last row/column is inside
    out = cv2.remap(field_hw, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # inRange: one pass per coordinate, where numpy's comparisons and ors take seven
    inside = cv2.bitwise_and(cv2.inRange(map_x, 0, w - 1), cv2.inRange(map_y, 0, h - 1))
    out[inside == 0] = np.nan
    return out


# --------------------------------------------------------------------------------------------
# Resolution policy


def work_size(in_size: tuple[int, int], work_width: int) -> tuple[int, int]:
    """(w, h) the flow is computed at: the given images ``work_width`` wide, their aspect kept
    (never wider than given); 0 = as given."""
    w, h = in_size
    if work_width <= 0 or work_width >= w:
        return w, h
    return work_width, max(8, round(h * work_width / w))


def resize_grey(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (img.shape[1], img.shape[0]) == size:
        return img
    shrink = size[0] < img.shape[1] or size[1] < img.shape[0]
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _on_cuda(x: Batch) -> bool:
    return not isinstance(x, np.ndarray) and x.is_cuda


def _numpy(x: Batch) -> np.ndarray:
    """A batch as float32 numpy (a torch tensor is copied to the host)."""
    if isinstance(x, np.ndarray):
        return x if x.dtype == np.float32 else x.astype(np.float32)
    return x.detach().float().cpu().numpy()


def _resize_planes(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[B, ..., h, w] float32 -> [B, ..., H, W], bilinear with pixel centres aligned (as
    ``F.interpolate(mode="bilinear", align_corners=False)``)."""
    flat = x.reshape(-1, *x.shape[-2:])
    out = np.stack([cv2.resize(p, size, interpolation=cv2.INTER_LINEAR) for p in flat])
    return out.reshape(*x.shape[:-2], size[1], size[0])


def rescale_flow(flow: Batch, size: tuple[int, int]) -> Batch:
    """Flow [B, 2, h, w] px resampled to size (W, H) px: u scaled by W / w, v by H / h.
    numpy in, numpy out (OpenCV); a torch tensor stays a tensor on its device."""
    _b, _, h, w = flow.shape
    if (w, h) == size:
        return flow
    if isinstance(flow, np.ndarray):
        out = _resize_planes(_numpy(flow), size)
        out[:, 0] *= np.float32(size[0] / w)
        out[:, 1] *= np.float32(size[1] / h)
        return out
    import torch
    import torch.nn.functional as F

    out = F.interpolate(flow.float(), size=(size[1], size[0]), mode="bilinear",
                        align_corners=False)
    scale = torch.tensor([size[0] / w, size[1] / h], device=flow.device).view(1, 2, 1, 1)
    return out * scale


def rescale_map(m: Batch, size: tuple[int, int]) -> Batch:
    """A per-pixel map [B, h, w] resampled (bilinear, pixel centres aligned) to size (W, H);
    no value scaling. OpenCV on the CPU (numpy out; see ``check_batch``), torch on CUDA."""
    if (m.shape[2], m.shape[1]) == size:
        return m
    if _on_cuda(m):
        import torch.nn.functional as F

        return F.interpolate(m[:, None].float(), size=(size[1], size[0]), mode="bilinear",
                             align_corners=False)[:, 0]
    return _resize_planes(_numpy(m), size)


# --------------------------------------------------------------------------------------------
# Checks


def _sample_torch(field_b: torch.Tensor, map_x: torch.Tensor, map_y: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of field [B, C, H, W] at (map_x, map_y) [B, H, W]; NaN outside (the last
    row/column counts as inside, as in ``sample_at``)."""
    import torch
    import torch.nn.functional as F

    _b, _c, h, w = field_b.shape
    gx = map_x * (2.0 / max(w - 1, 1)) - 1.0
    gy = map_y * (2.0 / max(h - 1, 1)) - 1.0
    out = F.grid_sample(field_b, torch.stack([gx, gy], -1), mode="bilinear",
                        padding_mode="border", align_corners=True)
    outside = (map_x < 0) | (map_x > w - 1) | (map_y < 0) | (map_y > h - 1)
    return out.masked_fill(outside[:, None], float("nan"))


def percentiles(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    """``np.percentile(values, qs)`` (linear interpolation) of a 1-D array without NaN, exact.

    A large array's order statistics are each selected among the values in a window around it,
    found on a strided subsample: faster than partitioning all of a frame's labels. A window
    that misses (never, in practice) falls back to a full partition."""
    n = values.size
    if n < 40_000:
        return [float(x) for x in np.percentile(values, qs)]
    step = 16
    sample = values[::step]
    m = sample.size
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        k0 = int(np.floor(pos))
        k1 = min(k0 + 1, n - 1)
        j = k0 / step                          # where rank k0 sits in the subsample
        margin = 4.0 * np.sqrt(min(j, m - j) + 1.0) + 8.0
        lo_j, hi_j = max(0, int(j - margin)), min(m - 1, int(j + margin) + 1)
        lo_v, hi_v = np.partition(sample, [lo_j, hi_j])[[lo_j, hi_j]]
        below = int(np.count_nonzero(values < lo_v))
        window = values[(values >= lo_v) & (values <= hi_v)]
        if below <= k0 and k1 < below + window.size:
            a, b = np.partition(window, [k0 - below, k1 - below])[[k0 - below, k1 - below]]
        else:
            a, b = np.partition(values, [k0, k1])[[k0, k1]]
        a, b, t = float(a), float(b), pos - k0
        # numpy's _lerp: from the nearer end
        out.append(b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t)
    return out


def _fraction(mask: np.ndarray) -> float:
    """The share of True in a bool array: mask.mean()'s value without a float64 copy."""
    return np.count_nonzero(mask) / max(mask.size, 1)


def _despeckle(disparity: np.ndarray, max_px: int, range_px: float,
               valid: np.ndarray | None = None) -> np.ndarray:
    """Invalidate connected regions of valid labels smaller than ``max_px`` pixels (neighbours
    within ``range_px`` join a region; OpenCV ``filterSpeckles`` on 1/16 px steps).
    ``valid``: ``np.isfinite(disparity)`` when the caller has it."""
    if valid is None:
        valid = np.isfinite(disparity)
    if max_px <= 0 or not valid.any():
        return valid
    # fmin/fmax skip NaN in one pass (nanmin/nanmax copy the array first)
    lo = float(np.fmin.reduce(disparity, axis=None))
    hi = float(np.fmax.reduce(disparity, axis=None))
    # 1/16 px in int16: shift so that the range fits, -32768 marks invalid
    step = 16.0 if (hi - lo) * 16.0 < 60000 else 60000.0 / max(hi - lo, 1e-6)
    t = (disparity - np.float32(lo)) * np.float32(step)
    np.round(t, out=t)
    t -= 30000
    t[~valid] = -32768
    q = t.astype(np.int16)
    cv2.filterSpeckles(q, -32768, int(max_px), max(1, round(range_px * step)))
    return q != -32768


def _guided_post_filter(disparity: np.ndarray, valid: np.ndarray, guide: np.ndarray,
                        radius: int, eps: float) -> np.ndarray:
    """Normalised guided filter of the valid labels (guide: grey uint8); invalid stay NaN."""
    m = valid.astype(np.float32)
    d = np.where(valid, disparity, 0.0).astype(np.float32)
    g = guide.astype(np.float32) / 255.0
    num = cv2.ximgproc.guidedFilter(g, d * 1.0, radius, eps)
    den = cv2.ximgproc.guidedFilter(g, m, radius, eps)
    ok = valid & (den > 0.5)
    out = np.where(ok, num / np.maximum(den, 1e-6), disparity)
    return np.where(valid, out, np.nan).astype(np.float32)


def _core_numpy(lr: np.ndarray, rl: np.ndarray, lr_max: float,
                vmax: float) -> dict[str, np.ndarray]:
    """The per-pixel checks of one frame on the CPU (flows [2, H, W]: planes u, v; cv2.remap).
    Planes are used in place: an [H, W, 2] copy would cost time on every frame."""
    h, w = lr.shape[1:]
    xs, ys = pixel_grid(h, w)
    u, v = lr[0], lr[1]
    # where each left pixel lands in the right view, and the backward flow u found there
    back = sample_at(np.ascontiguousarray(rl[0]), xs + u, ys + v)
    with np.errstate(invalid="ignore"):
        lr_err = np.abs(u + back)                    # NaN where the match leaves the image
        lr_ok = lr_err < lr_max                      # NaN compares False: invalid
        vert_fail_lr = np.abs(v) > vmax
        vert_fail_rl = np.abs(rl[1]) > vmax
        # occlusion: inconsistent, but the right view sees something nearer (larger d; NaN,
        # where the match left the image, compares False)
        occluded = ~lr_ok & (back > lr_max - u)
    # NaN (the match left the image) -> 1e9 px: confidence 0, as on the device; in place, in
    # one pass (nan_to_num of the exponential makes five)
    conf = np.fmin(lr_err, np.float32(1e9), out=lr_err)
    conf *= np.float32(-1.0 / lr_max)
    np.exp(conf, out=conf)
    return {"u": u, "v": v, "valid": lr_ok & ~vert_fail_lr, "lr_ok": lr_ok,
            "occluded": occluded, "conf": conf,
            "vert_fail": np.float32(max(_fraction(vert_fail_lr), _fraction(vert_fail_rl))),
            "matched": np.float32(np.count_nonzero(np.isfinite(back)))}


def _core_torch(flow_lr: torch.Tensor, flow_rl: torch.Tensor, lr_max: float,
                vmax: float) -> dict[str, np.ndarray]:
    """The same checks for a batch [B, 2, H, W] on the flows' device (one transfer back)."""
    import torch

    _, _, h, w = flow_lr.shape
    dev = flow_lr.device
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                            torch.arange(w, device=dev, dtype=torch.float32), indexing="ij")
    u, v = flow_lr[:, 0], flow_lr[:, 1]
    back = _sample_torch(flow_rl, xs + u, ys + v)[:, 0]
    lr_err = (u + back).abs()
    lr_ok = lr_err < lr_max
    vert_fail_lr = v.abs() > vmax
    vert_fail_rl = flow_rl[:, 1].abs() > vmax
    occluded = ~lr_ok & torch.isfinite(back) & (back > -u + lr_max)
    conf = torch.exp(-torch.nan_to_num(lr_err, nan=1e9) / lr_max)
    vert_fail = torch.maximum(vert_fail_lr.flatten(1).float().mean(1),
                              vert_fail_rl.flatten(1).float().mean(1))
    matched = torch.isfinite(back).flatten(1).sum(1).float()
    return {k: t.cpu().numpy() for k, t in {
        "u": u, "v": v, "valid": lr_ok & ~vert_fail_lr, "lr_ok": lr_ok, "occluded": occluded,
        "conf": conf, "vert_fail": vert_fail, "matched": matched}.items()}


def check_batch(flow_lr: Batch, flow_rl: Batch, cfg: dict, stored_width: int,
                match_confidence: Batch | None = None,
                guides: Sequence[np.ndarray] | None = None,
                rights: Sequence[np.ndarray] | None = None) -> list[DisparityResult]:
    """Verdicts and labels from both flows [B, 2, H, W]. ``cfg`` = recipe['disparity'];
    guides: the left views (grey uint8, [H, W]) for the post-filter; with ``rights`` (the
    right views, same size) the vertical verdict rests on confident correspondences
    (``filmmine.stages.alignment``), else on the flow's own v of the consistent pixels.

    On CUDA the per-pixel checks run on the device; on the CPU in numpy/OpenCV, not torch's
    CPU ops, whose OpenMP threads stall on a machine busy with other workers."""
    lr_max = float(cfg["lr_max_px"])
    vmax = float(cfg["vertical_max_px"])
    b = flow_lr.shape[0]
    if _on_cuda(flow_lr):
        import torch

        with torch.inference_mode():
            core = _core_torch(flow_lr.float(), flow_rl.float(), lr_max, vmax)
        per = [{k: a[i] for k, a in core.items()} for i in range(b)]
    else:
        lr, rl = _numpy(flow_lr), _numpy(flow_rl)
        per = [_core_numpy(lr[i], rl[i], lr_max, vmax) for i in range(b)]
    mc = None if match_confidence is None else _numpy(match_confidence)
    out = []
    evidence = cfg.get("verdict", "paper") == "evidence"
    for i, c in enumerate(per):
        conf = c["conf"] if mc is None else c["conf"] * np.clip(mc[i], 0.0, 1.0)
        fit = None
        if evidence and guides is not None and rights is not None:
            fit = measure_vertical(guides[i], rights[i], c["u"], float(cfg["vertical_max_px"]),
                                   int(cfg["min_matches"]))
        out.append(_finish(c["u"], c["v"], c["valid"], c["lr_ok"], c["occluded"], conf,
                           float(c["vert_fail"]), cfg, stored_width,
                           None if guides is None else guides[i], float(c["matched"]), fit))
    return out


def _finish(u: np.ndarray, v: np.ndarray, valid: np.ndarray, lr_ok: np.ndarray,
            occluded: np.ndarray, conf: np.ndarray, vertical_fail_frac: float, cfg: dict,
            stored_width: int, guide: np.ndarray | None, matched: float | None = None,
            fit: VerticalFit | None = None) -> DisparityResult:
    """Speckle filter, post-filter, confidence, statistics and verdict of one frame (numpy).
    ``matched``: pixels the matcher gave a label both ways (the consistency rate's base);
    ``fit``: the frame's fitted vertical field (``verdict = "evidence"``)."""
    disparity = np.negative(u)
    disparity[~valid] = np.nan
    n_checked = np.count_nonzero(valid)
    valid = _despeckle(disparity, int(cfg.get("speckle_max_px", 0)),
                       float(cfg.get("speckle_range_px", 1.0)), valid)  # valid: u finite
    disparity[~valid] = np.nan
    post = cfg.get("post_filter", "none")
    if post not in POST_FILTERS:
        raise ValueError(f"unknown post_filter {post!r}; choose from {POST_FILTERS}")
    if post == "guided" and guide is not None and valid.any():
        disparity = _guided_post_filter(disparity, valid, guide,
                                        int(cfg.get("post_filter_radius", 4)),
                                        float(cfg.get("post_filter_eps", 1e-3)))
    confidence = np.where(valid, conf, np.float32(0.0)).astype(np.float32, copy=False)
    valid_frac = _fraction(valid)
    # vertical-flow summary from every other pixel of every other row (nanmedian and
    # nanpercentile of every pixel are slow; the verdict uses all pixels)
    vs = v[::2, ::2]
    vs = vs[np.isfinite(vs)]
    stats: dict[str, float] = {
        "valid_fraction": valid_frac,
        "lr_pass_fraction": _fraction(lr_ok),
        "occluded_fraction": _fraction(occluded),
        "speckle_fraction": float((n_checked - np.count_nonzero(valid)) / valid.size),
        "vertical_fail_fraction": vertical_fail_frac,
        "vertical_median_px": float(np.median(vs)) if vs.size else 0.0,
        "vertical_abs_p95_px": float(np.percentile(np.abs(vs), 95)) if vs.size else 0.0,
        "range_px": 0.0,
        "disp_p1_px": float("nan"),
        "disp_p50_px": float("nan"),
        "disp_p99_px": float("nan"),
    }
    if valid.any():
        lo_p, hi_p = cfg["range_percentiles"]
        p1, p50, p99 = percentiles(disparity[valid], [lo_p, 50.0, hi_p])
        stats.update(range_px=float(p99 - p1), disp_p1_px=float(p1), disp_p50_px=float(p50),
                     disp_p99_px=float(p99))
    n_lr = np.count_nonzero(lr_ok)
    matched = float(n_lr) if matched is None else max(matched, float(n_lr))
    stats["matchable_fraction"] = matched / max(lr_ok.size, 1)
    stats["consistency_rate"] = n_lr / matched if matched > 0 else 0.0
    min_range = cfg["min_range_px"] * stored_width / cfg["range_ref_width"]
    mode = cfg.get("verdict", "paper")
    if mode not in VERDICTS:
        raise ValueError(f"unknown verdict {mode!r}; choose from {VERDICTS}")
    inconsistent = mode == "evidence" and stats["consistency_rate"] < cfg["min_consistency"]
    if mode == "paper":
        misaligned = vertical_fail_frac > cfg["max_vertical_frac"]
    else:
        if fit is None or fit.inliers < int(cfg["min_matches"]):
            # too few confident matches to fit: the consistent pixels' own v decides
            fit = fit if fit is not None else NO_FIT
            with np.errstate(invalid="ignore"):
                bad_v = np.count_nonzero(lr_ok & (np.abs(v) > cfg["vertical_max_px"]))
            # views that do not match (unrelated halves: a wrong layout) are inconsistent
            # before they are misaligned
            misaligned = not inconsistent and bad_v > cfg["max_vertical_frac"] * max(n_lr, 1)
        else:
            # a roll grows with the distance from the centre: what a narrow stored frame
            # hides in px, the film's own width shows
            misaligned = (fit.field_exceed_fraction > cfg["max_vertical_frac"]
                          or abs(fit.rotation_deg) > cfg["max_rotation_deg"])
        stats.update(fit.record())
    reason = None
    if misaligned:
        reason = "vertical_misaligned"
    elif inconsistent:
        reason = "inconsistent"
    elif valid_frac <= cfg["min_valid_frac"]:
        reason = "few_valid"
    elif stats["range_px"] < min_range:
        reason = "flat"
    return DisparityResult(disparity, reason, stats, confidence,
                           v.astype(np.float32, copy=False), occluded)


def check_flows(flow_lr: np.ndarray, flow_rl: np.ndarray, cfg: dict, stored_width: int,
                match_confidence: np.ndarray | None = None,
                guide: np.ndarray | None = None) -> DisparityResult:
    """Verdict and label from the two flows [H, W, 2] (numpy). ``cfg`` = recipe['disparity']."""
    lr = np.ascontiguousarray(flow_lr, np.float32).transpose(2, 0, 1)[None]
    rl = np.ascontiguousarray(flow_rl, np.float32).transpose(2, 0, 1)[None]
    mc = None if match_confidence is None else np.asarray(match_confidence, np.float32)[None]
    return check_batch(lr, rl, cfg, stored_width, mc, None if guide is None else [guide])[0]


# --------------------------------------------------------------------------------------------
# The stage


def stereo_flows(left: Sequence[np.ndarray], right: Sequence[np.ndarray], backend: FlowBackend,
                 cfg: dict, out_size: tuple[int, int] | None = None) -> StereoFlows:
    """Both flows of same-size pairs at the output size (resolution policy applied)."""
    h, w = left[0].shape[:2]
    out = out_size or (w, h)
    work = work_size((w, h), int(cfg.get("work_width", 0)))
    flows = backend.stereo([resize_grey(x, work) for x in left],
                           [resize_grey(x, work) for x in right])
    mc = flows.match_confidence
    return StereoFlows(rescale_flow(flows.lr, out), rescale_flow(flows.rl, out),
                       None if mc is None else rescale_map(mc, out))


def compute_disparity(left_grey: list[np.ndarray], right_grey: list[np.ndarray],
                      backend: FlowBackend, cfg: dict,
                      out_size: tuple[int, int] | None = None) -> list[DisparityResult]:
    """Disparity for a batch of grey stereo pairs: both flow directions of every same-size
    group in one backend call, labels at ``out_size`` (w, h) (default: the images' size)."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, img in enumerate(left_grey):
        groups[img.shape[:2]].append(i)
    results: list[DisparityResult | None] = [None] * len(left_grey)
    for (h, w), idx in groups.items():
        out = out_size or (w, h)
        flows = stereo_flows([left_grey[i] for i in idx], [right_grey[i] for i in idx], backend,
                             cfg, out)
        guides = [resize_grey(left_grey[i], out) for i in idx]
        rights = [resize_grey(right_grey[i], out) for i in idx]
        for i, res in zip(idx, check_batch(flows.lr, flows.rl, cfg, out[0],
                                           flows.match_confidence, guides, rights),
                          strict=True):
            results[i] = res
    return [r for r in results if r is not None]
