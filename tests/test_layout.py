"""filmmine.media.layout: packing/unpacking stereo frames, checked against known views."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from filmmine import synth
from filmmine.media import layout
from filmmine.synth import FilmSpec, ShotSpec

VW, VH = 320, 180
SPEC = FilmSpec(shots=(ShotSpec("textured", 4, seed=1),), view_width=VW, view_height=VH)

# packed frame size (w, h) for a full-aspect view of VW x VH
PACKED = {"sbs": (2 * VW, VH), "half-sbs": (VW, VH), "tab": (VW, 2 * VH), "half-tab": (VW, VH),
          "separate": (2 * VW, VH), "mv-hevc": (2 * VW, VH)}


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    left, right, _ = synth.render_frame(SPEC, 1)
    return left, right


def pack(left: np.ndarray, right: np.ndarray, lay: str) -> np.ndarray:
    """Pack two views the way a stereo file stores them (separate, mv-hevc: the decoder's
    hstack)."""
    if lay in ("sbs", "separate", "mv-hevc"):
        return np.concatenate([left, right], axis=1)
    if lay == "tab":
        return np.concatenate([left, right], axis=0)
    if lay == "half-sbs":
        sq = [cv2.resize(v, (VW // 2, VH), interpolation=cv2.INTER_AREA) for v in (left, right)]
        return np.concatenate(sq, axis=1)
    sq = [cv2.resize(v, (VW, VH // 2), interpolation=cv2.INTER_AREA) for v in (left, right)]
    return np.concatenate(sq, axis=0)


@pytest.mark.parametrize("lay", layout.LAYOUTS)
def test_view_size_is_the_full_aspect_view(lay: str) -> None:
    """view_size of the packed frame is the original view size for every layout."""
    assert layout.view_size(*PACKED[lay], lay) == (VW, VH)


@pytest.mark.parametrize("lay", layout.LAYOUTS)
def test_views_restore_the_packed_views(lay: str, pair) -> None:
    """views() returns (left, right) at full aspect; exact for full layouts, close for half."""
    left, right = pair
    frame = pack(left, right, lay)
    assert (frame.shape[1], frame.shape[0]) == PACKED[lay]
    vl, vr = layout.views(frame, lay)
    assert vl.shape == vr.shape == left.shape
    assert (vl.shape[1], vl.shape[0]) == layout.view_size(frame.shape[1], frame.shape[0], lay)
    if lay.startswith("half"):
        # squeezing drops detail; the right eye must still be far closer than the other eye
        for got, want, other in ((vl, left, right), (vr, right, left)):
            err = np.abs(got.astype(np.float32) - want).mean()
            assert err < 6.0
            assert err < 0.3 * np.abs(got.astype(np.float32) - other).mean()
    else:
        assert np.array_equal(vl, left) and np.array_equal(vr, right)


@pytest.mark.parametrize("lay", ["half-sbs", "half-tab"])
def test_split_views_keeps_half_views_squeezed(lay: str, pair) -> None:
    """split_views gives the stored (squeezed) halves; restore_view doubles the squeezed axis."""
    frame = pack(*pair, lay)
    sl, sr = layout.split_views(frame, lay)
    want = (VH, VW // 2, 3) if lay == "half-sbs" else (VH // 2, VW, 3)
    assert sl.shape == sr.shape == want
    assert layout.restore_view(sl, lay).shape == (VH, VW, 3)
    assert layout.restore_view(sl, "sbs") is sl


def test_odd_sizes_split_evenly() -> None:
    """An odd packed width/height drops the last column/row so both views have one size."""
    frame = np.arange(7 * 11, dtype=np.uint8).reshape(7, 11)
    a, b = layout.split_views(frame, "sbs")
    assert a.shape == b.shape == (7, 5)
    assert np.array_equal(b, frame[:, 5:10])
    a, b = layout.split_views(frame, "tab")
    assert a.shape == b.shape == (3, 11)
    assert layout.view_size(11, 7, "sbs") == (5, 7)
    assert layout.view_size(11, 7, "half-sbs") == (10, 7)
    assert layout.view_size(11, 7, "half-tab") == (11, 6)


def test_unknown_layout_raises() -> None:
    with pytest.raises(ValueError, match="unknown layout"):
        layout.view_size(100, 100, "mono")
    with pytest.raises(ValueError, match="unknown layout"):
        layout.split_views(np.zeros((4, 4)), "checkerboard")


def test_layout_predicates() -> None:
    assert [lay for lay in layout.LAYOUTS if layout.is_side_by_side(lay)] == \
        ["sbs", "half-sbs", "separate", "mv-hevc"]


@pytest.mark.parametrize(("lay", "key"), [("sbs", "sbs"), ("tab", "tab")])
def test_half_similarity_finds_the_stereo_split(lay: str, key: str, pair) -> None:
    """A packed stereo pair is alike along its packing split and unlike along the other."""
    grey = cv2.cvtColor(pack(*pair, lay), cv2.COLOR_RGB2GRAY)
    sim = layout.half_similarity(grey)
    other = "tab" if key == "sbs" else "sbs"
    assert sim[key] > 0.7
    assert sim[key] - sim[other] > 0.4


def test_half_similarity_of_unrelated_halves_is_low() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (180, 640), dtype=np.uint8)
    sim = layout.half_similarity(noise)
    assert abs(sim["sbs"]) < 0.2 and abs(sim["tab"]) < 0.2
    assert layout.half_similarity(np.full((32, 32), 7, np.uint8)) == {"sbs": 0.0, "tab": 0.0}
