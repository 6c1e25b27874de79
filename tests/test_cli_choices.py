"""The command lines offer what the registries hold: a name added to a registry is a choice of
its flag, or named in its help, with no change to the parser (issue 21: no hand-typed lists)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import trainer.names
import trainer.sources
from filmmine import cli
from filmmine.flow import BACKENDS, base
from filmmine.media import layout, probe
from filmmine.stages import projection


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def help_of(capsys, command: str) -> str:
    """The command's options as help prints them, on one line."""
    with pytest.raises(SystemExit):
        parse(command, "--help")
    return " ".join(capsys.readouterr().out.split("options:")[1].split())


def refused(capsys, *argv: str) -> bool:
    with pytest.raises(SystemExit):
        parse(*argv)
    return "invalid choice" in capsys.readouterr().err


def test_filmmine_flags_take_the_registries_names(monkeypatch, capsys) -> None:
    assert refused(capsys, "extract", "f.mp4", "--out", "c", "--device", "npu")
    monkeypatch.setattr(base, "DEVICES", (*base.DEVICES, "npu"))
    monkeypatch.setattr(layout, "LAYOUT_CHOICES", (*layout.LAYOUT_CHOICES, "quad"))
    monkeypatch.setattr(probe, "PROJECTION_CHOICES", (*probe.PROJECTION_CHOICES, "cubemap"))
    args = parse("extract", "f.mp4", "--out", "c", "--device", "npu", "--layout", "quad",
                 "--projection", "cubemap")
    assert (args.device, args.layout, args.projection) == ("npu", "quad", "cubemap")
    assert parse("demo", "--device", "npu").device == "npu"
    args = parse("probe", "f.mp4", "--layout", "quad", "--projection", "cubemap")
    assert (args.layout, args.projection) == ("quad", "cubemap")


def test_bench_help_names_the_registries(monkeypatch, capsys) -> None:
    monkeypatch.setitem(BACKENDS, "newflow", lambda **options: None)
    monkeypatch.setattr(base, "DEVICES", (*base.DEVICES, "npu"))
    text = help_of(capsys, "bench-disparity")
    assert "newflow" in text.split("--backends BACKENDS")[1].split("--recipe")[0]
    assert "or npu" in text.split("--device DEVICE")[1]
    assert "or npu" in help_of(capsys, "bench-checks").split("--device DEVICE")[1]


def test_trainer_flags_take_its_registries_names(monkeypatch, capsys) -> None:
    names = trainer.names
    assert refused(capsys, "train", "--out", "r", "--mix", "greedy")
    for registry, name in (("MIX_MODES", "greedy"), ("BALANCE_MODES", "round_robin"),
                           ("AMP_MODES", "fp8"), ("DEVICES", "npu"),
                           ("VAL_METRICS", "silog")):
        monkeypatch.setattr(names, registry, (*getattr(names, registry), name))
    args = parse("train", "--out", "r", "--mix", "greedy", "--balance", "round_robin",
                 "--amp", "fp8", "--device", "npu", "--val-metric", "silog")
    assert (args.mix, args.balance, args.amp, args.device, args.val_metric) == \
        ("greedy", "round_robin", "fp8", "npu", "silog")

    class NewSource:
        help = "a new dataset layout"

    monkeypatch.setitem(trainer.sources.SOURCES, "newset", NewSource)
    monkeypatch.setattr(trainer.sources, "LABEL_KINDS", (*trainer.sources.LABEL_KINDS, "normal"))
    args = parse("eval", "--checkpoint", "ck", "--dataset", "d", "--type", "newset",
                 "--label", "normal", "--device", "npu")
    assert (args.type, args.label, args.device) == ("newset", "normal", "npu")
    assert "newset: a new dataset layout" in help_of(capsys, "eval")
    assert "newset" in help_of(capsys, "train").split("--data SPEC")[1].split("--config")[0]
    assert parse("predict", "x.jpg", "--checkpoint", "ck", "--out", "o",
                 "--device", "npu").device == "npu"
    monkeypatch.setitem(names.RAW_FORMATS, "exr", ".exr")
    assert "png16, npy, pfm, exr" in help_of(capsys, "predict")


def test_the_projection_names_agree() -> None:
    """probe's reprojectable projections are the ones stages.projection can cut views from."""
    assert probe.REPROJECTABLE == projection.PROJECTIONS
    assert set(probe.REPROJECTABLE) < set(probe.PROJECTION_CHOICES)


def test_the_parser_is_built_without_torch() -> None:
    code = ("import sys, filmmine.cli; filmmine.cli.build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
