"""Spatial video (MV-HEVC): the container's stereo metadata, both views, the corpus records."""

from __future__ import annotations

import glob
import json

import cv2
import numpy as np
import pytest
from conftest import SHARED

from filmmine.errors import InputError
from filmmine.media import ffmpeg_bin
from filmmine.media.probe import probe_film
from filmmine.media.spatial import focal_px, read_spatial
from filmmine.media.streams import mvc_stream

SPATIAL = SHARED / "spatial_mvhevc"
WATER = SPATIAL / "water_180_mvhevc_5frames.mov"
SMALL = SPATIAL / "stereo_spatial.mp4"
needs_files = pytest.mark.skipif(not WATER.is_file(), reason=f"no spatial video in {SPATIAL}")
needs_ffmpeg = pytest.mark.skipif(
    ffmpeg_bin.multiview_ffmpeg() is None,
    reason="no FFmpeg >= 7.1 found (FILMMINE_FFMPEG, PATH, or pip install 'filmmine[spatial]')")


@needs_files
def test_the_containers_stereo_metadata():
    """Read from the boxes themselves: baseline 19,240 um, 64 degrees (63.4 for the small
    file), disparity adjustment 200/10000, left eye first (stri not reversed)."""
    w = read_spatial(WATER)
    assert w is not None and w.multilayer and w.left_view == 0
    assert (w.baseline_mm, w.hfov_deg, w.disparity_adjustment) == (19.24, 64.0, 0.02)
    assert w.projection == "rect"
    s = read_spatial(SMALL)
    assert s is not None and s.multilayer and (s.hfov_deg, s.hero_eye) == (63.4, "left")
    assert read_spatial(SHARED / "real_cut_clips" / "sbs_cut_clip.mp4") is None


@needs_files
@needs_ffmpeg
def test_both_views_decode_and_view_0_is_the_left_eye():
    """Probed as mv-hevc (both views side by side, 5 frames); every frame decodes at its
    index; the left half (view 0) is the left eye: its features lie right of view 1's
    (x_left - x_right = d > 0, about 21 px at 1934 px), at the same height."""
    from filmmine.media.decode import iter_frames

    p = probe_film("w", (str(WATER),))
    assert p.layout == "mv-hevc" and p.frame_size == (3868, 2160) and p.n_frames == 5
    assert p.stereo["baseline_mm"] == 19.24 and p.stereo["hfov_deg"] == 64.0
    frames = list(iter_frames(p, grid_step=1, lowres_width=160))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    grey = cv2.cvtColor(frames[0].full, cv2.COLOR_RGB2GRAY)
    v0, v1 = grey[:, :1934], grey[:, 1934:]
    sift = cv2.SIFT_create(2000)
    k0, d0 = sift.detectAndCompute(v0, None)
    k1, d1 = sift.detectAndCompute(v1, None)
    good = [m for m, n in cv2.BFMatcher().knnMatch(d0, d1, k=2) if m.distance < 0.7 * n.distance]
    dx = np.array([k0[m.queryIdx].pt[0] - k1[m.trainIdx].pt[0] for m in good])
    dy = np.array([k0[m.queryIdx].pt[1] - k1[m.trainIdx].pt[1] for m in good])
    assert len(good) > 50
    assert 18 < np.median(dx) < 25 and abs(np.median(dy)) < 0.5
    from filmmine.recipe import load_recipe
    from filmmine.tools.probe_report import format_probe, probe_inputs

    text = format_probe(probe_inputs([str(WATER)], load_recipe("default"), "auto", 0)[0])
    assert "spatial video: baseline 19.24 mm, horizontal field of view 64.0 deg" in text
    assert "decoded by: FFmpeg " in text and "layout: mv-hevc" in text
    small = probe_film("s", (str(SMALL),))
    assert small.layout == "mv-hevc" and small.frame_size == (320, 120)
    assert len(list(iter_frames(small, grid_step=1, lowres_width=80))) == small.n_frames == 10


