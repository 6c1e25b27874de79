"""Greyscale PNG writing for the label members (``KEY.disp.png``, ``KEY.conf.png``).

A PNG of one grey channel is a signature, an ``IHDR`` chunk, the zlib stream of the filtered
rows in ``IDAT`` and ``IEND``. The row filter runs in numpy and the rows are deflated with
zlib's run-length strategy, by zlib-ng when it is installed (``zlib-ng`` on PyPI): its
``Z_RLE`` stream is byte for byte stdlib zlib's (checked in the tests), and faster. Not
``cv2.imencode``: libpng's row loop around the same zlib is slower.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

try:  # same stream format and bytes, faster; stdlib zlib otherwise
    from zlib_ng import zlib_ng as _zlib
except ImportError:  # pragma: no cover - exercised where zlib-ng is not installed
    _zlib = zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_NONE = 0
FILTER_UP = 2          # each byte minus the byte above (the first row: minus zero)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def filtered_rows(img: np.ndarray, row_filter: int) -> np.ndarray:
    """[H, 1 + W * bytes] uint8: each row's filter type byte, then its filtered bytes
    (16-bit samples big-endian, as PNG stores them)."""
    h = img.shape[0]
    raw = img.astype(">u2", copy=False).view(np.uint8) if img.dtype == np.uint16 else img
    raw = raw.reshape(h, -1)
    rows = np.empty((h, raw.shape[1] + 1), np.uint8)
    rows[:, 0] = row_filter
    if row_filter == FILTER_UP:
        rows[0, 1:] = raw[0]
        np.subtract(raw[1:], raw[:-1], out=rows[1:, 1:])   # uint8 wraps modulo 256, as PNG's
    elif row_filter == FILTER_NONE:
        rows[:, 1:] = raw
    else:
        raise ValueError(f"unsupported PNG row filter {row_filter}")
    return rows


def encode_grey(img: np.ndarray, row_filter: int = FILTER_NONE) -> bytes:
    """[H, W] uint8 or uint16 -> PNG bytes (greyscale, 8 or 16 bit, not interlaced)."""
    if img.ndim != 2 or img.dtype not in (np.uint8, np.uint16) or 0 in img.shape:
        raise ValueError(f"a greyscale PNG needs a non-empty [H, W] uint8 or uint16 array, "
                         f"got {img.dtype} {img.shape}")
    h, w = img.shape
    depth = 16 if img.dtype == np.uint16 else 8
    deflate = _zlib.compressobj(1, _zlib.DEFLATED, 15, 8, _zlib.Z_RLE)
    idat = deflate.compress(filtered_rows(img, row_filter)) + deflate.flush()
    header = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)  # grey, deflate, filter set 0
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
