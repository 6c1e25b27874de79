"""Look at a corpus: a PNG contact sheet, or one self-contained HTML report.

Accepted samples are shown as the stored left view beside its disparity, colour-mapped with
TURBO from the sample's 1st (blue) to 99th (red) percentile, invalid pixels magenta, with a
colour bar in px. Rejected frames have no stored image: they are decoded again from the source
film named in the film record (left and right view), captioned with their reason and the score
that decided it; a tile says "source missing" when the film is no longer where it was mined.

The HTML report inlines every image as a data: URI and draws its histograms as inline SVG, so
it is one file that opens from disk without a server.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from .. import __version__
from ..corpus.encode import decode_disparity, decode_jpeg
from ..corpus.reader import ShardError, iter_samples, shard_path
from ..errors import FilmmineError
from ..media.layout import view_size
from .summary import (
    REASON_ORDER,
    STAGE_OF,
    STAGES,
    Corpus,
    CorpusSummary,
    hms,
    human_bytes,
    load_corpus,
    summarize,
)

log = logging.getLogger(__name__)

COLORMAP = cv2.COLORMAP_TURBO
INVALID_BGR = (255, 0, 255)       # magenta: not a TURBO colour, so invalid pixels stand out
PANEL_W = 256                     # px, width of each image panel in a tile
PANEL_MAX_H = 256
BAR_W = 12                        # px, colour bar
BAR_LABEL_W = 52
GAP = 6
PAD = 14
CAPTION_H = 40
BG = (30, 30, 30)
FG = (235, 235, 235)
DIM = (170, 170, 170)
REJECT_FG = (80, 110, 255)        # BGR: a warm red for reasons
FONT = cv2.FONT_HERSHEY_SIMPLEX

# the score stored in frames.parquet that decided each reason, and the recipe threshold
REASON_SCORE = {
    "dark": ("mean_luma", "mean luma", "<=", ("filters", "dark_max_luma")),
    "low_texture": ("texture", "texture", "<", ("filters", "lowtex_min_grad")),
    "mono": ("mono_ratio", "L/R difference ratio", "<", ("filters", "mono_max_ratio")),
    "frozen": ("frozen_diff", "change", "<=", ("filters", "frozen_max_diff")),
    "credits": ("black_frac", "black fraction", ">=", ("filters", "credits_min_black")),
    "vertical_misaligned": ("vertical_fail_fraction", "vertical fail", ">",
                            ("disparity", "max_vertical_frac")),
    "inconsistent": ("consistency_rate", "LR-consistent", "<", ("disparity", "min_consistency")),
    "few_valid": ("valid_fraction", "valid", "<=", ("disparity", "min_valid_frac")),
    "flat": ("range_px", "range px", "<", None),
}


# ------------------------------------------------------------------------------------------
# Colour mapping


def turbo_lut() -> np.ndarray:
    """[256, 3] uint8 BGR: the TURBO colour of each index."""
    return cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], COLORMAP)[:, 0]


def colour_indices(disp: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[H, W] float px -> uint8 colour-map index, lo -> 0 and hi -> 255 (NaN -> 0)."""
    span = hi - lo if hi - lo > 1e-6 else 1.0
    t = np.nan_to_num((disp - lo) / span * 255.0, nan=0.0)
    return np.clip(np.rint(t), 0, 255).astype(np.uint8)


def colorize(disp: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[H, W] float px (NaN invalid) -> [H, W, 3] uint8 BGR: TURBO, invalid magenta."""
    out = cv2.applyColorMap(colour_indices(disp, lo, hi), COLORMAP)
    out[~np.isfinite(disp)] = INVALID_BGR
    return out


def colour_range(disp: np.ndarray, meta: dict | None = None) -> tuple[float, float]:
    """(lo, hi) px of the colour scale: the sample's stored p1 / p99, else computed."""
    p = (meta or {}).get("disp_percentiles_px") or {}
    if isinstance(p.get("p1"), (int, float)) and isinstance(p.get("p99"), (int, float)):
        lo, hi = float(p["p1"]), float(p["p99"])
    else:
        v = disp[np.isfinite(disp)]
        lo, hi = (float(np.percentile(v, 1)), float(np.percentile(v, 99))) if v.size else (0, 1)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()


def put_text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.42,
             colour=FG, thickness: int = 1, max_w: int | None = None) -> None:
    """cv2.putText with ASCII fallback, shortened with '..' to fit ``max_w`` px."""
    text = _ascii(text)
    if max_w is not None:
        while text and cv2.getTextSize(text, FONT, scale, thickness)[0][0] > max_w:
            text = text[:-3] + ".." if len(text) > 3 else ""
    cv2.putText(img, text, (x, y), FONT, scale, colour, thickness, cv2.LINE_AA)


