"""Look at a corpus: a PNG contact sheet, or one self-contained HTML report.

Accepted samples are shown as the stored left view beside its disparity, colour-mapped with
TURBO from the sample's 1st (blue) to 99th (red) percentile, invalid pixels magenta, with a
colour bar in px. Rejected frames have no stored image: they are decoded again from the source
film named in the film record (left and right view), captioned with their reason and the score
that decided it; a tile says "source missing" when the film is no longer where it was mined.

The HTML report inlines every image as a data: URI and draws its histograms as inline SVG, so
it is one file that opens from disk without a server.

This module builds a preview and writes it; ``preview_data`` picks, reads and decodes what it
shows, ``preview_tiles`` draws the tiles and the contact sheet, ``preview_html`` the report.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import FilmmineError
from ..media.layout import view_size
from .preview_data import load_rejected, load_samples, select_rejected, select_samples
from .preview_html import report_html
from .preview_tiles import Placement, Preview, Tile, compose_sheet, rejected_tile, sample_tile
from .summary import human_bytes, load_corpus, summarize


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
