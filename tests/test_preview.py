"""filmmine preview: the PNG contact sheet's pixels, rejected frames, and the HTML report in a
headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import truth_of

from filmmine import cli, synth
from filmmine.corpus.encode import decode_disparity, decode_jpeg
from filmmine.corpus.reader import iter_samples
from filmmine.tools.preview import build_preview, contact_sheet
from filmmine.tools.preview_tiles import INVALID_BGR

TURBO_BGR = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0]


def members(corpus: Path, shard: str, key: str) -> dict[str, bytes]:
    return next(iter_samples(corpus / "shards" / shard, keys={key})).members


def test_png_contact_sheet_shows_the_disparity_colour_map(corpus, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert cli.main(["preview", str(corpus), "--out", str(out), "--n", "5"]) == 0
    assert "contact sheet of 5 samples" in capsys.readouterr().out
    sheet = cv2.imread(str(out), cv2.IMREAD_COLOR)
    pv = build_preview(corpus, n=5)
    mem, placements = contact_sheet(pv)
    assert np.array_equal(sheet, mem)
    rows = {r["key"]: r for r in pq.read_table(corpus / "samples.parquet").to_pylist()}
    assert len(placements) == 5 and len({rows[p.tile.key]["film"] for p in placements}) >= 3
    for p in placements:
        row = rows[p.tile.key]
        m = members(corpus, row["shard"], row["key"])
        meta = json.loads(m["json"])
        d = decode_disparity(m["disp.png"], meta["disp_scale"], meta["disp_offset"])
        lo, hi = meta["disp_percentiles_px"]["p1"], meta["disp_percentiles_px"]["p99"]
        assert (p.tile.lo_px, p.tile.hi_px) == (lo, hi)
        x, y, w, h = p.disp_rect
        d = cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)
        got = sheet[y : y + h, x : x + w].astype(int)
        valid = np.isfinite(d)
        assert 0.8 < valid.mean() < 1.0  # both kinds of pixel are on show
        idx = np.clip(np.rint((d[valid] - lo) / (hi - lo) * 255), 0, 255).astype(int)
        assert np.array_equal(got[valid], TURBO_BGR[idx].astype(int))
        assert (got[~valid] == INVALID_BGR).all()
        # the colour bar beside it: p99 colour on top, p1 colour at the bottom
        bar_x = x + w + 8
        assert np.array_equal(sheet[y, bar_x], TURBO_BGR[255])
        assert np.array_equal(sheet[y + h - 1, bar_x], TURBO_BGR[0])
        # and left of it the stored left view, shrunk
        left = cv2.resize(cv2.cvtColor(decode_jpeg(m["jpg"]), cv2.COLOR_RGB2BGR), (w, h),
                          interpolation=cv2.INTER_AREA)
        lx = x - w - 6
        assert np.abs(sheet[y : y + h, lx : lx + w].astype(int) - left).mean() < 1.0


def test_rejected_frames_are_decoded_from_the_source_with_their_reason(corpus, library):
    pv = build_preview(corpus, n=8, film="film_sbs", samples=False, rejected=True)
    frames = [r for r in pq.read_table(corpus / "frames.parquet").to_pylist()
              if r["film"] == "film_sbs" and not r["accepted"]]
    reasons = {r["reason"] for r in frames}
    tiles = pv.rejected_tiles
    assert len(tiles) == 8 and {t.reason for t in tiles} == reasons  # every reason shown
    spec = synth.FilmSpec.from_json(truth_of(library, "film_sbs")["spec"])
    by_key = {f"film_sbs_{r['frame_index']:08d}": r for r in frames}
    for t in tiles:
        r = by_key[t.key]
        assert t.problem is None and t.label.startswith(r["reason"])
        assert f"frame {r['frame_index']}" in t.detail
        body = t.panels["views"]
        h, w2 = body.shape[:2]
        tw = (w2 - 6) // 2
        left_truth, right_truth, _ = synth.render_frame(spec, r["frame_index"])
        for panel, truth in ((body[:, :tw], left_truth), (body[:, tw + 6 :], right_truth)):
            want = cv2.resize(cv2.cvtColor(truth, cv2.COLOR_RGB2BGR), (tw, h),
                              interpolation=cv2.INTER_AREA)
            assert np.abs(panel.astype(int) - want).mean() < 6, (t.key, t.reason)
    dark = next(t for t in tiles if t.reason == "dark")
    assert "mean luma" in dark.detail and "(<= 20)" in dark.detail


def test_rejected_frames_say_source_missing(corpus, tmp_path, capsys):
    c = tmp_path / "c"
    shutil.copytree(corpus, c, ignore=shutil.ignore_patterns("shards"))
    rec_path = c / "films" / "film_tab.json"
    rec = json.loads(rec_path.read_text())
    rec["probe"]["paths"] = [str(tmp_path / "gone" / "film_tab.mp4")]
    rec_path.write_text(json.dumps(rec))
    out = tmp_path / "rej.png"
    assert cli.main(["preview", str(c), "--out", str(out), "--rejected", "--n", "3",
                     "--film", "film_tab"]) == 0
    said = capsys.readouterr().out
    assert "3 rejected frame(s) not shown: source missing" in said
    pv = build_preview(c, n=3, film="film_tab", samples=False, rejected=True)
    assert all(t.problem.startswith("source missing") for t in pv.rejected_tiles)
    sheet = cv2.imread(str(out))
    assert sheet.shape[0] > 200 and sheet.std() > 10


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def run_chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    exe = find_chromium()
    assert exe is not None
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def page_errors(stderr: str, page: Path) -> list[str]:
    """Console messages and uncaught errors the page caused (not Chromium's own noise)."""
    return [line for line in stderr.splitlines()
            if ("CONSOLE" in line and page.as_uri() in line) or "Uncaught" in line]


@pytest.mark.skipif(find_chromium() is None,
                    reason="chromium not found (scripts/setup.sh installs Debian's chromium)")
def test_html_report_in_headless_chromium(corpus, tmp_path, capsys):
    page = tmp_path / "report.html"
    assert cli.main(["preview", str(corpus), "--out", str(page), "--n", "4"]) == 0
    assert "4 samples and 4 rejected frames" in capsys.readouterr().out
    text = page.read_text()
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", text)
    summary = json.loads((corpus / "manifest.json").read_text())["films"]
    for film, info in summary.items():
        assert f"<td>{film}</td>" in text
        assert f"<td>{info['counts']['accepted']}</td>" in text
    for chart in ("Disparity percentiles per sample", "Valid-pixel fraction"):
        assert chart in text and "<svg" in text

    # the harness sees a page's console errors (so seeing none below means something)
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><link rel="icon" href="data:,"><script>'
                   'throw new Error("boom")</script>')
    assert page_errors(run_chromium(bad, tmp_path / "p0", "--dump-dom").stderr, bad)

    shot = tmp_path / "shot.png"
    run = run_chromium(page, tmp_path / "p1", "--dump-dom", f"--screenshot={shot}",
                       "--window-size=1280,1600")
    assert run.returncode == 0, run.stderr[-2000:]
    assert page_errors(run.stderr, page) == []
    imgs = re.findall(r"<img [^>]*>", run.stdout)
    assert len(imgs) == 4 * 2 + 4  # left + disparity per sample, one per rejected frame
    assert all('src="data:image/' in i for i in imgs)
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', run.stdout)
    assert loaded and loaded.group(1) == loaded.group(2) == str(len(imgs))  # all decoded
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (1600, 1280)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # not blank


