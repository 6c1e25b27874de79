"""Triton kernels for census_sgm on CUDA: SGM paths, the cost volume and the guided filter.

The torch code of sgm_ops.py spends its GPU time launching small kernels (several per SGM
scan step, the GPU mostly idle), looping over labels for the cost volume, and passing many
times over fp32 copies of the volume in the guided filter. Here:
- SGM: one program owns a block of scan lines of one image and walks a whole path, the
  previous step's path costs held in registers: one launch per path.
- Cost volume: one launch (census Hamming + gradient term, best of the candidate rows).
- Guided filter: two launches, each walking down the rows of a label plane with running
  sums of row sums (the volume is read about once per stage).

Same arithmetic as the torch code, in fp32 whatever the volume's dtype. Used when triton
imports and the volume is on a CUDA device (``available``); tests run the kernels on the CPU
under ``TRITON_INTERPRET=1`` against the torch code. Loops over rows/steps are ``while``
loops with run-time bounds: one compile per kernel variant, whatever the image size (the
interpreter cannot take a run-time bound in ``range``, and constant bounds would recompile
for every new frame size).
"""

from __future__ import annotations

import os

import torch

try:  # triton ships with CUDA builds of torch; CPU installs run the torch code instead
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def available(t: torch.Tensor) -> bool:
    """Whether the kernels can run on ``t``'s device (CUDA, or any under the interpreter)."""
    return triton is not None and (t.is_cuda or _INTERPRET)