@needs_files
@needs_ffmpeg
def test_a_spatial_clip_is_mined_with_its_metric_metadata(tmp_path):
    """`--recipe short` mines the 5-frame clip (its smooth render scores 0.50 on the texture
    filter, so the test lowers that); every sample's JSON and the film record carry baseline,
    field of view and the stored image's focal length, and depth = f B / d comes out in
    metres for a positive disparity that matches the views' feature matches."""
    from filmmine.run.extract import extract

    report = extract([str(WATER)], tmp_path / "c", recipe="short", workers=0, progress=False,
                     overrides={"filters": {"lowtex_min_grad": 0.3}})
    rec = report.records["water_180_mvhevc_5frames"]
    assert rec["counts"]["accepted"] == 5, report.summary()
    assert rec["probe"]["layout"] == "mv-hevc" and rec["probe"]["stereo"]["baseline_mm"] == 19.24
    import webdataset as wds

    shards = sorted(glob.glob(str(tmp_path / "c" / "shards" / "*.tar")))
    metas = [json.loads(s["json"]) for s in wds.WebDataset(shards, shardshuffle=False)]
    assert len(metas) == 5
    for m in metas:
        st = m["stereo"]
        cw = m["crop"][2]
        assert st["focal_px"] == pytest.approx(focal_px(64.0, 1934) * m["size"][0] / cw,
                                               abs=1e-3)
        d = m["disp_percentiles_px"]["p50"]
        assert 9 < d * cw / m["size"][0] < 25    # the ~21 px of the matches, at full size
        depth_m = st["focal_px"] * st["baseline_mm"] / 1000 / d
        assert 0.5 < depth_m < 5


@needs_files
def test_without_an_ffmpeg_that_decodes_both_views_the_film_fails_in_one_line(monkeypatch):
    from filmmine.media import probe

    monkeypatch.setattr(probe, "multiview_ffmpeg", lambda: None)
    with pytest.raises(InputError, match=r"MV-HEVC stereo .* needs FFmpeg >= 7\.1 .* "
                                         r"pip install 'filmmine\[spatial\]'"):
        probe.probe_film("w", (str(WATER),))
    with pytest.raises(InputError, match="not MV-HEVC"):
        probe.probe_film("c", (str(SHARED / "real_cut_clips" / "sbs_cut_clip.mp4"),),
                         requested="mv-hevc")


def test_h264_mvc_is_named_not_mined_as_2d():
    """3D Blu-ray MVC: the profile on the stream, or the dependent view's MPEG-TS type."""
    base = {"codec_type": "video", "codec_name": "h264", "index": 0, "profile": "High"}
    assert mvc_stream([base]) is None
    assert mvc_stream([{**base, "profile": "Stereo High"}]) == "profile Stereo High"
    assert "MPEG-TS type 0x20" in mvc_stream([base, {**base, "index": 1,
                                                     "codec_tag": "0x0020"}])


def test_the_multiview_ffmpeg_is_chosen_by_version(monkeypatch, tmp_path):
    assert ffmpeg_bin.version_tuple("5.1.9-0+deb12u1") == (5, 1)
    assert ffmpeg_bin.version_tuple("n9.0.2-17-g2a571b6068") == (9, 0)
    assert ffmpeg_bin.version_tuple("N-112233-gabcdef") is None
    old = tmp_path / "ffmpeg"
    old.write_text("#!/bin/sh\necho 'ffmpeg version 6.1.1 Copyright (c) 2000'\n")
    old.chmod(0o755)
    monkeypatch.setenv("FILMMINE_FFMPEG", str(old))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(ffmpeg_bin, "_wheel_ffmpeg", lambda: None)
    ffmpeg_bin.multiview_ffmpeg.cache_clear()
    ffmpeg_bin.ffmpeg_version.cache_clear()
    try:
        assert ffmpeg_bin.multiview_ffmpeg() is None
        old.write_text("#!/bin/sh\necho 'ffmpeg version 7.1.1 Copyright (c) 2000'\n")
        ffmpeg_bin.ffmpeg_version.cache_clear()
        ffmpeg_bin.multiview_ffmpeg.cache_clear()
        assert ffmpeg_bin.multiview_ffmpeg() == str(old)
    finally:
        ffmpeg_bin.multiview_ffmpeg.cache_clear()
        ffmpeg_bin.ffmpeg_version.cache_clear()


@needs_files
@needs_ffmpeg
def test_a_range_of_a_spatial_clip_decodes_the_same_frames_as_the_whole():
    """Work units cut films into ranges: frames [3, 7) of the 10-frame clip decoded alone are
    the whole decode's, index for index and pixel for pixel (seek, trim, both views)."""
    from filmmine.media.decode import iter_frames

    p = probe_film("s", (str(SMALL),))
    whole = {f.index: f.full for f in iter_frames(p, grid_step=1, lowres_width=80)}
    part = list(iter_frames(p, start_frame=3, n_frames=4, grid_step=1, lowres_width=80))
    assert [f.index for f in part] == [3, 4, 5, 6]
    for f in part:
        assert np.array_equal(f.full, whole[f.index]), f.index
