"""The extract run's progress: never falls back as films are probed; plain lines in a log."""

from __future__ import annotations

import io
import re

from filmmine import synth
from filmmine.run import progress
from filmmine.run.extract import extract
from filmmine.run.progress import Progress
from filmmine.synth import FilmSpec, ShotSpec


def test_the_share_is_of_bytes_known_up_front_and_never_falls():
    """Films probed one after another (the second ten times the first's frames) leave the
    share where it was; a failed film counts as done; a unit mined again takes its frames
    back."""
    out = io.StringIO()
    p = Progress(True, stream=out, tty=False, interval_s=0)
    p.add_film("a", [])
    p.add_film("b", [])
    p.size.update(a=1000.0, b=3000.0)
    p.total = 4000.0
    shares = []
    p.probed("a", 10)
    p.frames("a", 5)
    shares.append(p.count / p.total)
    p.probed("b", 100)      # a frame-counted total grew here: 5/10 -> 5/110
    shares.append(p.count / p.total)
    p.frames("b", 50)
    shares.append(p.count / p.total)
    p.undo_frames("b", 10)
    assert p.count == 500 + 1200
    p.film_done("a")
    p.film_done("b")        # failed: its share is done
    shares.append(p.count / p.total)
    assert shares == [0.125, 0.125, 0.5, 1.0]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("extract: 12% (0.0 MB of 0.0 MB of film")
    assert "\r" not in out.getvalue()


def test_without_a_terminal_the_run_logs_lines_that_only_go_up(tmp_path, capfd, monkeypatch):
    """stderr to a file: no tqdm '\\r' redraws, a line every LOG_EVERY_S (0 here) whose share
    never falls as the three films are probed, ending at 100 %."""
    for i in range(3):
        spec = FilmSpec(shots=(ShotSpec("textured", 24 * (i + 1), seed=i),), view_width=320,
                        view_height=180, seed=i)
        synth.write_film(spec, tmp_path / f"f{i}.mp4", "sbs")
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    report = extract([str(tmp_path)], tmp_path / "out", layout="sbs", workers=1, progress=True)
    assert report.exit_code == 0, report.summary()
    err = capfd.readouterr().err
    assert "\r" not in err
    shares = [int(m) for m in re.findall(r"^extract: (\d+)% \(", err, re.M)]
    assert len(shares) >= 4 and shares == sorted(shares), err
    assert shares[-1] == 100 and "films 3/3" in err.splitlines()[-1], err