if triton is not None:

    @triton.jit
    def _sgm_path(cost, grey, acc, lines, labels,
                  s_cn, s_cd, s_cs, s_gn, s_gs, s_an, s_ad, s_as,
                  p1, p2, p2_edge, big, steps,
                  REVERSE: tl.constexpr, ACCUMULATE: tl.constexpr, EDGE: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_X: tl.constexpr):
        """One SGM path along dim 2 of cost [N, D, S, X] (X contiguous) for BLOCK_X lines of
        image n: L(s) = C(s) + min(L(s-1), L(s-1)[d±1] + p1, min L(s-1) + P2) - min L(s-1),
        P2 lowered by the grey step between s-1 and s. Adds (or writes) L into acc."""
        n = tl.program_id(0)
        xs = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
        ds = tl.arange(0, BLOCK_D)
        d2 = ds[:, None]
        x2 = xs[None, :]
        mask = (d2 < labels) & (x2 < lines)
        xmask = xs < lines
        up = tl.broadcast_to(tl.minimum(d2 + 1, BLOCK_D - 1), (BLOCK_D, BLOCK_X))
        down = tl.broadcast_to(tl.maximum(d2 - 1, 0), (BLOCK_D, BLOCK_X))
        c_base = cost + n * s_cn + d2 * s_cd + x2
        a_base = acc + n * s_an + d2 * s_ad + x2
        g_base = grey + n * s_gn + xs
        s0 = steps - 1 if REVERSE else 0
        prev = tl.load(c_base + s0 * s_cs, mask=mask, other=big).to(tl.float32)
        prev_g = tl.load(g_base + s0 * s_gs, mask=xmask, other=0.0).to(tl.float32)
        if ACCUMULATE:
            old = tl.load(a_base + s0 * s_as, mask=mask, other=0.0).to(tl.float32)
            tl.store(a_base + s0 * s_as, (old + prev).to(acc.dtype.element_ty), mask=mask)
        else:
            tl.store(a_base + s0 * s_as, prev.to(acc.dtype.element_ty), mask=mask)
        i = 1
        while i < steps:
            s = steps - 1 - i if REVERSE else i
            c = tl.load(c_base + s * s_cs, mask=mask, other=big).to(tl.float32)
            g = tl.load(g_base + s * s_gs, mask=xmask, other=0.0).to(tl.float32)
            m = tl.min(prev, axis=0)[None, :]
            nb = tl.minimum(tl.gather(prev, up, 0), tl.gather(prev, down, 0))
            if EDGE:
                pen2 = p1 + (p2 - p1) * tl.exp(-tl.abs(g - prev_g) / p2_edge)
            else:
                pen2 = tl.zeros_like(g) + p2
            t = tl.minimum(tl.minimum(prev, nb + p1), m + pen2[None, :])
            cur = c + (t - m)
            if ACCUMULATE:
                old = tl.load(a_base + s * s_as, mask=mask, other=0.0).to(tl.float32)
                cur_out = old + cur
            else:
                cur_out = cur
            tl.store(a_base + s * s_as, cur_out.to(acc.dtype.element_ty), mask=mask)
            prev = cur
            prev_g = g
            i += 1


    @triton.jit
    def _popcount32(x):
        x = x - ((x >> 1) & 0x55555555)
        x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
        x = (x + (x >> 4)) & 0x0F0F0F0F
        x = x + (x >> 8)
        return (x + (x >> 16)) & 0x3F

    @triton.jit
    def _cost_volume(code_l, code_r, grad_l, grad_r, dmin, out, height, width, labels,
                     s_lb, s_lh, s_rb, s_rr, s_rh, s_ob, s_od, s_oh,
                     inv_bits, grad_weight,
                     ROWS: tl.constexpr, GRAD: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_X: tl.constexpr):
        """out[b, i, h, x] = min over candidate rows r of the census Hamming distance / bits
        (mixed with the clipped-gradient difference) between left (h, x) and right row r at
        x - (dmin[b] + i); 1 where that leaves the image. Codes int32, grads fp32."""
        bh = tl.program_id(0)
        b = bh // height
        h = bh % height
        xs = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
        ds = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        x2 = xs[None, :]
        d2 = ds[:, None]
        xmask = xs < width
        mask = (d2 < labels) & (x2 < width)
        xr = x2 - (tl.load(dmin + b) + d2)
        inside = (xr >= 0) & (xr < width) & mask
        xr = tl.minimum(tl.maximum(xr, 0), width - 1)
        cl = tl.load(code_l + b * s_lb + h * s_lh + xs, mask=xmask, other=0)[None, :]
        if GRAD:
            gl = tl.load(grad_l + b * s_lb + h * s_lh + xs, mask=xmask, other=0.0)[None, :]
        best = tl.full((BLOCK_D, BLOCK_X), 3.0, tl.float32)
        for r in tl.static_range(ROWS):
            off = b * s_rb + r * s_rr + h * s_rh + xr
            cr = tl.load(code_r + off, mask=mask, other=0)
            c = _popcount32(cl ^ cr).to(tl.float32) * inv_bits
            if GRAD:
                gr = tl.load(grad_r + off, mask=mask, other=0.0)
                g = tl.minimum(tl.abs(gl - gr), 1.0)
                c = (1.0 - grad_weight) * c + grad_weight * g
            best = tl.minimum(best, c)
        best = tl.where(inside, best, 1.0)
        tl.store(out + b * s_ob + d2 * s_od + h * s_oh + x2, best.to(out.dtype.element_ty),
                 mask=mask)


    @triton.jit
    def _row_sums(src, guide, row, xs, width, height, R: tl.constexpr, WITH_G: tl.constexpr):
        """Sums of src (and of guide * src) over the clipped window [x - R, x + R] of one
        row; zeros for a row outside [0, height)."""
        ok = (row >= 0) & (row < height)
        s = tl.zeros(xs.shape, tl.float32)
        sg = tl.zeros(xs.shape, tl.float32)
        for k in tl.static_range(2 * R + 1):
            x = xs + (k - R)
            m = ok & (x >= 0) & (x < width)
            v = tl.load(src + row * width + x, mask=m, other=0.0).to(tl.float32)
            s += v
            if WITH_G:
                sg += v * tl.load(guide + row * width + x, mask=m, other=0.0)
        return s, sg

    @triton.jit
    def _guided(src, guide, mean_g, var_g, dst_a, dst_b, out, width, labels, eps,
                height, R: tl.constexpr, STAGE: tl.constexpr,
                BLOCK_X: tl.constexpr):
        """One plane (image n, label d) of the guided filter, per block of columns, walking
        down the rows with running sums of row sums (clipped (2R+1)^2 windows).
        STAGE 1: p = src -> a = cov(g, p) / (var g + eps), b = mean p - a mean g (fp32).
        STAGE 2: src = a, dst_b = b -> out = mean(a) g + mean(b) (out's dtype)."""
        pid = tl.program_id(0)
        n = pid // labels
        plane = pid.to(tl.int64) * height * width
        gplane = n.to(tl.int64) * height * width
        xs = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
        xm = xs < width
        cw = (tl.minimum(xs + R, width - 1) - tl.maximum(xs - R, 0) + 1).to(tl.float32)
        s1 = src + plane
        s2 = dst_b + plane            # stage 2: b, summed alongside a
        g = guide + gplane
        v1 = tl.zeros((BLOCK_X,), tl.float32)
        v2 = tl.zeros((BLOCK_X,), tl.float32)
        for k in tl.static_range(R):
            a1, a2 = _row_sums(s1, g, k, xs, width, height, R, STAGE == 1)
            v1 += a1
            if STAGE == 1:
                v2 += a2
            else:
                b1, _ = _row_sums(s2, g, k, xs, width, height, R, False)
                v2 += b1
        y = 0
        while y < height:
            a1, a2 = _row_sums(s1, g, y + R, xs, width, height, R, STAGE == 1)
            r1, r2 = _row_sums(s1, g, y - R - 1, xs, width, height, R, STAGE == 1)
            v1 += a1 - r1
            if STAGE == 1:
                v2 += a2 - r2
            else:
                b1, _ = _row_sums(s2, g, y + R, xs, width, height, R, False)
                q1, _ = _row_sums(s2, g, y - R - 1, xs, width, height, R, False)
                v2 += b1 - q1
            ch = (tl.minimum(y + R, height - 1) - tl.maximum(y - R, 0) + 1).to(tl.float32)
            inv = 1.0 / (cw * ch)
            at = gplane + y * width + xs
            if STAGE == 1:
                mg = tl.load(mean_g + at, mask=xm, other=0.0)
                vg = tl.load(var_g + at, mask=xm, other=1.0)
                mp = v1 * inv
                a = (v2 * inv - mg * mp) / (vg + eps)
                tl.store(dst_a + plane + y * width + xs, a, mask=xm)
                tl.store(dst_b + plane + y * width + xs, mp - a * mg, mask=xm)
            else:
                gv = tl.load(guide + at, mask=xm, other=0.0)
                o = v1 * inv * gv + v2 * inv
                tl.store(out + plane + y * width + xs, o.to(out.dtype.element_ty), mask=xm)
            y += 1


    @triton.jit
    def _winner(agg, label, conf, labels, height, width, s_an, s_ad, s_ah, big,
                BLOCK_D: tl.constexpr, BLOCK_X: tl.constexpr):
        """Per pixel, in one read of its labels: the first lowest cost, a parabola through it
        and its neighbours (sub-pixel label), and 1 - best / second best at least 2 labels
        away."""
        bh = tl.program_id(0)
        n = bh // height
        h = bh % height
        xs = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
        ds = tl.arange(0, BLOCK_D)[:, None]
        xmask = xs < width
        mask = (ds < labels) & xmask[None, :]
        c = tl.load(agg + n * s_an + ds * s_ad + h * s_ah + xs[None, :], mask=mask,
                    other=big).to(tl.float32)
        idx = tl.argmin(c, axis=0, tie_break_left=True)
        i2 = idx[None, :]
        c0 = tl.min(c, axis=0)
        cm = tl.min(tl.where(ds == tl.maximum(i2 - 1, 0), c, big), axis=0)
        cp = tl.min(tl.where(ds == tl.minimum(i2 + 1, labels - 1), c, big), axis=0)
        den = cm - 2.0 * c0 + cp
        off = tl.where(den > 1e-6, (cm - cp) / (2.0 * tl.maximum(den, 1e-6)), 0.0)
        off = tl.minimum(tl.maximum(off, -0.5), 0.5)
        off = tl.where((idx == 0) | (idx == labels - 1), 0.0, off)
        far = (ds - i2 >= 2) | (i2 - ds >= 2)
        second = tl.min(tl.where(far, c, big), axis=0)
        cf = 1.0 - c0 / tl.maximum(second, 1e-6)
        cf = tl.minimum(tl.maximum(cf, 0.0), 1.0)
        at = bh * width + xs
        tl.store(label + at, idx.to(tl.float32) + off, mask=xmask)
        tl.store(conf + at, cf, mask=xmask)

    @triton.jit
    def _shear(src, out, dmin, labels, height, width, s_b, s_d, s_h, fill,
               BLOCK_D: tl.constexpr, BLOCK_X: tl.constexpr):
        """out[b, i, h, x] = src[b, i, h, x + dmin[b] + i], fill outside the image."""
        bh = tl.program_id(0)
        b = bh // height
        h = bh % height
        xs = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)[None, :]
        ds = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]
        mask = (ds < labels) & (xs < width)
        xl = xs + tl.load(dmin + b) + ds
        inside = (xl >= 0) & (xl < width) & mask
        base = b * s_b + ds * s_d + h * s_h
        v = tl.load(src + base + xl, mask=inside, other=0.0)
        v = tl.where(inside, v, fill)
        tl.store(out + base + xs, v.to(out.dtype.element_ty), mask=mask)


