"""filmmine.stages.crop: letterbox / pillarbox bars of known size are cut exactly (even sizes)."""

from __future__ import annotations

import numpy as np
import pytest

from filmmine import synth
from filmmine.recipe import load_recipe
from filmmine.stages.crop import detect_crop
from filmmine.stages.filters import luma
from filmmine.synth import FilmSpec, ShotSpec

W, H = 320, 180


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A textured grey view with no bars."""
    spec = FilmSpec(shots=(ShotSpec("textured", 2, seed=2),), view_width=W, view_height=H)
    return luma(synth.render_frame(spec, 0)[0])


def barred(img: np.ndarray, top: int = 0, bottom: int = 0, left: int = 0, right: int = 0,
           value: int = 0) -> np.ndarray:
    out = img.copy()
    h, w = out.shape
    out[:top] = value
    out[h - bottom :] = value
    out[:, :left] = value
    out[:, w - right :] = value
    return out


def test_no_bars_no_crop(picture: np.ndarray) -> None:
    assert detect_crop(picture) == (0, 0, W, H)


@pytest.mark.parametrize(("top", "bottom"), [(16, 16), (20, 20), (2, 2), (24, 10)])
def test_even_letterbox_detected_exactly(picture: np.ndarray, top: int, bottom: int) -> None:
    assert detect_crop(barred(picture, top, bottom)) == (0, top, W, H - top - bottom)


@pytest.mark.parametrize(("top", "bottom"), [(15, 15), (17, 13), (1, 0), (0, 9)])
def test_odd_letterbox_gives_even_box_without_bar_rows(picture: np.ndarray, top: int,
                                                       bottom: int) -> None:
    """Odd bars: the box is even, holds no bar row and loses at most one picture row per side."""
    x, y, w, h = detect_crop(barred(picture, top, bottom))
    assert (x, w) == (0, W)
    assert y % 2 == 0 and h % 2 == 0
    assert top <= y <= top + 1
    assert H - bottom - 2 <= y + h <= H - bottom


def test_pillarbox_and_letterbox_together(picture: np.ndarray) -> None:
    assert detect_crop(barred(picture, 12, 12, 40, 40)) == (40, 12, W - 80, H - 24)


def test_noisy_dark_bars_still_bars(picture: np.ndarray) -> None:
    """Compression leaves bars slightly grey and noisy: still within max_luma / max_std."""
    img = barred(picture, 16, 16)
    rng = np.random.default_rng(0)
    noise = rng.integers(8, 16, (16, W), dtype=np.uint8)
    img[:16], img[-16:] = noise, noise
    assert detect_crop(img) == (0, 16, W, H - 32)


def test_dark_textured_rows_are_not_bars(picture: np.ndarray) -> None:
    """A dark row with detail (std above max_std) is picture, not bar."""
    img = picture.copy()
    img[:10] = 0
    img[:10, ::4] = 80  # night sky with stars: mean 20, std about 35
    assert float(img[:10].mean()) <= 24 and img[:10].std(axis=1).min() > 6
    assert detect_crop(img) == (0, 0, W, H)


@pytest.mark.parametrize("value", [0, 5, 20])
def test_dark_frame_is_not_cropped_to_nothing(value: int) -> None:
    img = np.full((H, W), value, np.uint8)
    assert detect_crop(img) == (0, 0, W, H)


def test_bars_leaving_too_little_picture_are_ignored(picture: np.ndarray) -> None:
    """Bars over half the height mean a dark frame with a strip of picture: no crop."""
    img = barred(picture, 50, 50)
    assert detect_crop(img, min_content_frac=0.5) == (0, 0, W, H)
    assert detect_crop(img, min_content_frac=0.3) == (0, 50, W, H - 100)


def test_side_frac_applied(picture: np.ndarray) -> None:
    """The recipe's floating-window cut (round(side_frac * W) px per side), rounded to even."""
    side_frac = load_recipe()["crop"]["side_frac"]
    side = round(side_frac * W)
    assert side >= 3
    x, y, w, h = detect_crop(picture, side_frac=side_frac)
    assert (y, h) == (0, H)
    assert x % 2 == 0 and w % 2 == 0
    assert side <= x <= side + 1
    assert W - side - 2 <= x + w <= W - side
    # the side cut does not add to a wider pillarbox
    assert detect_crop(barred(picture, left=40, right=40), side_frac=side_frac) == \
        (40, 0, W - 80, H)


@pytest.mark.parametrize(("top", "bottom", "left", "right"),
                         [(139, 141, 0, 0), (0, 0, 241, 255), (300, 7, 520, 1)])
def test_wide_bars_match_a_row_by_row_reference(top, bottom, left, right) -> None:
    """Bars wider than the blocks read from each edge (8, 16, ... rows at a time): the same box
    as testing every row and column of a 1080p view."""
    spec = FilmSpec(shots=(ShotSpec("textured", 2, seed=4),), view_width=1920, view_height=1080)
    img = barred(luma(synth.render_frame(spec, 0)[0]), top, bottom, left, right, value=16)

    def lead(lines: np.ndarray) -> int:
        f = lines.astype(np.float64)
        bar = (f.mean(axis=1) <= 24.0) & (f.std(axis=1) <= 6.0)
        return len(bar) if bar.all() else int(np.argmin(bar))

    t, b, lft, r = lead(img), lead(img[::-1]), lead(img.T), lead(img.T[::-1])
    assert (t, b, lft, r) == (top, bottom, left, right)
    x, y = lft + lft % 2, t + t % 2
    assert detect_crop(img) == (x, y, (1920 - x - r) // 2 * 2, (1080 - y - b) // 2 * 2)


@pytest.mark.parametrize(("top", "bottom", "left", "right"), [(0, 0, 0, 0), (22, 21, 0, 0),
                                                              (0, 0, 37, 40), (9, 30, 64, 3)])
def test_rgb_view_gives_the_box_of_its_luma(top, bottom, left, right) -> None:
    """The pipeline passes the RGB view; only the lines looked at are turned into luma."""
    spec = FilmSpec(shots=(ShotSpec("textured", 2, seed=6),), view_width=W, view_height=H)
    rgb = synth.render_frame(spec, 0)[0].copy()
    rgb[:top], rgb[H - bottom:], rgb[:, :left], rgb[:, W - right:] = 12, 12, 12, 12
    rgb[:top, :, 2] = 20   # a slightly blue bar: luma 13, still a bar
    for kw in ({}, {"side_frac": 0.0104}, {"min_content_frac": 0.9}):
        assert detect_crop(rgb, **kw) == detect_crop(luma(rgb), **kw)
    assert detect_crop(rgb)[:2] == (left + left % 2, top + top % 2)