def colour_bar(height: int, lo: float, hi: float) -> np.ndarray:
    """A vertical colour bar (hi at the top) with tick labels in px, on the background colour."""
    out = np.full((height, BAR_W + BAR_LABEL_W, 3), BG, np.uint8)
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None]
    out[:, :BAR_W] = cv2.applyColorMap(np.repeat(ramp, BAR_W, axis=1), COLORMAP)
    for frac in (0.0, 0.5, 1.0):
        y = round(frac * (height - 1))
        cv2.line(out, (BAR_W - 3, y), (BAR_W + 2, y), FG, 1)
        v = hi - frac * (hi - lo)
        ty = min(max(y + 4, 9), height - 2)
        put_text(out, f"{v:+.1f}", BAR_W + 4, ty, 0.36, FG)
    if height >= 60:
        put_text(out, "px", BAR_W + 4, height // 4 + 4, 0.36, DIM)
    return out


def _fit(w: int, h: int) -> tuple[int, int]:
    s = min(PANEL_W / w, PANEL_MAX_H / h)
    return max(2, round(w * s)), max(2, round(h * s))


# ------------------------------------------------------------------------------------------
# What to show


def pick_evenly(total: int, n: int) -> list[int]:
    """Up to n indices spread evenly over range(total), first and last included."""
    if total <= 0 or n <= 0:
        return []
    if n >= total:
        return list(range(total))
    return sorted({round(x) for x in np.linspace(0, total - 1, n)})


def select_samples(samples: pa.Table, n: int) -> list[dict]:
    rows = sorted(samples.to_pylist(), key=lambda r: (r["film"], r["frame_index"]))
    return [rows[i] for i in pick_evenly(len(rows), n)]


def select_rejected(frames: pa.Table, n: int) -> list[dict]:
    """Up to n rejected candidates: every reason in turn (pipeline order), each spread evenly."""
    rows = [r for r in frames.to_pylist() if not r["accepted"]]
    by_reason: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["film"], r["frame_index"])):
        by_reason.setdefault(r["reason"] or "?", []).append(r)
    order = [r for r in REASON_ORDER if r in by_reason] + sorted(
        set(by_reason) - set(REASON_ORDER))
    quota = dict.fromkeys(order, 0)
    left = min(n, len(rows))
    while left:
        for r in order:
            if left and quota[r] < len(by_reason[r]):
                quota[r] += 1
                left -= 1
    out = []
    for r in order:
        out += [by_reason[r][i] for i in pick_evenly(len(by_reason[r]), quota[r])]
    return out


@dataclass
class Sample:
    key: str
    meta: dict
    image: np.ndarray        # [H, W, 3] RGB
    disparity: np.ndarray    # [H, W] float32 px, NaN invalid


_NEEDED = ("jpg", "disp.png", "json")  # the members read (others, e.g. conf.png, are skipped)


def _member_skipped(shard: str, problem: str) -> None:
    log.warning("%s: %s, skipped (run filmmine verify)", shard, problem)


def load_samples(corpus: Path, rows: list[dict]) -> dict[str, Sample]:
    """The samples named by ``rows`` (samples.parquet rows), streamed from their shards."""
    want: dict[str, set[str]] = {}
    for r in rows:
        want.setdefault(r["shard"], set()).add(r["key"])
    out: dict[str, Sample] = {}
    for shard, keys in want.items():
        members: dict[str, dict[str, bytes]] = {}
        try:
            for s in iter_samples(shard_path(corpus, shard), members=_NEEDED, keys=keys,
                                  on_problem=functools.partial(_member_skipped, shard)):
                members[s.key] = s.members
                if len(members) == len(keys):
                    break
        except (OSError, ShardError) as e:
            log.warning("%s (run filmmine verify)", e)
        for key in keys:
            mem = members.get(key, {})
            try:
                meta = json.loads(mem["json"])
                out[key] = Sample(key, meta, decode_jpeg(mem["jpg"]),
                                  decode_disparity(mem["disp.png"], meta["disp_scale"],
                                                   meta["disp_offset"]))
            except (KeyError, ValueError) as e:
                log.warning("%s in %s unreadable: %s (run filmmine verify)", key, shard, e)
    return out


def probe_from_record(record: dict, with_index: bool = False):
    """The film's probe as mined; ``with_index``: with the frame-time index read again from
    the (left) source file, which the record does not store, so frame indices are exact."""
    from ..media.probe import ProbeResult, StreamInfo, film_pts_index

    p = dict(record["probe"])
    p["streams"] = tuple(StreamInfo(**s) for s in p["streams"])
    p["paths"] = tuple(p["paths"])
    p["frame_size"] = tuple(p["frame_size"])
    if with_index:
        p["pts"] = film_pts_index(p["paths"][0])
    return ProbeResult(**p)


