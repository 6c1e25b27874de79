"""Tests for filmmine.synth: exactness of the synthetic stereo truth and the encoded layouts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import ffmpeg
import numpy as np
import pytest

from filmmine import synth
from filmmine.synth import FilmSpec, ShotSpec

# Small film used by the encoding tests: 9 shots of 6 frames + a 12-frame dissolve = 66 frames.
SMALL = synth.default_film_spec(shot_frames=6, seed=3)


@pytest.fixture(scope="module")
def spec() -> FilmSpec:
    return synth.default_film_spec(shot_frames=24)


def _frames_of(spec: FilmSpec, kind: str) -> list[int]:
    return [
        f
        for shot in synth.film_timeline(spec)
        if shot["kind"] == kind
        for f in range(shot["start"], shot["end"])
    ]


def _shot_of(spec: FilmSpec, frame: int) -> ShotSpec:
    for shot in synth.film_timeline(spec):
        if shot["start"] <= frame < shot["end"]:
            return spec.shots[shot["index"]]
    raise AssertionError(f"frame {frame} is in no shot")


def _warp_error(
    spec: FilmSpec, frame: int, *, disp_scale: float = 1.0, vertical_px: float | None = None
) -> tuple[float, float]:
    """Mean abs error of the right view warped onto the left with the truth; valid fraction.

    Valid pixels: finite truth, visible in the right view (right-view truth agrees, i.e. not
    occluded), inside the right view, and >= 2 px from any NaN (layer edge) pixel.
    """
    left, right, disp = synth.render_frame(spec, frame)
    disp_right = synth._right_disparity(spec, frame)
    shot = _shot_of(spec, frame)
    true_v = shot.vertical_px if shot.kind == "vertical" else 0.0
    v = true_v if vertical_px is None else vertical_px
    h, w = disp.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.nan_to_num(disp)
    warped = cv2.remap(right, xx - disp_scale * d, yy + v, cv2.INTER_CUBIC)
    # Occlusion check uses the TRUE geometry, whatever the hypothesis being scored.
    dr = cv2.remap(
        np.nan_to_num(disp_right, nan=-1e3),
        xx - d,
        yy + true_v,
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=-1e3,
    )
    inside = (xx - d >= 2) & (xx - d <= w - 3) & (yy + true_v >= 2) & (yy + true_v <= h - 3)
    valid = np.isfinite(disp) & (np.abs(dr - d) < 0.5) & inside
    valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    err = np.abs(warped.astype(np.float32) - left.astype(np.float32)).mean(axis=2)
    return float(err[valid].mean()), float(valid.mean())


# ------------------------------------------------------------------------------------------
# Timeline


@pytest.mark.parametrize("dissolve_after", [None, 0, 3])
def test_timeline_partitions_film(dissolve_after: int | None) -> None:
    shots = tuple(ShotSpec("textured", n, seed=n) for n in (5, 7, 3, 9, 4))
    spec = FilmSpec(shots=shots, dissolve_after=dissolve_after, dissolve_frames=6)
    timeline = synth.film_timeline(spec)
    ranges = [(s["start"], s["end"]) for s in timeline]
    diss = synth.dissolve_range(spec)
    if diss is not None:
        ranges.append(diss)
    covered = sorted(f for a, b in ranges for f in range(a, b))
    assert covered == list(range(synth.n_frames(spec)))  # disjoint and complete
    assert synth.n_frames(spec) == sum(s.n_frames for s in shots) + (6 if diss else 0)
    assert [s["end"] - s["start"] for s in timeline] == [s.n_frames for s in shots]

    starts = [s["start"] for s in timeline[1:]]
    if dissolve_after is None:
        assert diss is None
        assert synth.cut_frames(spec) == starts
    else:
        assert diss == (timeline[dissolve_after]["end"], timeline[dissolve_after + 1]["start"])
        assert synth.cut_frames(spec) == [s for s in starts if s != diss[1]]
        assert all(synth.shot_kind_at(spec, f) is None for f in range(*diss))
    for shot in timeline:
        assert synth.shot_kind_at(spec, shot["start"]) == shot["kind"]
        assert synth.shot_kind_at(spec, shot["end"] - 1) == shot["kind"]
    with pytest.raises(IndexError):
        synth.render_frame(spec, synth.n_frames(spec))


def test_default_spec_layout(spec: FilmSpec) -> None:
    kinds = [s.kind for s in spec.shots]
    assert kinds == [
        "textured",
        "textured",
        "textured",
        "vertical",
        "mono",
        "dark",
        "lowtex",
        "credits",
        "textured",
    ]
    assert spec.dissolve_after == 1
    assert len(synth.cut_frames(spec)) == len(spec.shots) - 2  # every boundary but the dissolve
    assert synth.dissolve_range(spec) == (48, 60)


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        ShotSpec("bogus", 3)
    with pytest.raises(ValueError):
        ShotSpec("vertical", 3, vertical_px=2.0)
    with pytest.raises(ValueError):
        ShotSpec("textured", 0)
    shots = (ShotSpec("textured", 3), ShotSpec("mono", 3))
    with pytest.raises(ValueError):
        FilmSpec(shots=shots, view_width=321)
    with pytest.raises(ValueError):
        FilmSpec(shots=shots, letterbox_px=3)
    with pytest.raises(ValueError):
        FilmSpec(shots=shots, dissolve_after=1)  # the last shot has no successor


def test_json_round_trip(spec: FilmSpec) -> None:
    odd = FilmSpec(
        shots=(ShotSpec("vertical", 4, seed=9, vertical_px=5.5), ShotSpec("credits", 2)),
        view_width=160,
        view_height=96,
        fps=23.976,
        dissolve_after=0,
        dissolve_frames=3,
        letterbox_px=8,
        seed=17,
    )
    for s in (spec, odd):
        back = FilmSpec.from_json(json.loads(json.dumps(s.to_json())))
        assert back == s
        assert hash(back) == hash(s)


# ------------------------------------------------------------------------------------------
# Content and truth


def test_render_is_deterministic_and_truth_matches(spec: FilmSpec) -> None:
    for f in (0, 30, 50, 80, 150, synth.n_frames(spec) - 1):
        a = synth.render_frame(spec, f)
        synth._shot_content.cache_clear()  # a rebuilt texture must give the same bytes
        b = synth.render_frame(spec, f)
        for x, y in zip(a, b, strict=True):
            assert x.tobytes() == y.tobytes()
        left, right, disp = a
        assert left.shape == right.shape == (180, 320, 3)
        assert left.dtype == right.dtype == np.uint8
        assert disp.shape == (180, 320) and disp.dtype == np.float32
        np.testing.assert_array_equal(synth.true_disparity(spec, f), disp)


@pytest.mark.parametrize("kind", ["textured", "vertical"])
def test_truth_warps_right_view_onto_left(spec: FilmSpec, kind: str) -> None:
    frames = _frames_of(spec, kind)
    for f in frames[:: len(frames) // 4]:
        err, valid = _warp_error(spec, f)
        assert valid > 0.6, f"too few checkable pixels at frame {f}"
        assert err < 1.5, f"frame {f}: truth warp error {err:.2f}"
        # Wrong hypotheses must be clearly worse, or the check above proves nothing.
        assert _warp_error(spec, f, disp_scale=0.0)[0] > 8 * err + 5
        assert _warp_error(spec, f, disp_scale=-1.0)[0] > 8 * err + 5
        if kind == "vertical":
            assert _warp_error(spec, f, vertical_px=0.0)[0] > 8 * err + 5


def test_disparity_range_has_both_signs(spec: FilmSpec) -> None:
    for shot in synth.film_timeline(spec):
        if shot["kind"] not in ("textured", "vertical"):
            continue
        lo, hi = np.inf, -np.inf
        for f in range(shot["start"], shot["end"], 4):
            d = synth.true_disparity(spec, f)
            assert np.isfinite(d).mean() > 0.9  # NaN only on thin layer edges
            lo, hi = min(lo, np.nanmin(d)), max(hi, np.nanmax(d))
        assert lo < -3 and hi > 3, (shot, lo, hi)
        assert hi - lo >= 12, (shot, lo, hi)
        assert lo >= -8.5 and hi <= 16.5


def test_background_disparity_varies_with_row_only(spec: FilmSpec) -> None:
    f = _frames_of(spec, "textured")[0]
    scene = synth._shot_content(spec, 0)
    # Background-only truth: drop the layers.
    bare = dataclasses.replace(scene, layers=())
    _, d = synth._scene_view(bare, spec, f, right=False, want_rgb=False, want_disp=True)
    assert np.all(d == d[:, :1])
    col = d[:, 0]
    assert np.all(np.diff(col) > 0)  # nearer towards the bottom, like a ground plane
    np.testing.assert_allclose(np.diff(col, 2), 0, atol=1e-5)  # linear in the row


def test_mono_shot_has_identical_views(spec: FilmSpec) -> None:
    for f in _frames_of(spec, "mono")[::7]:
        left, right, disp = synth.render_frame(spec, f)
        assert np.array_equal(left, right)
        assert left.std() > 20  # textured, not blank
        assert np.isnan(disp).all()


def test_dark_shot_is_near_black(spec: FilmSpec) -> None:
    for f in _frames_of(spec, "dark")[::7]:
        left, right, disp = synth.render_frame(spec, f)
        assert left.mean() <= 8 and right.mean() <= 8
        assert left.max() > 0  # not pure black: there is a (dim) scene
        assert np.isnan(disp).all()


def test_lowtex_shot_is_nearly_uniform(spec: FilmSpec) -> None:
    for f in _frames_of(spec, "lowtex")[::7]:
        left, right, disp = synth.render_frame(spec, f)
        for view in (left, right):
            span = view.reshape(-1, 3).max(0).astype(int) - view.reshape(-1, 3).min(0)
            assert span.max() <= 4
            assert view.mean() > 40
        assert np.isnan(disp).all()


def test_credits_are_white_text_on_black_scrolling_up(spec: FilmSpec) -> None:
    frames = _frames_of(spec, "credits")
    left, right, disp = synth.render_frame(spec, frames[0])
    assert np.array_equal(left, right)
    assert np.median(left) == 0
    assert (left > 200).mean() > 0.005
    assert np.isnan(disp).all()
    later, _, _ = synth.render_frame(spec, frames[0] + 8)  # scrolls 0.5 px/frame -> 4 px up
    grey0 = left[..., 0].astype(np.float32)
    grey1 = later[..., 0].astype(np.float32)
    err = {
        dy: np.abs(grey1[20:-20] - grey0[20 + dy : grey0.shape[0] - 20 + dy]).mean()
        for dy in (-4, 0, 4)
    }
    assert err[4] < 0.2 * err[0]
    assert err[4] < 0.2 * err[-4]


def test_letterbox_bars_are_black_and_nan() -> None:
    spec = synth.default_film_spec(shot_frames=6, letterbox_px=16)
    for f in range(0, synth.n_frames(spec), 5):
        left, right, disp = synth.render_frame(spec, f)
        for view in (left, right):
            assert not view[:16].any() and not view[-16:].any()
        assert np.isnan(disp[:16]).all() and np.isnan(disp[-16:]).all()
        if synth.shot_kind_at(spec, f) == "textured":
            assert np.isfinite(disp[16:-16]).mean() > 0.9
            assert left[16:-16].mean() > 30
            assert _warp_error(spec, f)[0] < 1.5


def test_dissolve_blends_neighbouring_shots(spec: FilmSpec) -> None:
    start, end = synth.dissolve_range(spec)
    i = spec.dissolve_after
    k = (end - start) // 2
    left, right, disp = synth.render_frame(spec, start + k)
    assert np.isnan(disp).all()
    a_left, a_right, _ = synth._shot_band(spec, i, spec.shots[i].n_frames + k)
    b_left, b_right, _ = synth._shot_band(spec, i + 1, k - spec.dissolve_frames)
    alpha = (k + 1) / (spec.dissolve_frames + 1)
    for got, a, b in ((left, a_left, b_left), (right, a_right, b_right)):
        expect = np.clip((1 - alpha) * a + alpha * b, 0, 255)
        assert np.abs(got.astype(np.float32) - expect).max() <= 0.51
    # Continuity at both seams: the first/last dissolve frames are close to their neighbours.
    step = _frame_diff(spec, start - 1, start), _frame_diff(spec, end - 1, end)
    assert max(step) < 0.5 * _frame_diff(spec, start - 1, end)


def _frame_diff(spec: FilmSpec, f0: int, f1: int) -> float:
    """Mean abs HSV difference of the left views (what content cut detectors look at)."""
    a, b = (
        cv2.cvtColor(synth.render_frame(spec, f)[0], cv2.COLOR_RGB2HSV).astype(np.float32)
        for f in (f0, f1)
    )
    return float(np.abs(a - b).mean())


def test_hard_cuts_stand_out_from_motion(spec: FilmSpec) -> None:
    cuts = set(synth.cut_frames(spec))
    diffs = {f: _frame_diff(spec, f - 1, f) for f in range(1, synth.n_frames(spec))}
    at_cuts = [diffs[f] for f in cuts]
    within = [v for f, v in diffs.items() if f not in cuts]
    assert min(at_cuts) > 2.5 * max(within), (sorted(at_cuts), max(within))
    # Camera pan and object motion stay <= 2 px/frame, so content changes little.
    assert max(within) < 20


# ------------------------------------------------------------------------------------------
# Encoding


def _probe(path: Path) -> tuple[int, int, int]:
    info = ffmpeg.probe(str(path), count_frames=None)
    (video,) = [s for s in info["streams"] if s["codec_type"] == "video"]
    assert video["codec_name"] == "h264" and video["pix_fmt"] == "yuv420p"
    return int(video["width"]), int(video["height"]), int(video["nb_read_frames"])


def _decode_frame(path: Path, index: int, size: tuple[int, int]) -> np.ndarray:
    out, _ = (
        ffmpeg.input(str(path))
        .filter("select", f"eq(n,{index})")
        .output("pipe:", vframes=1, format="rawvideo", pix_fmt="rgb24")
        .run(capture_stdout=True, capture_stderr=True)
    )
    return np.frombuffer(out, np.uint8).reshape(size[1], size[0], 3)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    root = tmp_path_factory.mktemp("films")
    films = {}
    for layout in synth.LAYOUTS:
        out = root / (f"film_{layout}" if layout == "separate" else f"film_{layout}.mp4")
        films[layout] = (synth.write_film(SMALL, out, layout), out)
    return films


@pytest.mark.parametrize("layout", synth.LAYOUTS)
def test_write_film_files_and_sidecar(encoded: dict[str, tuple[dict, Path]], layout: str) -> None:
    meta, out = encoded[layout]
    w, h = SMALL.view_width, SMALL.view_height
    expect_size = {
        "sbs": (2 * w, h),
        "half-sbs": (w, h),
        "tab": (w, 2 * h),
        "half-tab": (w, h),
        "separate": (w, h),
    }[layout]
    assert meta["frame_size"] == list(expect_size)
    names = (
        ["film_separate_left.mp4", "film_separate_right.mp4"]
        if layout == "separate"
        else [out.name]
    )
    assert meta["files"] == names
    for name in names:
        assert _probe(out.parent / name) == (*expect_size, synth.n_frames(SMALL))

    sidecar = json.loads(Path(f"{out}.truth.json").read_text())
    assert sidecar == json.loads(json.dumps(meta))
    assert sidecar["format"] == "filmmine-synth/1"
    assert sidecar["layout"] == layout
    assert sidecar["view_size"] == [w, h]
    assert sidecar["n_frames"] == synth.n_frames(SMALL)
    assert sidecar["fps"] == SMALL.fps
    assert sidecar["cuts"] == synth.cut_frames(SMALL)
    assert sidecar["dissolve"] == list(synth.dissolve_range(SMALL))
    assert sidecar["shots"] == synth.film_timeline(SMALL)
    assert sidecar["letterbox_px"] == 0
    spec = FilmSpec.from_json(sidecar["spec"])
    assert spec == SMALL
    np.testing.assert_array_equal(synth.true_disparity(spec, 3), synth.true_disparity(SMALL, 3))


@pytest.mark.parametrize("layout", synth.LAYOUTS)
def test_decoded_frames_match_render(encoded: dict[str, tuple[dict, Path]], layout: str) -> None:
    meta, out = encoded[layout]
    size = tuple(meta["frame_size"])
    frame = 9  # a textured frame
    left, right, _ = synth.render_frame(SMALL, frame)
    expected = synth._pack(left, right, layout)
    if layout == "separate":
        decoded = [_decode_frame(out.parent / n, frame, size) for n in meta["files"]]
    else:
        decoded = [_decode_frame(out, frame, size)]
    for got, want in zip(decoded, expected, strict=True):
        err = np.abs(got.astype(np.float32) - want.astype(np.float32)).mean()
        assert err < 6, f"{layout}: decoded frame differs by {err:.2f}"
    # Geometry check with teeth: the views in swapped order do not match.
    if layout in ("sbs", "tab"):
        swapped = synth._pack(right, left, layout)[0]
        assert np.abs(decoded[0].astype(np.float32) - swapped).mean() > 10


def test_write_film_reports_ffmpeg_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "taken.mp4"
    blocker.mkdir()  # ffmpeg cannot open a directory as its output file
    with pytest.raises(RuntimeError, match="ffmpeg"):
        synth.write_film(SMALL, blocker, "sbs")
    with pytest.raises(ValueError):
        synth.write_film(SMALL, tmp_path / "bad.mp4", "mvc")


def test_write_library(tmp_path: Path) -> None:
    manifest = synth.write_library(tmp_path / "lib", view_width=128, view_height=96, shot_frames=3)
    assert manifest == tmp_path / "lib" / "library.json"
    lib = json.loads(manifest.read_text())
    assert lib["format"] == "filmmine-library/1"
    assert [f["layout"] for f in lib["films"]] == list(synth.LAYOUTS)
    seeds = set()
    for film in lib["films"]:
        files = [film["left"], film["right"]] if film["layout"] == "separate" else [film["path"]]
        for name in files:
            assert (manifest.parent / name).is_file()
        stem = manifest.parent / (film["name"] if film["layout"] == "separate" else film["path"])
        sidecar = json.loads(Path(f"{stem}.truth.json").read_text())
        assert sidecar["layout"] == film["layout"]
        assert sidecar["letterbox_px"] == (16 if film["layout"] == "tab" else 0)
        seeds.add(sidecar["spec"]["seed"])
    assert len(seeds) == len(lib["films"])  # different films, not copies


def test_main_cli(tmp_path: Path) -> None:
    argv = [str(tmp_path), "--view-width", "96", "--view-height", "64", "--shot-frames", "2"]
    assert synth.main([*argv, "--layouts", "half-sbs"]) == 0
    lib = json.loads((tmp_path / "library.json").read_text())
    assert [f["path"] for f in lib["films"]] == ["film_half-sbs.mp4"]
    expect = synth.default_film_spec(view_width=96, view_height=64, shot_frames=2)
    assert _probe(tmp_path / "film_half-sbs.mp4") == (96, 64, synth.n_frames(expect))
