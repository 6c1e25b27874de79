"""End to end: a generated library -> corpus, checked against the films' ground truth."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import truth_of

from filmmine import synth
from filmmine.corpus.encode import decode_disparity, decode_jpeg
from filmmine.run.extract import extract
from filmmine.synth import FilmSpec, ShotSpec

FILMS = ["film_sbs", "film_half-sbs", "film_tab", "film_half-tab", "film_separate"]
DEFECT_REASON = {"vertical": "vertical_misaligned", "mono": "mono", "dark": "dark",
                 "lowtex": "low_texture", "credits": "credits"}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def samples_of(corpus: Path, film: str) -> list[dict]:
    shards = sorted(str(p) for p in (corpus / "shards").glob(f"{film}-*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))


def gt_for(spec: FilmSpec, meta: dict) -> np.ndarray:
    """Ground truth in pixels of the stored image (crop, then resize)."""
    x, y, w, h = meta["crop"]
    gt = synth.true_disparity(spec, meta["frame_index"])[y : y + h, x : x + w]
    if [w, h] != meta["size"]:
        s = meta["size"][0] / w
        gt = cv2.resize(gt, tuple(meta["size"]), interpolation=cv2.INTER_NEAREST) * s
    return gt


def assert_label_matches_truth(spec: FilmSpec, sample: dict) -> None:
    """A textured-shot sample: EPE <= 0.5 px against the truth, >= 80 % of pixels valid."""
    meta = json.loads(sample["json"])
    assert synth.shot_kind_at(spec, meta["frame_index"]) == "textured"
    d = decode_disparity(sample["disp.png"], meta["disp_scale"], meta["disp_offset"])
    gt = gt_for(spec, meta)
    both = np.isfinite(d) & np.isfinite(gt)
    epe = float(np.abs(d - gt)[both].mean())
    assert epe <= 0.5, (meta["key"], epe)
    assert np.isfinite(d).mean() >= 0.8, meta["key"]


def test_shards_read_back_with_webdataset(corpus):
    man = json.loads((corpus / "manifest.json").read_text())
    samples = pq.read_table(corpus / "samples.parquet").to_pylist()
    n = 0
    for shard in man["shards"]:
        path = corpus / "shards" / shard["name"]
        assert path.stat().st_size == shard["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        got = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
        assert len(got) == shard["samples"]
        for s in got:
            assert "." not in s["__key__"]
            assert {"jpg", "disp.png", "json"} <= set(s)
            meta = json.loads(s["json"])
            img = decode_jpeg(s["jpg"])
            d = decode_disparity(s["disp.png"], meta["disp_scale"], meta["disp_offset"])
            assert img.shape[:2] == d.shape == (meta["size"][1], meta["size"][0])
            for field in ("film", "frame_index", "pts_s", "shot_index", "layout", "view_size",
                          "crop", "size", "disp_scale", "disp_offset", "backend",
                          "valid_fraction", "vertical"):
                assert field in meta, field
            assert np.isfinite(d).mean() == pytest.approx(meta["valid_fraction"], abs=1e-3)
        n += len(got)
    assert n == len(samples) == man["totals"]["samples"] > 0
    frames = pq.read_table(corpus / "frames.parquet")
    accepted = [r for r in frames.to_pylist() if r["accepted"]]
    assert sorted(r["key"] for r in accepted) == sorted(r["key"] for r in samples)


@pytest.mark.parametrize("film", FILMS)
def test_disparity_matches_ground_truth(corpus, library, film):
    spec = FilmSpec.from_json(truth_of(library, film)["spec"])
    got = samples_of(corpus, film)
    assert len(got) >= 15
    for s in got:
        assert_label_matches_truth(spec, s)


@pytest.mark.parametrize("film", FILMS)
def test_defect_shots_yield_nothing_with_reason(corpus, library, film):
    truth = truth_of(library, film)
    spec = FilmSpec.from_json(truth["spec"])
    rows = [r for r in pq.read_table(corpus / "frames.parquet").to_pylist() if r["film"] == film]
    assert len(rows) == len(range(0, truth["n_frames"], 6))
    for shot in truth["shots"]:
        inside = [r for r in rows if shot["start"] <= r["frame_index"] < shot["end"]]
        if shot["kind"] == "textured":
            assert any(r["accepted"] for r in inside)
            continue
        assert not any(r["accepted"] for r in inside), shot
        examined = [r for r in inside if r["stage"] != "sampling"]
        assert examined, shot  # the shot was looked at, not just skipped
        assert {r["reason"] for r in examined} == {DEFECT_REASON[shot["kind"]]}, shot
    # the dissolve yields no sample, and no accepted frame has a cut within the margin
    s, e = truth["dissolve"]
    assert not any(r["accepted"] for r in rows if s - 3 <= r["frame_index"] < e + 3)
    for r in rows:
        if r["accepted"]:
            assert min(abs(r["frame_index"] - c) for c in truth["cuts"]) >= 6
            assert synth.shot_kind_at(spec, r["frame_index"]) == "textured"


def test_film_records_and_manifest(corpus, library):
    man = json.loads((corpus / "manifest.json").read_text())
    assert {i["film"] for i in man["inputs"]} == set(FILMS)
    assert all(i["status"] == "ok" for i in man["inputs"])
    for film in FILMS:
        rec = json.loads((corpus / "films" / f"{film}.json").read_text())
        truth = truth_of(library, film)
        assert rec["cuts"] == pytest.approx(truth["cuts"], abs=1)
        assert rec["counts"]["shots"] == len(truth["shots"])
        assert rec["probe"]["layout"] == truth["layout"]
        assert sum(rec["rejections"].values()) + rec["counts"]["accepted"] == \
            rec["counts"]["candidates"]
        assert man["films"][film]["counts"] == rec["counts"]
    assert not (corpus / ".work").exists()
    assert not list(corpus.rglob(".tmp-*"))


def test_letterbox_is_cropped(corpus, library):
    lb = truth_of(library, "film_tab")["letterbox_px"]
    assert lb > 0
    for s in samples_of(corpus, "film_tab"):
        meta = json.loads(s["json"])
        _, y, _, h = meta["crop"]
        assert lb <= y <= lb + 2 and y + h >= meta["view_size"][1] - lb - 2
        assert decode_jpeg(s["jpg"])[:2].mean() > 30  # no black rows left at the top


def test_rerun_changes_no_byte(corpus, library):
    before = tree_digest(corpus)
    mtimes = {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()}
    report = extract([str(library / "library.json")], corpus, workers=0, progress=False)
    assert report.exit_code == 0
    assert tree_digest(corpus) == before
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*") if p.is_file()} == mtimes


def test_resume_after_a_lost_film_gives_identical_corpus(corpus, library, tmp_path):
    """Simulate a crash mid-run: one film unassembled, one unit staged, a stray temp file."""
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(corpus, copy)
    for p in copy.glob("films/film_tab*"):
        p.unlink()
    for p in copy.glob("shards/film_tab-*"):
        p.unlink()
    (copy / "shards" / ".tmp-film_tab-00000.tar.x").write_bytes(b"half a shard")
    (copy / "manifest.json").unlink()
    report = extract([str(library / "library.json")], copy, workers=0, progress=False)
    assert report.exit_code == 0
    assert tree_digest(copy) == tree_digest(corpus)


def test_layouts_give_the_same_disparity(tmp_path):
    """One scene written in every layout: the labels agree (half layouts within resolution)."""
    spec = FilmSpec(shots=(ShotSpec("textured", 30, seed=5),), seed=11)
    lib = tmp_path / "lib"
    lib.mkdir()
    films = []
    for layout in synth.LAYOUTS:
        synth.write_film(spec, lib / (f"same_{layout}" + ("" if layout == "separate" else ".mp4")),
                         layout)
        entry = {"name": f"same_{layout}", "layout": layout}
        if layout == "separate":
            entry.update(left=f"same_{layout}_left.mp4", right=f"same_{layout}_right.mp4")
        else:
            entry["path"] = f"same_{layout}.mp4"
        films.append(entry)
    (lib / "library.json").write_text(json.dumps({"format": "filmmine-library/1",
                                                  "films": films}))
    out = tmp_path / "out"
    report = extract([str(lib / "library.json")], out, workers=0, progress=False)
    assert report.exit_code == 0, report.summary()
    disp = {}
    for layout in synth.LAYOUTS:
        for s in samples_of(out, f"same_{layout}"):
            meta = json.loads(s["json"])
            disp[layout, meta["frame_index"]] = decode_disparity(
                s["disp.png"], meta["disp_scale"], meta["disp_offset"])
    frames = sorted({f for (lay, f) in disp if lay == "sbs"})
    assert len(frames) >= 3
    for layout in synth.LAYOUTS:
        for f in frames:
            a, b = disp["sbs", f], disp[layout, f]
            both = np.isfinite(a) & np.isfinite(b)
            assert both.mean() > 0.75
            tol = 0.25 if layout in ("sbs", "tab", "separate") else 0.5
            assert float(np.median(np.abs(a - b)[both])) <= tol, (layout, f)


def test_bad_inputs_get_one_line_reasons_and_the_rest_is_mined(library, tmp_path):
    lib = tmp_path / "mixed lib é"
    lib.mkdir()
    good = lib / "good film.mp4"
    spec = FilmSpec(shots=(ShotSpec("textured", 30, seed=2),), seed=3)
    synth.write_film(spec, good, "sbs")
    (lib / "good film.mp4.truth.json").unlink()
    (lib / "empty.mp4").write_bytes(b"")
    (lib / "noise.mkv").write_bytes(np.random.default_rng(0).bytes(50_000))
    (lib / "notes.txt").write_text("not a film")
    # a single view: a 2D video
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=24:duration=2", "-pix_fmt", "yuv420p",
                    str(lib / "mono.mp4")], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1",
                    str(lib / "audio_only.mp4")], check=True)
    manifest = tmp_path / "lib.json"
    manifest.write_text(json.dumps({"films": [
        {"name": "lonely", "left": str(good), "right": str(lib / "missing_right.mp4")}]}))
    out = tmp_path / "out"
    report = extract([str(lib), str(manifest), str(tmp_path / "nope.mp4")], out, workers=0,
                     progress=False)
    by_src = {Path(i.source.split("#")[0]).name + ("#" + i.source.split("#")[1]
              if "#" in i.source else ""): i for i in report.inputs}
    assert by_src["good film.mp4"].status == "ok"
    assert report.records["good_film"]["counts"]["accepted"] > 0
    expect = {
        "empty.mp4": ("failed", "empty file"),
        "noise.mkv": ("failed", "not a readable video"),
        "notes.txt": ("skipped", "not a video file"),
        "mono.mp4": ("skipped", "mono"),
        "audio_only.mp4": ("failed", "no video stream"),
        "lib.json#lonely": ("failed", "missing file"),
        "nope.mp4": ("failed", "no such file"),
    }
    for src, (status, text) in expect.items():
        got = by_src[src]
        assert got.status == status, (src, got)
        assert text in got.reason and "\n" not in got.reason, (src, got)
    assert report.exit_code == 1
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["inputs"]) == len(report.inputs)


def test_a_truncated_mp4_fails_with_a_reason_naming_the_missing_index(tmp_path):
    """An mp4 cut short loses its moov index (written at the end): ffprobe's last line says
    only "Invalid data found when processing input"; the report, the manifest and the
    end-of-run summary say what is wrong."""
    spec = FilmSpec(shots=(ShotSpec("textured", 24, seed=1),), seed=1)
    film = tmp_path / "full.mp4"
    synth.write_film(spec, film, "sbs")
    data = film.read_bytes()
    (tmp_path / "lib").mkdir()
    half = tmp_path / "lib" / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    report = extract([str(half)], tmp_path / "out", workers=0, progress=False)
    want = "not a readable video: truncated or unfinished MP4: no index (moov atom not found)"
    [got] = report.inputs
    assert (got.status, got.reason) == ("failed", want)
    assert report.exit_code == 1
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [i["reason"] for i in man["inputs"]] == [want]
    lines = report.summary().splitlines()
    assert lines[0] == f"  failed  {half}: {want}"


def test_the_summary_of_a_large_library_lists_what_needs_a_look(tmp_path):
    """The end-of-run summary has a line for each input that failed, was skipped or was
    mined with a note; plain ok films get a line each in a small run and one line in all in
    a large one (a library of thousands), the totals last."""
    from filmmine.run.report import SUMMARY_OK_LINES, InputState, InputStatus, RunReport

    def report(n_ok: int) -> RunReport:
        r = RunReport(tmp_path / "out")
        counts = {"accepted": 3, "candidates": 4, "shots": 2}
        for k in range(n_ok):
            r.inputs.append(InputStatus(f"/lib/f{k:02d}.mp4", f"f{k:02d}", [], InputState.OK))
            r.records[f"f{k:02d}"] = {"counts": counts, "shards": ["x"]}
        r.inputs[0].reason = "truncated: 2 s of 9 s decoded"
        r.inputs += [InputStatus("/lib/bad.mp4", "bad", [], InputState.FAILED,
                                 "not a readable video"),
                     InputStatus("/lib/mono.mp4", "mono", [], InputState.SKIPPED, "2D")]
        return r

    small = report(SUMMARY_OK_LINES - 2).summary().splitlines()
    assert len(small) == SUMMARY_OK_LINES + 1
    assert small[1] == "  ok      /lib/f01.mp4: 3 samples from 4 candidates, 2 shots"
    large = report(500).summary().splitlines()
    out = tmp_path / "out"
    assert large == [
        "  ok      /lib/f00.mp4: 3 samples from 4 candidates, 2 shots - truncated: 2 s of 9 s "
        "decoded",
        "  failed  /lib/bad.mp4: not a readable video",
        "  skipped /lib/mono.mp4: 2D",
        f"  ok      499 film(s) without a note: per film in {out / 'manifest.json'} and "
        f"`filmmine inspect {out}`",
        f"500 film(s) mined, 1500 samples in 500 shard(s), 1 failed -> {out}"]


def test_cli_extract_exit_codes_and_missing_ffmpeg(tmp_path):
    spec = FilmSpec(shots=(ShotSpec("textured", 24, seed=1),), seed=1)
    film = tmp_path / "f.mp4"
    synth.write_film(spec, film, "half-sbs")
    log = tmp_path / "run.jsonl"
    cmd = [sys.executable, "-m", "filmmine.cli", "extract", str(film), "--out",
           str(tmp_path / "o"), "--workers", "0", "--quiet", "--log-jsonl", str(log)]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "1 film(s) mined" in ok.stdout
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "probed", "unit", "film", "end"]
    assert events[1]["layout"] == "half-sbs" and events[1]["frames"] == 24
    assert events[-1]["totals"]["samples"] == events[3]["counts"]["accepted"]
    env = dict(os.environ, FILMMINE_FFMPEG=str(tmp_path / "no-ffmpeg"))
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "FILMMINE_FFMPEG" in bad.stderr
    failed = subprocess.run([*cmd[:4], str(tmp_path / "missing.mp4"), *cmd[5:]],
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "no such file" in failed.stdout


def test_outputs_match_the_documented_schemas(corpus, library):
    import jsonschema

    docs = Path(__file__).resolve().parents[1] / "manifests"

    def schema(name):
        return json.loads((docs / name).read_text())

    jsonschema.validate(json.loads((corpus / "manifest.json").read_text()),
                        schema("manifest.schema.json"))
    jsonschema.validate(json.loads((library / "library.json").read_text()),
                        schema("library.schema.json"))
    jsonschema.validate(json.loads((docs / "example-library.json").read_text()),
                        schema("library.schema.json"))
    sample_schema = schema("sample.schema.json")
    for s in samples_of(corpus, "film_half-tab"):
        jsonschema.validate(json.loads(s["json"]), sample_schema)


def test_films_split_into_work_units_lose_and_repeat_nothing(library, tmp_path):
    """chunk_s = 4 s: the 14 s film becomes 4 units, decoded with context at each seam."""
    recipe = tmp_path / "units.toml"
    recipe.write_text('base = "default"\n[decode]\nchunk_s = 4.0\n')
    out = tmp_path / "out"
    lib = json.loads((library / "library.json").read_text())
    entry = next(f for f in lib["films"] if f["name"] == "film_sbs")
    report = extract([str(library / entry["path"])], out, layout="sbs", recipe=recipe,
                     workers=2, progress=False)
    assert report.exit_code == 0, report.summary()
    rec = report.records["film_sbs"]
    truth = truth_of(library, "film_sbs")
    spec = FilmSpec.from_json(truth["spec"])
    assert rec["units"] == 4
    assert rec["cuts"] == pytest.approx(truth["cuts"], abs=1)
    rows = pq.read_table(out / "frames.parquet").to_pylist()
    assert [r["frame_index"] for r in rows] == list(range(0, truth["n_frames"], 6))
    got = samples_of(out, "film_sbs")
    keys = [s["__key__"] for s in got]
    assert len(keys) == len(set(keys)) == rec["counts"]["accepted"] >= 15
    for s in got:
        assert_label_matches_truth(spec, s)


def test_a_lone_film_is_split_to_fill_the_workers(library, tmp_path):
    """Default recipe (30 s units, min_chunk_s 5): the 14 s film alone on two worker processes
    is cut into two 7 s units, so that both work; on one worker it stays one unit. The same
    shard bytes and candidate rows either way."""
    lib = json.loads((library / "library.json").read_text())
    entry = next(f for f in lib["films"] if f["name"] == "film_sbs")
    got = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        report = extract([str(library / entry["path"])], out, layout="sbs", workers=workers,
                         progress=False)
        assert report.exit_code == 0, report.summary()
        assert report.records["film_sbs"]["units"] == workers
        (shard,) = sorted((out / "shards").glob("film_sbs-*.tar"))
        got[workers] = (shard.read_bytes(), pq.read_table(out / "frames.parquet").to_pylist())
    assert got[1] == got[2]


def test_the_unit_plan_follows_the_command_not_an_earlier_runs_progress(library, tmp_path):
    """The units a film gets depend on the films named, mined before or not: two 14 s films on
    two workers get one unit each (two films fill two workers), also when the first was mined
    by an earlier run, so a rerun after a crash plans the units the first run staged."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("a", "b"):
        shutil.copy(library / "film_sbs.mp4", lib / f"{name}.mp4")
    out = tmp_path / "out"
    first = extract([str(lib / "a.mp4")], out, layout="sbs", workers=2, progress=False)
    assert first.records["a"]["units"] == 2                  # alone: split to fill the workers
    again = extract([str(lib / "a.mp4"), str(lib / "b.mp4")], out, layout="sbs", workers=2,
                    progress=False)
    assert again.exit_code == 0, again.summary()
    assert again.records["b"]["units"] == 1