def source_problem(record: dict) -> str | None:
    """Why the film's source cannot be decoded again (None when it can)."""
    from ..media.probe import probe_stream

    paths = record.get("probe", {}).get("paths") or record.get("source", {}).get("paths") or []
    if not paths:
        return "source missing: the film record names no file"
    for p, s in zip(paths, record["probe"]["streams"], strict=False):
        if not Path(p).is_file():
            return f"source missing: {p}"
        try:
            info = probe_stream(p)
        except FilmmineError as e:
            return f"source unreadable: {e}"
        if (info.width, info.height) != (s["width"], s["height"]):
            return (f"source changed: {Path(p).name} is {info.width}x{info.height}, was mined "
                    f"at {s['width']}x{s['height']}")
    return None


def decode_views(record: dict, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) full-aspect RGB views of one frame, decoded from the source film."""
    from ..media.decode import iter_frames
    from ..media.layout import views

    probe = probe_from_record(record, with_index=True)
    frame = next(iter_frames(probe, start_frame=frame_index, n_frames=1, grid_step=1,
                             timeout_s=120.0), None)
    if frame is None or frame.full is None:
        raise FilmmineError(f"frame {frame_index} did not decode")
    return views(frame.full, probe.layout)


@dataclass
class Rejected:
    row: dict                             # frames.parquet row
    views: tuple[np.ndarray, np.ndarray] | None
    problem: str | None                   # source missing / changed / undecodable


def load_rejected(corpus: Corpus, rows: list[dict], threads: int = 4) -> list[Rejected]:
    problems = {f: source_problem(corpus.records[f]) if f in corpus.records
                else "source missing: no film record" for f in {r["film"] for r in rows}}

    def one(r: dict) -> Rejected:
        why = problems[r["film"]]
        if why is not None:
            return Rejected(r, None, why)
        try:
            return Rejected(r, decode_views(corpus.records[r["film"]], r["frame_index"]), None)
        except FilmmineError as e:
            return Rejected(r, None, f"source frame undecodable: {e}")

    with ThreadPoolExecutor(max_workers=threads) as pool:  # ffmpeg processes do the work
        return list(pool.map(one, rows))


# ------------------------------------------------------------------------------------------
# Tiles


@dataclass
class Tile:
    """One contact-sheet cell: its picture (BGR, caption included) and what it shows."""

    image: np.ndarray
    key: str
    disp_rect: tuple[int, int, int, int] | None = None   # x, y, w, h inside the tile
    lo_px: float | None = None
    hi_px: float | None = None
    reason: str | None = None
    label: str = ""                                      # caption, first line
    detail: str = ""                                     # caption, second line
    panels: dict[str, np.ndarray] = field(default_factory=dict)  # BGR panels for HTML
    problem: str | None = None                           # why the picture is not shown


def _when(meta_or_row: dict) -> str:
    t = meta_or_row.get("pts_s") or 0.0
    return f"{int(t // 60)}:{t % 60:05.2f}"


def sample_tile(s: Sample) -> Tile:
    h, w = s.disparity.shape
    tw, th = _fit(w, h)
    left = cv2.resize(cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR), (tw, th),
                      interpolation=cv2.INTER_AREA)
    lo, hi = colour_range(s.disparity, s.meta)
    disp = cv2.resize(s.disparity, (tw, th), interpolation=cv2.INTER_NEAREST)
    dimg = colorize(disp, lo, hi)
    bar = colour_bar(th, lo, hi)
    width = 2 * tw + 2 * GAP + bar.shape[1]
    tile = np.full((th + CAPTION_H, width, 3), BG, np.uint8)
    tile[:th, :tw] = left
    x_disp = tw + GAP
    tile[:th, x_disp : x_disp + tw] = dimg
    tile[:th, x_disp + tw + GAP :] = bar
    m = s.meta
    p = m.get("disp_percentiles_px", {})
    label = f"{m['film']}  frame {m['frame_index']}  ({_when(m)})  shot {m.get('shot_index')}"
    detail = (f"d p1 {p.get('p1', float('nan')):+.1f} p50 {p.get('p50', float('nan')):+.1f} "
              f"p99 {p.get('p99', float('nan')):+.1f} px   valid "
              f"{100 * m['valid_fraction']:.1f}%")
    put_text(tile, label, 2, th + 16, 0.42, FG, max_w=width - 4)
    put_text(tile, detail, 2, th + 33, 0.4, DIM, max_w=width - 4)
    panel = np.full((th, tw + GAP + bar.shape[1], 3), BG, np.uint8)
    panel[:, :tw] = dimg
    panel[:, tw + GAP :] = bar
    return Tile(tile, s.key, (x_disp, 0, tw, th), lo, hi, None, label, detail,
                {"left": left, "disparity": panel})


# a frame judged on confident matches (``verdict = "evidence"``): its fitted field and roll
FITTED_VERTICAL = ("vertical_field_exceed_fraction", "fitted |v| over limit", ">",
                   ("disparity", "max_vertical_frac"))


def _score_text(row: dict, recipe: dict) -> str:
    spec = REASON_SCORE.get(row["reason"] or "")
    if row["reason"] == "vertical_misaligned" and row.get("vertical_field_exceed_fraction") \
            is not None:
        spec = FITTED_VERTICAL
        if abs(row.get("vertical_rotation_deg") or 0.0) > \
                recipe.get("disparity", {}).get("max_rotation_deg", float("inf")):
            return (f"roll {row['vertical_rotation_deg']:.2f} deg (> "
                    f"{recipe['disparity']['max_rotation_deg']:g})")
    if spec is None:
        return f"shot {row['shot_index']}" if row.get("shot_index", -1) >= 0 else "in transition"
    col, name, op, where = spec
    v = row.get(col)
    if v is None:
        return ""
    thr = recipe.get(where[0], {}).get(where[1]) if where else None
    if isinstance(v, float) and 0 <= v <= 1 and col.endswith(("fraction", "frac")):
        txt = f"{name} {100 * v:.1f}%" + (f" ({op} {100 * thr:.0f}%)" if thr is not None else "")
    else:
        txt = f"{name} {v:.2f}" + (f" ({op} {thr:g})" if thr is not None else "")
    return txt


def placeholder(w: int, h: int, text: str, sub: str = "") -> np.ndarray:
    """A grey checker panel with centred text: where no picture can be shown."""
    yy, xx = np.mgrid[:h, :w]
    img = np.where((((yy // 12) + (xx // 12)) % 2 == 0)[..., None], 70, 55).astype(np.uint8)
    img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
    tw = cv2.getTextSize(text, FONT, 0.6, 2)[0][0]
    put_text(img, text, max(4, (w - tw) // 2), h // 2, 0.6, (90, 200, 255), 2)
    if sub:
        sw = min(w - 8, cv2.getTextSize(_ascii(sub), FONT, 0.36, 1)[0][0])
        put_text(img, sub, max(4, (w - sw) // 2), h // 2 + 20, 0.36, FG, max_w=w - 8)
    return img


def rejected_tile(rej: Rejected, recipe: dict, view_wh: tuple[int, int]) -> Tile:
    r = rej.row
    if rej.views is not None:
        left, right = rej.views
        tw, th = _fit(left.shape[1], left.shape[0])
        panels = [cv2.resize(cv2.cvtColor(v, cv2.COLOR_RGB2BGR), (tw, th),
                             interpolation=cv2.INTER_AREA) for v in (left, right)]
        body = np.full((th, 2 * tw + GAP, 3), BG, np.uint8)
        body[:, :tw], body[:, tw + GAP :] = panels
    else:
        tw, th = _fit(*view_wh)
        why = rej.problem or "?"
        head, _, rest = why.partition(": ")
        body = placeholder(2 * tw + GAP, th, head, Path(rest).name if rest else "")
    width = body.shape[1]
    tile = np.full((th + CAPTION_H, width, 3), BG, np.uint8)
    tile[:th] = body
    stage = r["stage"] or STAGE_OF.get(r["reason"], "")
    label = f"{r['reason']} ({stage})"
    score = _score_text(r, recipe)
    detail = f"{r['film']}  frame {r['frame_index']}  ({_when(r)})" + (
        f"   {score}" if score else "")
    put_text(tile, label, 2, th + 17, 0.5, REJECT_FG, 1, max_w=width - 4)
    put_text(tile, detail, 2, th + 34, 0.4, DIM, max_w=width - 4)
    return Tile(tile, f"{r['film']}_{r['frame_index']:08d}", None, None, None, r["reason"],
                label, detail, {"views": body}, rej.problem)


# ------------------------------------------------------------------------------------------
# Contact sheet


@dataclass
class Placement:
    tile: Tile
    x: int
    y: int

    @property
    def disp_rect(self) -> tuple[int, int, int, int] | None:
        """Where the tile's disparity panel is in the sheet (x, y, w, h)."""
        if self.tile.disp_rect is None:
            return None
        x, y, w, h = self.tile.disp_rect
        return self.x + x, self.y + y, w, h


