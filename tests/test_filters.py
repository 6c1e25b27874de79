"""filmmine.stages.filters: decide() names the right reason for frames built to have one defect."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from filmmine import synth
from filmmine.recipe import load_recipe
from filmmine.stages import filters
from filmmine.synth import FilmSpec, ShotSpec

W, H = 320, 180
SPEC = FilmSpec(shots=(ShotSpec("textured", 8, seed=1),), view_width=W, view_height=H)


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_recipe()["filters"]


@pytest.fixture(scope="module")
def stereo() -> tuple[np.ndarray, np.ndarray]:
    left, right, _ = synth.render_frame(SPEC, 3)
    return left, right


def verdict(left: np.ndarray, right: np.ndarray, cfg: dict,
            previous: np.ndarray | None = None) -> str | None:
    prev = None if previous is None else filters.luma(previous).astype(np.float32)
    return filters.decide(filters.score_frame(left, right, prev), cfg)


def credits_frame() -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    cv2.putText(img, "Directed by", (30, 70), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    cv2.putText(img, "A. Smithee", (30, 120), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    return img


def test_real_stereo_pair_passes(stereo, cfg: dict) -> None:
    """A textured synthetic pair (true disparity -7..12 px) is not rejected."""
    left, right = stereo
    nxt = synth.render_frame(SPEC, 4)[0]
    assert verdict(left, right, cfg) is None
    assert verdict(left, right, cfg, previous=nxt) is None


def test_credits_before_dark(cfg: dict) -> None:
    """White text on black is credits, although its mean luma is also under the dark limit."""
    img = credits_frame()
    s = filters.score_frame(img, img, None)
    assert s["mean_luma"] <= cfg["dark_max_luma"]
    assert cfg["credits_min_white"] <= s["white_frac"] <= cfg["credits_max_white"]
    assert filters.decide(s, cfg) == "credits"


def test_near_black_is_dark(stereo, cfg: dict) -> None:
    left, right = (np.rint(v * 0.05).astype(np.uint8) for v in stereo)
    s = filters.score_frame(left, right, None)
    assert s["white_frac"] == 0.0
    assert filters.decide(s, cfg) == "dark"


def test_coloured_text_on_black_is_dark_not_credits(cfg: dict) -> None:
    """Saturated (red) text is not the white of credits."""
    img = np.zeros((H, W, 3), np.uint8)
    cv2.putText(img, "Red text", (30, 100), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 0, 0), 2)
    assert verdict(img, img, cfg) == "dark"


@pytest.mark.parametrize("level", [60, 128, 230])
def test_flat_is_low_texture(level: int, cfg: dict) -> None:
    flat = np.full((H, W, 3), level, np.uint8)
    flat[..., 0] = min(255, level + 10)  # colour does not make texture
    assert verdict(flat, flat, cfg) == "low_texture"


def test_smooth_gradient_is_low_texture(cfg: dict) -> None:
    ramp = np.tile(np.linspace(40, 200, W, dtype=np.float32), (H, 1)).astype(np.uint8)
    img = np.repeat(ramp[..., None], 3, axis=2)
    assert verdict(img, img, cfg) == "low_texture"


def test_identical_views_are_mono(stereo, cfg: dict) -> None:
    left, _ = stereo
    assert verdict(left, left.copy(), cfg) == "mono"


def test_same_frame_twice_is_frozen(stereo, cfg: dict) -> None:
    left, right = stereo
    assert verdict(left, right, cfg, previous=left) == "frozen"


def test_previous_frame_of_other_size_is_ignored(stereo, cfg: dict) -> None:
    left, right = stereo
    prev = filters.luma(left)[:100].astype(np.float32)
    s = filters.score_frame(left, right, prev)
    assert s["frozen_diff"] != s["frozen_diff"]  # NaN
    assert filters.decide(s, cfg) is None


def test_scores_are_the_documented_quantities(stereo) -> None:
    left, right = stereo
    s = filters.score_frame(left, right, None)
    g = filters.luma(left).astype(np.float32)
    assert s["mean_luma"] == pytest.approx(float(g.mean()), rel=1e-6)
    assert s["lr_diff"] == pytest.approx(
        float(np.abs(g - filters.luma(right).astype(np.float32)).mean()), rel=1e-6)
    assert set(filters.REASONS) == {"credits", "dark", "low_texture", "mono", "frozen"}


def test_given_greys_and_a_uint8_previous_view_give_the_same_scores(stereo) -> None:
    """The pipeline passes the views' luma it has already and keeps the previous candidate's
    luma as uint8: the scores are those computed from the colour views and a float view."""
    left, right = stereo
    nxt = synth.render_frame(SPEC, 4)[0]
    prev = filters.luma(nxt)
    ref = filters.score_frame(left, right, prev.astype(np.float32))
    got = filters.score_frame(left, right, prev, (filters.luma(left), filters.luma(right)))
    assert got.keys() == ref.keys()
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-6), k
    g = filters.luma(left).astype(np.float64)
    assert got["frozen_diff"] == pytest.approx(np.abs(g - prev).mean(), rel=1e-12)
    assert ref["frozen_diff"] > 1.0   # a later frame of a moving shot
    gx, gy = cv2.Sobel(g, -1, 1, 0, ksize=3) / 8.0, cv2.Sobel(g, -1, 0, 1, ksize=3) / 8.0
    assert ref["texture"] == pytest.approx(float(np.hypot(gx, gy).mean()), rel=1e-5)
    hsv = cv2.cvtColor(left, cv2.COLOR_RGB2HSV)
    assert ref["white_frac"] == ((hsv[..., 2] >= 180) & (hsv[..., 1] <= 60)).mean()
