"""filmmine.probe: stream facts and stereo layout of real and constructed inputs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REAL_CLIPS, SHARED

from filmmine.errors import FilmmineError, InputError, MonoInput
from filmmine.probe import StreamInfo, decide_layout, probe_film, probe_stream

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data at {SHARED}")
CONGO = SHARED / "real_360_topbottom" / "congo.mp4"


def info(w: int, h: int, stereo3d: str | None = None) -> StreamInfo:
    return StreamInfo(path="x.mp4", width=w, height=h, fps=24.0, n_frames=240, duration_s=10.0,
                      codec="h264", pix_fmt="yuv420p", stereo3d=stereo3d, spherical=None,
                      has_audio=False)


def lavfi_video(path: Path, size: str, rate: int = 24) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate={rate}:duration=0.5", "-pix_fmt", "yuv420p",
                    str(path)], check=True)
    return path


# --------------------------------------------------------------------------------------------
# Real files


@needs_shared
@pytest.mark.parametrize(("clip", "layout", "frame_size"), [
    ("sbs_cut_clip.mp4", "sbs", (1280, 360)),
    ("sbs_cut_clip_half.mp4", "half-sbs", (640, 360)),
    ("tb_cut_clip.mp4", "tab", (640, 720)),
])
def test_real_clip_layouts(clip: str, layout: str, frame_size: tuple[int, int]) -> None:
    """Known packings of the real cut clips (12 s, 10 fps, 120 frames, no stereo metadata)."""
    p = probe_film(clip, (str(REAL_CLIPS / clip),))
    assert p.layout == layout, p.layout_reason
    assert p.frame_size == frame_size
    assert p.n_frames == 120 and p.fps == pytest.approx(10.0)
    assert p.duration_s == pytest.approx(12.0, abs=0.15)
    assert p.streams[0].stereo3d is None
    key = "sbs" if layout.endswith("sbs") else "tab"
    other = "tab" if key == "sbs" else "sbs"
    assert p.similarity[key] > 0.5 > p.similarity[other]


@needs_shared
def test_real_360_top_bottom_from_container_metadata() -> None:
    """congo.mp4 carries stereo3d 'top and bottom' side data; no frame is needed to decide."""
    p = probe_film("congo", (str(CONGO),))
    assert p.layout.endswith("tab")
    assert "container" in p.layout_reason
    s = p.streams[0]
    assert s.stereo3d == "top and bottom"
    assert s.spherical == "equirectangular"
    assert (s.width, s.height) == (1920, 1080) and s.n_frames == 300
    assert s.fps == pytest.approx(29.97, abs=0.02) and s.has_audio
    assert p.similarity == {}


@needs_shared
def test_explicit_layout_wins_over_detection() -> None:
    p = probe_film("c", (str(REAL_CLIPS / "tb_cut_clip.mp4"),), requested="half-tab",
                   requested_from="library.json")
    assert p.layout == "half-tab" and p.layout_reason == "from library.json"


# --------------------------------------------------------------------------------------------
# decide_layout: pure cases


def stereo_thumb(w: int, h: int, packing: str) -> np.ndarray:
    """A grey frame holding one random scene twice (2 px parallax) packed as ``packing``."""
    rng = np.random.default_rng(3)
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (h, w + 2)).astype(np.float32), (0, 0), 3)
    scene = cv2.normalize(scene, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    left, right = scene[:, 2:], scene[:, :-2]
    if packing == "sbs":
        left, right = (cv2.resize(v, (w // 2, h)) for v in (left, right))
        return np.concatenate([left, right], axis=1)
    left, right = (cv2.resize(v, (w, h // 2)) for v in (left, right))
    return np.concatenate([left, right], axis=0)


@pytest.mark.parametrize("requested", ["sbs", "half-sbs", "tab", "half-tab"])
def test_explicit_layout(requested: str) -> None:
    assert decide_layout(info(1920, 1080), requested, None) == (requested, "from --layout", {})


@pytest.mark.parametrize("requested", ["separate", "anaglyph"])
def test_explicit_layout_must_be_a_packing(requested: str) -> None:
    with pytest.raises(InputError, match="unknown layout"):
        decide_layout(info(1920, 1080), requested, None)


@pytest.mark.parametrize(("w", "h", "meta", "want"), [
    (3840, 1080, "side by side", "sbs"),
    (1920, 1080, "side by side", "half-sbs"),
    (1920, 2160, "top and bottom", "tab"),
    (1920, 1080, "top and bottom", "half-tab"),
])
def test_container_stereo3d(w: int, h: int, meta: str, want: str) -> None:
    """Container metadata decides the packing; the aspect decides full or half."""
    layout, why, sim = decide_layout(info(w, h, meta), "auto", None)
    assert layout == want
    assert "container" in why and meta in why
    assert sim == {}


def test_container_says_2d_is_mono() -> None:
    with pytest.raises(MonoInput, match="2D"):
        decide_layout(info(3840, 1080, "2D"), "auto", None)


@pytest.mark.parametrize(("w", "h", "want"), [
    (3840, 1080, "sbs"), (1920, 1080, "half-sbs"), (1920, 1080, "half-tab"), (1280, 1440, "tab")])
def test_heuristic_layout_from_aspect_and_halves(w: int, h: int, want: str) -> None:
    packing = "sbs" if want.endswith("sbs") else "tab"
    thumbs = [stereo_thumb(320, round(320 * h / w / 2) * 2, packing)] * 3
    layout, why, sim = decide_layout(info(w, h), "auto", thumbs)
    assert layout == want, why
    assert sim[packing] > 0.9


@pytest.mark.parametrize(("w", "h"), [(1920, 1080), (3840, 1080), (1280, 1440)])
def test_unrelated_halves_are_mono(w: int, h: int) -> None:
    """A 2D frame (halves not alike either way) is MonoInput, whatever the aspect."""
    rng = np.random.default_rng(0)
    th = round(320 * h / w / 2) * 2
    thumbs = [cv2.GaussianBlur(rng.uniform(0, 255, (th, 320)).astype(np.uint8), (0, 0), 2)
              for _ in range(3)]
    with pytest.raises(MonoInput, match="mono"):
        decide_layout(info(w, h), "auto", thumbs)


def test_alike_both_ways_is_undecidable() -> None:
    """A pattern repeating in both halves (test card, tiling) is refused with a hint."""
    rng = np.random.default_rng(1)
    tile = cv2.GaussianBlur(rng.uniform(0, 255, (90, 160)).astype(np.uint8), (0, 0), 2)
    thumb = np.tile(tile, (2, 2))
    with pytest.raises(MonoInput, match="--layout"):
        decide_layout(info(1920, 1080), "auto", [thumb])


def test_middle_aspect_without_frames_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no frame could be decoded"):
        decide_layout(info(1920, 1080), "auto", [])


# --------------------------------------------------------------------------------------------
# Bad inputs: one-line InputError


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (d / "notes.txt").write_text("not a film\nat all\n")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.5",
                    str(d / "audio.m4a")], check=True)
    return d


@pytest.mark.parametrize(("name", "text"), [
    ("empty.mp4", "empty file"),
    ("noise.mp4", "not a readable video"),
    ("notes.txt", "not a readable video"),
    ("missing.mp4", "missing file"),
    ("audio.m4a", "no video stream"),
    (".", "not a file"),
])
def test_probe_stream_bad_inputs(bad_dir: Path, name: str, text: str) -> None:
    with pytest.raises(InputError) as e:
        probe_stream(bad_dir / name)
    msg = str(e.value)
    assert text in msg
    assert "\n" not in msg and msg.strip() == msg


def test_probe_stream_good_file(tmp_path: Path) -> None:
    s = probe_stream(lavfi_video(tmp_path / "v.mp4", "320x180"))
    assert (s.width, s.height, s.n_frames) == (320, 180, 12)
    assert s.fps == pytest.approx(24.0) and s.codec == "h264" and s.pix_fmt == "yuv420p"
    assert s.stereo3d is None and not s.has_audio


def test_separate_views_of_different_size(tmp_path: Path) -> None:
    left = lavfi_video(tmp_path / "l.mp4", "320x180")
    right = lavfi_video(tmp_path / "r.mp4", "336x180")
    with pytest.raises(InputError, match="differ in size: 320x180 vs 336x180") as e:
        probe_film("f", (str(left), str(right)))
    assert "\n" not in str(e.value)


def test_separate_views_of_different_rate(tmp_path: Path) -> None:
    left = lavfi_video(tmp_path / "l.mp4", "320x180", rate=24)
    right = lavfi_video(tmp_path / "r.mp4", "320x180", rate=25)
    with pytest.raises(InputError, match="frame rate"):
        probe_film("f", (str(left), str(right)))


def test_separate_views_stack_side_by_side(tmp_path: Path) -> None:
    left = lavfi_video(tmp_path / "l.mp4", "320x180")
    p = probe_film("f", (str(left), str(left)))
    assert p.layout == "separate" and p.frame_size == (640, 180) and p.n_frames == 12


def test_missing_right_view(tmp_path: Path) -> None:
    left = lavfi_video(tmp_path / "l.mp4", "320x180")
    with pytest.raises(FilmmineError, match="missing file"):
        probe_film("f", (str(left), str(tmp_path / "nope.mp4")))