def compose_sheet(tiles: list[Tile], title: str, subtitle: str, legend: bool,
                  cols: int | None = None) -> tuple[np.ndarray, list[Placement]]:
    """Tiles in rows of ``cols`` under a title; returns the BGR sheet and where each tile is."""
    cols = cols or max(1, min(3, len(tiles)))
    cell_w = max((t.image.shape[1] for t in tiles), default=600)
    width = max(cols * cell_w + (cols + 1) * PAD, 900)
    head_h = 78
    rows = [tiles[i : i + cols] for i in range(0, len(tiles), cols)]
    heights = [max(t.image.shape[0] for t in row) for row in rows]
    height = head_h + sum(heights) + PAD * (len(rows) + 1) + (0 if tiles else 40)
    sheet = np.full((height, width, 3), BG, np.uint8)
    put_text(sheet, title, PAD, 30, 0.8, FG, 2, max_w=width - 2 * PAD)
    put_text(sheet, subtitle, PAD, 54, 0.45, DIM, 1, max_w=width - 2 * PAD - 290)
    if legend:  # magenta = invalid;  far (p1) [TURBO ramp] near (p99)
        x = width - PAD - 280
        sheet[44:58, x : x + 14] = INVALID_BGR
        put_text(sheet, "invalid", x + 18, 56, 0.42, FG)
        put_text(sheet, "far", x + 92, 56, 0.42, DIM)
        ramp = np.linspace(0, 255, 120).astype(np.uint8)[None, :]
        sheet[44:58, x + 120 : x + 240] = cv2.applyColorMap(np.repeat(ramp, 14, axis=0),
                                                             COLORMAP)
        put_text(sheet, "p1", x + 120, 72, 0.36, DIM)
        put_text(sheet, "p99", x + 222, 72, 0.36, DIM)
        put_text(sheet, "near", x + 245, 56, 0.42, DIM)
    if not tiles:
        put_text(sheet, "nothing to show", PAD, head_h + 24, 0.6, REJECT_FG, 1)
    cv2.line(sheet, (PAD, head_h - 6), (width - PAD, head_h - 6), (80, 80, 80), 1)
    placements = []
    y = head_h + PAD
    for row, h in zip(rows, heights, strict=True):
        for i, t in enumerate(row):
            x = PAD + i * (cell_w + PAD)
            th, tw = t.image.shape[:2]
            sheet[y : y + th, x : x + tw] = t.image
            placements.append(Placement(t, x, y))
        y += h + PAD
    return sheet, placements


