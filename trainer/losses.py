"""Scale- and shift-invariant losses in disparity space (Ranftl et al., Section 5).

Every loss takes ``pred``, ``target`` ``[B, H, W]`` (disparity, any scale and shift) and a
boolean ``mask`` ``[B, H, W]`` (True = valid label) and returns a scalar. Masked pixels never
influence the value or the gradient: they are replaced by zeros before any arithmetic, so NaN
or inf labels there are harmless.

Internally a loss is a set of per-image terms (``LossTerms``: numerators and denominators per
image), so the same forward pass gives the batch loss, a loss per dataset (a subset of the
images) and the per-dataset losses that Pareto mixing differentiates separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

MAD_MIN = 1e-6  # the scale of a constant image is clamped here (paper: s clamped >= 1e-6)


@dataclass
class LossTerms:
    """``value = sum_j weight[j] * sum_b num[j, b] / sum_b den[j, b]`` (batch-based reduction)."""

    num: Tensor  # [J, B]
    den: Tensor  # [J, B] valid-pixel counts (x 2 for the data term)
    weight: Tensor  # [J]

    def value(self, select: Tensor | None = None) -> Tensor:
        """The loss over all images, or over the images where ``select`` ([B] bool) is True."""
        num, den = self.num, self.den
        if select is not None:
            num, den = num[:, select], den[:, select]
        return (self.weight * num.sum(1) / den.sum(1).clamp(min=1.0)).sum()

    @staticmethod
    def cat(*terms: LossTerms, weights: tuple[float, ...]) -> LossTerms:
        return LossTerms(
            num=torch.cat([t.num for t in terms]),
            den=torch.cat([t.den for t in terms]),
            weight=torch.cat([t.weight * w for t, w in zip(terms, weights, strict=True)]),
        )


def _clean(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if pred.dim() != 3 or pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(f"pred, target and mask must be [B, H, W] of one shape, got "
                         f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}")
    mask = mask.bool()
    zero = pred.new_zeros(())
    return torch.where(mask, pred, zero), torch.where(mask, target.to(pred.dtype), zero), mask


def masked_median(x: Tensor, mask: Tensor) -> Tensor:
    """[B, H, W] -> [B]: median of the valid pixels (mean of the two middle ones); 0 if none."""
    b = x.shape[0]
    flat = torch.where(mask, x, torch.full_like(x, float("inf"))).reshape(b, -1)
    ordered = flat.sort(dim=1).values
    n = mask.reshape(b, -1).sum(1)
    lo = ((n - 1).clamp(min=0) // 2)[:, None]
    hi = (n // 2).clamp(max=flat.shape[1] - 1)[:, None]
    med = 0.5 * (ordered.gather(1, lo) + ordered.gather(1, hi))[:, 0]
    return torch.where(n > 0, med, torch.zeros_like(med))


def normalize_median_mad(x: Tensor, mask: Tensor) -> Tensor:
    """Shift by the masked median, scale by the mean absolute deviation (per image)."""
    t = masked_median(x, mask)[:, None, None]
    n = mask.sum((1, 2)).clamp(min=1)[:, None, None]
    s = (torch.where(mask, (x - t).abs(), x.new_zeros(())).sum((1, 2), keepdim=True) / n)
    return torch.where(mask, (x - t) / s.clamp(min=MAD_MIN), x.new_zeros(()))


def least_squares_align(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per image scale s and shift t minimising sum m (s p + t - g)^2 (closed-form 2x2 solve).

    Returns ``(aligned [B, H, W], ok [B])``; ``ok`` is False for degenerate images (fewer than
    2 valid pixels or a constant prediction), which are skipped. Not detached: gradients flow
    through s and t.

    Solved on the centred values (s = cov(p, g) / var(p), s p + t = s (p - mean p) + mean g):
    the raw normal equations' determinant ``n sum p^2 - (sum p)^2`` cancels catastrophically
    when the prediction's spread is small next to its mean (float32: a prediction of
    1000 +- 1 gave a loss 8x too large). A prediction is constant when its spread is below the
    rounding of its dtype at its magnitude (half precision is solved in float32).
    """
    out_dtype = pred.dtype
    work = torch.promote_types(pred.dtype, torch.float32)
    pred, target = pred.to(work), target.to(work)
    m = mask.to(work)
    n = m.sum((1, 2))
    cnt = n.clamp(min=1)[:, None, None]
    zero = pred.new_zeros(())
    mp = (m * pred).sum((1, 2), keepdim=True) / cnt
    mg = (m * target).sum((1, 2), keepdim=True) / cnt
    dp = torch.where(mask, pred - mp, zero)
    dg = torch.where(mask, target - mg, zero)
    var = (dp * dp).sum((1, 2))
    cov = (dp * dg).sum((1, 2))
    big = torch.where(mask, pred.detach().abs(), zero).amax((1, 2))
    tol = n * (64 * torch.finfo(pred.dtype).eps * big) ** 2
    ok = (n >= 2) & (var > tol)
    s = torch.where(ok, cov / torch.where(ok, var, torch.ones_like(var)), torch.zeros_like(var))
    return (s[:, None, None] * dp + mg).to(out_dtype), ok


