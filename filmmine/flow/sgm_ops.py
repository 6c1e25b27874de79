"""The torch building blocks of the ``census_sgm`` backend: census transform and Hamming cost
volume, guided-filter aggregation, semi-global aggregation, winner-take-all with a sub-pixel
fit, and Lucas-Kanade refinement.

The cost volume, shear, guided filter, SGM (4 paths) and winner run as Triton kernels where
they can (``triton_kernels``, CUDA), else as the torch code here. Tensor shapes: N images,
D labels, H × W pixels.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import triton_kernels

_BIG = 1e4  # "no predecessor" / out-of-range label cost in SGM (costs are O(1))
# Triton kernels (cost volume, shear, guided filter, SGM, winner) where they can run (CUDA);
# FILMMINE_TRITON=0 keeps the torch code everywhere (for comparisons: the same volumes)
USE_KERNELS = os.environ.get("FILMMINE_TRITON", "1") != "0"


def _kernels(t: torch.Tensor) -> bool:
    return USE_KERNELS and triton_kernels.available(t)


# --------------------------------------------------------------------------------------------
# Census transform and Hamming costs


def _code_dtype(bits: int) -> torch.dtype:
    if bits <= 8:
        return torch.uint8
    if bits <= 31:
        return torch.int32
    if bits <= 63:
        return torch.int64
    raise ValueError(f"census windows of more than 63 bits are not supported ({bits})")


def census(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, 1, H, W] float -> [N, H, W] integer codes: bit k = neighbour k darker than centre."""
    wh, ww = size
    n, _, h, w = img.shape
    bits = wh * ww - 1
    p = F.pad(img, (ww // 2, ww // 2, wh // 2, wh // 2), mode="replicate")[:, 0]
    centre = img[:, 0]
    dtype = _code_dtype(bits)
    code = torch.zeros((n, h, w), dtype=dtype, device=img.device)
    k = 0
    for dy in range(wh):
        for dx in range(ww):
            if dy == wh // 2 and dx == ww // 2:
                continue
            code |= (p[:, dy : dy + h, dx : dx + w] < centre).to(dtype) << k
            k += 1
    return code


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Set bits per element (SWAR) of uint8 / int32 / int64 codes of up to 63 bits."""
    if x.dtype == torch.uint8:
        x = x - ((x >> 1) & 0x55)
        x = (x & 0x33) + ((x >> 2) & 0x33)
        return (x + (x >> 4)) & 0x0F
    if x.dtype == torch.int32:
        x = x - ((x >> 1) & 0x55555555)
        x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
        x = (x + (x >> 4)) & 0x0F0F0F0F
        x = x + (x >> 8)
        return (x + (x >> 16)) & 0x3F
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    x = x + (x >> 8)
    x = x + (x >> 16)
    return (x + (x >> 32)) & 0x7F


def shift_rows(img: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """img [N, C, H, W] sampled at rows y + dy (dy [N, 1, H, W] integer-valued), replicated."""
    n, c, h, w = img.shape
    ys = torch.arange(h, device=img.device).view(1, 1, h, 1)
    idx = (ys + dy.long()).clamp(0, h - 1).expand(n, c, h, w)
    return img.gather(2, idx)


def sample_rows(img: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """img [N, C, H, W] sampled at rows y + dy (dy [N, 1, H, W], any real value: linear
    between the two nearest rows), replicated at the edges."""
    n, c, h, w = img.shape
    y = torch.arange(h, device=img.device, dtype=torch.float32).view(1, 1, h, 1) + dy
    y = y.clamp(0, h - 1)
    y0 = y.floor()
    t = (y - y0).expand(n, c, h, w)
    i0 = y0.long().expand(n, c, h, w)
    i1 = (i0 + 1).clamp(max=h - 1)
    return img.gather(2, i0) * (1 - t) + img.gather(2, i1) * t


def cost_volume(code_l: torch.Tensor, code_r: torch.Tensor, dmin: torch.Tensor, labels: int,
                bits: int, dtype: torch.dtype, grad_l: torch.Tensor | None = None,
                grad_r: torch.Tensor | None = None, grad_weight: float = 0.0) -> torch.Tensor:
    """Left-view cost [B, D, H, W] in [0, 1]: label i matches x - (dmin + i) in the right
    view; outside it the cost is 1 (worst). Hamming distance of census codes / bits, mixed
    with ``grad_weight`` of the absolute difference of clipped horizontal gradients (grad_l
    [B, H, W], grad_r [B, R, H, W], already scaled to [-0.5, 0.5]). ``code_r`` may carry
    extra candidate rows [B, R, H, W]: the best row is kept per label."""
    if bits <= 31 and _kernels(code_l):
        return triton_kernels.cost_volume(code_l, code_r, dmin, labels, bits, dtype, grad_l,
                                       grad_r, grad_weight)
    b, h, w = code_l.shape
    if code_r.dim() == 3:
        code_r = code_r[:, None]
    rows = code_r.shape[1]
    use_grad = grad_weight > 0 and grad_l is not None and grad_r is not None
    xs = torch.arange(w, device=code_l.device).view(1, 1, w)
    out = torch.empty((b, labels, h, w), dtype=dtype, device=code_l.device)
    for i in range(labels):
        xr = xs - (dmin.view(b, 1, 1) + i)                          # [B, 1, W]
        inside = (xr >= 0) & (xr < w)
        idx = xr.clamp(0, w - 1).expand(b, h, w)
        best = None
        for r in range(rows):
            c = popcount(code_l ^ code_r[:, r].gather(2, idx)).to(torch.float32) / bits
            if use_grad:
                g = (grad_l - grad_r[:, r].gather(2, idx)).abs().clamp(max=1.0)
                c = (1.0 - grad_weight) * c + grad_weight * g
            best = c if best is None else torch.minimum(best, c)
        assert best is not None
        out[:, i] = torch.where(inside, best, 1.0).to(dtype)
    return out


def clipped_gradient(img: torch.Tensor, cap: float) -> torch.Tensor:
    """Horizontal Sobel of [N, 1, H, W] grey, clipped to ±cap and scaled to [-0.5, 0.5]
    (the gradient term of the matching cost, as in OpenCV SGBM's prefilter)."""
    p = F.pad(img, (1, 1, 1, 1), mode="replicate")
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                     device=img.device).view(1, 1, 3, 3)
    return (F.conv2d(p, k).clamp(-cap, cap) / (2 * cap))[:, 0]


def shear_to_right(cost_l: torch.Tensor, dmin: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
    """Right-view volume from the left one: C_R[i](x') = C_L[i](x' + dmin + i); ``fill``
    where that leaves the left view."""
    if _kernels(cost_l):
        return triton_kernels.shear_to_right(cost_l, dmin, fill)
    b, labels, h, w = cost_l.shape
    xs = torch.arange(w, device=cost_l.device).view(1, 1, w)
    out = torch.empty_like(cost_l)
    for i in range(labels):
        xl = xs + (dmin.view(b, 1, 1) + i)
        inside = (xl >= 0) & (xl < w)
        out[:, i] = torch.where(inside, cost_l[:, i].gather(2, xl.clamp(0, w - 1).expand(b, h, w)),
                                fill)
    return out


# --------------------------------------------------------------------------------------------
# Guided-filter cost aggregation


def _window_counts(n: int, r: int, device: torch.device) -> torch.Tensor:
    """Pixels of a (2r+1) window inside [0, n) around each index (the border clips it)."""
    i = torch.arange(n, device=device)
    return ((i + r + 1).clamp(max=n) - (i - r).clamp(min=0)).float()


def box_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)² window clipped at the border; x [..., H, W], fp32 running sums
    (on CUDA, small windows: two 1-D average poolings, 2 passes over x instead of 7)."""
    h, w = x.shape[-2:]
    if x.is_cuda and 0 < r <= 8:
        return pooled_box_mean(x, r)
    k = 2 * r + 1
    c = torch.cumsum(F.pad(x.float(), (r + 1, r)), -1)
    s = c[..., k:] - c[..., :-k]                                   # [..., H, W] row sums
    c = torch.cumsum(F.pad(s, (0, 0, r + 1, r)), -2)
    s = c[..., k:, :] - c[..., :-k, :]
    counts = _window_counts(h, r, x.device).view(h, 1) * _window_counts(w, r, x.device)
    return s / counts


def pooled_box_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """``box_mean`` as a row then a column average pooling (clipped windows: the mean of
    clipped row means is the clipped 2-D mean, since every row's count is the same), fp32."""
    h, w = x.shape[-2:]
    k = 2 * r + 1
    t = x.float().reshape(-1, 1, h, w)
    t = F.avg_pool2d(t, (1, k), stride=1, padding=(0, r), count_include_pad=False)
    t = F.avg_pool2d(t, (k, 1), stride=1, padding=(r, 0), count_include_pad=False)
    return t.reshape(x.shape)


def guided_filter(cost: torch.Tensor, guide: torch.Tensor, r: int, eps: float,
                  chunk: int = 16) -> torch.Tensor:
    """Edge-aware filtering of every label slice of cost [N, D, H, W] by guide [N, 1, H, W]
    (grey 0..255); eps in (grey/255)². Runs in fp32 over label chunks, returns cost's dtype."""
    if _kernels(cost):
        return triton_kernels.guided_filter(cost, guide, r, eps, box_mean)
    g = guide.float() / 255.0
    mean_g = box_mean(g, r)
    var_g = box_mean(g * g, r) - mean_g * mean_g
    out = torch.empty_like(cost)
    for s in range(0, cost.shape[1], chunk):
        p = cost[:, s : s + chunk].float()
        mean_p = box_mean(p, r)
        a = (box_mean(g * p, r) - mean_g * mean_p) / (var_g + eps)
        b = mean_p - a * mean_g
        out[:, s : s + chunk] = (box_mean(a, r) * g + box_mean(b, r)).to(cost.dtype)
    return out


# --------------------------------------------------------------------------------------------
# Semi-global aggregation


def _sgm_scan(cost: torch.Tensor, grey: torch.Tensor, p1: float, p2: float, p2_edge: float,
              reverse: bool, row_step: int, acc: torch.Tensor) -> None:
    """One SGM path along dim 0 of cost [L, N, D, X] (scan-major, so every step is a
    contiguous slice); the predecessor of (l, x) is (l ∓ 1, x - row_step). grey [L, N, 1, X].
    The path costs are added into acc (same layout)."""
    steps, _n, _d, xn = cost.shape
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    prev = None
    prev_g = None
    for i in order:
        c = cost[i]                                        # [N, D, X]
        g = grey[i]                                        # [N, 1, X]
        if prev is None:
            cur = c.clone()
        else:
            p, pg = prev, prev_g
            if row_step:
                # diagonal: the predecessor sits one row over; rows without one restart
                p = torch.roll(prev, row_step, dims=2)
                pg = torch.roll(prev_g, row_step, dims=2)
                edge = slice(0, 1) if row_step > 0 else slice(xn - 1, xn)
                p[..., edge] = 0.0
                pg[..., edge] = g[..., edge]
            m = p.amin(dim=1, keepdim=True)
            nb = torch.full_like(p, _BIG)
            nb[:, :-1] = p[:, 1:]
            nb[:, 1:] = torch.minimum(nb[:, 1:], p[:, :-1])
            if p2_edge > 0:
                # intensity-adaptive P2: a grey-level step between neighbours lowers the jump cost
                pen2 = (p1 + (p2 - p1) * torch.exp(-(g - pg).abs() / p2_edge)).to(p.dtype)
            else:
                pen2 = p2
            t = torch.minimum(torch.minimum(p, nb + p1), m + pen2)
            cur = c + (t - m)
        acc[i] += cur
        prev, prev_g = cur, g


def sgm(cost: torch.Tensor, grey: torch.Tensor, p1: float, p2: float, p2_edge: float,
        paths: int) -> torch.Tensor:
    """Sum of path costs [N, D, H, W] over 4 (horizontal, vertical) or 8 paths (+ diagonals).
    cost [N, D, H, W]; grey [N, 1, H, W] fp32 0..255."""
    if paths == 4 and _kernels(cost):
        return triton_kernels.sgm4(cost, grey, p1, p2, p2_edge)
    # horizontal scans (and diagonals): [W, N, D, H]
    c_w = cost.permute(3, 0, 1, 2).contiguous()
    g_w = grey.permute(3, 0, 1, 2).contiguous()
    acc_w = torch.zeros_like(c_w)
    for rev in (False, True):
        _sgm_scan(c_w, g_w, p1, p2, p2_edge, rev, 0, acc_w)
        if paths == 8:
            for step in (1, -1):
                _sgm_scan(c_w, g_w, p1, p2, p2_edge, rev, step, acc_w)
    del c_w, g_w
    acc = acc_w.permute(1, 2, 3, 0)
    # vertical scans: [H, N, D, W]
    c_h = cost.permute(2, 0, 1, 3).contiguous()
    g_h = grey.permute(2, 0, 1, 3).contiguous()
    acc_h = torch.zeros_like(c_h)
    for rev in (False, True):
        _sgm_scan(c_h, g_h, p1, p2, p2_edge, rev, 0, acc_h)
    return (acc + acc_h.permute(1, 2, 0, 3)).contiguous()


def winner(agg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel label [N, H, W] (parabola through the best and its neighbours) and the match
    confidence 1 - best / second best (second best at least 2 labels away), fp32."""
    if _kernels(agg):
        return triton_kernels.winner(agg)
    _n, d, _h, _w = agg.shape
    idx = agg.argmin(dim=1, keepdim=True)                  # [N, 1, H, W]
    c0 = agg.gather(1, idx).float()
    cm = agg.gather(1, (idx - 1).clamp(0, d - 1)).float()
    cp = agg.gather(1, (idx + 1).clamp(0, d - 1)).float()
    den = cm - 2 * c0 + cp
    off = torch.where(den > 1e-6, (cm - cp) / (2 * den).clamp(min=1e-6), torch.zeros_like(den))
    off = torch.where((idx == 0) | (idx == d - 1), torch.zeros_like(off), off.clamp(-0.5, 0.5))
    labels = torch.arange(d, device=agg.device).view(1, d, 1, 1)
    second = agg.masked_fill((labels - idx).abs() < 2, _BIG).amin(dim=1, keepdim=True).float()
    conf = (1.0 - c0 / second.clamp(min=1e-6)).clamp(0.0, 1.0)
    return (idx.float() + off)[:, 0], conf[:, 0]


# --------------------------------------------------------------------------------------------
# Sub-pixel refinement


def _sample(img: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """Bilinear img [N, C, H, W] at (x + fx, y + fy) px, fx/fy [N, H, W]; border replicated."""
    _n, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=img.device, dtype=torch.float32),
                            torch.arange(w, device=img.device, dtype=torch.float32),
                            indexing="ij")
    gx = (xs + fx) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + fy) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


REFINE_MODES = ("none", "vertical", "both")
_BLUR = (0.25, 0.5, 0.25)


def _blur(t: torch.Tensor) -> torch.Tensor:
    """Separable [1, 2, 1] / 4 blur of [N, 1, H, W], border replicated (shifted sums: cuDNN's
    one-channel convolutions are slow at these sizes)."""
    a, b, c = _BLUR
    p = F.pad(t, (1, 1, 0, 0), mode="replicate")
    t = a * p[..., :-2] + b * p[..., 1:-1] + c * p[..., 2:]
    p = F.pad(t, (0, 0, 1, 1), mode="replicate")
    return a * p[..., :-2, :] + b * p[..., 1:-1, :] + c * p[..., 2:, :]


def lk_refine(src: torch.Tensor, dst: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
              iters: int, radius: int, mode: str = "vertical",
              max_step_px: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windowed Lucas-Kanade on locally zero-mean images (robust to exposure differences).

    ``mode``: "vertical" refines v only (sub-pixel vertical flow; measured: refining u as well
    costs density at depth edges and does not lower EPE on the real pairs), "both" refines
    (u, v). Each stays within ``max_step_px`` of its start. src/dst [N, 1, H, W] fp32,
    u/v [N, H, W] px. Also returns the estimate's weight [N, H, W]: the smaller eigenvalue
    of the window's structure tensor (0 on flat or one-directional texture)."""
    def zero_mean(t: torch.Tensor) -> torch.Tensor:
        # pre-smoothing keeps bilinear sampling from biasing sub-pixel estimates on fine texture
        t = _blur(t)
        return t - box_mean(t, 4)

    a, b = zero_mean(src), zero_mean(dst)
    pad_x = F.pad(b, (1, 1, 0, 0), mode="replicate")
    pad_y = F.pad(b, (0, 0, 1, 1), mode="replicate")
    gx = (pad_x[..., 2:] - pad_x[..., :-2]) * 0.5
    gy = (pad_y[..., 2:, :] - pad_y[..., :-2, :]) * 0.5
    u0, v0 = u, v
    u_est = u            # "vertical": the joint estimate of u, used for sampling, not returned
    stack = torch.cat([b, gx, gy], dim=1)
    for _ in range(iters):
        u_est = u_est.clamp(u0 - max_step_px, u0 + max_step_px)
        warped = _sample(stack, u if mode == "both" else u_est, v)
        e = a - warped[:, 0:1]
        ix, iy = warped[:, 1:2], warped[:, 2:3]
        sxx = box_mean(ix * ix, radius)
        sxy = box_mean(ix * iy, radius)
        syy = box_mean(iy * iy, radius)
        sxe = box_mean(ix * e, radius)
        sye = box_mean(iy * e, radius)
        reg = 1e-2 + 1e-3 * (sxx + syy)                     # Tikhonov: flat windows stay put
        sxx, syy = sxx + reg, syy + reg
        det = sxx * syy - sxy * sxy
        # solved jointly even for "vertical": v alone would absorb the sub-pixel error of u
        # on oblique edges (aperture problem)
        du = ((syy * sxe - sxy * sye) / det)[:, 0]
        dv = ((sxx * sye - sxy * sxe) / det)[:, 0]
        if mode == "both":
            u = (u + du.clamp(-0.5, 0.5)).clamp(u0 - max_step_px, u0 + max_step_px)
        else:
            u_est = u_est + du.clamp(-0.5, 0.5)
        v = (v + dv.clamp(-0.5, 0.5)).clamp(v0 - max_step_px, v0 + max_step_px)
    tr = sxx + syy
    weight = (0.5 * (tr - torch.sqrt((sxx - syy) ** 2 + 4 * sxy * sxy)))[:, 0].clamp(min=0.0)
    return u, v, weight