def test_batched_disparity_gives_the_same_samples_and_rows(corpus, library, tmp_path):
    """[disparity] batch = 5 (one flow call for 5 candidates, as on a GPU worker): the same
    shard bytes and the same rows, in the same order, as one pair per call."""
    recipe = tmp_path / "batched.toml"
    recipe.write_text('base = "default"\nname = "batched"\n[disparity]\nbatch = 5\n')
    lib = json.loads((library / "library.json").read_text())
    film = next(f for f in lib["films"] if f["name"] == "film_sbs")
    out = tmp_path / "c"
    report = extract([str(library / film["path"])], out, layout="sbs", recipe=str(recipe),
                     workers=0, progress=False)
    assert report.exit_code == 0, report.summary()
    (ours,) = sorted((out / "shards").glob("film_sbs-*.tar"))
    (ref,) = sorted((corpus / "shards").glob("film_sbs-*.tar"))
    assert ours.read_bytes() == ref.read_bytes()
    rows = pq.read_table(out / "frames.parquet").to_pylist()
    ref_rows = [r for r in pq.read_table(corpus / "frames.parquet").to_pylist()
                if r["film"] == "film_sbs"]
    assert rows == ref_rows
    assert sum(r["stage"] == "disparity" for r in rows) == 5      # the vertical shot


