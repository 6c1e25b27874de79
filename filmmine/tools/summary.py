"""What a corpus holds: per-film and total tables computed from its files. Pure functions.

Counts come from the Parquet tables (``frames.parquet``: every candidate with its stage and
reason; ``samples.parquet``: every accepted sample); duration, layout and shots from the film
records; shards and bytes from the manifest. Where the tables and the records disagree the
report carries a warning (``filmmine verify`` checks the shards themselves).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..corpus.reader import read_manifest, read_table
from ..errors import FilmmineError
from ..stages import disparity, filters

SAMPLING_REASONS = ("transition", "near_cut", "short_shot", "shot_quota")
STAGES = ("sampling", "filter", "disparity")
# every documented reason, in the order the pipeline decides them (CORPUS.md)
REASON_ORDER = (*SAMPLING_REASONS, *filters.REASONS, *disparity.REASONS)
STAGE_OF = {**{r: "sampling" for r in SAMPLING_REASONS}, **{r: "filter" for r in filters.REASONS},
            **{r: "disparity" for r in disparity.REASONS}}
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Corpus:
    """A corpus directory, read once: manifest, film records and both tables."""

    path: Path
    manifest: dict
    records: dict[str, dict]
    samples: pa.Table
    frames: pa.Table
    unreadable: set[str] = field(default_factory=set)  # films whose record does not parse

    def film_samples(self, film: str) -> pa.Table:
        return _rows_of(self.samples, film)

    def film_frames(self, film: str) -> pa.Table:
        return _rows_of(self.frames, film)


def _rows_of(tbl: pa.Table, film: str) -> pa.Table:
    import pyarrow.compute as pc

    return tbl.filter(pc.equal(tbl["film"], film))


def load_corpus(path: str | Path) -> Corpus:
    path = Path(path)
    man = read_manifest(path)
    records, unreadable = {}, set()
    for f in man.get("films", {}):
        rp = path / "films" / f"{f}.json"
        if rp.is_file():
            try:
                rec = json.loads(rp.read_text())
            except (OSError, ValueError):
                rec = None
            if isinstance(rec, dict):
                records[f] = rec
            else:  # summarize warns; the counts still come from the tables
                unreadable.add(f)
    return Corpus(path, man, records, read_table(path, "samples"), read_table(path, "frames"),
                  unreadable)


def quantiles(values, qs=QUANTILES) -> list[float] | None:
    """Quantiles of the finite values, or None when there are none."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return [float(x) for x in np.quantile(v, qs)]


def _median(values) -> float | None:
    q = quantiles(values, (0.5,))
    return None if q is None else q[0]


def _ordered(reasons: dict[str, int]) -> dict[str, int]:
    known = [r for r in REASON_ORDER if r in reasons]
    return {r: reasons[r] for r in known + sorted(set(reasons) - set(known))}


@dataclass
class FilmSummary:
    film: str
    layout: str | None
    layout_reason: str | None
    duration_s: float | None
    shots: int | None
    candidates: int                       # frames.parquet rows
    accepted: int                         # frames.parquet accepted rows
    samples: int                          # samples.parquet rows
    rejected_by_stage: dict[str, int]
    rejections: dict[str, int]            # reason -> count, in pipeline order
    disp_px: dict[str, float | None]      # medians over samples of each sample's p1/p50/p99
    range_px: list[float] | None          # min/q25/median/q75/max over samples
    valid_fraction: list[float] | None    # min/q25/median/q75/max over samples
    shards: int
    bytes: int
    note: str | None = None

    @property
    def accept_rate(self) -> float | None:
        return self.accepted / self.candidates if self.candidates else None

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["accept_rate"] = self.accept_rate
        for k in ("range_px", "valid_fraction"):
            if d[k] is not None:
                d[k] = dict(zip(("min", "q25", "median", "q75", "max"), d[k], strict=True))
        return d


@dataclass
class CorpusSummary:
    path: str
    format: str
    filmmine_version: str
    recipe_name: str
    recipe_digest: str
    films: list[FilmSummary]
    total: FilmSummary
    inputs_not_mined: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"corpus": self.path, "format": self.format,
                "filmmine_version": self.filmmine_version,
                "recipe": {"name": self.recipe_name, "digest": self.recipe_digest},
                "totals": self.total.to_json() | {"films": len(self.films)},
                "films": [f.to_json() for f in self.films],
                "inputs_not_mined": self.inputs_not_mined, "warnings": self.warnings}


