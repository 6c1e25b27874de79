"""trainer.losses: invariances, masking, hand-computed values."""

from __future__ import annotations

import pytest
import torch

from trainer.losses import (
    GradientMatchingLoss,
    MidasLoss,
    ScaleShiftInvariantLoss,
    masked_median,
)

MODES = ["ssitrim", "ssimae", "ssimse"]


def _data(seed: int = 0, b: int = 3, h: int = 24, w: int = 32):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, h, w, generator=g, dtype=torch.float64)
    pred = 0.7 * target + 0.3 * torch.rand(b, h, w, generator=g, dtype=torch.float64)
    mask = torch.rand(b, h, w, generator=g) > 0.3
    return pred, target, mask


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("a", "b"), [(3.0, -2.0), (0.01, 5.0), (250.0, 0.0)])
def test_data_loss_invariant_to_scale_and_shift_of_prediction(mode, a, b):
    pred, target, mask = _data()
    loss = ScaleShiftInvariantLoss(mode)
    ref = loss(pred, target, mask)
    assert ref > 0
    torch.testing.assert_close(loss(a * pred + b, target, mask), ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mode", ["ssitrim", "ssimae"])
def test_median_mad_losses_invariant_to_scale_and_shift_of_target(mode):
    pred, target, mask = _data(1)
    loss = ScaleShiftInvariantLoss(mode)
    torch.testing.assert_close(loss(pred, 4.0 * target - 7.0, mask), loss(pred, target, mask))


@pytest.mark.parametrize("cls", [ScaleShiftInvariantLoss, GradientMatchingLoss, MidasLoss])
@pytest.mark.parametrize("mode", MODES)
def test_masked_pixels_never_influence_value_or_gradient(cls, mode):
    pred, target, mask = _data(2)
    loss = cls(mode) if cls is ScaleShiftInvariantLoss else (
        cls(align=mode) if cls is GradientMatchingLoss else cls(data=mode))
    ref = loss(pred, target, mask)
    p2, t2 = pred.clone(), target.clone()
    p2[~mask] = torch.randn(int((~mask).sum()), dtype=p2.dtype) * 1e3
    t2[~mask] = float("nan")
    t2[~mask & (torch.arange(t2.numel()).view_as(t2) % 2 == 0)] = float("inf")
    p2.requires_grad_(True)
    got = loss(p2, t2, mask)
    torch.testing.assert_close(got, ref)
    got.backward()
    assert torch.isfinite(p2.grad).all()
    assert (p2.grad[~mask] == 0).all()


@pytest.mark.parametrize("align", ["ssitrim", "ssimse", "none"])
def test_gradient_loss_shift_invariant(align):
    pred, target, mask = _data(3)
    loss = GradientMatchingLoss(align=align)
    ref = loss(pred, target, mask)
    assert ref > 0
    torch.testing.assert_close(loss(pred + 12.5, target, mask), ref)
    torch.testing.assert_close(loss(pred - 3.0, target + 1.0, mask), ref)


def test_gradient_loss_scale_invariant_with_alignment():
    pred, target, mask = _data(4)
    loss = GradientMatchingLoss()
    torch.testing.assert_close(loss(5.0 * pred, target, mask), loss(pred, target, mask))


def test_perfect_prediction_costs_nothing():
    _, target, mask = _data(5)
    for loss in (MidasLoss("ssitrim"), MidasLoss("ssimse"), MidasLoss("ssimae")):
        assert float(loss(2 * target + 1, target, mask)) == pytest.approx(0, abs=1e-9)


def test_masked_median_uses_valid_pixels_only():
    x = torch.tensor([[[1.0, 100.0, 3.0, 2.0]], [[5.0, 7.0, -1.0, 9.0]]])
    m = torch.tensor([[[True, False, True, True]], [[True, True, True, True]]])
    torch.testing.assert_close(masked_median(x, m), torch.tensor([2.0, 6.0]))
    assert float(masked_median(x, torch.zeros_like(m))[0]) == 0.0


def test_ssitrim_hand_computed():
    # one image of 5 valid pixels; target normalised: median 0, MAD 1.2 -> t/1.2
    pred = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 1.0]]], dtype=torch.float64)
    target = torch.tensor([[[-2.0, -1.0, 0.0, 1.0, 2.0]]], dtype=torch.float64)
    mask = torch.ones_like(pred, dtype=torch.bool)
    # pred: median 0, MAD 0.2 -> [0, 0, 0, 0, 5]
    p = torch.tensor([0.0, 0, 0, 0, 5])
    t = torch.tensor([-2.0, -1, 0, 1, 2]) / 1.2
    res = (p - t).abs().sort().values
    keep = int(5 * 0.8)  # 4 smallest residuals kept
    expect = float(res[:keep].sum() / (2 * 5))
    got = float(ScaleShiftInvariantLoss("ssitrim")(pred, target, mask))
    assert got == pytest.approx(expect)
    expect_mae = float(res.sum() / 10)
    assert float(ScaleShiftInvariantLoss("ssimae")(pred, target, mask)) == pytest.approx(
        expect_mae)


def test_trimming_is_per_image():
    # image 0 has one huge outlier: trimmed in image 0; it must not trim image 1's residuals
    pred, target, mask = _data(6, b=2, h=5, w=5)
    mask[:] = True
    one = ScaleShiftInvariantLoss("ssitrim")
    t0 = one.terms(pred[:1], target[:1], mask[:1])
    t1 = one.terms(pred[1:], target[1:], mask[1:])
    both = one.terms(pred, target, mask)
    torch.testing.assert_close(both.num[0], torch.cat([t0.num[0], t1.num[0]]))