@dataclass
class Preview:
    """What a preview shows: tiles (samples or rejected frames) and the corpus summary."""

    corpus: Corpus
    summary: CorpusSummary
    samples_total: int
    rejected_total: int
    sample_tiles: list[Tile]
    rejected_tiles: list[Tile]


def build_preview(corpus_dir: str | Path, *, n: int = 24, film: str | None = None,
                  samples: bool = True, rejected: bool = False) -> Preview:
    corpus = load_corpus(corpus_dir)
    summary = summarize(corpus, film)  # checks the film name
    stbl = corpus.film_samples(film) if film else corpus.samples
    ftbl = corpus.film_frames(film) if film else corpus.frames
    tiles, rtiles = [], []
    if samples:
        rows = select_samples(stbl, n)
        got = load_samples(corpus.path, rows)
        tiles = [sample_tile(got[r["key"]]) for r in rows if r["key"] in got]
    n_rejected = sum(1 for a in ftbl["accepted"].to_pylist() if not a)
    if rejected:
        recipe = corpus.manifest.get("recipe", {})
        for rej in load_rejected(corpus, select_rejected(ftbl, n)):
            probe = corpus.records.get(rej.row["film"], {}).get("probe", {})
            fw, fh = probe.get("frame_size", [640, 180])  # only sizes a placeholder
            vwh = view_size(fw, fh, probe.get("layout", "sbs"))
            rtiles.append(rejected_tile(rej, recipe, vwh))
    return Preview(corpus, summary, stbl.num_rows, n_rejected, tiles, rtiles)


def contact_sheet(pv: Preview, rejected: bool = False) -> tuple[np.ndarray, list[Placement]]:
    name = pv.corpus.path.resolve().name
    scope = f"film {pv.summary.films[0].film}" if len(pv.summary.films) == 1 else (
        f"{len(pv.summary.films)} films")
    if rejected:
        title = f"filmmine preview: {name} - rejected frames"
        sub = (f"{len(pv.rejected_tiles)} of {pv.rejected_total} rejected candidates ({scope}),"
               " every reason in turn | left and right view decoded from the source film")
        return compose_sheet(pv.rejected_tiles, title, sub, legend=False, cols=3)
    title = f"filmmine preview: {name}"
    sub = (f"{len(pv.sample_tiles)} of {pv.samples_total} samples ({scope}) | left view, "
           "disparity d = x_left - x_right (px) TURBO p1..p99 per sample")
    return compose_sheet(pv.sample_tiles, title, sub, legend=True, cols=3)


# ------------------------------------------------------------------------------------------
# HTML report