def _one_unit_and_split(tmp_path: Path, film: Path, chunk_s: float,
                        recipe_extra: str = "") -> dict[str, tuple[dict, Path]]:
    """The film mined as one work unit ("one") and cut into units of ``chunk_s`` seconds
    ("split"), in-process: each run's film record and corpus directory."""
    runs = {}
    for name, chunk in (("one", 0.0), ("split", chunk_s)):
        recipe = tmp_path / f"{name}.toml"
        recipe.write_text(f'base = "default"\n[decode]\nchunk_s = {chunk}\n' + recipe_extra)
        out = tmp_path / name
        report = extract([str(film)], out, layout="sbs", recipe=recipe, workers=0,
                         progress=False)
        assert report.exit_code == 0, report.summary()
        runs[name] = (report.records[film.stem], out)
    return runs


def _film_digest(out: Path, film: str) -> tuple[list[str], dict[str, str], list[dict]]:
    """Sample keys in shard order, each sample's members hashed, and the candidate rows."""
    samples = samples_of(out, film)
    members = {s["__key__"] + "." + k: hashlib.sha256(v).hexdigest()
               for s in samples for k, v in s.items() if not k.startswith("__")}
    rows = [r for r in pq.read_table(out / "frames.parquet").to_pylist() if r["film"] == film]
    return [s["__key__"] for s in samples], members, rows


