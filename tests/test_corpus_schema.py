"""The sample record (filmmine.corpus.schema.SampleMeta): one definition from which the
KEY.json member, the samples.parquet columns and the JSON schema come."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest

from filmmine.corpus.encode import dumps
from filmmine.corpus.schema import (
    SAMPLES_SCHEMA,
    Alignment,
    DisparityPercentiles,
    SampleMeta,
    StereoRig,
    VerticalStats,
    sample_json_schema,
)

REPO = Path(__file__).resolve().parents[1]


def _meta(**over) -> SampleMeta:
    base = SampleMeta(
        film="f", key="f_00000012", frame_index=12, pts_s=0.5, layout="sbs",
        view_size=(960, 540), crop=(0, 10, 960, 520), size=(960, 520), disp_scale=0.0625,
        disp_offset=-3.0, backend="dis_sgbm", valid_fraction=0.9, lr_pass_fraction=0.85,
        vertical=VerticalStats(fail_fraction=0.01, median_px=0.1, abs_p95_px=0.4),
        disp_percentiles_px=DisparityPercentiles(p1=-2.0, p50=4.0, p99=20.0), range_px=21.0,
        matchable_fraction=0.95, consistency_rate=0.9,
        alignment=Alignment(matches=300, inliers=280, offset_px=0.1, rotation_deg=None,
                            scale_pct=None, keystone_px=0.0, residual_px=0.2,
                            field_exceed_fraction=0.0, field_abs_p95_px=0.3))
    return replace(base, **over)


def test_the_schema_file_is_the_one_the_record_gives():
    """manifests/sample.schema.json is written from SampleMeta: editing one without the
    other fails here."""
    on_disk = json.loads((REPO / "manifests" / "sample.schema.json").read_text())
    assert on_disk == sample_json_schema(), (
        "regenerate: python -c 'import json; from filmmine.corpus.schema import "
        "sample_json_schema as s; print(json.dumps(s(), indent=1))' > "
        "manifests/sample.schema.json")


def test_json_round_trip_and_validation():
    m = _meta(shot_index=3, stereo=StereoRig(baseline_mm=64.0, hfov_deg=71.0, focal_px=700.0,
                                             disparity_adjustment=0.02), layout="mv-hevc")
    obj = json.loads(dumps(m.to_json()))
    jsonschema.validate(obj, sample_json_schema())
    assert SampleMeta.from_json(obj) == m
    assert obj["alignment"]["rotation_deg"] is None   # a measure not fitted is written as null
    assert obj["vertical"] == {"fail_fraction": 0.01, "median_px": 0.1, "abs_p95_px": 0.4}


def test_a_staged_sample_has_no_shot_and_no_absent_groups():
    """Before assembly a sample has no shot index; a film without spatial metadata has no
    stereo group: both are left out of the JSON, not written as null."""
    obj = _meta(alignment=None).to_json()
    assert "shot_index" not in obj and "stereo" not in obj and "alignment" not in obj
    with pytest.raises(jsonschema.ValidationError, match="shot_index"):
        jsonschema.validate(obj, sample_json_schema())


def test_row_fills_every_column_of_the_table(tmp_path):
    m = _meta(shot_index=2)
    row = m.row("f-000000.tar")
    assert set(row) == set(SAMPLES_SCHEMA.names)
    assert (row["view_w"], row["crop_y"], row["height"]) == (960, 10, 520)
    assert (row["vertical_abs_p95_px"], row["disp_p99_px"]) == (0.4, 20.0)
    assert (row["vertical_offset_px"], row["vertical_rotation_deg"]) == (0.1, None)
    from filmmine.corpus.schema import parquet_bytes, table

    path = tmp_path / "s.parquet"
    path.write_bytes(parquet_bytes(table([row], SAMPLES_SCHEMA)))
    back = pq.read_table(path)
    assert back.schema.equals(SAMPLES_SCHEMA, check_metadata=True)
    assert back.to_pylist() == [row]


def test_a_table_written_before_a_column_was_added_reads_with_it_null(tmp_path):
    """A film mined by an earlier version (its frames table without ``view``) joins the
    corpus tables, and the one reader reads such a corpus, with the column null."""
    import pyarrow as pa

    from filmmine.corpus.assemble import write_corpus_tables
    from filmmine.corpus.reader import read_table
    from filmmine.corpus.schema import FRAMES_SCHEMA, conform, parquet_bytes

    old = pa.schema([f for f in FRAMES_SCHEMA if f.name != "view"])
    films = tmp_path / "films"
    films.mkdir()
    row = {"film": "a", "frame_index": 3, "pts_s": 0.1, "shot_index": 0, "accepted": False,
           "stage": "filter", "reason": "dark"}
    (films / "a.frames.parquet").write_bytes(parquet_bytes(conform(
        pa.table({k: [row.get(k)] for k in old.names}, schema=old), old)))
    new = conform(pa.table({k: [dict(row, film="b", view="y000p000").get(k)]
                            for k in FRAMES_SCHEMA.names}, schema=FRAMES_SCHEMA), FRAMES_SCHEMA)
    (films / "b.frames.parquet").write_bytes(parquet_bytes(new))
    write_corpus_tables(tmp_path, ["a", "b"])
    got = pq.read_table(tmp_path / "frames.parquet")
    assert got.schema.equals(FRAMES_SCHEMA, check_metadata=True)
    assert got["view"].to_pylist() == [None, "y000p000"]
    (tmp_path / "frames.parquet").write_bytes(parquet_bytes(pa.table(
        {k: [row.get(k)] for k in old.names}, schema=old)))
    assert read_table(tmp_path, "frames")["view"].to_pylist() == [None]