def test_rejected_frame_of_a_vfr_film_is_the_frame_of_its_index(tmp_path):
    """A film record stores no timestamp index: the preview reads it again from the source,
    so after dropped frames it decodes the picture the index names."""
    from filmmine.media.decode import iter_frames
    from filmmine.media.layout import views
    from filmmine.media.probe import probe_film
    from filmmine.synth import FilmSpec, ShotSpec
    from filmmine.tools.preview_data import decode_views

    spec = FilmSpec(shots=(ShotSpec("textured", 30, seed=3),), view_width=160, view_height=96,
                    seed=4)
    synth.write_film(spec, tmp_path / "src.mp4", "sbs")
    film = tmp_path / "vfr.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(tmp_path / "src.mp4"), "-vf",
                    "select='not(eq(n,4)+eq(n,11))'", "-fps_mode", "passthrough", "-c:v",
                    "libx264", "-crf", "12", str(film)], check=True)
    probe = probe_film("vfr", (str(film),), requested="sbs")
    record = {"probe": json.loads(json.dumps(probe.to_json()))}
    full = list(iter_frames(probe, grid_step=1))
    for k in (3, 9, 17, 27):
        left, right = decode_views(record, k)
        ref_l, ref_r = views(full[k].full, "sbs")
        assert np.array_equal(left, ref_l) and np.array_equal(right, ref_r), k


@pytest.mark.parametrize("ext", ["jpg", "disp.png"])
def test_a_sample_with_an_empty_image_member_is_left_out_not_a_crash(corpus, tmp_path, ext):
    from test_verify import rewrite_shard

    c = tmp_path / "c"
    shutil.copytree(corpus, c)
    rows = sorted(pq.read_table(c / "samples.parquet").to_pylist(),
                  key=lambda r: (r["film"], r["frame_index"]))
    bad = rows[0]  # the first of the 3 picks (first, middle, last)
    rewrite_shard(c, bad["shard"], lambda name, data: [
        (name, b"" if name == f"{bad['key']}.{ext}" else data)])
    pv = build_preview(c, n=3)
    # the other two picks are still shown
    assert [t.key for t in pv.sample_tiles] == [rows[len(rows) // 2]["key"], rows[-1]["key"]]


def test_rejected_caption_operator_is_the_filters_own():
    """A score exactly at its threshold: the caption's comparison says what filters.decide
    did with it (frozen is "<=": a change equal to frozen_max_diff is still frozen)."""
    from filmmine.recipe import load_recipe
    from filmmine.stages import filters
    from filmmine.tools.preview_tiles import REASON_SCORE, _score_text

    recipe = load_recipe("default")
    cfg = recipe["filters"]
    passing = {"black_frac": 0.0, "white_frac": 0.0, "mean_luma": 128.0, "texture": 50.0,
               "mono_ratio": 5.0, "frozen_diff": 50.0}
    for reason in filters.REASONS:
        col, _, _, (_, key) = REASON_SCORE[reason]
        scores = dict(passing, **{col: float(cfg[key])})
        if reason == "credits":
            scores["white_frac"] = cfg["credits_min_white"]
        at_threshold_rejects = filters.decide(scores, cfg) == reason
        row = {"reason": reason, "film": "f", "frame_index": 0, "shot_index": 0, **scores}
        text = _score_text(row, recipe)
        assert ("=" in text) == at_threshold_rejects, (reason, text)
