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

SAMPLES_SCHEMA = pa.schema([
    ("film", pa.string()),
    ("key", pa.string()),
    ("shard", pa.string()),
    ("frame_index", pa.int64()),
    ("pts_s", pa.float64()),
    ("shot_index", pa.int32()),
    ("layout", pa.string()),
    ("view_w", pa.int32()), ("view_h", pa.int32()),
    ("crop_x", pa.int32()), ("crop_y", pa.int32()), ("crop_w", pa.int32()), ("crop_h", pa.int32()),
    ("width", pa.int32()), ("height", pa.int32()),
    ("disp_scale", pa.float64()), ("disp_offset", pa.float64()),
    ("backend", pa.string()),
    ("valid_fraction", pa.float64()),
    ("lr_pass_fraction", pa.float64()),
    ("vertical_fail_fraction", pa.float64()),
    ("vertical_median_px", pa.float64()),
    ("vertical_abs_p95_px", pa.float64()),
    ("disp_p1_px", pa.float64()), ("disp_p50_px", pa.float64()), ("disp_p99_px", pa.float64()),
    ("range_px", pa.float64()),
    ("matchable_fraction", pa.float64()),   # labelled both ways by the matcher
    ("consistency_rate", pa.float64()),     # of those, passing the left-right check
    ("vertical_offset_px", pa.float64()),   # fitted vertical field (null: not fitted)
    ("vertical_rotation_deg", pa.float64()),
])

FRAMES_SCHEMA = pa.schema([
    ("film", pa.string()),
    ("frame_index", pa.int64()),
    ("pts_s", pa.float64()),
    ("shot_index", pa.int32()),       # -1: inside a transition (belongs to no shot)
    ("accepted", pa.bool_()),
    ("stage", pa.string()),           # sampling | filter | disparity | accepted
    ("reason", pa.string()),          # null when accepted
    ("key", pa.string()),             # sample key when accepted
    ("mean_luma", pa.float64()),
    ("black_frac", pa.float64()),
    ("white_frac", pa.float64()),
    ("texture", pa.float64()),
    ("mono_ratio", pa.float64()),
    ("frozen_diff", pa.float64()),
    ("motion", pa.float64()),                 # 99th percentile of 16 px block change
    ("valid_fraction", pa.float64()),
    ("vertical_fail_fraction", pa.float64()),
    ("range_px", pa.float64()),
    # the disparity verdict's evidence (null where the frame did not reach it)
    ("matchable_fraction", pa.float64()),     # share of pixels the matcher labelled both ways
    ("consistency_rate", pa.float64()),       # of those, the share passing the LR check
    ("vertical_matches", pa.int32()),         # confident correspondences (filmmine.alignment)
    ("vertical_inliers", pa.int32()),
    ("vertical_offset_px", pa.float64()),     # the fitted field: offset at the centre, px
    ("vertical_rotation_deg", pa.float64()),  # roll of the right view
    ("vertical_scale_pct", pa.float64()),     # vertical scale difference
    ("vertical_keystone_px", pa.float64()),   # keystone term at the corners, px
    ("vertical_residual_px", pa.float64()),   # spread of the inliers about the field
    ("vertical_field_exceed_fraction", pa.float64()),  # share of the frame beyond the limit
    ("vertical_field_abs_p95_px", pa.float64()),
])


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