def align(pred: Tensor, target: Tensor, mask: Tensor, mode: str) -> tuple[Tensor, Tensor, Tensor]:
    """Aligned ``(pred, target, mask)``; images skipped by the alignment get an empty mask."""
    if mode in ("ssitrim", "ssimae"):
        return normalize_median_mad(pred, mask), normalize_median_mad(target, mask), mask
    if mode == "ssimse":
        aligned, ok = least_squares_align(pred, target, mask)
        mask = mask & ok[:, None, None]
        zero = pred.new_zeros(())
        return torch.where(mask, aligned, zero), target, mask
    if mode == "none":
        return pred, target, mask
    raise ValueError(f"unknown alignment {mode!r}; choose from {sorted(ALIGNMENTS)}")


ALIGNMENTS = ("ssitrim", "ssimae", "ssimse", "none")


def data_terms(pa: Tensor, ta: Tensor, mask: Tensor, mode: str, trim: float) -> LossTerms:
    """sum over valid pixels of rho(residual) / (2 * valid count); ssitrim keeps the smallest
    (1 - trim) of each image's absolute residuals."""
    b = pa.shape[0]
    n = mask.reshape(b, -1).sum(1)
    zero = pa.new_zeros(())
    if mode == "ssimse":
        num = torch.where(mask, (pa - ta) ** 2, zero).reshape(b, -1).sum(1)
    else:
        res = torch.where(mask, (pa - ta).abs(), torch.full_like(pa, float("inf"))).reshape(b, -1)
        if mode == "ssitrim" and trim > 0:
            res = res.sort(dim=1).values
            keep = torch.floor(n.to(pa.dtype) * (1.0 - trim)).long()
            kept = torch.arange(res.shape[1], device=pa.device)[None, :] < keep[:, None]
        else:
            kept = mask.reshape(b, -1)
        num = torch.where(kept, res, zero).sum(1)
    return LossTerms(num=num[None], den=2.0 * n.to(pa.dtype)[None], weight=pa.new_ones(1))


def gradient_terms(residual: Tensor, mask: Tensor, scales: int) -> LossTerms:
    """Multi-scale gradient matching on the aligned residual ``R`` (``[B, H, W]``, 0 where
    invalid): at scale k (stride 2^k subsampling) the sum of |forward differences| of R in x and
    y where both pixels are valid, over the valid count at that scale."""
    nums, dens = [], []
    zero = residual.new_zeros(())
    for k in range(scales):
        step = 2**k
        r, m = residual[:, ::step, ::step], mask[:, ::step, ::step]
        mx = m[:, :, 1:] & m[:, :, :-1]
        my = m[:, 1:, :] & m[:, :-1, :]
        gx = torch.where(mx, (r[:, :, 1:] - r[:, :, :-1]).abs(), zero).sum((1, 2))
        gy = torch.where(my, (r[:, 1:, :] - r[:, :-1, :]).abs(), zero).sum((1, 2))
        nums.append(gx + gy)
        dens.append(m.sum((1, 2)).to(residual.dtype))
    return LossTerms(num=torch.stack(nums), den=torch.stack(dens),
                     weight=residual.new_ones(scales))


