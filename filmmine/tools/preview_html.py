"""A preview as one self-contained HTML report: tables, inline SVG histograms and every image
inlined as a data: URI, so it opens from disk without a server."""

from __future__ import annotations

import base64
import html
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .. import __version__
from .summary import REASON_ORDER, STAGE_OF, STAGES, hms, human_bytes

if TYPE_CHECKING:
    from .preview_tiles import Preview


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