def test_vfr_film_split_into_units_gives_the_samples_of_one_unit(tmp_path):
    """Several timestamp gaps (dropped frames, one of two in a row): cut into 4 work units
    (recipe decode.chunk_s), the film gives byte-identical samples, keys and candidate rows
    to a single-unit run, and the keys are the frames' indices in the film."""
    spec = FilmSpec(shots=(ShotSpec("textured", 40, seed=21), ShotSpec("textured", 40, seed=22),
                           ShotSpec("textured", 40, seed=23)), view_width=320, view_height=180,
                    seed=9)
    synth.write_film(spec, tmp_path / "src.mp4", "sbs")
    dropped = (13, 37, 38, 61, 90)
    expr = "+".join(f"eq(n\\,{n})" for n in dropped)
    lib = tmp_path / "lib"
    lib.mkdir()
    film = lib / "vfr.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(tmp_path / "src.mp4"),
                    "-vf", f"select='not({expr})'", "-fps_mode", "passthrough", "-c:v", "libx264",
                    "-crf", "12", "-g", "24", str(film)], check=True)
    kept = [i for i in range(synth.n_frames(spec)) if i not in dropped]
    got = {}
    for name, (rec, out) in _one_unit_and_split(tmp_path, film, 1.25).items():
        assert rec["units"] == (1 if name == "one" else 4)
        assert rec["counts"]["frames"] == rec["counts"]["decoded"] == len(kept)
        assert rec["reason"] is None
        got[name] = _film_digest(out, "vfr")
    keys, members, rows = got["one"]
    assert len(keys) >= 10
    assert got["split"][0] == keys
    assert got["split"][1] == members
    # every field, frozen_diff included: a unit's first candidate is compared with the shot's
    # previous candidate, decoded in the unit's context
    diff = [(a["frame_index"], k) for a, b in zip(got["split"][2], rows, strict=True)
            for k in a if a[k] != b[k]]
    assert diff == [], diff
    seams = [r for r in rows if r["frame_index"] in (30, 60, 90)]     # units of 30 frames
    assert all(r["frozen_diff"] is not None for r in seams if r["stage"] != "sampling"), seams
    assert [r["frame_index"] for r in rows] == list(range(0, len(kept), 6))
    # pts_s is the frame's own timestamp, not frame_index / fps (off by up to 5 frames here)
    fps = spec.fps
    assert all(abs(r["pts_s"] - kept[r["frame_index"]] / fps) < 1e-5 for r in rows), rows
    assert any(kept[r["frame_index"]] != r["frame_index"] for r in rows)
    # index i is the i-th kept frame: its picture is the one rendered for frame kept[i]
    for s in samples_of(tmp_path / "split", "vfr"):
        meta = json.loads(s["json"])
        assert abs(meta["pts_s"] - kept[meta["frame_index"]] / fps) < 1e-5, meta
        left, _, _ = synth.render_frame(spec, kept[meta["frame_index"]])
        x, y, w, h = meta["crop"]
        view = left[y : y + h, x : x + w]
        if [w, h] != meta["size"]:
            view = cv2.resize(view, tuple(meta["size"]), interpolation=cv2.INTER_AREA)
        err = float(np.abs(decode_jpeg(s["jpg"]).astype(np.float32) - view).mean())
        assert err < 6.0, (meta["key"], err)


