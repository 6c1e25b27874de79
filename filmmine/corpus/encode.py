"""Sample encoding: JPEG for the image, 16-bit PNG for disparity (lossless, compact), 8-bit PNG
for the optional confidence map.

Disparity PNG: ``d = value * disp_scale + disp_offset``; value 0 = invalid.
Confidence PNG: ``confidence = value / 255``; value 0 exactly where the disparity is invalid.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np

from . import png


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def imdecode(data: bytes, flags: int) -> np.ndarray | None:
    """cv2.imdecode, None also where OpenCV raises instead (an empty member, a header past
    its pixel limit): every caller then has one case for an image that does not decode."""
    if not data:
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None


def decode_jpeg(data: bytes) -> np.ndarray:
    bgr = imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a JPEG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _finite_range(a: np.ndarray) -> tuple[float | None, float | None]:
    """(min, max) of the finite values of a float array, (None, None) when there are none.
    fmin/fmax skip NaN without copying the finite values out (the invalid labels are NaN)."""
    lo, hi = float(np.fmin.reduce(a, axis=None)), float(np.fmax.reduce(a, axis=None))
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    finite = a[np.isfinite(a)]          # infinities too, or nothing finite: the slow way
    if finite.size == 0:
        return None, None
    return float(finite.min()), float(finite.max())


def disparity_scale_offset(disparity: np.ndarray, step_px: float) -> tuple[float, float]:
    """(scale, offset) so that every finite value maps into 1..65535 with step >= step_px."""
    lo, hi = _finite_range(disparity)
    if lo is None:
        return step_px, 0.0
    scale = step_px
    while (hi - lo) / scale > 65000:
        scale *= 2.0
    offset = (math.floor(lo / scale) - 1) * scale
    return scale, offset


def encode_disparity(disparity: np.ndarray, step_px: float) -> tuple[bytes, float, float]:
    """[H, W] float disparity (NaN invalid) -> (uint16 PNG bytes, scale, offset)."""
    scale, offset = disparity_scale_offset(disparity, step_px)
    # the PNG "up" filter on every row: as small as libpng's per-row search, in half the time;
    # zlib's run-length strategy suits the filtered rows (runs of equal steps)
    t = (disparity - offset) / scale              # the whole image: no gather and scatter
    np.rint(t, out=t)
    np.clip(t, 1, 65535, out=t)
    t[~np.isfinite(disparity)] = 0                # invalid (NaN) -> 0
    return png.encode_grey(t.astype(np.uint16), png.FILTER_UP), scale, offset


def decode_disparity(data: bytes, scale: float, offset: float) -> np.ndarray:
    """uint16 PNG bytes -> [H, W] float32 disparity, NaN where the value is 0."""
    q = imdecode(data, cv2.IMREAD_UNCHANGED)
    if q is None or q.dtype != np.uint16 or q.ndim != 2:
        raise ValueError("not a 16-bit single-channel PNG")
    d = q.astype(np.float32) * np.float32(scale) + np.float32(offset)
    d[q == 0] = np.nan
    return d


def confidence_to_uint8(confidence: np.ndarray) -> np.ndarray:
    """[H, W] confidence in [0, 1] -> uint8 0..255 (the ``KEY.conf.png`` values; 0 = invalid)."""
    return np.round(np.clip(np.nan_to_num(confidence), 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_confidence(confidence: np.ndarray, valid: np.ndarray) -> bytes:
    """[H, W] confidence in [0, 1] and the disparity's valid mask -> uint8 PNG bytes.

    value = round(confidence * 255), at least 1 where valid and 0 exactly where invalid, so the
    map's zero set is the disparity's. zlib level 1 as for the disparity: the same bytes on every
    run."""
    if confidence.shape != valid.shape:
        raise ValueError(f"confidence {confidence.shape} and valid mask {valid.shape} differ")
    # confidence_to_uint8 raised to >= 1, in place on one float copy (equal values)
    t = confidence * np.float32(255.0)
    # clip to [1, 255] with NaN -> 1: fmax and fmin skip NaN (nan_to_num, then clip: 4 passes)
    np.fmax(t, np.float32(1.0), out=t)
    np.fmin(t, np.float32(255.0), out=t)
    np.rint(t, out=t)
    t[~valid] = 0
    q = t.astype(np.uint8)
    # no PNG row filter: flat runs of 255 compress best as they are, with zlib's run-length
    # strategy
    return png.encode_grey(q, png.FILTER_NONE)


def decode_confidence(data: bytes) -> np.ndarray:
    """uint8 PNG bytes -> [H, W] uint8 confidence values (0 = invalid; confidence = value/255)."""
    q = imdecode(data, cv2.IMREAD_UNCHANGED)
    if q is None or q.dtype != np.uint8 or q.ndim != 2:
        raise ValueError("not an 8-bit single-channel PNG")
    return q


def dumps(obj) -> bytes:
    """Canonical JSON (sorted keys, no spaces): byte-identical across runs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
