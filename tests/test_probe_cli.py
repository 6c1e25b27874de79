"""filmmine probe: what extract would do with each input, checked against generated films."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import truth_of

from filmmine import cli

FILMS = ["film_sbs", "film_half-sbs", "film_tab", "film_half-tab", "film_separate"]


def test_library_layouts_letterbox_and_plan(library, capsys):
    code = cli.main(["probe", str(library / "library.json"), "--json", "--frames", "3"])
    assert code == 0
    got = {r["film"]: r for r in json.loads(capsys.readouterr().out)}
    assert sorted(got) == sorted(FILMS)
    for film in FILMS:
        r, truth = got[film], truth_of(library, film)
        p = r["probe"]
        assert r["status"] == "ok" and p["layout"] == truth["layout"]
        assert "from library manifest" in p["layout_reason"]
        fw, fh = truth["frame_size"]  # separate views are decoded side by side
        assert p["frame_size"] == ([2 * fw, fh] if film == "film_separate" else [fw, fh])
        assert r["view_size"] == truth["view_size"]
        assert p["n_frames"] == truth["n_frames"] and p["fps"] == pytest.approx(truth["fps"])
        assert p["duration_s"] == pytest.approx(truth["n_frames"] / truth["fps"], abs=0.05)
        lb = r["letterbox"]
        assert lb["agree"] == len(lb["frames"]) == 3
        assert (lb["top"], lb["bottom"]) == (truth["letterbox_px"],) * 2
        assert lb["left"] == lb["right"] == 0 and lb["side_px"] == 3
        assert r["plan"]["candidates"] == len(range(0, truth["n_frames"], 6))
        assert len(r["container"]) == (2 if film == "film_separate" else 1)
        assert all(s["type"] == "video" for c in r["container"] for s in c["streams"])
    # what extract stored matches the plan (letterbox and floating-window margins cropped)
    assert got["film_tab"]["plan"]["stored_size"] == [312, 148]
    assert got["film_tab"]["letterbox"]["extract_crop"] == [4, 16, 312, 148]

    assert cli.main(["probe", str(library / "film_tab.mp4"), "--frames", "3"]) == 0
    out = capsys.readouterr().out
    assert "layout: tab (aspect 0.89 (two views stacked))" in out
    assert "letterbox: top 16 px, bottom 16 px (crop 320x148+0+16" in out
    assert "stereo metadata: none in the container" in out
    assert "candidate frames (1 frame in 6)" in out   # said "every 6th" ("every 2th" for 2)


def test_container_stereo_metadata_decides_the_layout(tmp_path, capsys):
    film = tmp_path / "tb.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=24:duration=0.5", "-pix_fmt", "yuv420p",
                    "-metadata:s:v:0", "stereo_mode=top_bottom", str(film)], check=True)
    assert cli.main(["probe", str(film), "--frames", "1"]) == 0
    out = capsys.readouterr().out
    assert "stereo3d: top and bottom" in out
    assert "layout: half-tab (container metadata (stereo3d: top and bottom))" in out
    assert "view: 320x240" in out
    assert cli.main(["probe", str(film), "--frames", "0", "--layout", "sbs", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)[0]
    assert r["probe"]["layout"] == "sbs"    # given by hand: it wins, with a doubt
    assert r["probe"]["layout_reason"] == ("from --layout; but the container says top and "
                                           "bottom (stereo3d side data): check --layout")
    assert r["container"][0]["streams"][0]["stereo3d"]["type"] == "top and bottom"
    assert r["letterbox"] is None


def test_bad_inputs_get_one_line_reasons_and_no_traceback(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.mkv").write_bytes(bytes(range(256)) * 200)
    (tmp_path / "notes.txt").write_text("not a film")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=24:duration=1", "-pix_fmt", "yuv420p",
                    str(tmp_path / "mono.mp4")], check=True)
    r = subprocess.run([sys.executable, "-m", "filmmine.cli", "probe", str(tmp_path),
                        str(tmp_path / "missing.mp4")], capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    blocks = {b.splitlines()[0].split()[0]: b.splitlines()[1:] for b in r.stdout.split("\n\n")}
    want = {"empty.mp4": "failed: empty file", "noise.mkv": "failed: not a readable video",
            "notes.txt": "skipped: not a video file", "mono.mp4": "skipped: mono",
            "missing.mp4": "failed: no such file"}
    for name, reason in want.items():
        lines = next(v for k, v in blocks.items() if k.endswith(name))
        assert len(lines) == 1 and lines[0].strip().startswith(reason), (name, lines)
    # a 2D film alone is skipped, not failed: exit 0, as extract
    assert cli.main(["probe", str(tmp_path / "mono.mp4")]) == 0


def test_help_lists_the_workflow_and_says_what_every_argument_is(capsys):
    """The top-level help says what the tool does and lists the commands in workflow order;
    every argument of every command has a help text; no literal '%%' (argparse's escape)."""
    import argparse

    ap = cli.build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices)[:8] == ["probe", "extract", "inspect", "preview", "verify",
                                     "train", "eval", "predict"]
    top = ap.format_help()
    assert "Mine monocular-depth training data from stereo (3D) films" in top
    for name, p in sub.choices.items():
        for a in p._actions:
            assert a.help and a.help != argparse.SUPPRESS, (name, a.dest)
        assert "%%" not in p.format_help(), name


def test_an_unknown_recipe_lists_the_recipes():
    from filmmine.errors import RecipeError
    from filmmine.recipe import load_recipe

    with pytest.raises(RecipeError, match="give one of default, gpu, paper, preview"):
        load_recipe("defualt")