def test_shot_quota_counts_the_whole_shot_across_work_units(tmp_path):
    """sampling.max_per_shot caps a shot's samples even when the shot spans several work
    units (each unit only sees its own candidates): a split run gives the samples and rows of
    a single-unit run."""
    spec = FilmSpec(shots=(ShotSpec("textured", 60, seed=31), ShotSpec("textured", 60, seed=32)),
                    view_width=320, view_height=180, seed=3)
    lib = tmp_path / "lib"
    lib.mkdir()
    synth.write_film(spec, lib / "quota.mp4", "sbs")
    got = {}
    runs = _one_unit_and_split(tmp_path, lib / "quota.mp4", 1.0, "[sampling]\nmax_per_shot = 2\n")
    for name, (rec, out) in runs.items():
        assert rec["units"] == (1 if name == "one" else 5)
        got[name] = _film_digest(out, "quota")
    keys, members, rows = got["one"]
    sampled = Counter(r["shot_index"] for r in rows if r["stage"] != "sampling")
    assert sampled == {0: 2, 1: 2}, rows
    assert sum(r["reason"] == "shot_quota" for r in rows) >= 4
    assert got["split"][0] == keys and got["split"][1] == members
    assert got["split"][2] == rows


def _truncated_film(tmp_path: Path) -> Path:
    """A 120-frame mkv whose last 40 % of bytes are lost (about 60 frames decode)."""
    spec = FilmSpec(shots=(ShotSpec("textured", 40, seed=21), ShotSpec("textured", 40, seed=22),
                           ShotSpec("textured", 40, seed=23)), view_width=320, view_height=180,
                    seed=9)
    synth.write_film(spec, tmp_path / "src.mp4", "sbs")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(tmp_path / "src.mp4"),
                    "-c", "copy", str(tmp_path / "full.mkv")], check=True)
    data = (tmp_path / "full.mkv").read_bytes()
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "cut.mkv").write_bytes(data[: int(len(data) * 0.6)])
    return lib / "cut.mkv"


def test_a_truncated_films_record_and_manifest_are_deterministic(tmp_path):
    """The reason of a film that stopped early quotes ffmpeg's message, which names a memory
    address (`[matroska,webm @ 0x55...]`, different in every process): two runs gave
    different film records and manifests."""
    film = _truncated_film(tmp_path)
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        report = extract([str(film)], out, layout="sbs", workers=0, progress=False)
        assert report.exit_code == 0, report.summary()
        assert report.records["cut"]["reason"].startswith("decoded ")
    for name in ("films/cut.json", "manifest.json"):
        assert (outs[0] / name).read_text() == (outs[1] / name).read_text(), name


def test_a_truncated_film_split_into_units_is_mined_like_one_unit(tmp_path):
    """Work units that lie wholly past the end of a truncated file decode nothing: the film
    must still be mined as in a single-unit run (same samples, rows, counts and reason), not
    failed with 'no frame decoded'."""
    film = _truncated_film(tmp_path)
    got = {}
    for name, (rec, out) in _one_unit_and_split(tmp_path, film, 0.5).items():
        assert rec["units"] == (1 if name == "one" else 10)
        got[name] = (rec["counts"], rec["reason"], *_film_digest(out, "cut"))
    counts, reason, keys, _, _ = got["one"]
    assert counts["decoded"] < counts["frames"] and len(keys) >= 5
    assert reason.startswith(f"decoded {counts['decoded']} of {counts['frames']} frames (")
    assert got["split"] == got["one"]


