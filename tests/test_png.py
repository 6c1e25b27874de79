"""filmmine.corpus.png: greyscale PNGs that OpenCV and Pillow decode to the very samples written."""

from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from filmmine.corpus import png


def _samples(dtype, shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    img = rng.integers(0, top, shape, dtype=dtype, endpoint=True)
    img[: shape[0] // 2] = np.repeat(img[: shape[0] // 2, :1], shape[1], axis=1)  # flat runs
    img.flat[:2] = (0, top)
    return img


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("row_filter", [png.FILTER_NONE, png.FILTER_UP])
@pytest.mark.parametrize("shape", [(37, 53), (1, 9), (9, 1), (540, 940)])
def test_opencv_and_pillow_read_back_the_samples(dtype, row_filter, shape) -> None:
    img = _samples(dtype, shape)
    data = png.encode_grey(img, row_filter)
    assert data.startswith(png.SIGNATURE)
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == dtype and np.array_equal(back, img)
    with Image.open(io.BytesIO(data)) as im:
        im.load()                       # Pillow checks every chunk's CRC while reading
        assert im.mode == ("L" if dtype == np.uint8 else "I;16")
        assert np.array_equal(np.asarray(im).astype(dtype), img)


def test_zlib_ng_writes_stdlib_zlibs_bytes() -> None:
    """zlib-ng is only a faster deflate: its run-length stream is stdlib zlib's, so a corpus is
    the same bytes with or without it."""
    zng = pytest.importorskip("zlib_ng.zlib_ng")
    rows = png.filtered_rows(_samples(np.uint16, (540, 940), seed=3), png.FILTER_UP).tobytes()
    streams = []
    for mod in (zlib, zng):
        c = mod.compressobj(1, mod.DEFLATED, 15, 8, mod.Z_RLE)
        streams.append(c.compress(rows) + c.flush())
    assert streams[0] == streams[1]
    assert zlib.decompress(streams[1]) == rows


def test_up_filter_is_the_byte_above_subtracted() -> None:
    img = np.array([[1, 300], [2, 200]], np.uint16)       # bytes 00 01 01 2c / 00 02 00 c8
    rows = png.filtered_rows(img, png.FILTER_UP)
    assert rows.tolist() == [[2, 0, 1, 1, 44], [2, 0, 1, 255, 156]]


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32),
                                 np.zeros((0, 4), np.uint8)])
def test_other_arrays_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="greyscale PNG"):
        png.encode_grey(bad)
    with pytest.raises(ValueError, match="row filter"):
        png.encode_grey(np.zeros((2, 2), np.uint8), 4)
