"""The corpus tables: one explicit pyarrow schema each, kept in one place.

``samples.parquet`` has a row per accepted sample; ``frames.parquet`` a row per candidate frame
with the stage that decided it, the reason when rejected, and every filter score.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

# (name, type, description): the description goes into the Parquet schema's field metadata
# (``description``), so that a reader of the file alone (DuckDB, pandas, pyarrow) sees it
_FILM = ("film", pa.string(), "film id (shard names, sample keys)")
_FRAME = ("frame_index", pa.int64(), "0-based index of the frame among the (left) video "
          "stream's timestamps in presentation order")
_PTS = ("pts_s", pa.float64(), "presentation time of the frame, s from the container's start")
_EVIDENCE = [
    ("matchable_fraction", pa.float64(), "share of the pixels the matcher labelled both ways"),
    ("consistency_rate", pa.float64(), "of the pixels labelled both ways, the share passing "
     "the left-right check"),
]

SAMPLES_COLUMNS = [
    _FILM,
    ("key", pa.string(), "sample key: the shard members KEY.jpg, KEY.disp.png, KEY.json"),
    ("shard", pa.string(), "the shard file (shards/NAME) holding the sample"),
    _FRAME, _PTS,
    ("shot_index", pa.int32(), "0-based shot of the film, counted over cuts and transitions"),
    ("layout", pa.string(), "stereo layout the film was mined in (sbs, half-sbs, tab, "
     "half-tab, separate)"),
    ("view_w", pa.int32(), "width of a full-aspect view, px"),
    ("view_h", pa.int32(), "height of a full-aspect view, px"),
    ("crop_x", pa.int32(), "crop of the view (letterbox, floating-window margins): left, px"),
    ("crop_y", pa.int32(), "crop: top, px of the view"),
    ("crop_w", pa.int32(), "crop: width, px of the view"),
    ("crop_h", pa.int32(), "crop: height, px of the view"),
    ("width", pa.int32(), "stored image and disparity width, px"),
    ("height", pa.int32(), "stored image and disparity height, px"),
    ("disp_scale", pa.float64(), "disparity px per step of KEY.disp.png: d = value * "
     "disp_scale + disp_offset (value 0 = invalid)"),
    ("disp_offset", pa.float64(), "disparity offset, px (see disp_scale)"),
    ("backend", pa.string(), "flow backend that made the label (recipe disparity.backend)"),
    ("valid_fraction", pa.float64(), "share of pixels with a label"),
    ("lr_pass_fraction", pa.float64(), "share of all pixels passing the left-right check"),
    ("vertical_fail_fraction", pa.float64(), "share of all pixels whose vertical flow exceeds "
     "disparity.vertical_max_px"),
    ("vertical_median_px", pa.float64(), "median vertical flow left to right, px"),
    ("vertical_abs_p95_px", pa.float64(), "95th percentile of |vertical flow|, px"),
    ("disp_p1_px", pa.float64(), "1st percentile of the valid disparity, px"),
    ("disp_p50_px", pa.float64(), "median of the valid disparity, px"),
    ("disp_p99_px", pa.float64(), "99th percentile of the valid disparity, px"),
    ("range_px", pa.float64(), "robust disparity range (disparity.range_percentiles), px"),
    *_EVIDENCE,
    ("vertical_offset_px", pa.float64(), "vertical field fitted on confident matches: offset "
     "at the centre, px (null: not fitted)"),
    ("vertical_rotation_deg", pa.float64(), "fitted roll of the right view, degrees (null: "
     "not fitted)"),
]

FRAMES_COLUMNS = [
    _FILM, _FRAME, _PTS,
    ("shot_index", pa.int32(), "0-based shot of the film; -1 inside a transition"),
    ("accepted", pa.bool_(), "the frame became a sample"),
    ("stage", pa.string(), "stage that decided: sampling, filter, disparity or accepted"),
    ("reason", pa.string(), "why it was rejected (CORPUS.md, Tables); null when accepted"),
    ("key", pa.string(), "sample key when accepted"),
    ("mean_luma", pa.float64(), "mean luma of the left view, 0-255 (filter dark)"),
    ("black_frac", pa.float64(), "share of near-black pixels (filter credits)"),
    ("white_frac", pa.float64(), "share of near-white unsaturated pixels (filter credits)"),
    ("texture", pa.float64(), "mean |Sobel gradient|, grey levels/px (filter low_texture)"),
    ("mono_ratio", pa.float64(), "mean |L - R| over mean |L - L shifted 2 px| (filter mono)"),
    ("frozen_diff", pa.float64(), "mean |difference| to the shot's previous candidate, grey "
     "levels (filter frozen)"),
    ("motion", pa.float64(), "99th percentile over 16 px blocks of that difference (filter "
     "frozen)"),
    ("valid_fraction", pa.float64(), "share of pixels with a label"),
    ("vertical_fail_fraction", pa.float64(), "share of all pixels whose vertical flow exceeds "
     "disparity.vertical_max_px"),
    ("range_px", pa.float64(), "robust disparity range, px"),
    *_EVIDENCE,
    ("vertical_matches", pa.int32(), "confident correspondences found (filmmine.stages.alignment)"),
    ("vertical_inliers", pa.int32(), "of those, inliers of the fitted vertical field"),
    ("vertical_offset_px", pa.float64(), "fitted vertical field: offset at the centre, px"),
    ("vertical_rotation_deg", pa.float64(), "fitted roll of the right view, degrees"),
    ("vertical_scale_pct", pa.float64(), "fitted vertical scale difference, %"),
    ("vertical_keystone_px", pa.float64(), "fitted keystone term at the corners, px"),
    ("vertical_residual_px", pa.float64(), "spread of the inliers about the field, px"),
    ("vertical_field_exceed_fraction", pa.float64(), "share of the frame where the field "
     "exceeds disparity.vertical_max_px"),
    ("vertical_field_abs_p95_px", pa.float64(), "95th percentile of |field| over the frame, px"),
]


def _schema(columns: list[tuple[str, pa.DataType, str]]) -> pa.Schema:
    return pa.schema([pa.field(n, t, metadata={"description": d}) for n, t, d in columns])


SAMPLES_SCHEMA = _schema(SAMPLES_COLUMNS)
FRAMES_SCHEMA = _schema(FRAMES_COLUMNS)


def describe(schema: pa.Schema) -> dict[str, str]:
    """Column -> its description, from the field metadata (a table read back keeps it)."""
    return {f.name: (f.metadata or {}).get(b"description", b"").decode() for f in schema}


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def table(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
    rows = list(rows)
    cols = {f.name: [_clean(r.get(f.name)) for r in rows] for f in schema}
    return pa.table(cols, schema=schema)


def parquet_bytes(tbl: pa.Table) -> bytes:
    """Deterministic Parquet bytes (no timestamps; fixed row-group layout)."""
    buf = io.BytesIO()
    pq.write_table(tbl, buf, compression="zstd", row_group_size=1 << 20)
    return buf.getvalue()