@pytest.mark.parametrize("stored", ["older", "unreadable"])
def test_a_corpus_whose_recipe_differs_or_cannot_be_read_is_not_mixed_into(tmp_path, stored):
    """A rerun into a corpus made with another recipe is refused. recipe.toml was merged over
    the current defaults before comparing, so a corpus from a version without a key (e.g.
    output.confidence: no KEY.conf.png) passed as made with today's recipe, and an unreadable
    recipe.toml was silently replaced: new films were mixed into a corpus of other outputs."""
    from filmmine.errors import RecipeError

    spec = FilmSpec(shots=(ShotSpec("textured", 24, seed=1),), view_width=320,
                    view_height=180, seed=1)
    for name in ("a", "b"):
        synth.write_film(spec, tmp_path / f"{name}.mp4", "sbs")
    out = tmp_path / "out"
    assert extract([str(tmp_path / "a.mp4")], out, layout="sbs", workers=0,
                   progress=False).exit_code == 0
    recipe = out / "recipe.toml"
    text = recipe.read_text()
    if stored == "older":
        assert "\nconfidence = true\n" in text
        text = text.replace("\nconfidence = true\n", "\n")
    else:
        text = text.replace("[output]", "[output")
    recipe.write_text(text)
    with pytest.raises(RecipeError, match="recipe"):
        extract([str(tmp_path / "b.mp4")], out, layout="sbs", workers=0, progress=False)
    assert recipe.read_text() == text
    assert not (out / "films" / "b.json").exists()


def test_film_ids_are_distinct_when_a_suffixed_id_is_taken(tmp_path):
    """Later duplicates of an id get a numeric suffix; 'a.mkv' became 'a-2', the id of
    'a-2.mp4' beside it: two films with one id (shards and records overwrite each other, and
    extract crashed with KeyError 'probe-a-2-0-...' on the duplicate Dask key)."""
    from filmmine.media.inputs import path_tag, resolve_inputs

    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("a-2.mp4", "a.mkv", "a.mp4"):
        (lib / name).write_bytes(b"x")
    manifest = tmp_path / "lib.json"
    manifest.write_text(json.dumps({"films": [{"name": "b", "path": "lib/a.mp4"},
                                              {"name": "b", "path": "lib/a.mkv"},
                                              {"name": "b-2", "path": "lib/a-2.mp4"}]}))
    for inputs in ([str(lib)], [str(manifest)]):
        films, issues = resolve_inputs(inputs, "sbs")
        assert issues == [] and len(films) == 3
        names = [f.name for f in films]
        assert len(set(names)) == 3, names
    # the bare name to the first by path (a.mkv), the other its files' tag
    tag = path_tag((str(lib / "a.mp4"),))
    assert [f.name for f in resolve_inputs([str(lib)], "sbs")[0]] == ["a-2", "a", f"a-{tag}"]


def test_film_ids_do_not_depend_on_the_rest_of_the_command(tmp_path):
    """`a/film.mp4 b/film.mp4` made `film-2` of b, and a later `b/film.mp4` alone failed
    "already in ... from a/film.mp4". Ids now come from the corpus and the files: b's is the
    same in either order and alone, and the manifest keeps every input of earlier runs."""
    from filmmine.media.inputs import path_tag, resolve_inputs

    spec = FilmSpec(shots=(ShotSpec("textured", 24, seed=1),), view_width=320,
                    view_height=180, seed=1)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        synth.write_film(spec, tmp_path / d / "film.mp4", "sbs")
    a, b = str(tmp_path / "a" / "film.mp4"), str(tmp_path / "b" / "film.mp4")
    ids = {tuple(f.name for f in resolve_inputs(cmd, "sbs")[0]) for cmd in ([a, b], [b, a])}
    tag = path_tag((b,))
    assert ids == {("film", f"film-{tag}"), (f"film-{tag}", "film")}
    out = tmp_path / "out"
    first = extract([a, b], out, layout="sbs", workers=0, progress=False)
    assert first.exit_code == 0, first.summary()
    again = extract([b], out, layout="sbs", workers=0, progress=False)
    assert again.exit_code == 0, again.summary()
    assert [(i.film, i.status) for i in again.inputs] == [(f"film-{tag}", "ok")]
    man = json.loads((out / "manifest.json").read_text())
    assert sorted((i["source"], i["film"], i["status"]) for i in man["inputs"]) == \
        sorted([(a, "film", "ok"), (b, f"film-{tag}", "ok")])
    # named twice on one command line: mined once
    assert len(resolve_inputs([a, a], "sbs")[0]) == 1


