"""The corpus tables: one explicit pyarrow schema each, kept in one place.

``samples.parquet`` has a row per accepted sample; ``frames.parquet`` a row per candidate frame
with the stage that decided it, the reason when rejected, and every filter score.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ..media.layout import LAYOUTS
from ..stages.projection import PROJECTIONS

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

def _col(name: str, dtype: pa.DataType, doc: str, at: tuple = ()) -> tuple:
    """A Parquet column filled from a sample field (``at``: the place inside its JSON value)."""
    return name, dtype, doc, at


def _meta(schema: dict, *columns: tuple, required: bool = True, record: type | None = None
          ) -> dict:
    """A field's JSON schema, its Parquet columns, whether KEY.json always has it, and the
    record class of a nested group."""
    columns = tuple(c if len(c) == 4 else (*c, ()) for c in columns)
    return {"schema": schema, "columns": columns, "required": required, "record": record}


_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_WH = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}
_NUMBER_OR_NULL = {"type": ["number", "null"]}


@dataclass(frozen=True, kw_only=True)
class VerticalStats:
    """Vertical flow left to right over the frame (the per-pixel check's inputs)."""

    fail_fraction: float = field(metadata=_meta(
        {"type": "number"}, _col("vertical_fail_fraction", pa.float64(), "share of all pixels "
                                 "whose vertical flow exceeds disparity.vertical_max_px")))
    median_px: float = field(metadata=_meta(
        {"type": "number"}, _col("vertical_median_px", pa.float64(),
                                 "median vertical flow left to right, px")))
    abs_p95_px: float = field(metadata=_meta(
        {"type": "number"}, _col("vertical_abs_p95_px", pa.float64(),
                                 "95th percentile of |vertical flow|, px")))


@dataclass(frozen=True, kw_only=True)
class DisparityPercentiles:
    """Percentiles of the valid disparity, px."""

    p1: float = field(metadata=_meta({"type": "number"}, _col(
        "disp_p1_px", pa.float64(), "1st percentile of the valid disparity, px")))
    p50: float = field(metadata=_meta({"type": "number"}, _col(
        "disp_p50_px", pa.float64(), "median of the valid disparity, px")))
    p99: float = field(metadata=_meta({"type": "number"}, _col(
        "disp_p99_px", pa.float64(), "99th percentile of the valid disparity, px")))


@dataclass(frozen=True, kw_only=True)
class Alignment:
    """The vertical field fitted on confident matches (``filmmine.stages.alignment``); a
    measure is None where it could not be fitted (all are written, null or not)."""

    matches: int = field(metadata=_meta({"type": "integer", "minimum": 0}))
    inliers: int = field(metadata=_meta({"type": "integer", "minimum": 0}))
    offset_px: float | None = field(metadata=_meta(_NUMBER_OR_NULL, _col(
        "vertical_offset_px", pa.float64(), "vertical field fitted on confident matches: "
        "offset at the centre, px (null: not fitted)")))
    rotation_deg: float | None = field(metadata=_meta(_NUMBER_OR_NULL, _col(
        "vertical_rotation_deg", pa.float64(), "fitted roll of the right view, degrees (null: "
        "not fitted)")))
    scale_pct: float | None = field(metadata=_meta(_NUMBER_OR_NULL, required=False))
    keystone_px: float | None = field(metadata=_meta(_NUMBER_OR_NULL, required=False))
    residual_px: float | None = field(metadata=_meta(_NUMBER_OR_NULL, required=False))
    field_exceed_fraction: float | None = field(metadata=_meta(_NUMBER_OR_NULL,
                                                               required=False))
    field_abs_p95_px: float | None = field(metadata=_meta(_NUMBER_OR_NULL, required=False))


@dataclass(frozen=True, kw_only=True)
class StereoRig:
    """Spatial video only: the rig's metric metadata and the stored image's focal length."""

    baseline_mm: float | None = field(metadata=_meta(_NUMBER_OR_NULL))
    hfov_deg: float | None = field(metadata=_meta(_NUMBER_OR_NULL))
    focal_px: float | None = field(metadata=_meta(_NUMBER_OR_NULL))
    disparity_adjustment: float | None = field(metadata=_meta(_NUMBER_OR_NULL))


@dataclass(frozen=True, kw_only=True)
class EyeRotationRecord:
    """The right eye's rotation against the left's, fitted on the frame and undone in its views
    (``filmmine.stages.projection.eye_rotation``)."""

    pitch_deg: float = field(metadata=_meta({"type": "number"}))
    roll_deg: float = field(metadata=_meta({"type": "number"}))
    matches: int = field(metadata=_meta({"type": "integer", "minimum": 0}))
    inliers: int = field(metadata=_meta({"type": "integer", "minimum": 0}))
    residual_deg: float = field(metadata=_meta({"type": "number", "minimum": 0}))


@dataclass(frozen=True, kw_only=True)
class ViewRecord:
    """Spherical films only: the pinhole view of both eyes the sample is (its image and
    disparity are the view's, ``focal_px`` its focal length in px)."""

    tag: str = field(metadata=_meta(
        {"type": "string", "pattern": "^y[0-9]{3}p-?[0-9]{2,3}$"},
        _col("view", pa.string(), "spherical films: the pinhole view (yaw, pitch) the sample "
             "was cut from, e.g. y060p000; null for flat films")))
    projection: str = field(metadata=_meta({"enum": list(PROJECTIONS)}))
    yaw_deg: float = field(metadata=_meta({"type": "number"}))
    pitch_deg: float = field(metadata=_meta({"type": "number"}))
    fov_deg: float = field(metadata=_meta({"type": "number", "exclusiveMinimum": 0}))
    focal_px: float = field(metadata=_meta({"type": "number", "exclusiveMinimum": 0}))
    eye_rotation: EyeRotationRecord | None = field(metadata=_meta(
        {"type": ["object", "null"],
         "description": "null: not fitted (too few confident matches, or rectify off)"},
        record=EyeRotationRecord))


DISPARITY_MEANING = "d = x_left - x_right in px of the stored image, up to scale and shift"


@dataclass(frozen=True, kw_only=True)
class SampleMeta:
    """A sample's metadata, defined once: the member ``KEY.json`` (``to_json``), its row of
    ``samples.parquet`` (``row``, columns ``SAMPLES_COLUMNS``) and the JSON schema
    (``sample_json_schema``) all come from these fields and their metadata."""

    film: str = field(metadata=_meta({"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}, _FILM))
    key: str = field(metadata=_meta(
        {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
        _col("key", pa.string(), "sample key: the shard members KEY.jpg, KEY.disp.png, "
             "KEY.json")))
    frame_index: int = field(metadata=_meta({"type": "integer", "minimum": 0}, _FRAME))
    pts_s: float = field(metadata=_meta({"type": "number", "minimum": 0}, _PTS))
    # set when the film is assembled (shots are counted over the whole film)
    shot_index: int | None = field(default=None, metadata=_meta(
        {"type": "integer", "minimum": 0},
        _col("shot_index", pa.int32(), "0-based shot of the film, counted over cuts and "
             "transitions")))
    layout: str = field(metadata=_meta(
        {"enum": list(LAYOUTS)},
        _col("layout", pa.string(), "stereo layout the film was mined in (sbs, half-sbs, tab, "
             "half-tab, separate)")))
    view_size: tuple[int, int] = field(metadata=_meta(
        _WH, _col("view_w", pa.int32(), "width of a full-aspect view, px", (0,)),
        _col("view_h", pa.int32(), "height of a full-aspect view, px", (1,))))
    crop: tuple[int, int, int, int] = field(metadata=_meta(
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 4,
         "maxItems": 4},
        _col("crop_x", pa.int32(), "crop of the view (letterbox, floating-window margins): "
             "left, px", (0,)),
        _col("crop_y", pa.int32(), "crop: top, px of the view", (1,)),
        _col("crop_w", pa.int32(), "crop: width, px of the view", (2,)),
        _col("crop_h", pa.int32(), "crop: height, px of the view", (3,))))
    size: tuple[int, int] = field(metadata=_meta(
        _WH, _col("width", pa.int32(), "stored image and disparity width, px", (0,)),
        _col("height", pa.int32(), "stored image and disparity height, px", (1,))))
    disp_scale: float = field(metadata=_meta(
        {"type": "number", "exclusiveMinimum": 0},
        _col("disp_scale", pa.float64(), "disparity px per step of KEY.disp.png: d = value * "
             "disp_scale + disp_offset (value 0 = invalid)")))
    disp_offset: float = field(metadata=_meta(
        {"type": "number"}, _col("disp_offset", pa.float64(),
                                 "disparity offset, px (see disp_scale)")))
    disparity: str = field(default=DISPARITY_MEANING, metadata=_meta({"type": "string"},
                                                                     required=False))
    backend: str = field(metadata=_meta({"type": "string"}, _col(
        "backend", pa.string(), "flow backend that made the label (recipe disparity.backend)")))
    valid_fraction: float = field(metadata=_meta(_FRACTION, _col(
        "valid_fraction", pa.float64(), "share of pixels with a label")))
    lr_pass_fraction: float = field(metadata=_meta(_FRACTION, _col(
        "lr_pass_fraction", pa.float64(), "share of all pixels passing the left-right check"),
        required=False))
    vertical: VerticalStats = field(metadata=_meta({}, record=VerticalStats))
    disp_percentiles_px: DisparityPercentiles = field(metadata=_meta(
        {}, required=False, record=DisparityPercentiles))
    range_px: float = field(metadata=_meta({"type": "number"}, _col(
        "range_px", pa.float64(), "robust disparity range (disparity.range_percentiles), px"),
        required=False))
    matchable_fraction: float | None = field(default=None, metadata=_meta(
        _FRACTION, _EVIDENCE[0], required=False))
    consistency_rate: float | None = field(default=None, metadata=_meta(
        _FRACTION, _EVIDENCE[1], required=False))
    alignment: Alignment | None = field(default=None, metadata=_meta(
        {}, required=False, record=Alignment))
    stereo: StereoRig | None = field(default=None, metadata=_meta(
        {"description": "spatial video (layout mv-hevc) only: depth in metres = focal_px * "
         "baseline_mm / 1000 / d (d in px of the stored image; CORPUS.md)"}, required=False,
        record=StereoRig))
    view: ViewRecord | None = field(default=None, metadata=_meta({}, required=False,
                                                                 record=ViewRecord))

    def to_json(self) -> dict:
        """The ``KEY.json`` member's object (absent groups left out, tuples as lists)."""
        return _to_json(self)

    @classmethod
    def from_json(cls, obj: dict) -> SampleMeta:
        return _from_json(cls, obj)

    def row(self, shard: str) -> dict:
        """The sample's row of ``samples.parquet``; ``shard``: the shard file holding it."""
        out = {"shard": shard}
        for name, _dtype, _doc, where in _columns(type(self)):
            out[name] = _pick(self, where)
        return out


def _columns(cls, prefix: tuple = ()) -> list[tuple]:
    """(column, type, description, path of attributes and indexes) of a record's fields."""
    out = []
    for f in fields(cls):
        sub = _record_type(f)
        if sub is not None and not f.metadata.get("columns"):
            out += _columns(sub, (*prefix, f.name))
        for name, dtype, doc, at in f.metadata.get("columns", ()):
            out.append((name, dtype, doc, (*prefix, f.name, *at)))
    return out


def _record_type(f):
    """The record class of a field holding a nested record (None for a plain value)."""
    return f.metadata.get("record")


def _pick(obj, where: tuple):
    for step in where:
        if obj is None:
            return None
        obj = obj[step] if isinstance(step, int) else getattr(obj, step)
    return obj


def _to_json(rec) -> dict:
    out = {}
    for f in fields(rec):
        v = getattr(rec, f.name)
        if v is None and f.default is None:   # an optional field not set: left out
            continue
        if is_dataclass(v):
            v = _to_json(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _from_json(cls, obj: dict):
    kw = {}
    for f in fields(cls):
        if f.name not in obj:
            continue
        v = obj[f.name]
        sub = _record_type(f)
        if sub is not None and v is not None:
            v = _from_json(sub, v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


def _json_schema(cls) -> dict:
    props, required = {}, []
    for f in fields(cls):
        sub = _record_type(f)
        prop = dict(f.metadata.get("schema", {}))
        if sub is not None:
            prop = {**_json_schema(sub), **prop}
        props[f.name] = prop
        if f.metadata.get("required", True) and f.name != "shot_index":
            required.append(f.name)
    out = {"type": "object", "required": required, "properties": props}
    if cls is not SampleMeta:
        out["description"] = " ".join(cls.__doc__.split())
    return out


def sample_json_schema() -> dict:
    """The JSON schema of ``KEY.json`` (``manifests/sample.schema.json`` holds it)."""
    out = _json_schema(SampleMeta)
    # a corpus sample has its shot: it is set before the shards are written
    out["required"].insert(out["required"].index("layout"), "shot_index")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "filmmine sample metadata (KEY.json)", **out}


# the shard column is the row's own (not the sample's JSON), after the key
_SAMPLE_COLUMNS = [(n, t, d) for n, t, d, _ in _columns(SampleMeta)]
SAMPLES_COLUMNS = [*_SAMPLE_COLUMNS[:2],
                   ("shard", pa.string(), "the shard file (shards/NAME) holding the sample"),
                   *_SAMPLE_COLUMNS[2:]]


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
    ("view", pa.string(), "spherical films: the pinhole view (yaw, pitch) of the row, e.g. "
     "y060p000; null for flat films"),
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


def conform(tbl: pa.Table, schema: pa.Schema) -> pa.Table:
    """``tbl`` with ``schema``'s columns in its order: a column a film's table lacks (written
    by a version before the column was added) is null."""
    cols = [tbl[f.name].cast(f.type) if f.name in tbl.column_names
            else pa.nulls(tbl.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def parquet_bytes(tbl: pa.Table) -> bytes:
    """Deterministic Parquet bytes (no timestamps; fixed row-group layout)."""
    buf = io.BytesIO()
    pq.write_table(tbl, buf, compression="zstd", row_group_size=1 << 20)
    return buf.getvalue()