def summarize_rows(name: str, frames: pa.Table, samples: pa.Table, *, layout=None,
                   layout_reason=None, duration_s=None, shots=None, shards=0, nbytes=0,
                   note=None) -> FilmSummary:
    """One summary row from a film's (or the whole corpus's) table rows."""
    fr = frames.select(["accepted", "stage", "reason"]).to_pylist()
    reasons: dict[str, int] = {}
    by_stage = dict.fromkeys(STAGES, 0)
    for r in fr:
        if r["accepted"]:
            continue
        reason = r["reason"] or "?"
        reasons[reason] = reasons.get(reason, 0) + 1
        by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + 1
    cols = samples.select(["disp_p1_px", "disp_p50_px", "disp_p99_px", "range_px",
                           "valid_fraction"]).to_pydict()
    return FilmSummary(
        film=name, layout=layout, layout_reason=layout_reason, duration_s=duration_s,
        shots=shots, candidates=len(fr), accepted=sum(1 for r in fr if r["accepted"]),
        samples=samples.num_rows, rejected_by_stage=by_stage, rejections=_ordered(reasons),
        disp_px={p: _median(cols[f"disp_{p}_px"]) for p in ("p1", "p50", "p99")},
        range_px=quantiles(cols["range_px"]), valid_fraction=quantiles(cols["valid_fraction"]),
        shards=shards, bytes=nbytes, note=note,
    )


def summarize(corpus: Corpus, film: str | None = None) -> CorpusSummary:
    """Per-film rows and a total row; ``film`` restricts both to one film."""
    man = corpus.manifest
    names = sorted(set(man.get("films", {})) | set(corpus.records))
    if film is not None:
        if film not in names:
            raise FilmmineError(f"no film {film!r} in {corpus.path} (films: {', '.join(names)})")
        names = [film]
    shards_of: dict[str, list[dict]] = {}
    rows, warnings = [], []
    for s in man.get("shards", []):
        bad = [k for k, t in (("film", str), ("samples", int), ("bytes", int))
               if not isinstance(s.get(k), t)] if isinstance(s, dict) else ["entry"]
        if bad:  # a damaged manifest (verify names it): counted as no shard, not a crash
            what = f"{s.get('name')} malformed ({bad[0]} is {s.get(bad[0])!r})" if isinstance(
                s, dict) else f"{s!r} malformed"
            warnings.append(f"manifest.json: shard entry {what}, not counted")
            continue
        shards_of.setdefault(s["film"], []).append(s)
    for name in names:
        rec = corpus.records.get(name, {})
        info = man.get("films", {}).get(name, {})
        probe = rec.get("probe", {})
        shards = shards_of.get(name, [])
        row = summarize_rows(
            name, corpus.film_frames(name), corpus.film_samples(name),
            layout=probe.get("layout", info.get("layout")),
            layout_reason=probe.get("layout_reason", info.get("layout_reason")),
            duration_s=probe.get("duration_s"), shots=rec.get("counts", {}).get("shots"),
            shards=len(shards), nbytes=sum(s["bytes"] for s in shards), note=rec.get("reason"),
        )
        rows.append(row)
        if name in corpus.unreadable:
            warnings.append(f"{name}: film record films/{name}.json unreadable")
        elif not rec:
            warnings.append(f"{name}: film record films/{name}.json missing")
        counts = rec.get("counts") or info.get("counts") or {}
        for what, got in (("accepted", row.accepted), ("candidates", row.candidates)):
            if what in counts and counts[what] != got:
                warnings.append(f"{name}: record says {counts[what]} {what}, "
                                f"frames.parquet has {got}")
        if row.samples != row.accepted:
            warnings.append(f"{name}: samples.parquet has {row.samples} rows, frames.parquet "
                            f"{row.accepted} accepted")
        if sum(s["samples"] for s in shards) != row.samples:
            warnings.append(f"{name}: manifest shards hold {sum(s['samples'] for s in shards)} "
                            f"samples, samples.parquet {row.samples}")
    import pyarrow.compute as pc

    frames, samples = corpus.frames, corpus.samples
    if film is not None:
        frames, samples = corpus.film_frames(film), corpus.film_samples(film)
    known = pa.array(names, pa.string())
    if film is None:  # rows of films the manifest does not list: left out of every count
        ghosts: dict[str, list[int]] = {}
        for i, tbl in enumerate((samples, frames)):
            rest = tbl.filter(pc.invert(pc.is_in(tbl["film"], value_set=known)))
            for f in rest["film"].to_pylist():
                ghosts.setdefault(str(f), [0, 0])[i] += 1
        warnings += [f"{g}: {ns} samples.parquet rows and {nf} frames.parquet rows of a film "
                     "the manifest does not list (not counted)"
                     for g, (ns, nf) in sorted(ghosts.items())]
    frames = frames.filter(pc.is_in(frames["film"], value_set=known))
    samples = samples.filter(pc.is_in(samples["film"], value_set=known))
    durations = [r.duration_s for r in rows if r.duration_s is not None]
    shots = [r.shots for r in rows if r.shots is not None]
    total = summarize_rows(
        "TOTAL", frames, samples, duration_s=sum(durations) if durations else None,
        shots=sum(shots) if shots else None, shards=sum(r.shards for r in rows),
        nbytes=sum(r.bytes for r in rows),
    )
    not_mined = [{"source": i["source"], "status": i["status"], "reason": i["reason"]}
                 for i in man.get("inputs", []) if i.get("status") != "ok"]
    recipe = man.get("recipe", {})
    return CorpusSummary(
        path=str(corpus.path.resolve()), format=man.get("format", "?"),
        filmmine_version=man.get("filmmine_version", "?"),
        recipe_name=str(recipe.get("name", "?")), recipe_digest=man.get("recipe_digest", "?"),
        films=rows, total=total, inputs_not_mined=not_mined if film is None else [],
        warnings=warnings,
    )


