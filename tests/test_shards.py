"""filmmine.corpus.shards: the tar writer against webdataset's, and a torch-free extraction."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from filmmine.corpus.reader import iter_samples
from filmmine.corpus.shards import StagingWriter, TarSampleWriter

SAMPLES = [
    {"__key__": "film_00000006", "jpg": b"\xff\xd8jpeg", "disp.png": b"\x89PNG" * 300,
     "json": '{"frame_index": 6, "film": "caf\u00e9"}'.encode(), "conf.png": bytearray(b"c" * 513)},
    {"__key__": "film_00000012", "jpg": b"", "disp.png": b"\x89PNG", "json": b"{}",
     "conf.png": memoryview(b"xyz"), "__url__": "ignored"},
]


def test_tar_bytes_are_webdatasets() -> None:
    """The shards are written by the standard library's tarfile (webdataset imports torch):
    byte for byte what webdataset.TarWriter writes with the same settings."""
    ours, theirs = io.BytesIO(), io.BytesIO()
    w = TarSampleWriter(ours, user="filmmine", group="filmmine", mode=0o444, mtime=0)
    ref = wds.TarWriter(theirs, user="filmmine", group="filmmine", mode=0o444, encoder=False,
                        mtime=0)
    for s in SAMPLES:
        w.write(dict(s))
        ref.write(dict(s))
    w.tarstream.close()
    ref.tarstream.close()
    assert ours.getvalue() == theirs.getvalue()
    assert len(ours.getvalue()) > 3 * 512
    with pytest.raises(ValueError, match="not bytes"):
        w.write({"__key__": "k", "json": "{}"})


def test_staged_tar_reads_back_with_webdataset(tmp_path: Path) -> None:
    w = StagingWriter(tmp_path / "unit.tar")
    for s in SAMPLES:
        w.write(dict(s))
    w.close()
    got = list(wds.WebDataset(str(tmp_path / "unit.tar"), shardshuffle=False,
                              empty_check=False))
    assert [g["__key__"] for g in got] == ["film_00000006", "film_00000012"]
    assert got[0]["disp.png"] == SAMPLES[0]["disp.png"]
    assert got[0]["json"] == SAMPLES[0]["json"]
    assert got[1]["conf.png"] == b"xyz"
    assert [s.key for s in iter_samples(tmp_path / "unit.tar")] == [
        "film_00000006", "film_00000012"]


def test_extraction_with_an_opencv_backend_never_imports_torch(library: Path,
                                                              tmp_path: Path) -> None:
    """torch is 470 MiB of resident memory and 1.5 s of import in every worker process: a
    whole extraction with the default (OpenCV) backend runs without it."""
    code = (
        "import sys\n"
        "from filmmine.run.extract import extract\n"
        f"r = extract([{str(library / 'film_sbs.mp4')!r}], {str(tmp_path / 'c')!r}, "
        "layout='sbs', workers=0, progress=False)\n"
        "assert r.exit_code == 0, r.summary()\n"
        "print(r.records['film_sbs']['counts']['accepted'], 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    accepted, torch_loaded = out.stdout.split()
    assert int(accepted) > 10 and torch_loaded == "False"