def test_ssimse_hand_computed_and_degenerate_image_skipped():
    pred = torch.tensor([[[0.0, 1.0, 2.0, 3.0]], [[1.0, 1.0, 1.0, 1.0]]], dtype=torch.float64)
    target = torch.tensor([[[1.0, 3.0, 5.0, 8.0]], [[0.0, 5.0, 9.0, 2.0]]], dtype=torch.float64)
    mask = torch.ones_like(pred, dtype=torch.bool)
    # least squares on image 0: s = 2.3, t = 0.8 -> residuals [-0.2, 0.1, 0.4, -0.3]
    expect = (0.04 + 0.01 + 0.16 + 0.09) / (2 * 4)  # image 1 (constant prediction) skipped
    got = float(ScaleShiftInvariantLoss("ssimse")(pred, target, mask))
    assert got == pytest.approx(expect)


def test_gradient_loss_hand_computed():
    # residual of 1 at one pixel of a 1x4 row: differences |1| twice at scale 0
    pred = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]], dtype=torch.float64)
    target = torch.zeros_like(pred)
    mask = torch.ones_like(pred, dtype=torch.bool)
    loss = GradientMatchingLoss(scales=1, align="none")
    assert float(loss(pred, target, mask)) == pytest.approx(2 / 4)
    # scale 1 sees pixels 0 and 2 only: residual 0 there
    assert float(GradientMatchingLoss(scales=2, align="none")(pred, target, mask)) == (
        pytest.approx(2 / 4 + 0 / 2))
    mask[0, 0, 2] = False  # breaks both differences next to pixel 2: only (0, 1) remains
    assert float(loss(pred, target, mask)) == pytest.approx(1 / 3)


def test_total_loss_is_data_plus_half_gradient():
    pred, target, mask = _data(7)
    total = MidasLoss()(pred, target, mask)
    data = ScaleShiftInvariantLoss()(pred, target, mask)
    grad = GradientMatchingLoss()(pred, target, mask)
    torch.testing.assert_close(total, data + 0.5 * grad)


def test_subset_value_equals_loss_on_subbatch():
    pred, target, mask = _data(8, b=4)
    loss = MidasLoss()
    terms = loss.terms(pred, target, mask)
    sel = torch.tensor([True, False, True, False])
    torch.testing.assert_close(terms.value(sel), loss(pred[sel], target[sel], mask[sel]))


def test_empty_mask_gives_zero_not_nan():
    pred, target, mask = _data(9)
    mask[:] = False
    pred.requires_grad_(True)
    loss = MidasLoss()(pred, target, mask)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(pred.grad).all()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="B, H, W"):
        MidasLoss()(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, 3, 5, dtype=bool))


def _lstsq_reference(pred, target, mask, scales: int = 4) -> tuple[float, float]:
    """Brute force in float64 numpy: per-image least squares (s, t), then the ssimse data term
    and the gradient matching term over ``scales`` stride-2^k subsamplings (batch reduction)."""
    import numpy as np

    p, g, m = (np.asarray(x.detach().double() if x.is_floating_point() else x) for x in
               (pred, target, mask))
    num = den = 0.0
    res = np.zeros_like(p)
    for b in range(p.shape[0]):
        mb = m[b]
        a = np.stack([p[b][mb], np.ones(int(mb.sum()))], 1)
        (s, t), *_ = np.linalg.lstsq(a, g[b][mb], rcond=None)
        res[b] = np.where(mb, s * p[b] + t - g[b], 0.0)
        num += float((res[b][mb] ** 2).sum())
        den += 2.0 * mb.sum()
    grad = 0.0
    for k in range(scales):
        r, mk = res[:, :: 2**k, :: 2**k], m[:, :: 2**k, :: 2**k]
        gx = np.abs(np.diff(r, axis=2))[mk[:, :, 1:] & mk[:, :, :-1]].sum()
        gy = np.abs(np.diff(r, axis=1))[mk[:, 1:, :] & mk[:, :-1, :]].sum()
        grad += (gx + gy) / mk.sum()
    return num / den, grad


@pytest.mark.parametrize(("dtype", "offset", "spread"), [
    (torch.float32, 10.0, 0.01),  # float32: a prediction far from 0 relative to its spread
    (torch.float32, 1000.0, 1.0),
    (torch.float64, 100.0, 0.01),  # float64: a well-conditioned fit, not a degenerate image
    (torch.float64, 10.0, 0.001),
])
def test_ssimse_least_squares_is_exact_for_offset_predictions(dtype, offset, spread):
    # the least-squares fit must not depend on where the prediction sits: s p + t is invariant
    # to shifting p, so only rounding at p's magnitude may limit it
    pred, target, mask = _data(10)
    p = (offset + spread * pred).to(dtype)
    want_data, want_grad = _lstsq_reference(p, target, mask)
    got_data = float(ScaleShiftInvariantLoss("ssimse")(p, target.to(dtype), mask))
    got_grad = float(GradientMatchingLoss(align="ssimse")(p, target.to(dtype), mask))
    assert got_data == pytest.approx(want_data, rel=1e-3)
    assert got_grad == pytest.approx(want_grad, rel=1e-3)
