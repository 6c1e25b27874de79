"""``census_sgm``: a classical stereo-flow matcher in PyTorch (same code on CPU and CUDA).

No learned weights. Per batch of stereo pairs, both directions at once:

1. **Coarse pass** (views downscaled by ``sgm_coarse_scale``) over the full horizontal range
   ``±max_disparity_frac × width`` and ``±sgm_coarse_vertical_px`` rows, then a left-right
   check: each image's disparity range, and the rig's vertical-offset field (films are
   imperfectly rectified): the best census rows made sub-pixel by Lucas-Kanade, and a robust
   quadratic in x and y fitted to them.
2. **Fine pass** at the working resolution: the right view is moved by that field onto the
   left's rows (linear between rows); the matching cost (census Hamming distance mixed with
   the difference of clipped horizontal gradients, the best of ``±sgm_vertical_px`` rows
   kept per label) is built once over the image's own range for the left view and sheared
   into the right view's volume;
   each volume is filtered by a guided filter (edge-aware aggregation: He et al. 2010,
   Hosni et al. 2013) and aggregated by SGM (Hirschmüller 2008) along 4 or 8 paths with an
   intensity-adaptive P2.
3. Winner-take-all and a parabolic sub-pixel fit give u; Lucas-Kanade steps on locally
   zero-mean images measure v to sub-pixel precision, averaged over a large window weighted by
   texture and consistency (rectification errors are smooth).

Output: 2-D flow for both directions and a match confidence ``1 - best / second best``
aggregated cost (second best at least 2 labels away). Costs, filtering and SGM run in fp16 on
CUDA when ``half_precision`` is set; winner selection and refinement always in fp32.
Tensor shapes: N = 2B (left views then right views), D labels, H × W pixels.

The building blocks (census, cost volume, guided filter, SGM, winner, refinement) are in
``sgm_ops``, called through that module so that wrapping one of them intercepts the
backend's calls (``benchmarks/census_sgm_profile.py``); here are the passes and their
chunking by device memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import sgm_ops as ops
from .base import GPU_SHARE_ENV, FlowBackend, StereoFlows, check_device


class CensusSgmFlow(FlowBackend):
    """Coarse-to-fine census + guided filter + SGM stereo flow, both directions batched."""

    name = "census_sgm"

    def __init__(self, device: str = "cpu", max_disparity_frac: float = 0.15,
                 half_precision: bool = True, sgm_census: Sequence[int] = (5, 5),
                 sgm_filter_radius: int = 3, sgm_filter_eps: float = 1e-4,
                 sgm_p1: float = 0.03, sgm_p2: float = 0.4, sgm_p2_edge: float = 20.0,
                 sgm_paths: int = 4, sgm_vertical_px: int = 0, sgm_coarse_scale: int = 4,
                 sgm_coarse_vertical_px: int = 2, sgm_refine: str = "vertical",
                 sgm_refine_iters: int = 3, sgm_refine_radius: int = 3,
                 sgm_vertical_smooth_px: int = 24, sgm_grad_weight: float = 0.3,
                 sgm_grad_cap: float = 64.0, sgm_chunk_labels: int = 0,
                 **_other: Any) -> None:
        self._device = check_device(self.name, device)
        self.device = str(self._device)
        if not 0 < max_disparity_frac <= 1:
            raise ValueError(f"max_disparity_frac must be in (0, 1], got {max_disparity_frac}")
        wh, ww = (int(s) for s in sgm_census)
        if wh < 3 or ww < 3 or wh % 2 == 0 or ww % 2 == 0 or wh * ww - 1 > 63:
            raise ValueError(f"sgm_census must be odd sizes >= 3 with at most 64 pixels, "
                             f"got {list(sgm_census)}")
        if sgm_paths not in (4, 8):
            raise ValueError(f"sgm_paths must be 4 or 8, got {sgm_paths}")
        if sgm_coarse_scale not in (1, 2, 4, 8):
            raise ValueError(f"sgm_coarse_scale must be 1, 2, 4 or 8, got {sgm_coarse_scale}")
        if not 0 <= sgm_vertical_px <= 4 or not 0 <= sgm_coarse_vertical_px <= 8:
            raise ValueError("sgm_vertical_px must be in [0, 4] and sgm_coarse_vertical_px "
                             "in [0, 8]")
        if sgm_refine not in ops.REFINE_MODES:
            raise ValueError(f"sgm_refine must be one of {ops.REFINE_MODES}, got {sgm_refine!r}")
        if sgm_p1 <= 0 or sgm_p2 < sgm_p1:
            raise ValueError(f"need 0 < sgm_p1 <= sgm_p2, got {sgm_p1}, {sgm_p2}")
        self.frac = max_disparity_frac
        self.census_size = (wh, ww)
        self.bits = wh * ww - 1
        self.radius, self.eps = sgm_filter_radius, sgm_filter_eps
        self.p1, self.p2, self.p2_edge, self.paths = sgm_p1, sgm_p2, sgm_p2_edge, sgm_paths
        self.vertical_px, self.coarse_scale = sgm_vertical_px, sgm_coarse_scale
        self.coarse_vertical_px = sgm_coarse_vertical_px
        self.refine, self.refine_iters = sgm_refine, sgm_refine_iters
        self.refine_radius = sgm_refine_radius
        self.vertical_smooth_px = sgm_vertical_smooth_px
        if not 0 <= sgm_grad_weight < 1 or sgm_grad_cap <= 0:
            raise ValueError("sgm_grad_weight must be in [0, 1) and sgm_grad_cap > 0")
        self.grad_weight, self.grad_cap = sgm_grad_weight, sgm_grad_cap
        self.dtype = (torch.float16 if half_precision and self._device.type == "cuda"
                      else torch.float32)
        # pixel-labels per chunk of pairs (bounds memory: ~6 volumes of this size live at once)
        self.chunk_labels = sgm_chunk_labels or (_cuda_chunk_labels(self._device)
                                                 if self._device.type == "cuda" else 2 ** 27)
        self._shared = self._device.type == "cuda" and _gpu_share() > 1

    # -- one matching pass ---------------------------------------------------------------

    def _match(self, left: torch.Tensor, right: torch.Tensor, dmin: torch.Tensor, labels: int,
               vrange: int, want_rows: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One matching pass. left/right [B, 1, H, W] fp32 grey; label i is the disparity
        dmin + i. Returns the sub-pixel disparity of both views [2B, H, W] (left views, then
        right views; d = x_left - x_right for both), the best row offset of each left pixel
        [B, H, W] (when ``want_rows``) and the match confidence [2B, H, W]."""
        b = left.shape[0]
        offsets = _row_offsets(vrange)
        code_l = ops.census(left, self.census_size)
        code_r = ops.census(right, self.census_size)
        # candidate rows y + dy, nearest first (argmin takes the first of equal costs)
        code_r_rows = torch.stack([ops.shift_rows(code_r[:, None], torch.full_like(left, float(dy)))
                                   [:, 0] for dy in offsets], 1)
        grad_l = grad_r_rows = None
        if self.grad_weight > 0:
            grad_l = ops.clipped_gradient(left, self.grad_cap)
            grad_r = ops.clipped_gradient(right, self.grad_cap)[:, None]
            grad_r_rows = torch.stack([ops.shift_rows(grad_r, torch.full_like(left, float(dy)))
                                       [:, 0] for dy in offsets], 1)
        cost_l = ops.cost_volume(code_l, code_r_rows, dmin, labels, self.bits, self.dtype,
                             grad_l, grad_r_rows, self.grad_weight)
        # the right view's own volume (sheared, not recomputed), filtered and aggregated
        # independently: taking the right disparity from the left's aggregated volume is
        # faster but less accurate on the real pairs
        cost = torch.cat([cost_l, ops.shear_to_right(cost_l, dmin)])        # [2B, D, H, W]
        del cost_l
        grey = torch.cat([left, right])
        if self.radius > 0:
            cost = ops.guided_filter(cost, grey, self.radius, self.eps)
        agg = ops.sgm(cost, grey, self.p1, self.p2, self.p2_edge, self.paths)
        del cost
        label, conf = ops.winner(agg)
        del agg
        d = label + torch.cat([dmin, dmin]).view(2 * b, 1, 1).float()
        rows = None
        if want_rows and vrange:
            # the census row (of the 2 * vrange + 1 searched) that matched best at the winner
            _, _, w = code_l.shape
            xs = torch.arange(w, device=left.device).view(1, 1, w)
            xr = (xs - d[:b].round().long()).clamp(0, w - 1)
            hams = torch.stack([ops.popcount(code_l ^ code_r_rows[:, r].gather(2, xr))
                                for r in range(len(offsets))], 1)
            rows = torch.tensor(offsets, dtype=torch.float32, device=left.device)[hams.argmin(1)]
        return d, rows, conf

    # -- coarse pass: range and vertical offset -------------------------------------------

    def _coarse(self, left: torch.Tensor, right: torch.Tensor):
        """Per-image integer search range [dmin, dmax] at full scale and the rig's vertical
        offset field [B, 1, H, W] (px, left->right sense; a robust quadratic in x and y)."""
        b, _, h, w = left.shape
        s = self.coarse_scale
        r_full = max(2, math.ceil(self.frac * w))
        lc = F.avg_pool2d(left, s) if s > 1 else left
        rc = F.avg_pool2d(right, s) if s > 1 else right
        rc_ = max(2, math.ceil(r_full / s))
        dmin = torch.full((b,), -rc_, dtype=torch.long, device=left.device)
        d, dy, _ = self._match(lc, rc, dmin, 2 * rc_ + 1, self.coarse_vertical_px,
                               want_rows=True)
        dl, dr = d[:b], d[b:]
        ok = _lr_ok(dl, dr, 1.0)                                      # [B, h, w]
        okf = ok.flatten(1)
        # every image at once (a loop over images synchronised with the device per image)
        enough = okf.sum(1) >= 0.05 * okf.shape[1]    # else too little signal: full range
        q = torch.nanquantile(torch.where(okf, dl.flatten(1).float(), float("nan")),
                              torch.tensor([0.005, 0.995], device=dl.device), dim=1)
        margin = s + 2                    # the coarse match is good to about one coarse px
        lo_out, hi_out = [], []
        for e, q0, q1 in zip(enough.tolist(), q[0].tolist(), q[1].tolist(), strict=True):
            lo_out.append(max(-r_full, math.floor(q0 * s) - margin) if e else -r_full)
            hi_out.append(min(r_full, math.ceil(q1 * s) + margin) if e else r_full)
        if dy is not None:
            # the best census row is whole coarse rows (sgm_coarse_scale px at full size):
            # Lucas-Kanade makes it sub-pixel, and the rig's smooth model is fitted to it
            _, dy, weight = ops.lk_refine(lc, rc, -dl, dy, 3, 3, "vertical")
            v = F.interpolate(_rig_fields(dy, ok & (weight > 0))[:, None] * s, size=(h, w),
                              mode="bilinear", align_corners=False)
            voff = torch.where(enough.view(b, 1, 1, 1), v, 0.0)
        else:
            voff = torch.zeros((b, 1, h, w), device=left.device)
        return (torch.tensor(lo_out, device=left.device), torch.tensor(hi_out, device=left.device),
                voff)

    # -- public ------------------------------------------------------------------------------

    @torch.inference_mode()
    def stereo_tensors(self, left: torch.Tensor, right: torch.Tensor) -> StereoFlows:
        """left/right [B, 1, H, W] grey (any real dtype, 0..255) on any device.

        A batch that runs out of device memory (other processes share the GPU) is split in
        halves and the chunk budget halved; one pair that does not fit raises."""
        left = left.to(self._device, torch.float32)
        right = right.to(self._device, torch.float32)
        try:
            return self._stereo(left, right)
        except torch.OutOfMemoryError:
            if left.shape[0] == 1:
                raise
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        self.chunk_labels = max(2 ** 24, self.chunk_labels // 2)
        half = left.shape[0] // 2
        a = self.stereo_tensors(left[:half], right[:half])
        z = self.stereo_tensors(left[half:], right[half:])
        return StereoFlows(torch.cat([a.lr, z.lr]), torch.cat([a.rl, z.rl]),
                           torch.cat([a.match_confidence, z.match_confidence]))

    def _stereo(self, left: torch.Tensor, right: torch.Tensor) -> StereoFlows:
        b, _, h, w = left.shape
        lo, hi, voff = self._coarse(left, right)
        counts = (hi - lo + 1).tolist()
        # chunks of pairs with similar label counts (a chunk searches its widest range), each
        # within the memory budget
        order = sorted(range(b), key=lambda i: counts[i])
        chunks: list[list[int]] = [[]]
        for i in order:
            trial = chunks[-1] + [i]
            if chunks[-1] and 2 * h * w * len(trial) * max(counts[j] for j in trial) \
                    > self.chunk_labels:
                chunks.append([i])
            else:
                chunks[-1] = trial
        lr = torch.empty((b, 2, h, w), device=self._device)
        rl = torch.empty_like(lr)
        conf = torch.empty((b, h, w), device=self._device)
        for idx in chunks:
            sel = torch.tensor(idx, device=self._device)
            labels = max(counts[j] for j in idx)
            lr[sel], rl[sel], conf[sel] = self._fine(left[sel], right[sel], lo[sel], labels,
                                                     voff[sel])
        if self._shared:
            # the allocator's cached blocks would stay out of the other workers' reach
            torch.cuda.empty_cache()
        return StereoFlows(lr, rl, conf)

    def _fine(self, left, right, dmin, labels, voff):
        b = left.shape[0]
        # the right view moved onto the left's rows (linear between rows: SGM searches along
        # rows, and a fraction of a pixel of vertical disparity costs it labels)
        right_al = ops.sample_rows(right, voff)
        d, _, conf = self._match(left, right_al, dmin, labels, self.vertical_px)
        dl, dr = d[:b], d[b:]
        # the vertical flow starts from the smooth offset field (the per-pixel best row of the
        # census search is too noisy to report); the right view's field is the same, negated
        v_l = voff[:, 0]
        v_r = -voff[:, 0]
        if self.refine != "none" and self.refine_iters > 0:
            src = torch.cat([left, right])
            dst = torch.cat([right, left])
            u, v, weight = ops.lk_refine(src, dst, torch.cat([-dl, dr]), torch.cat([v_l, v_r]),
                                     self.refine_iters, self.refine_radius, self.refine)
            if self.vertical_smooth_px > 0:
                # rectification errors are smooth over the frame: average the per-pixel
                # estimates over a large window, weighted by texture and consistency
                ok = torch.cat([_lr_ok(dl, dr, 1.0), _lr_ok(dr.flip(-1), dl.flip(-1),
                                                            1.0).flip(-1)])
                w = weight * ok
                num = ops.box_mean((w * v)[:, None], self.vertical_smooth_px)[:, 0]
                den = ops.box_mean(w[:, None], self.vertical_smooth_px)[:, 0]
                v = torch.where(den > 1e-3 * den.mean().clamp(min=1e-9),
                                num / den.clamp(min=1e-12), torch.cat([v_l, v_r]))
        else:
            u, v = torch.cat([-dl, dr]), torch.cat([v_l, v_r])
        flow = torch.stack([u, v], 1)                            # [2B, 2, H, W]
        return flow[:b], flow[b:], conf[:b]

    def stereo(self, left: Sequence[np.ndarray], right: Sequence[np.ndarray]) -> StereoFlows:
        lt = torch.from_numpy(np.stack(left))[:, None]
        rt = torch.from_numpy(np.stack(right))[:, None]
        return self.stereo_tensors(lt, rt)

    def flow(self, src: Sequence[np.ndarray], dst: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Flow from each src to its dst (the pair is matched as a stereo pair)."""
        f = self.stereo(src, dst).lr
        return list(f.permute(0, 2, 3, 1).float().cpu().numpy())


# peak device memory per pixel-label of a chunk (fp16 volumes, measured on a GPU: RESULTS.md);
# the chunks may take half of the GPU's memory
_BYTES_PER_PIXEL_LABEL = 12


def _cuda_chunk_labels(device: torch.device) -> int:
    """Pixel-labels per chunk on a GPU: half its memory, split between the worker processes
    that share it (``FILMMINE_GPU_SHARE``, set by ``filmmine extract --device cuda``)."""
    total = torch.cuda.get_device_properties(device).total_memory
    return max(2 ** 24, min(2 ** 31, int(total * 0.5 / _BYTES_PER_PIXEL_LABEL / _gpu_share())))


def _gpu_share() -> int:
    return max(1, int(os.environ.get(GPU_SHARE_ENV, "1") or 1))


def _row_offsets(vrange: int) -> list[int]:
    """0, -1, 1, -2, 2, ...: candidate row offsets, nearest first."""
    return [0] + [s * k for k in range(1, vrange + 1) for s in (-1, 1)]


def _lr_ok(dl: torch.Tensor, dr: torch.Tensor, tol: float) -> torch.Tensor:
    """Left pixels whose match in the right view points back within ``tol`` px."""
    _b, _h, w = dl.shape
    xs = torch.arange(w, device=dl.device).view(1, 1, w).float()
    xr = (xs - dl).round().long()
    inside = (xr >= 0) & (xr < w)
    back = dr.gather(2, xr.clamp(0, w - 1))
    return inside & ((dl - back).abs() <= tol)


def _rig_fields(field: torch.Tensor, ok: torch.Tensor, iters: int = 5) -> torch.Tensor:
    """A robust quadratic fit in x and y (coordinates in [-0.5, 0.5]) of each field [B, h, w]
    over its pixels in ok, evaluated everywhere: the vertical disparity of an imperfectly
    rectified rig is smooth. IRLS with Cauchy weights at twice the residuals' robust spread,
    every image at once (no per-image synchronisation with the device); 0 where no pixel is
    ok."""
    b, h, w = field.shape
    dev = field.device
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float64) / h - 0.5,
                            torch.arange(w, device=dev, dtype=torch.float64) / w - 0.5,
                            indexing="ij")
    terms = torch.stack([torch.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys]).view(6, -1)
    t = field.reshape(b, -1).double()
    m = ok.reshape(b, -1).double()
    wgt = torch.ones_like(t)
    ridge = 1e-9 * torch.eye(6, dtype=torch.float64, device=dev)
    coef = torch.zeros((b, 6), dtype=torch.float64, device=dev)
    for _ in range(iters):
        ww = m * wgt * wgt
        normal = torch.einsum("kp,bp,lp->bkl", terms, ww, terms) + ridge
        coef = torch.linalg.solve(normal, torch.einsum("kp,bp,bp->bk", terms, ww, t))
        r = t - coef @ terms
        spread = torch.nanmedian(torch.where(m > 0, r.abs(), float("nan")), dim=1).values
        spread = 1.4826 * torch.nan_to_num(spread, nan=0.0)[:, None] + 1e-3
        wgt = 1.0 / (1.0 + (r / (2.0 * spread)) ** 2)
    return (coef @ terms).float().view(b, h, w)
