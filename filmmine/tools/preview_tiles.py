"""A preview drawn: disparity colour-mapped, tiles captioned (a rejected frame with the score
that decided its reason), tiles laid out on a contact sheet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .preview_data import Rejected, Sample
from .summary import STAGE_OF, Corpus, CorpusSummary

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
    view = f"  view {m['view']['tag']}" if m.get("view") else ""   # a spherical film's
    label = (f"{m['film']}  frame {m['frame_index']}{view}  ({_when(m)})  shot "
             f"{m.get('shot_index')}")
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
    view = f"  view {r['view']}" if r.get("view") else ""
    detail = f"{r['film']}  frame {r['frame_index']}{view}  ({_when(r)})" + (
        f"   {score}" if score else "")
    put_text(tile, label, 2, th + 17, 0.5, REJECT_FG, 1, max_w=width - 4)
    put_text(tile, detail, 2, th + 34, 0.4, DIM, max_w=width - 4)
    key = f"{r['film']}_{r['frame_index']:08d}" + (f"_{r['view']}" if r.get("view") else "")
    return Tile(tile, key, None, None, None, r["reason"],
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