class _TermsLoss(nn.Module):
    def terms(self, pred: Tensor, target: Tensor, mask: Tensor) -> LossTerms:
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return self.terms(pred, target, mask).value()


class ScaleShiftInvariantLoss(_TermsLoss):
    """Data term. ``ssitrim`` (default): prediction and target each shifted by their masked
    median and scaled by their mean absolute deviation, then MAE with the largest ``trim``
    (20 %) of each image's residuals dropped; ``ssimae``: the same without trimming; ``ssimse``:
    least-squares scale and shift of the prediction, then MSE."""

    def __init__(self, mode: str = "ssitrim", trim: float = 0.2):
        super().__init__()
        if mode not in ("ssitrim", "ssimae", "ssimse"):
            raise ValueError(f"unknown data loss {mode!r}; choose ssitrim, ssimae or ssimse")
        if not 0.0 <= trim < 1.0:
            raise ValueError(f"trim must be in [0, 1), got {trim}")
        self.mode, self.trim = mode, trim

    def terms(self, pred: Tensor, target: Tensor, mask: Tensor) -> LossTerms:
        pred, target, mask = _clean(pred, target, mask)
        pa, ta, mask = align(pred, target, mask, self.mode)
        return data_terms(pa, ta, mask, self.mode, self.trim)


class GradientMatchingLoss(_TermsLoss):
    """Gradient matching on the residual of the aligned prediction and target, summed over
    ``scales`` (4) scales. ``align`` is the data loss whose alignment is used (``ssitrim``:
    median / MAD normalisation of both; ``ssimse``: least squares; ``none``: raw residual)."""

    def __init__(self, scales: int = 4, align: str = "ssitrim"):
        super().__init__()
        if scales < 1:
            raise ValueError(f"scales must be >= 1, got {scales}")
        if align not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {align!r}; choose from {list(ALIGNMENTS)}")
        self.scales, self.align = scales, align

    def terms(self, pred: Tensor, target: Tensor, mask: Tensor) -> LossTerms:
        pred, target, mask = _clean(pred, target, mask)
        pa, ta, mask = align(pred, target, mask, self.align)
        return gradient_terms(torch.where(mask, pa - ta, pa.new_zeros(())), mask, self.scales)


class MidasLoss(_TermsLoss):
    """Total loss = data + alpha * gradient matching, with one alignment shared by both."""

    def __init__(self, data: str = "ssitrim", trim: float = 0.2, alpha: float = 0.5,
                 scales: int = 4):
        super().__init__()
        self.data = ScaleShiftInvariantLoss(data, trim)
        self.alpha, self.scales = float(alpha), scales

    def terms(self, pred: Tensor, target: Tensor, mask: Tensor) -> LossTerms:
        pred, target, mask = _clean(pred, target, mask)
        pa, ta, mask = align(pred, target, mask, self.data.mode)
        data = data_terms(pa, ta, mask, self.data.mode, self.data.trim)
        if self.alpha == 0 or self.scales == 0:
            return data
        grad = gradient_terms(torch.where(mask, pa - ta, pa.new_zeros(())), mask, self.scales)
        return LossTerms.cat(data, grad, weights=(1.0, self.alpha))


LOSSES: dict[str, Callable[..., _TermsLoss]] = {
    "midas": MidasLoss,
    "ssi": ScaleShiftInvariantLoss,
    "gradient": GradientMatchingLoss,
}
