"""The trainer's outputs survive a kill or a power loss whole: checkpoints, config.json and
reports are written to a temp file beside the target, synced, renamed, and their directory
synced; metrics.jsonl lines are synced as they are appended (trainer/atomic.py: the trainer
imports nothing of filmmine, whose filmmine/atomic.py does the same for the corpus)."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_trainer_data import write_synthetic_corpus

from filmmine.cli import main as filmmine_main
from trainer import atomic
from trainer.config import load_config
from trainer.sources import DatasetSpec, write_pfm
from trainer.train import CHECKPOINT_FORMAT, MetricsLog, save_checkpoint, train


def _state(step: int) -> dict:
    return {"format": CHECKPOINT_FORMAT, "step": step, "w": torch.full((64,), float(step))}


def _durable(events: list[tuple[str, ...]], target: Path) -> bool:
    """``target`` was renamed into place from a temp file beside it that was synced before,
    and its directory was synced after."""
    for i, e in enumerate(events):
        if e[0] == "replace" and e[2] == str(target):
            tmp = e[1]
            return (Path(tmp).parent == target.parent
                    and Path(tmp).name.startswith(atomic.TMP_PREFIX + target.name)
                    and ("fsync", tmp) in events[:i]
                    and ("fsync", str(target.parent)) in events[i + 1:])
    return False


# ----------------------------------------------------------------------------- checkpoints

def test_a_checkpoint_is_synced_then_renamed_then_its_directory_synced(tmp_path, events):
    """Without the file's fsync a power loss can leave the new name on empty or partial
    bytes; without the directory's, it can undo the rename."""
    target = Path(os.path.realpath(tmp_path)) / "checkpoints" / "last.pt"
    save_checkpoint(target, _state(1))
    assert len(events) == 3, events
    tmp = events[0][1]
    assert events == [("fsync", tmp), ("replace", tmp, str(target)),
                      ("fsync", str(target.parent))]
    assert Path(tmp).parent == target.parent
    assert Path(tmp).name.startswith(atomic.TMP_PREFIX + "last.pt")
    assert torch.load(target, weights_only=True)["step"] == 1


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   KeyboardInterrupt()])
def test_a_checkpoint_save_that_fails_midway_keeps_the_previous_one(tmp_path, monkeypatch,
                                                                     error):
    """torch.save writes part of the file and fails (a full disk, Ctrl-C): the last complete
    checkpoint stays under its name and no temp file is left beside it."""
    target = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(target, _state(1))
    before = target.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        if isinstance(f, str | os.PathLike):
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04partial")
        else:
            f.write(b"PK\x03\x04partial")
        raise error

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(type(error)):
        save_checkpoint(target, _state(2))
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]


# ----------------------------------------------------------------------------- metrics

def test_each_metrics_line_is_synced_as_it_is_appended(tmp_path, events):
    """Appends are not renames: the line itself is synced, and the directory once, when the
    first line created the file."""
    out = Path(os.path.realpath(tmp_path))
    m = MetricsLog(out, 0, True, False)
    m.write({"step": 1, "loss": 0.5})
    m.write({"step": 2, "loss": 0.4})
    path = str(out / "metrics.jsonl")
    assert events == [("fsync", path), ("fsync", str(out)), ("fsync", path)]
    assert [json.loads(ln)["step"] for ln in Path(path).read_text().splitlines()] == [1, 2]


def test_metrics_cut_back_on_resume_are_rewritten_durably(tmp_path, events):
    out = Path(os.path.realpath(tmp_path))
    path = out / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    MetricsLog(out, 2, True, False)
    assert _durable(events, path), events
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2]
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"]


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    """A power loss during an append can leave part of the last line: the resumed run drops
    it instead of failing on it."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"loss": 0.3, "st')
    m = MetricsLog(tmp_path, 5, True, False)
    m.write({"step": 6})
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2, 6]


# ----------------------------------------------------------------------------- a whole run

def test_every_output_of_a_run_eval_and_predict_is_durable(tmp_path, events):
    """A 2-step run (config.json, metrics.jsonl, a kept checkpoint and last.pt), then eval
    --out and predict on it: each file renamed into place is synced and so is its directory,
    each metrics line is synced, and no temp file is left."""
    root = Path(os.path.realpath(tmp_path))
    corpus = write_synthetic_corpus(root / "corpus", shards=1, per_shard=6)
    cfg = load_config("tiny")
    cfg.data.datasets = [DatasetSpec(path=str(corpus))]
    cfg.run.steps, cfg.run.log_every, cfg.run.keep_every = 2, 1, 2
    cfg.eval_size = 64
    run = root / "run"
    train(cfg, run)
    ck = run / "checkpoints"
    for target in (run / "config.json", ck / "last.pt", ck / "step-0000002.pt"):
        assert _durable(events, target), (target, events)
    assert events.count(("fsync", str(run / "metrics.jsonl"))) == 2

    scene = root / "mb" / "scene"
    scene.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(scene / "im0.png"), rng.integers(0, 255, (48, 64, 3), np.uint8))
    write_pfm(scene / "disp0GT.pfm", rng.uniform(1, 10, (48, 64)).astype(np.float32))
    assert _durable(events, scene / "disp0GT.pfm"), events
    report = root / "report.json"
    assert filmmine_main(["eval", "--checkpoint", str(ck / "last.pt"), "--dataset",
                          str(root / "mb"), "--out", str(report)]) == 0
    assert _durable(events, report), events
    assert json.loads(report.read_text())["images"] == 1
    pred = root / "pred"
    assert filmmine_main(["predict", str(scene / "im0.png"), "--checkpoint",
                          str(ck / "last.pt"), "--out", str(pred)]) == 0
    assert _durable(events, pred / "im0.png"), events
    assert cv2.imread(str(pred / "im0.png")).shape == (48, 64, 3)
    assert not [p for p in root.rglob(atomic.TMP_PREFIX + "*")]


def test_a_run_removes_checkpoint_temp_files_a_killed_run_left(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = [run / "checkpoints" / ".tmp-last.pt.x1y2", run / "checkpoints" / ".tmp-last.pt",
             run / ".tmp-metrics.jsonl", run / ".tmp-config.json.abc"]
    for p in stale:
        p.write_bytes(b"partial")
    (run / ".tmp-someone-elses").write_bytes(b"x")
    corpus = write_synthetic_corpus(tmp_path / "corpus", shards=1, per_shard=6)
    cfg = load_config("tiny")
    cfg.data.datasets = [DatasetSpec(path=str(corpus))]
    cfg.run.steps = 1
    train(cfg, run)
    assert not [p for p in stale if p.exists()]
    assert (run / ".tmp-someone-elses").exists()


# ----------------------------------------------------------------------------- the helper

def test_the_written_file_has_the_usual_permissions(tmp_path):
    """mkstemp makes 0600; a checkpoint is shared like any file the user writes."""
    mask = os.umask(0o022)
    try:
        atomic.write_bytes(tmp_path / "x.bin", b"data")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644