def winner(agg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sgm_ops.winner`` in one launch: sub-pixel label and confidence [N, H, W] fp32."""
    n, labels, h, w = agg.shape
    agg = agg.contiguous()
    _fits(agg)
    label = torch.empty((n, h, w), dtype=torch.float32, device=agg.device)
    conf = torch.empty_like(label)
    block_d = max(2, triton.next_power_of_2(labels))
    block_x = max(2, min(64, 4096 // block_d))
    grid = (n * h, triton.cdiv(w, block_x))
    _winner[grid](agg, label, conf, labels, h, w, agg.stride(0), agg.stride(1), agg.stride(2),
                  1e4, BLOCK_D=block_d, BLOCK_X=block_x, num_warps=4)
    return label, conf


def shear_to_right(cost_l: torch.Tensor, dmin: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
    """``sgm_ops.shear_to_right`` in one launch."""
    b, labels, h, w = cost_l.shape
    cost_l = cost_l.contiguous()
    _fits(cost_l)
    out = torch.empty_like(cost_l)
    block_d, block_x = 16, 64
    grid = (b * h, triton.cdiv(w, block_x), triton.cdiv(labels, block_d))
    _shear[grid](cost_l, out, dmin.to(torch.int32).contiguous(), labels, h, w,
                 cost_l.stride(0), cost_l.stride(1), cost_l.stride(2), float(fill),
                 BLOCK_D=block_d, BLOCK_X=block_x, num_warps=4)
    return out


def cost_volume(code_l: torch.Tensor, code_r: torch.Tensor, dmin: torch.Tensor, labels: int,
                bits: int, dtype: torch.dtype, grad_l: torch.Tensor | None = None,
                grad_r: torch.Tensor | None = None, grad_weight: float = 0.0) -> torch.Tensor:
    """``sgm_ops.cost_volume`` in one launch (census codes of up to 31 bits)."""
    b, h, w = code_l.shape
    if code_r.dim() == 3:
        code_r = code_r[:, None]
    rows = code_r.shape[1]
    use_grad = grad_weight > 0 and grad_l is not None and grad_r is not None
    code_l = code_l.to(torch.int32).contiguous()
    code_r = code_r.to(torch.int32).contiguous()
    if use_grad:
        grad_l = grad_l.float().contiguous()
        grad_r = grad_r.float().contiguous()
        assert grad_l.stride() == code_l.stride() and grad_r.stride() == code_r.stride()
    else:
        grad_l, grad_r = code_l, code_r                       # unused
    out = torch.empty((b, labels, h, w), dtype=dtype, device=code_l.device)
    _fits(out, code_r)
    block_d, block_x = 16, 64
    grid = (b * h, triton.cdiv(w, block_x), triton.cdiv(labels, block_d))
    _cost_volume[grid](code_l, code_r, grad_l, grad_r, dmin.to(torch.int32).contiguous(), out,
                       h, w, labels, code_l.stride(0), code_l.stride(1),
                       code_r.stride(0), code_r.stride(1), code_r.stride(2),
                       out.stride(0), out.stride(1), out.stride(2),
                       1.0 / bits, float(grad_weight), ROWS=rows, GRAD=use_grad,
                       BLOCK_D=block_d, BLOCK_X=block_x, num_warps=4)
    return out


def guided_filter(cost: torch.Tensor, guide: torch.Tensor, r: int, eps: float,
                  box_mean) -> torch.Tensor:
    """``sgm_ops.guided_filter`` in two launches over the whole volume: per plane, running
    sums down the rows (a row's window sums come from L1/L2, the volume is read about once
    per stage). cost [N, D, H, W] (any float dtype, returned in it); guide [N, 1, H, W] 0..255;
    ``box_mean``: census_sgm's, for the guide's own statistics."""
    n, labels, h, w = cost.shape
    cost = cost.contiguous()
    g = guide.float() / 255.0
    mean_g = box_mean(g, r)
    var_g = box_mean(g * g, r) - mean_g * mean_g
    g, mean_g, var_g = (t[:, 0].contiguous() for t in (g, mean_g, var_g))
    a = torch.empty(cost.shape, dtype=torch.float32, device=cost.device)
    b = torch.empty_like(a)
    out = torch.empty_like(cost)
    block_x = 64
    grid = (n * labels, triton.cdiv(w, block_x))
    _guided[grid](cost, g, mean_g, var_g, a, b, out, w, labels, float(eps), h, r, 1,
                  block_x, num_warps=2)
    _guided[grid](a, g, mean_g, var_g, a, b, out, w, labels, float(eps), h, r, 2,
                  block_x, num_warps=2)
    return out


_MAX_ELEMENTS = 2 ** 31 - 1   # the kernels address volumes with int32 offsets


def _fits(*tensors: torch.Tensor) -> None:
    """Volumes the kernels can address (census_sgm's chunks are at most 2^31 pixel-labels
    for both views together, which keeps every volume below this)."""
    for t in tensors:
        if t.numel() > _MAX_ELEMENTS:
            raise ValueError(f"volume of {t.numel()} elements is too large for the kernels' "
                             f"int32 offsets: use a smaller sgm_chunk_labels")


def _block_sizes(labels: int) -> tuple[int, int]:
    block_d = max(2, triton.next_power_of_2(labels))
    # ~2048 path costs per program: registers for prev, the cost tile and the gathers
    block_x = max(4, min(64, 2048 // block_d))
    return block_d, block_x


def _paths(cost: torch.Tensor, grey: torch.Tensor, out: torch.Tensor, p1: float, p2: float,
           p2_edge: float, accumulate: bool) -> None:
    """Both directions along dim 2 of cost [N, D, S, X] into out (same shape); grey [N, S, X]."""
    n, labels, steps, lines = cost.shape
    assert cost.stride(3) == 1 and grey.stride(2) == 1 and out.stride(3) == 1
    block_d, block_x = _block_sizes(labels)
    grid = (n, triton.cdiv(lines, block_x))
    for i, reverse in enumerate((False, True)):
        _sgm_path[grid](cost, grey, out, lines, labels,
                        cost.stride(0), cost.stride(1), cost.stride(2),
                        grey.stride(0), grey.stride(1),
                        out.stride(0), out.stride(1), out.stride(2),
                        float(p1), float(p2), float(max(p2_edge, 1e-6)), 1e4, steps,
                        REVERSE=reverse, ACCUMULATE=accumulate or i > 0,
                        EDGE=p2_edge > 0, BLOCK_D=block_d, BLOCK_X=block_x,
                        num_warps=4)


def sgm4(cost: torch.Tensor, grey: torch.Tensor, p1: float, p2: float,
         p2_edge: float) -> torch.Tensor:
    """Sum of the 4 straight path costs [N, D, H, W] (as ``sgm_ops.sgm(..., paths=4)``).
    cost [N, D, H, W] in its dtype (the sum is kept in it); grey [N, 1, H, W] 0..255."""
    cost = cost.contiguous()
    _fits(cost)
    g = grey[:, 0].float().contiguous()
    acc = torch.empty_like(cost)
    _paths(cost, g, acc, p1, p2, p2_edge, accumulate=False)              # down, up
    cost_t = cost.transpose(2, 3).contiguous()                           # [N, D, W, H]
    acc_t = torch.empty_like(cost_t)
    _paths(cost_t, g.transpose(1, 2).contiguous(), acc_t, p1, p2, p2_edge, accumulate=False)
    del cost_t
    acc += acc_t.transpose(2, 3)
    return acc