def _data_uri(img_bgr: np.ndarray, fmt: str = ".png", quality: int = 88) -> str:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == ".jpg" else []
    ok, buf = cv2.imencode(fmt, img_bgr, params)
    if not ok:
        raise ValueError("image encoding failed")
    mime = "image/jpeg" if fmt == ".jpg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.tobytes()).decode()}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo if hi > lo else 1.0
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 2.5, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def svg_histogram(series: list[tuple[str, list[float], str]], title: str, xlabel: str, *,
                  bins: int = 30, lo: float | None = None, hi: float | None = None,
                  stacked: bool = False, marker: tuple[float, str] | None = None,
                  width: int = 520, height: int = 240) -> str:
    """An inline SVG histogram of one or more series ((label, values, css colour))."""
    vals = [v for _, vs, _ in series for v in vs if v is not None and math.isfinite(v)]
    esc = html.escape
    head = f'<figure class="chart"><figcaption>{esc(title)}</figcaption>'
    if not vals:
        return head + '<p class="empty">no values</p></figure>'
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram([v for v in vs if v is not None and math.isfinite(v)], edges)[0]
              for _, vs, _ in series]
    top = max(1, int(np.sum(counts, axis=0).max() if stacked else max(c.max() for c in counts)))
    ml, mr, mt, mb = 44, 12, 10, 40
    pw, ph = width - ml - mr, height - mt - mb

    def sx(v: float) -> float:
        return ml + (v - lo) / (hi - lo) * pw

    def sy(c: float) -> float:
        return mt + ph - c / top * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="plot"/>']
    base = np.zeros(bins)
    for (label, _, colour), c in zip(series, counts, strict=True):
        for i in range(bins):
            if c[i] == 0:
                continue
            y0 = base[i] if stacked else 0
            x, w = sx(edges[i]), max(1.0, sx(edges[i + 1]) - sx(edges[i]) - 0.5)
            y1, y2 = sy(y0 + c[i]), sy(y0)
            opacity = "1" if stacked or len(series) == 1 else "0.6"
            parts.append(f'<rect x="{x:.1f}" y="{y1:.1f}" width="{w:.1f}" '
                         f'height="{y2 - y1:.1f}" fill="{colour}" fill-opacity="{opacity}">'
                         f'<title>{esc(label)}: {int(c[i])} in [{edges[i]:.3g}, '
                         f'{edges[i + 1]:.3g})</title></rect>')
        if stacked:
            base = base + c
    for t in _nice_ticks(lo, hi):
        x = sx(t)
        parts.append(f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" '
                     f'class="axis"/><text x="{x:.1f}" y="{mt + ph + 16}" '
                     f'text-anchor="middle">{t:g}</text>')
    for t in _nice_ticks(0, top, 4):
        y = sy(t)
        parts.append(f'<line x1="{ml - 4}" y1="{y:.1f}" x2="{ml}" y2="{y:.1f}" class="axis"/>'
                     f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle">'
                 f'{esc(xlabel)}</text>')
    if marker is not None and lo <= marker[0] <= hi:
        x = sx(marker[0])
        parts.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" '
                     f'class="marker"/><text x="{x + 4:.1f}" y="{mt + 12}" '
                     f'class="marker-label">{esc(marker[1])}</text>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{c}"></i>{esc(lab)}</span>'
                     for lab, _, c in series)
    return head + "".join(parts) + f'<div class="legend">{legend}</div></figure>'


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 background:#f4f5f7;color:#1d2430}
header{background:#1e2230;color:#f2f4f8;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px}header p{margin:0;color:#b8c0d0}
main{padding:8px 28px 28px}section{margin-top:22px}h2{font-size:18px;margin:0 0 10px}
h3{font-size:15px;margin:18px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 2px #0002;
 min-width:120px}.card b{display:block;font-size:20px}.card span{color:#5a6478;font-size:12px}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #e3e6ec;text-align:right;white-space:nowrap}
th{background:#eef0f4;font-weight:600}td:first-child,th:first-child{text-align:left}
tr.total td{font-weight:600;border-top:2px solid #c9ced8}
th.group{text-align:center;border-bottom:1px solid #c9ced8}
.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0}.chart{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 2px #0002}
.chart figcaption{font-weight:600;margin-bottom:4px}
.chart svg text{font-size:11px;fill:#3a4354}.chart .plot{fill:#fafbfc;stroke:#d5d9e1}
.chart .axis{stroke:#8890a0}.chart .marker{stroke:#c0392b;stroke-dasharray:4 3}
.chart .marker-label{fill:#c0392b}
.legend{font-size:12px;color:#3a4354}.key{margin-right:12px}
.key i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.grid{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.tile{background:#1e1e1e;color:#eee;border-radius:6px;padding:6px;box-shadow:0 1px 3px #0004}
.tile .pair{display:flex;gap:6px;align-items:flex-start}
.tile img{display:block;image-rendering:auto}
.tile figcaption{font-size:12px;margin-top:4px;max-width:590px}
.tile .dim{color:#aab}.tile .reason{color:#ff7a66;font-weight:600}
.swatch{display:inline-block;width:12px;height:12px;background:#ff00ff;vertical-align:-1px}
.note{color:#5a6478;font-size:13px}.warn{color:#b03a2e}
footer{padding:12px 28px;color:#5a6478;font-size:12px}
"""

SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
  document.getElementById("img-status").textContent = ok + " of " + imgs.length +
    " images decoded by this browser";
});
"""


def _table(headers: list[str], rows: list[list[str]], total: bool = True,
           groups: list[tuple[str, int]] | None = None) -> str:
    esc = html.escape
    out = ["<table>"]
    if groups:
        out.append("<tr>" + "".join(f'<th colspan="{n}" class="group">{esc(g)}</th>'
                                    if g else f'<th colspan="{n}"></th>'
                                    for g, n in groups) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>")
    for i, r in enumerate(rows):
        cls = ' class="total"' if total and i == len(rows) - 1 else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def report_html(pv: Preview) -> str:
    """The whole report as one HTML string (images inlined, no external resource)."""
    esc = html.escape
    s = pv.summary
    t = s.total
    rows = [*s.films, t]
    recipe = pv.corpus.manifest.get("recipe", {})
    name = pv.corpus.path.resolve().name
    cards = [("films", str(len(s.films))), ("of film", hms(t.duration_s)),
             ("candidate frames", str(t.candidates)), ("samples", str(t.accepted)),
             ("accepted", _pct(t.accept_rate)), ("shards", str(t.shards)),
             ("on disk", human_bytes(t.bytes))]
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>filmmine report: {esc(name)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>filmmine report: {esc(name)}</h1><p>{esc(s.path)} &middot; "
        f"{esc(s.format)} &middot; recipe {esc(s.recipe_name)} ({esc(s.recipe_digest)}) "
        f"&middot; filmmine {esc(s.filmmine_version)}</p></header><main>",
        '<section id="totals"><div class="cards">'
        + "".join(f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>'
                  for k, v in cards) + "</div></section>",
    ]
    film_rows = [[r.film, r.layout or "", hms(r.duration_s), _f(r.shots, "{}"),
                  str(r.candidates), str(r.accepted), _pct(r.accept_rate),
                  *(str(r.rejected_by_stage.get(st, 0)) for st in STAGES), str(r.shards),
                  human_bytes(r.bytes)] for r in rows]
    parts.append('<section id="films"><h2>Films</h2>' + _table(
        ["film", "layout", "duration", "shots", "candidates", "accepted", "rate", *STAGES,
         "shards", "size"], film_rows, groups=[("", 7), ("rejected at", 3), ("", 2)]))
    reasons = [r for r in REASON_ORDER if any(x.rejections.get(r) for x in rows)]
    reasons += sorted({k for x in rows for k in x.rejections} - set(reasons))
    if reasons:
        groups = [("", 1)]
        for st in STAGES:
            k = sum(1 for r in reasons if STAGE_OF.get(r) == st)
            if k:
                groups.append((st, k))
        other = sum(1 for r in reasons if r not in STAGE_OF)
        if other:
            groups.append(("other", other))
        parts.append("<h3>Rejected frames by reason</h3>" + _table(
            ["film", *reasons], [[x.film, *(str(x.rejections.get(r, 0)) for r in reasons)]
                                 for x in rows], groups=groups))
    parts.append("<h3>Disparity and valid pixels (accepted samples)</h3>" + _table(
        ["film", "samples", "p1 px", "p50 px", "p99 px", "range px", "min", "q25", "median",
         "q75", "max"],
        [[x.film, str(x.samples), *(_f(x.disp_px[p]) for p in ("p1", "p50", "p99")),
          _f(x.range_px[2] if x.range_px else None, "{:.1f}"),
          *([_pct(v) for v in x.valid_fraction] if x.valid_fraction else ["-"] * 5)]
         for x in rows],
        groups=[("", 2), ("median of per-sample", 4), ("valid fraction", 5)]))
    parts.append('<p class="note">d = x_left - x_right in px of the stored image, valid up to '
                 "scale and shift; p1/p50/p99 are percentiles of each sample's valid "
                 "disparity.</p>")
    if s.inputs_not_mined:
        parts.append("<h3>Inputs not mined</h3><ul>" + "".join(
            f"<li><b>{esc(i['status'])}</b> {esc(i['source'])}: {esc(i['reason'] or '')}</li>"
            for i in s.inputs_not_mined) + "</ul>")
    if s.warnings:
        parts.append('<h3 class="warn">Warnings (run filmmine verify)</h3><ul>' + "".join(
            f'<li class="warn">{esc(w)}</li>' for w in s.warnings) + "</ul>")
    parts.append("</section>")
    parts.append(_charts(pv, recipe))
    parts.append(_tiles_html(pv))
    parts.append(f'</main><footer>filmmine {esc(__version__)} &middot; one self-contained file'
                 ' (images inlined) &middot; <span id="img-status">images not checked '
                 f"(scripts off)</span></footer><script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _charts(pv: Preview, recipe: dict) -> str:
    film = pv.summary.films[0].film if len(pv.summary.films) == 1 else None
    stbl = pv.corpus.film_samples(film) if film else pv.corpus.samples
    ftbl = pv.corpus.film_frames(film) if film else pv.corpus.frames
    sc = stbl.select(["disp_p1_px", "disp_p50_px", "disp_p99_px", "range_px",
                      "valid_fraction"]).to_pydict()
    disp = svg_histogram(
        [("p1", sc["disp_p1_px"], "#3b6fd8"), ("p50", sc["disp_p50_px"], "#2ca25f"),
         ("p99", sc["disp_p99_px"], "#d7301f")],
        "Disparity percentiles per sample", "disparity d (px)")
    rng = svg_histogram([("range p99 - p1", sc["range_px"], "#7b5fc7")],
                        "Disparity range per sample", "range (px)")
    fr = ftbl.select(["stage", "accepted", "valid_fraction"]).to_pylist()
    acc = [r["valid_fraction"] for r in fr if r["accepted"]]
    rej = [r["valid_fraction"] for r in fr if r["stage"] == "disparity"]
    thr = recipe.get("disparity", {}).get("min_valid_frac")
    valid = svg_histogram(
        [("accepted", acc, "#2ca25f"), ("rejected at the disparity stage", rej, "#d7301f")],
        "Valid-pixel fraction of frames that reached the disparity stage",
        "valid fraction", lo=0.0, hi=1.0, bins=40, stacked=True,
        marker=(thr, f"min_valid_frac {thr:g}") if isinstance(thr, (int, float)) else None)
    return ('<section id="distributions"><h2>Distributions</h2><div class="charts">'
            f"{disp}{rng}{valid}</div></section>")


def _tiles_html(pv: Preview) -> str:
    esc = html.escape
    out = [f'<section id="samples"><h2>Accepted samples ({len(pv.sample_tiles)} of '
           f"{pv.samples_total})</h2>"
           '<p class="note">Left: the stored left view. Right: its disparity, TURBO from the '
           "sample's p1 (blue) to p99 (red), with a colour bar in px; "
           '<span class="swatch"></span> magenta = invalid (failed the left-right or vertical '
           'check).</p><div class="grid">']
    for t in pv.sample_tiles:
        left, disp = t.panels["left"], t.panels["disparity"]
        out.append(
            f'<figure class="tile" id="{esc(t.key)}"><div class="pair">'
            f'<img src="{_data_uri(left, ".jpg")}" width="{left.shape[1]}" '
            f'height="{left.shape[0]}" alt="left view {esc(t.key)}">'
            f'<img src="{_data_uri(disp)}" width="{disp.shape[1]}" height="{disp.shape[0]}" '
            f'alt="disparity {esc(t.key)}"></div><figcaption>{esc(t.label)}<br>'
            f'<span class="dim">{esc(t.detail)}</span></figcaption></figure>')
    out.append("</div></section>")
    out.append(f'<section id="rejected"><h2>Rejected frames ({len(pv.rejected_tiles)} of '
               f"{pv.rejected_total})</h2><p class=\"note\">Left and right view decoded again "
               "from the source film; every reason in turn. Thresholds from the corpus "
               'recipe.</p><div class="grid">')
    for t in pv.rejected_tiles:
        body = t.panels["views"]
        out.append(
            f'<figure class="tile"><img src="{_data_uri(body, ".jpg")}" '
            f'width="{body.shape[1]}" height="{body.shape[0]}" alt="{esc(t.key)}">'
            f'<figcaption><span class="reason">{esc(t.label)}</span><br>'
            f'<span class="dim">{esc(t.detail)}</span></figcaption></figure>')
    if not pv.rejected_tiles:
        out.append('<p class="note">no rejected frame</p>')
    out.append("</div></section>")
    return "".join(out)


# ------------------------------------------------------------------------------------------
# Entry point


def write_preview(corpus_dir: str | Path, out: str | Path, *, n: int = 24,
                  film: str | None = None, rejected: bool = False) -> str:
    """Write ``out`` (.png contact sheet or .html report); returns a one-line summary."""
    from ..corpus.atomic import write_bytes

    out = Path(out)
    kind = out.suffix.lower()
    if kind not in (".png", ".html", ".htm"):
        raise FilmmineError(f"--out must end in .png or .html, not {out.name!r}")
    if kind == ".png":
        pv = build_preview(corpus_dir, n=n, film=film, samples=not rejected, rejected=rejected)
        sheet, placements = contact_sheet(pv, rejected)
        ok, buf = cv2.imencode(".png", sheet)
        if not ok:
            raise FilmmineError("PNG encoding failed")
        write_bytes(out, buf.tobytes())
        what = "rejected frames" if rejected else "samples"
        return (f"wrote {out}: contact sheet of {len(placements)} {what}, "
                f"{sheet.shape[1]}x{sheet.shape[0]} px{_not_shown(pv.rejected_tiles)}")
    pv = build_preview(corpus_dir, n=n, film=film, samples=True, rejected=True)
    write_bytes(out, report_html(pv).encode())
    return (f"wrote {out}: HTML report, {len(pv.sample_tiles)} samples and "
            f"{len(pv.rejected_tiles)} rejected frames, {human_bytes(out.stat().st_size)}"
            f"{_not_shown(pv.rejected_tiles)}")


def _not_shown(tiles: list[Tile]) -> str:
    problems = sorted({t.problem for t in tiles if t.problem})
    if not problems:
        return ""
    n = sum(1 for t in tiles if t.problem)
    return f"; {n} rejected frame(s) not shown: {'; '.join(problems)}"
