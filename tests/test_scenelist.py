"""Scene lists: a film's shots from PySceneDetect's CSV or an EDL instead of the detector."""

from __future__ import annotations

import itertools
import json

import pyarrow.parquet as pq
import pytest

from filmmine import synth
from filmmine.errors import InputError
from filmmine.media.scenelist import parse_csv, parse_edl, read_scene_list
from filmmine.run.extract import extract
from filmmine.synth import FilmSpec, ShotSpec

EDL = """TITLE: film
FCM: NON-DROP FRAME

001  AX       V     C        00:00:00:00 00:00:01:00 01:00:00:00 01:00:01:00
* FROM CLIP NAME: film.mp4
002  AX       V     C        00:00:01:00 00:00:02:12 01:00:01:00 01:00:02:12
003  AX       V     C        00:00:02:12 00:00:04:00 01:00:02:12 01:00:04:00
"""


def scenedetect_csv(starts: list[int], n_frames: int, fps: float) -> str:
    """A scene list as PySceneDetect's own writer writes it (its CSV, cut-list row first)."""
    import io

    from scenedetect.frame_timecode import FrameTimecode
    from scenedetect.scene_manager import write_scene_list

    bounds = [*starts, n_frames]
    scenes = [(FrameTimecode(a, fps), FrameTimecode(b, fps))
              for a, b in itertools.pairwise(bounds)]
    buf = io.StringIO()
    write_scene_list(buf, scenes)
    return buf.getvalue()


def test_parsers_give_the_shot_starts_as_frame_indices():
    assert parse_csv(scenedetect_csv([0, 24, 60], 96, 24.0)) == [24, 60]
    assert parse_edl(EDL, 24.0) == [24, 60]
    assert parse_edl(EDL.replace(" 00:00:0", " 01:00:0"), 24.0, "01:00:00:00") == [24, 60]
    with pytest.raises(ValueError, match="Start Frame"):
        parse_csv("a,b\n1,2\n")
    with pytest.raises(ValueError, match="frame 30 at 24 frames per second"):
        parse_edl(EDL.replace("00:00:01:00 00:00:02:12", "00:00:01:30 00:00:02:12"), 24.0)


def test_a_scene_list_beside_the_film_decides_its_shots(tmp_path):
    """Two shots with a visible cut at 48: a PySceneDetect CSV beside the film says the cuts
    are at 24 and 60 instead. The record's cuts, the samples' shots and the near_cut
    rejections follow the list; the list is not reported as a skipped input; an EDL gives
    the same corpus; a list of another film fails that film in one line."""
    spec = FilmSpec(shots=(ShotSpec("textured", 48, seed=1), ShotSpec("textured", 48, seed=2)),
                    view_width=320, view_height=180, seed=1)
    lib = tmp_path / "lib"
    lib.mkdir()
    synth.write_film(spec, lib / "f.mp4", "sbs")
    plain = extract([str(lib / "f.mp4")], tmp_path / "plain", layout="sbs", workers=0,
                    progress=False)
    assert plain.records["f"]["cuts"] == [48]
    (lib / "f-Scenes.csv").write_text(scenedetect_csv([0, 24, 60], 96, spec.fps))
    report = extract([str(lib)], tmp_path / "csv", layout="sbs", workers=0, progress=False)
    assert report.exit_code == 0, report.summary()
    assert [(i.film, i.status) for i in report.inputs if i.film or
            i.source.endswith(".csv")] == [("f", "ok")], report.summary()
    rec = report.records["f"]
    assert rec["cuts"] == [24, 60] and rec["probe"]["given_cuts"] == [24, 60]
    assert rec["source"]["scenes"] == str(lib / "f-Scenes.csv")
    rows = pq.read_table(tmp_path / "csv" / "frames.parquet").to_pylist()
    near = sorted(r["frame_index"] for r in rows if r["reason"] == "near_cut")
    assert near and all(min(abs(f - 24), abs(f - 60)) <= 6 for f in near), near
    assert {r["shot_index"] for r in rows if r["frame_index"] < 24} == {0}
    assert {r["shot_index"] for r in rows if 24 <= r["frame_index"] < 60} == {1}
    assert {r["shot_index"] for r in rows if r["frame_index"] >= 60} == {2}
    assert "given_cuts" not in json.dumps(plain.records["f"]["probe"])

    (lib / "f-Scenes.csv").unlink()
    (lib / "f.edl").write_text(EDL)
    edl = extract([str(lib / "f.mp4")], tmp_path / "edl", layout="sbs", workers=0,
                  progress=False)
    assert edl.records["f"]["cuts"] == [24, 60]
    for t in ("frames", "samples"):
        assert (tmp_path / "edl" / f"{t}.parquet").read_bytes() == \
            (tmp_path / "csv" / f"{t}.parquet").read_bytes()

    (lib / "f.edl").write_text(EDL.replace("00:00:02:12 00:00:04:00", "00:00:09:00 00:00:10:00"))
    bad = extract([str(lib / "f.mp4")], tmp_path / "bad", layout="sbs", workers=0,
                  progress=False)
    assert bad.exit_code == 1
    assert bad.inputs[0].reason == (f"scene list {lib / 'f.edl'}: a shot starts at frame "
                                       "216, after the film's last (95): a list of another "
                                       "film?")
    with pytest.raises(InputError, match=r"(?i)no such file"):
        read_scene_list(lib / "none.csv", 24.0, 96)