def test_a_rerun_on_a_smaller_cluster_keeps_the_staged_units(library, tmp_path, monkeypatch):
    """A run on two slots cuts a lone 14 s film into two units, stages both and dies before
    the assembly; the rerun on one slot would cut it into one unit, but keeps the first run's
    plan (``.work/FILM/plan.json``): it mines nothing again and gives a clean run's bytes."""
    import filmmine.run.extract as run_extract
    import filmmine.run.scheduler as scheduler
    import filmmine.run.unit as run_unit

    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(library / "film_sbs.mp4", lib / "a.mp4")
    film, out = str(lib / "a.mp4"), tmp_path / "out"

    def no_assembly(*args, **kwargs):
        raise RuntimeError("the run died before the assembly")

    with monkeypatch.context() as m:
        m.setattr(run_extract, "unit_slots", lambda client, device: 2)
        m.setattr(scheduler, "assemble_film", no_assembly)
        first = extract([film], out, layout="sbs", workers=0, progress=False)
    assert first.exit_code == 1, first.summary()
    assert len(list((out / ".work" / "a").glob("unit-*.json"))) == 2
    mined = []
    real_miner = run_unit.UnitMiner

    def counting_miner(probe, unit, *args, **kwargs):
        mined.append(unit.index)
        return real_miner(probe, unit, *args, **kwargs)

    monkeypatch.setattr(run_unit, "UnitMiner", counting_miner)
    again = extract([film], out, layout="sbs", workers=0, progress=False)   # one slot
    assert again.exit_code == 0, again.summary()
    assert again.records["a"]["units"] == 2 and mined == []
    assert not (out / ".work").exists()
    clean = tmp_path / "clean"
    assert extract([film], clean, layout="sbs", workers=0, progress=False).records["a"][
        "units"] == 1
    for name in ("shards/a-00000.tar", "films/a.frames.parquet", "films/a.samples.parquet"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


def test_a_run_that_mined_nothing_binds_no_recipe_and_a_mismatch_names_both(tmp_path):
    """A first run that mined nothing (a typo in the path) leaves no film and no staged unit:
    the next run with another recipe mines into it. Once a film is in, another recipe is
    refused with both recipes named and the keys that differ."""
    from filmmine.errors import RecipeError

    spec = FilmSpec(shots=(ShotSpec("textured", 24, seed=1),), view_width=320,
                    view_height=180, seed=1)
    synth.write_film(spec, tmp_path / "a.mp4", "sbs")
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 100)
    out = tmp_path / "out"
    typo = extract([str(tmp_path / "a.mpp")], out, layout="sbs", workers=0, progress=False)
    assert typo.exit_code == 1 and not out.exists()   # nothing to mine: nothing written
    broken = extract([str(tmp_path / "broken.mp4")], out, layout="sbs", workers=0,
                     progress=False)
    assert broken.exit_code == 1 and (out / "recipe.toml").is_file()
    report = extract([str(tmp_path / "a.mp4")], out, layout="sbs", recipe="preview",
                     workers=0, progress=False)
    assert report.exit_code == 0, report.summary()
    assert 'name = "preview"' in (out / "recipe.toml").read_text()
    with pytest.raises(RecipeError) as e:
        extract([str(tmp_path / "a.mp4")], out, layout="sbs", workers=0, progress=False)
    msg = str(e.value)
    assert "made with recipe 'preview' (" in msg and "not 'default' (" in msg, msg
    assert "decode.lowres_width 128 -> 160, output.jpeg_quality 90 -> 95" in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("what", ["empty", "no videos", "missing"])
def test_nothing_to_mine_says_so_and_writes_nothing(tmp_path, what):
    """An empty directory, one without videos, or a path that is not there: one line per
    input ("no videos found in DIR"), exit 1, and no corpus directory."""
    import subprocess
    import sys

    lib = tmp_path / "lib"
    if what != "missing":
        lib.mkdir()
    if what == "no videos":
        (lib / "notes.txt").write_text("x")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "filmmine.cli", "extract", str(lib), "--out",
                           str(out), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    want = "no such file or directory" if what == "missing" else f"no videos found in {lib}"
    assert f"failed  {lib}: {want}" in done.stdout, done.stdout
    assert done.stdout.strip().splitlines()[-1] == f"nothing to mine: {out} not written"
    assert not out.exists()


def test_extract_set_overrides_a_recipe_key(tmp_path):
    """`extract --set sampling.fps=1`: a quarter of the default's candidates, the value in
    OUT/recipe.toml; an unknown key or a bad value stops before anything starts (exit 2)."""
    import subprocess
    import sys

    spec = FilmSpec(shots=(ShotSpec("textured", 48, seed=1),), view_width=320,
                    view_height=180, seed=1)
    synth.write_film(spec, tmp_path / "f.mp4", "sbs")

    def run(out: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "filmmine.cli", "extract",
                               str(tmp_path / "f.mp4"), "--layout", "sbs", "--out",
                               str(tmp_path / out), "--workers", "0", "--quiet", *extra],
                              capture_output=True, text=True)

    assert run("base").returncode == 0
    done = run("slow", "--set", "sampling.fps=1", "--set", "output.jpeg_quality=80")
    assert done.returncode == 0, done.stderr
    base = json.loads((tmp_path / "base" / "manifest.json").read_text())["totals"]
    slow = json.loads((tmp_path / "slow" / "manifest.json").read_text())["totals"]
    assert slow["candidates"] * 4 == base["candidates"]
    rec = tomllib.loads((tmp_path / "slow" / "recipe.toml").read_text())
    assert rec["sampling"]["fps"] == 1 and rec["output"]["jpeg_quality"] == 80
    for bad, says in (("sampling.nope=1", "unknown recipe key sampling.nope"),
                      ("sampling.fps=fast", "sampling.fps must be a number, got 'fast'"),
                      ("fps=1", "--set wants TABLE.KEY=VALUE")):
        done = run("bad", "--set", bad)
        assert done.returncode == 2 and says in done.stderr, (bad, done.stderr)
        assert not (tmp_path / "bad").exists()


