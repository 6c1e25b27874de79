"""KEY.conf.png: the disparity's confidence map, stored beside it (recipe output.confidence).

Read back with webdataset; its zero set is the disparity's; it ranks pixels by their error
against the synthetic films' ground truth; verify checks it; confidence = false stores none and
changes no other member.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds
from conftest import truth_of
from test_extract import FILMS, gt_for, samples_of
from test_verify import DAMAGED, copy_corpus, rewrite_shard

from filmmine.corpus.encode import decode_confidence, decode_disparity, encode_confidence
from filmmine.corpus.reader import is_known_member, iter_samples, member_problem
from filmmine.recipe import load_recipe
from filmmine.run.extract import extract
from filmmine.synth import FilmSpec
from filmmine.tools.verify import stores_confidence, verify_corpus
from trainer.sources import CorpusSource, DatasetSpec


def all_samples(corpus: Path) -> list[dict]:
    shards = sorted(str(p) for p in (corpus / "shards").glob("*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))


def test_default_recipe_stores_confidence(corpus):
    assert load_recipe()["output"]["confidence"] is True
    man = json.loads((corpus / "manifest.json").read_text())
    assert man["recipe"]["output"]["confidence"] is True
    assert stores_confidence(man) is True


def test_every_sample_has_a_confidence_map_zero_exactly_where_invalid(corpus):
    got = all_samples(corpus)
    assert len(got) == 95
    for s in got:
        meta = json.loads(s["json"])
        assert set(s) - {"__key__", "__url__", "__local_path__"} == \
            {"jpg", "disp.png", "json", "conf.png"}, meta["key"]
        raw = cv2.imdecode(np.frombuffer(s["conf.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint8 and raw.ndim == 2  # single-channel 8-bit, as stored
        conf = decode_confidence(s["conf.png"])
        d = decode_disparity(s["disp.png"], meta["disp_scale"], meta["disp_offset"])
        assert conf.shape == d.shape == (meta["size"][1], meta["size"][0])
        valid = np.isfinite(d)
        assert np.array_equal(conf == 0, ~valid), meta["key"]
        assert (conf[valid] > 0).all()
        if meta["backend"] == "dis":  # no match confidence: exp(-lr_err / lr_max_px) > 1/e
            assert conf[valid].min() >= np.floor(np.exp(-1.0) * 255)
        # the bytes are a function of the values alone (fixed zlib level): a rerun repeats them
        assert encode_confidence(conf / 255.0, valid) == s["conf.png"]


def _error_and_confidence(corpus: Path, library: Path):
    """Per accepted sample: |d - truth| and the stored confidence of pixels valid in both."""
    out = []
    for film in FILMS:
        spec = FilmSpec.from_json(truth_of(library, film)["spec"])
        for s in samples_of(corpus, film):
            meta = json.loads(s["json"])
            d = decode_disparity(s["disp.png"], meta["disp_scale"], meta["disp_offset"])
            gt = gt_for(spec, meta)
            both = np.isfinite(d) & np.isfinite(gt)
            out.append((np.abs(d - gt)[both], decode_confidence(s["conf.png"])[both]))
    return out


def test_confidence_ranks_pixels_by_their_error_against_ground_truth(corpus, library):
    """Low confidence marks large errors. Measured on the default library (95 samples, 4.76 M
    pixels valid in both label and truth), default backend dis_sgbm: its left-right errors are
    mostly 0 (SGBM's 1/16 px steps), so 56 % of pixels sit at 255 — splits are made at or
    below a percentile, ties included. The lowest 5 % (<= 229) have MAE 0.52 px, the rest
    0.16 (3.2x); <= 200 (1.3 %): 1.03 px. Split at each sample's own 25th percentile, the
    lower part has the larger MAE in 95 of 95 samples. (With dis: pooled median split 0.153 vs
    0.049 px, 95 of 95 samples.)"""
    per = _error_and_confidence(corpus, library)
    assert len(per) == 95
    err = np.concatenate([e for e, _ in per])
    conf = np.concatenate([c for _, c in per])
    low = conf <= np.percentile(conf, 5)
    assert 0.01 < low.mean() < 0.3
    mae_low, mae_rest = float(err[low].mean()), float(err[~low].mean())
    assert mae_rest <= 0.25, mae_rest
    assert mae_low >= 2.0 * mae_rest, (mae_low, mae_rest)
    # and within samples: split each at its own 25th percentile
    wins = n = 0
    for e, c in per:
        q = np.percentile(c, 25)
        if (c <= q).any() and (c > q).any():
            n += 1
            wins += e[c <= q].mean() > e[c > q].mean()
    assert n >= 0.9 * len(per), n
    assert wins >= 0.95 * n, (wins, n)


# ---------------------------------------------------------------------------- verify


def _png(a: np.ndarray) -> bytes:
    return cv2.imencode(".png", a)[1].tobytes()


def test_sound_confidence_passes_verify(corpus):
    report = verify_corpus(corpus, workers=1)
    assert report.ok, [p.line() for p in report.problems]
    assert member_problem("film_00000001.conf.png") is None
    assert is_known_member("film_00000001.conf.png")
    # other names are members verify does not know: sound names, ignored (CORPUS.md)
    assert member_problem("film_00000001.conf.tif") is None
    assert not is_known_member("film_00000001.conf.tif")
    assert not is_known_member("film.v2_00000001.conf.png")  # member .v2_00000001.conf.png
    first = next(iter_samples(corpus / "shards" / DAMAGED))
    assert {"jpg", "disp.png", "json", "conf.png"} == set(first.members)


def test_verify_finds_bad_confidence_maps(corpus, tmp_path):
    c = copy_corpus(corpus, tmp_path / "c")
    keys = [s.key for s in iter_samples(c / "shards" / DAMAGED)]
    lit, dark, small, wide, cut, gone = keys[1:7]

    def edit(name: str, data: bytes):
        key, _, ext = name.partition(".")
        if ext != "conf.png":
            return [(name, data)]
        q = decode_confidence(data)
        if key == lit:     # confidence where the disparity is invalid
            r, x = np.nonzero(q == 0)
            q[r[:3], x[:3]] = 200
        elif key == dark:  # no confidence at a valid pixel
            r, x = np.nonzero(q)
            q[r[:5], x[:5]] = 0
        elif key == small:
            q = q[:, :-2]
        elif key == wide:
            q = q.astype(np.uint16) * 257
        elif key == cut:
            return [(name, data[: len(data) // 2])]
        elif key == gone:
            return []
        return [(name, _png(q))]

    rewrite_shard(c, DAMAGED, edit)
    report = verify_corpus(c, workers=1)
    msgs = [p.message for p in report.problems]
    assert report.bad_shards == [DAMAGED] and not any("sha256" in m for m in msgs), msgs

    def said(key: str, words: str) -> bool:
        return any(m.startswith(f"sample {key}:") and words in m for m in msgs)

    assert said(lit, "confidence is nonzero at 3 pixel(s) where the disparity is invalid"), msgs
    assert said(dark, "confidence is 0 at 5 pixel(s) where the disparity is valid"), msgs
    assert said(small, "confidence map is"), msgs
    assert said(wide, "not uint8 single-channel"), msgs
    assert said(cut, "confidence PNG"), msgs
    assert said(gone, "missing member(s) .conf.png"), msgs
    assert not said(keys[0], ""), msgs
    assert len(msgs) == 6, msgs
    # --quick decodes nothing, but a member the recipe promises is still missed
    quick = [p.message for p in verify_corpus(c, workers=1, decode=False).problems]
    assert len(quick) == 1 and gone in quick[0] and ".conf.png" in quick[0], quick


# ---------------------------------------------------------------------------- confidence off


@pytest.fixture(scope="module")
def no_conf(library, tmp_path_factory) -> Path:
    """film_sbs mined with output.confidence = false (in-process)."""
    tmp = tmp_path_factory.mktemp("noconf")
    recipe = tmp / "noconf.toml"
    recipe.write_text('base = "default"\n[output]\nconfidence = false\n')
    lib = json.loads((library / "library.json").read_text())
    entry = next(f for f in lib["films"] if f["name"] == "film_sbs")
    out = tmp / "out"
    report = extract([str(library / entry["path"])], out, layout="sbs", recipe=recipe,
                     workers=0, progress=False)
    assert report.exit_code == 0, report.summary()
    return out


def test_confidence_off_stores_no_member_and_changes_nothing_else(no_conf, corpus):
    man = json.loads((no_conf / "manifest.json").read_text())
    assert man["recipe"]["output"]["confidence"] is False and stores_confidence(man) is False
    got = samples_of(no_conf, "film_sbs")
    ref = {s["__key__"]: s for s in samples_of(corpus, "film_sbs")}
    assert len(got) == len(ref) >= 15
    for s in got:
        assert "conf.png" not in s
        for ext in ("jpg", "disp.png", "json"):
            assert s[ext] == ref[s["__key__"]][ext], (s["__key__"], ext)
    report = verify_corpus(no_conf, workers=1)
    assert report.ok, [p.line() for p in report.problems]
    # the trainer reads both alike (it does not use the confidence map)
    shard = "shards/film_sbs-00000.tar"
    for a, b in zip(CorpusSource(DatasetSpec(path=str(no_conf / shard))),
                    CorpusSource(DatasetSpec(path=str(corpus / shard))), strict=True):
        assert a.key == b.key
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.disparity, b.disparity)
        np.testing.assert_array_equal(a.valid, b.valid)


def test_verify_holds_a_corpus_to_its_recipe(no_conf, corpus, tmp_path):
    # a conf.png in a corpus whose recipe says false
    c = copy_corpus(no_conf, tmp_path / "off")
    shard = "film_sbs-00000.tar"
    conf = {s.key: s.members["conf.png"] for s in iter_samples(corpus / "shards" / shard)}
    key = sorted(conf)[3]

    def add(name: str, data: bytes):
        if name == f"{key}.disp.png":
            return [(f"{key}.conf.png", conf[key]), (name, data)]
        return [(name, data)]

    rewrite_shard(c, shard, add)
    msgs = [p.message for p in verify_corpus(c, workers=1).problems]
    assert msgs == [f"sample {key}: has a .conf.png member, but the recipe says "
                    "output.confidence = false"], msgs
    # a manifest whose recipe predates the key: the member is optional, either way is sound
    for root in (copy_corpus(no_conf, tmp_path / "old"), copy_corpus(corpus, tmp_path / "on")):
        man = json.loads((root / "manifest.json").read_text())
        del man["recipe"]["output"]["confidence"]
        (root / "manifest.json").write_text(json.dumps(man))
        assert stores_confidence(man) is None
        assert verify_corpus(root, workers=1).ok, root


def test_preview_reads_a_lone_sample_of_a_shard(corpus):
    """preview stops reading a shard once it has its samples' jpg, disp.png and json: a conf.png
    read first must not count as one of them (it did: one sample asked for came back without
    its JSON and was dropped)."""
    import pyarrow.parquet as pq

    from filmmine.tools.preview_data import load_samples

    rows = pq.read_table(corpus / "samples.parquet").to_pylist()
    for row in (rows[3], rows[-1]):
        got = load_samples(corpus, [row])
        assert list(got) == [row["key"]]
        assert got[row["key"]].meta["key"] == row["key"]
