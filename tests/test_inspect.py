"""filmmine inspect: the per-film and total tables agree with the Parquet files and records."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import truth_of

from filmmine import cli
from filmmine.errors import FilmmineError
from filmmine.tools.summary import load_corpus, summarize, text_table

FILMS = ["film_half-sbs", "film_half-tab", "film_sbs", "film_separate", "film_tab"]


def test_summary_numbers_match_the_tables(corpus, library):
    frames = pq.read_table(corpus / "frames.parquet").to_pylist()
    samples = pq.read_table(corpus / "samples.parquet").to_pylist()
    man = json.loads((corpus / "manifest.json").read_text())
    s = summarize(load_corpus(corpus))
    assert [f.film for f in s.films] == FILMS
    for row in s.films:
        fr = [r for r in frames if r["film"] == row.film]
        sa = [r for r in samples if r["film"] == row.film]
        rec = json.loads((corpus / "films" / f"{row.film}.json").read_text())
        truth = truth_of(library, row.film)
        assert row.candidates == len(fr) == rec["counts"]["candidates"]
        assert row.accepted == sum(r["accepted"] for r in fr) == rec["counts"]["accepted"]
        assert row.samples == len(sa) == row.accepted >= 15
        assert row.rejections == Counter(r["reason"] for r in fr if not r["accepted"])
        assert row.rejections == rec["rejections"]
        assert row.rejected_by_stage == {
            st: sum(1 for r in fr if r["stage"] == st) for st in ("sampling", "filter",
                                                                   "disparity")}
        assert row.duration_s == pytest.approx(truth["n_frames"] / truth["fps"])
        assert row.shots == len(truth["shots"]) and row.layout == truth["layout"]
        shards = [x for x in man["shards"] if x["film"] == row.film]
        assert (row.shards, row.bytes) == (len(shards), sum(x["bytes"] for x in shards))
        for p in ("p1", "p50", "p99"):
            assert row.disp_px[p] == pytest.approx(np.median([r[f"disp_{p}_px"] for r in sa]))
        vf = [r["valid_fraction"] for r in sa]
        assert row.valid_fraction == pytest.approx(list(np.quantile(vf, [0, .25, .5, .75, 1])))
        assert row.valid_fraction[0] > 0.7  # the recipe's min_valid_frac held
    t = s.total
    assert t.candidates == len(frames) and t.accepted == len(samples) == man["totals"]["samples"]
    assert t.rejections == Counter(r["reason"] for r in frames if not r["accepted"])
    assert (t.shards, t.bytes) == (man["totals"]["shards"], man["totals"]["bytes"])
    assert t.duration_s == pytest.approx(sum(f.duration_s for f in s.films))
    assert not s.warnings and not s.inputs_not_mined


def test_cli_json_and_table(corpus, capsys):
    samples = pq.read_table(corpus / "samples.parquet").to_pylist()
    assert cli.main(["inspect", str(corpus), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["accepted"] == len(samples) and data["totals"]["films"] == 5
    by_film = Counter(r["film"] for r in samples)
    assert {f["film"]: f["accepted"] for f in data["films"]} == by_film
    assert set(data["films"][0]["valid_fraction"]) == {"min", "q25", "median", "q75", "max"}

    assert cli.main(["inspect", str(corpus)]) == 0
    out = capsys.readouterr().out
    for title in ("FILMS", "REJECTED FRAMES BY REASON", "DISPARITY AND VALID PIXELS"):
        assert title in out
    # the films table: one row per film and a TOTAL row, columns aligned
    lines = out.splitlines()
    start = lines.index("FILMS")
    header = lines[start + 2]
    acc_end = header.index("accepted") + len("accepted")
    for film, n in by_film.items():
        row = next(x for x in lines[start:] if x.startswith(film + " "))
        assert row[:acc_end].split()[-1] == str(n)  # right-aligned under "accepted"
    total = next(x for x in lines[start:] if x.startswith("TOTAL"))
    assert total[:acc_end].split()[-1] == str(len(samples))
    assert "vertical_misaligned" in out and "near_cut" in out


def test_film_filter_and_warnings(corpus, tmp_path, capsys):
    s = summarize(load_corpus(corpus), film="film_tab")
    assert [f.film for f in s.films] == ["film_tab"]
    assert s.total.accepted == s.films[0].accepted
    with pytest.raises(FilmmineError, match="no film 'nope'"):
        summarize(load_corpus(corpus), film="nope")
    # a samples table that lost rows is reported, not silently summed
    copy = tmp_path / "c"
    shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns("shards"))
    tbl = pq.read_table(copy / "samples.parquet")
    pq.write_table(tbl.slice(1), copy / "samples.parquet")
    s = summarize(load_corpus(copy))
    assert any("samples.parquet has 18 rows" in w for w in s.warnings), s.warnings
    assert cli.main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a filmmine corpus" in err and err.count("\n") == 1


def test_text_table_alignment():
    lines = text_table(["name", "n"], [["a", "5"], ["bbb", "120"], ["TOTAL", "125"]], left=1,
                       group=[("", 1), (" grp ", 1)])
    assert lines[1] == "name     n"
    assert lines[3] == "a        5"
    assert lines[-1] == "TOTAL  125"
    assert lines[0].endswith("grp")


def test_an_unreadable_film_record_is_a_warning_not_a_crash(corpus, tmp_path, capsys):
    copy = tmp_path / "c"
    shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns("shards"))
    (copy / "films" / "film_tab.json").write_text('{"counts": {"accepted": 1')  # cut short
    s = summarize(load_corpus(copy))
    assert [f.film for f in s.films] == FILMS  # counts still come from the tables
    tab = next(f for f in s.films if f.film == "film_tab")
    assert tab.accepted == tab.samples == sum(
        r["film"] == "film_tab" for r in pq.read_table(copy / "samples.parquet").to_pylist())
    assert [w for w in s.warnings if "film_tab" in w] == [
        "film_tab: film record films/film_tab.json unreadable"]
    assert cli.main(["inspect", str(copy)]) == 0
    assert "film_tab: film record films/film_tab.json unreadable" in capsys.readouterr().out


def test_table_rows_of_a_film_the_manifest_does_not_know_are_a_warning(corpus, tmp_path):
    import pyarrow as pa

    copy = tmp_path / "c"
    shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns("shards"))
    for name in ("samples", "frames"):
        tbl = pq.read_table(copy / f"{name}.parquet")
        ghost = [dict(r, film="ghost") for r in tbl.to_pylist() if r["film"] == "film_tab"]
        pq.write_table(pa.concat_tables([tbl, pa.Table.from_pylist(ghost, tbl.schema)]),
                       copy / f"{name}.parquet")
    s = summarize(load_corpus(copy))
    assert s.total.accepted == len(pq.read_table(corpus / "samples.parquet"))
    n_s = sum(r["film"] == "film_tab" for r in pq.read_table(corpus / "samples.parquet")
              .to_pylist())
    n_f = sum(r["film"] == "film_tab" for r in pq.read_table(corpus / "frames.parquet")
              .to_pylist())
    assert [w for w in s.warnings if "ghost" in w] == [
        f"ghost: {n_s} samples.parquet rows and {n_f} frames.parquet rows of a film the "
        "manifest does not list (not counted)"]


@pytest.mark.parametrize(("field", "value"), [("bytes", None), ("samples", "19")])
def test_a_malformed_manifest_shard_entry_is_a_warning_not_a_crash(corpus, tmp_path, field,
                                                                   value):
    copy = tmp_path / "c"
    shutil.copytree(corpus, copy, ignore=shutil.ignore_patterns("shards"))
    man = json.loads((copy / "manifest.json").read_text())
    bad = man["shards"][0]
    bad[field] = value
    (copy / "manifest.json").write_text(json.dumps(man))
    s = summarize(load_corpus(copy))
    assert s.total.accepted == len(pq.read_table(corpus / "samples.parquet"))
    assert f"manifest.json: shard entry {bad['name']} malformed ({field} is {value!r}), " \
           "not counted" in s.warnings, s.warnings