def test_damaged_or_redone_films_are_mined_again_in_place(corpus, library, tmp_path):
    """A shard cut short (or deleted), or flipped in place where `verify` found it: the next
    extract of the same command mines that film again and the corpus is a clean run's, byte
    for byte. Before, a rerun reported "0 failed" and kept the damage. `--redo FILM` mines a
    sound film again; a name that is no film of the command stops before anything starts."""
    from filmmine.errors import UsageError
    from filmmine.tools.verify import verify_corpus

    lib = [str(library / "library.json")]
    copy = tmp_path / "c"
    shutil.copytree(corpus, copy)
    clean = tree_digest(copy)
    tab = sorted((copy / "shards").glob("film_tab-*.tar"))[0]
    tab.write_bytes(tab.read_bytes()[:-1000])
    again = extract(lib, copy, workers=0, progress=False)
    assert again.exit_code == 0 and set(again.remined) == {"film_tab"}, again.summary()
    assert f"mined again (shard {tab.name} holds" in again.summary()
    assert tree_digest(copy) == clean

    sbs = sorted((copy / "shards").glob("film_sbs-*.tar"))[0]
    data = bytearray(sbs.read_bytes())
    data[len(data) // 2] ^= 0xFF     # same size: only a hash finds it
    sbs.write_bytes(bytes(data))
    assert extract(lib, copy, workers=0, progress=False).remined == {}
    assert not verify_corpus(copy, decode=False).ok
    again = extract(lib, copy, workers=0, progress=False)
    assert again.remined == {"film_sbs": f"shard {sbs.name} is damaged (its sha256 is not "
                                         "its record's)"}, again.summary()
    assert verify_corpus(copy, decode=False).ok
    assert tree_digest(copy) == clean   # the clean verify took its list of bad shards away

    (copy / "shards" / "film_sbs-00099.tar").write_bytes(b"left by an earlier mining")
    redo = extract(lib, copy, workers=0, progress=False, redo=["film_sbs"])
    assert redo.remined == {"film_sbs": "--redo"}, redo.summary()
    assert tree_digest(copy) == clean
    with pytest.raises(UsageError, match="--redo nope: no film of this command"):
        extract(lib, copy, workers=0, progress=False, redo=["nope"])
    assert tree_digest(copy) == clean


def test_quick_trials_mine_the_first_films_and_seconds(tmp_path):
    """`--limit 1 --max-duration 2`: one film of two, its first 2 s of 6 (48 of 144 frames),
    each said in the summary; the corpus takes only trial runs (the recipe key); a later run
    with a larger limit mines on, and the trial's samples are a full run's first ones."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for i, name in enumerate(("a", "b")):
        spec = FilmSpec(shots=(ShotSpec("textured", 144, seed=i),), view_width=320,
                        view_height=180, seed=i)
        synth.write_film(spec, lib / f"{name}.mp4", "sbs")

    def run(out: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "filmmine.cli", "extract", str(lib),
                               "--layout", "sbs", "--out", str(tmp_path / out), "--workers",
                               "0", "--quiet", *extra], capture_output=True, text=True)

    done = run("trial", "--limit", "1", "--max-duration", "2")
    assert done.returncode == 0, done.stderr
    assert f"skipped {lib / 'b.mp4'}: --limit 1" in done.stdout, done.stdout
    assert "mined its first 2.0 s of 6.0 s (decode.max_duration_s)" in done.stdout
    man = json.loads((tmp_path / "trial" / "manifest.json").read_text())
    assert list(man["films"]) == ["a"], man["films"]
    assert man["films"]["a"]["counts"]["frames"] == 48
    done = run("trial", "--max-duration", "2")
    assert done.returncode == 0, done.stderr
    assert len(json.loads((tmp_path / "trial" / "manifest.json").read_text())["films"]) == 2
    refused = run("trial")
    assert refused.returncode == 2 and "decode.max_duration_s 2.0 -> 0.0" in refused.stderr
    assert run("full").returncode == 0
    trial = pq.read_table(tmp_path / "trial" / "samples.parquet").to_pylist()
    full = pq.read_table(tmp_path / "full" / "samples.parquet").to_pylist()
    assert trial and all(r["frame_index"] < 48 for r in trial)
    assert trial == [r for r in full if r["frame_index"] < 48]
    assert run("x", "--limit", "0").returncode == 2


def test_a_wrong_layout_is_named_in_the_summary(tmp_path):
    """A top-bottom film mined as --layout sbs: the summary says the halves disagree, beside
    the rejections it leads to."""
    spec = FilmSpec(shots=(ShotSpec("textured", 24, seed=1),), view_width=320,
                    view_height=180, seed=1)
    synth.write_film(spec, tmp_path / "f.mp4", "tab")
    report = extract([str(tmp_path / "f.mp4")], tmp_path / "out", layout="sbs", workers=0,
                     progress=False)
    line = next(ln for ln in report.summary().splitlines() if "f.mp4" in ln)
    assert "layout from --layout, but its halves are alike tab (r=" in line, line
    assert ": check --layout" in line and "no samples:" in line, line
    right = extract([str(tmp_path / "f.mp4")], tmp_path / "ok", layout="tab", workers=0,
                    progress=False)
    assert "layout from" not in right.summary() and right.records["f"]["counts"]["accepted"]


def test_parquet_columns_carry_their_descriptions(corpus):
    """Every column of the corpus tables and the films' own says what it is in the Parquet
    schema's field metadata, for a reader of the file alone (DuckDB, pandas)."""
    from filmmine.corpus.schema import FRAMES_SCHEMA, SAMPLES_SCHEMA, describe

    for name, schema in (("samples", SAMPLES_SCHEMA), ("frames", FRAMES_SCHEMA)):
        for path in (corpus / f"{name}.parquet", *(corpus / "films").glob(f"*.{name}.parquet")):
            said = describe(pq.read_schema(path))
            assert list(said) == schema.names, path
            assert all(len(d) > 10 for d in said.values()), (path, said)
    said = describe(pq.read_schema(corpus / "frames.parquet"))
    assert said["motion"].startswith("99th percentile over 16 px blocks")