# ------------------------------------------------------------------------------------------
# Plain-text rendering


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def text_table(headers: list[str], rows: list[list[str]], left: int = 1,
               group: list[tuple[str, int]] | None = None) -> list[str]:
    """Aligned columns: the first ``left`` columns left-aligned, the rest right-aligned.

    ``group``: an optional header line above, as (label, number of columns) spans.
    """
    cells = [headers, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    out = []
    if group:
        parts, i = [], 0
        for label, span in group:
            w = sum(widths[i : i + span]) + 2 * (span - 1)
            parts.append(label.center(w, "-" if label else " ") if label else " " * w)
            i += span
        out.append("  ".join(parts).rstrip())
    out.append(line(headers))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in rows[:-1])
    if rows:
        out.append("  ".join("-" * w for w in widths))
        out.append(line(rows[-1]))
    return out


def format_summary(s: CorpusSummary) -> str:
    """The terminal report: totals, then per-film tables (counts, rejections, disparity)."""
    t = s.total
    out = [f"corpus {s.path}",
           f"  {s.format}, filmmine {s.filmmine_version}, recipe {s.recipe_name} "
           f"({s.recipe_digest})",
           f"  {len(s.films)} film(s), {hms(t.duration_s)} of film: {t.accepted} samples from "
           f"{t.candidates} candidate frames ({_pct(t.accept_rate)} accepted), {t.shards} "
           f"shard(s), {human_bytes(t.bytes)}", ""]
    rows = [*s.films, t]
    out.append("FILMS")
    out += text_table(
        ["film", "layout", "duration", "shots", "candidates", "accepted", "rate",
         *STAGES, "shards", "size"],
        [[r.film, r.layout or "", hms(r.duration_s), _num(r.shots, "{}"), str(r.candidates),
          str(r.accepted), _pct(r.accept_rate), *(str(r.rejected_by_stage.get(st, 0))
                                                  for st in STAGES),
          str(r.shards), human_bytes(r.bytes)] for r in rows], left=2,
        group=[("", 7), (" rejected at ", 3), ("", 2)])
    reasons = list(_ordered({k: 1 for r in rows for k in r.rejections}))
    if reasons:
        out += ["", "REJECTED FRAMES BY REASON"]
        spans: list[tuple[str, int]] = [("", 1)]
        for stage in STAGES:
            n = sum(1 for r in reasons if STAGE_OF.get(r) == stage)
            if n:
                spans.append((f" {stage} ", n))
        other = sum(1 for r in reasons if r not in STAGE_OF)
        if other:
            spans.append((" other ", other))
        out += text_table(["film", *reasons],
                          [[r.film, *(str(r.rejections.get(k, 0)) for k in reasons)]
                           for r in rows], group=spans)
    out += ["", "DISPARITY AND VALID PIXELS (over accepted samples)"]
    out += text_table(
        ["film", "samples", "p1 px", "p50 px", "p99 px", "range px", "min", "q25",
         "median", "q75", "max"],
        [[r.film, str(r.samples), *(_num(r.disp_px[p], "{:.2f}") for p in ("p1", "p50", "p99")),
          _num(r.range_px[2] if r.range_px else None),
          *([_pct(v) for v in r.valid_fraction] if r.valid_fraction else ["-"] * 5)]
         for r in rows],
        group=[("", 2), (" median of per-sample ", 4), (" valid fraction ", 5)])
    out.append("  (p1/p50/p99: percentiles of each sample's valid disparity, d = x_left - "
               "x_right in px of the stored image, up to scale and shift)")
    layouts = [r for r in s.films if r.layout_reason or r.note]
    if layouts:
        out += ["", "LAYOUTS"]
        out += [f"  {r.film}: {r.layout}, {r.layout_reason}" + (f"; note: {r.note}"
                                                               if r.note else "")
                for r in layouts]
    if s.inputs_not_mined:
        out += ["", "INPUTS NOT MINED"]
        out += [f"  {i['status']:7s} {i['source']}: {i['reason']}" for i in s.inputs_not_mined]
    if s.warnings:
        out += ["", "WARNINGS (run `filmmine verify`)"]
        out += [f"  {w}" for w in s.warnings]
    return "\n".join(out)
