"""filmmine.corpus.encode: 16-bit disparity PNG and JPEG round trips, canonical JSON."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from filmmine import synth
from filmmine.corpus.encode import (
    decode_confidence,
    decode_disparity,
    decode_jpeg,
    disparity_scale_offset,
    dumps,
    encode_confidence,
    encode_disparity,
    encode_jpeg,
)
from filmmine.synth import FilmSpec, ShotSpec

STEP = 1 / 128


def raw_png(data: bytes) -> np.ndarray:
    q = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert q.dtype == np.uint16 and q.ndim == 2
    return q


def roundtrip(d: np.ndarray, step: float = STEP) -> tuple[np.ndarray, float, float, bytes]:
    png, scale, offset = encode_disparity(d, step)
    return decode_disparity(png, scale, offset), scale, offset, png


@pytest.mark.parametrize(("lo", "hi"), [(-40.0, 60.0), (7.0, 60.0), (-90.0, -3.0), (0.0, 0.0)])
def test_round_trip_within_half_a_step(lo: float, hi: float) -> None:
    """Values of both signs come back within scale/2; NaN and inf come back as NaN."""
    rng = np.random.default_rng(1)
    d = rng.uniform(lo, hi, (60, 80)).astype(np.float32)
    d[0, 0], d[-1, -1] = lo, hi
    d[5:9, 10:20] = np.nan
    d[3, 3] = np.inf
    back, scale, _, png = roundtrip(d)
    assert scale == STEP
    assert back.shape == d.shape and back.dtype == np.float32
    finite = np.isfinite(d)
    assert np.array_equal(np.isnan(back), ~finite)
    assert float(np.abs(back - d)[finite].max()) <= scale / 2 + 1e-5
    q = raw_png(png)
    assert (q[finite] > 0).all() and (q[~finite] == 0).all()


def test_wide_range_uses_a_coarser_scale() -> None:
    """A range over 65000 steps still fits: scale doubles, error stays within scale/2."""
    d = np.linspace(-400.0, 400.0, 200 * 100, dtype=np.float32).reshape(200, 100)
    d[0, :5] = np.nan
    back, scale, _, png = roundtrip(d)
    assert scale > STEP
    assert math.log2(scale / STEP) == int(math.log2(scale / STEP))  # a power-of-two multiple
    assert (800.0 / scale) <= 65000 < 800.0 / (scale / 2)  # the finest scale that fits
    finite = np.isfinite(d)
    assert float(np.abs(back - d)[finite].max()) <= scale / 2 + 1e-4
    assert np.isnan(back[0, :5]).all()
    q = raw_png(png)
    assert q[finite].min() >= 1 and q[finite].max() <= 65535


def test_scale_offset_put_the_minimum_just_above_zero() -> None:
    d = np.array([[3.3, 5.0], [np.nan, 10.0]], np.float32)
    scale, offset = disparity_scale_offset(d, 0.25)
    assert scale == 0.25
    assert 1 <= (3.3 - offset) / scale < 2
    assert disparity_scale_offset(np.full((2, 2), np.nan), 0.5) == (0.5, 0.0)


def test_all_invalid_round_trips_to_all_nan() -> None:
    back, *_ = roundtrip(np.full((4, 6), np.nan, np.float32))
    assert np.isnan(back).all()


def test_infinities_are_invalid_and_do_not_widen_the_scale() -> None:
    d = np.array([[np.inf, 3.0, -np.inf], [np.nan, 5.5, 4.25]], np.float32)
    back, scale, offset, png = roundtrip(d)
    assert scale == STEP and offset == 3.0 - STEP
    assert np.isnan(back[0, 0]) and np.isnan(back[0, 2]) and np.isnan(back[1, 0])
    assert back[0, 1] == 3.0 and back[1, 1] == 5.5 and back[1, 2] == 4.25
    assert raw_png(png)[0].tolist() == [0, 1, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_confidence_png_holds_the_documented_values(dtype) -> None:
    """value = round(confidence * 255) of the confidence clipped to [0, 1], at least 1 where
    the disparity is valid (also where a confidence is NaN, -inf or rounds to 0), 0 elsewhere."""
    rng = np.random.default_rng(1)
    c = rng.uniform(-0.1, 1.1, (60, 400)).astype(dtype)
    c[:5] = (np.arange(2000) / 1999 * 2 / 255).reshape(5, 400)    # 0 .. 2 steps, half-ways
    c[5, :10] = np.nan
    c[6, :4] = [np.inf, -np.inf, np.inf, -np.inf]
    valid = rng.random(c.shape) < 0.8
    want = np.round(np.clip(np.nan_to_num(c), 0, 1) * 255)
    want = np.where(valid, np.maximum(want, 1), 0)
    got = decode_confidence(encode_confidence(c, valid))
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert (got[5, :10][valid[5, :10]] == 1).all()


def test_decode_disparity_rejects_non_16bit() -> None:
    ok, buf = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    assert ok
    with pytest.raises(ValueError, match="16-bit"):
        decode_disparity(buf.tobytes(), 1.0, 0.0)
    with pytest.raises(ValueError):
        decode_disparity(b"not a png", 1.0, 0.0)


def test_jpeg_round_trip() -> None:
    """RGB in, RGB out: same shape, close values, channels not swapped."""
    spec = FilmSpec(shots=(ShotSpec("textured", 2, seed=3),), view_width=160, view_height=90)
    rgb, _, _ = synth.render_frame(spec, 0)
    rgb = rgb.copy()
    rgb[:20, :20] = (255, 0, 0)  # a pure red patch
    back = decode_jpeg(encode_jpeg(rgb, 95))
    assert back.shape == rgb.shape and back.dtype == np.uint8
    assert float(np.abs(back.astype(np.float32) - rgb).mean()) < 3.0
    patch = back[4:16, 4:16].reshape(-1, 3).mean(axis=0)
    assert patch[0] > 200 and patch[1] < 40 and patch[2] < 40
    small = encode_jpeg(rgb, 20)
    assert len(small) < len(encode_jpeg(rgb, 95))
    with pytest.raises(ValueError, match="not a JPEG"):
        decode_jpeg(b"\x00" * 100)


def test_dumps_is_canonical() -> None:
    a = {"b": 1, "a": [1, 2, {"z": 0.5, "y": None}], "c": "é"}
    b = {"c": "é", "a": [1, 2, {"y": None, "z": 0.5}], "b": 1}
    assert dumps(a) == dumps(b)
    assert dumps(a) == b'{"a":[1,2,{"y":null,"z":0.5}],"b":1,"c":"\\u00e9"}'


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_dumps_rejects_non_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        dumps({"x": bad})
