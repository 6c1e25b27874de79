"""Corpus assembly: staged work units -> a film's shards, tables and record -> the manifest.

Layout of a corpus directory (documented in ``manifests/CORPUS.md``)::

    manifest.json  recipe.toml  samples.parquet  frames.parquet
    shards/<film>-<n>.tar
    films/<film>.json                 per-film record, written after all its shards (resume marker)
    films/<film>.samples.parquet  films/<film>.frames.parquet
    .work/<film>/unit-<n>.tar|json    staging, removed once the film is assembled
    .work/<film>/plan.json            the unit length its staged units were cut by
    .verify-failed.json               the shards ``verify`` found bad (extract mines their films
                                      again)
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

from .. import __version__
from ..media.probe import ProbeResult
from .atomic import write_bytes
from .encode import dumps
from .reader import iter_samples
from .schema import (
    FRAMES_SCHEMA,
    SAMPLES_SCHEMA,
    SampleMeta,
    conform,
    parquet_bytes,
    table,
)
from .shards import ShardSink, sha256_file
from .staging import UnitMarker, WorkUnit, unit_paths

FORMAT = "filmmine-corpus/1"
VERIFY_FAILED = ".verify-failed.json"   # the bad shards of the last verify that failed


def film_record_path(out: Path, film: str) -> Path:
    return out / "films" / f"{film}.json"


def shot_indexer(cuts: list[int], transitions: list[list[int]]):
    """frame -> shot index: boundaries are cuts and transition ends; -1 inside a transition."""
    bounds = sorted({*cuts, *(e for _, e in transitions)} - {0})

    def index(frame: int) -> int:
        if any(s <= frame < e for s, e in transitions):
            return -1
        return bisect.bisect_right(bounds, frame)

    return index, len(bounds) + 1


def assemble_film(out: Path, probe: ProbeResult, units: list[WorkUnit], recipe: dict,
                  digest: str, source: dict) -> dict:
    """Turn a film's staged units into shards + tables + record. Idempotent."""
    record_path = film_record_path(out, probe.name)
    if record_path.is_file():
        return json.loads(record_path.read_text())
    work = out / ".work" / probe.name
    markers = [UnitMarker.read(unit_paths(work, u)[1]) for u in units]
    cuts = sorted({c for m in markers for c in m.cuts})
    transitions = sorted(t for m in markers for t in m.transitions)
    shot_of, n_shots = shot_indexer(cuts, transitions)

    frame_rows = []
    for m in markers:
        for r in m.frames:
            frame_rows.append({"film": probe.name, "shot_index": shot_of(r["frame_index"]), **r})
    frame_rows.sort(key=lambda r: r["frame_index"])
    frame_rows, over_quota = apply_shot_quota(frame_rows, int(recipe["sampling"]["max_per_shot"]))

    o = recipe["output"]
    sink = ShardSink(out / "shards", probe.name, o["shard_max_samples"], o["shard_max_bytes"])
    sample_rows = []
    try:
        for u in units:
            for sample in iter_samples(unit_paths(work, u)[0]):
                s = sample.as_dict()
                meta = SampleMeta.from_json(json.loads(s["json"]))
                if meta.key in over_quota:
                    continue
                meta = replace(meta, shot_index=shot_of(meta.frame_index))
                s["json"] = dumps(meta.to_json())
                sample_rows.append(meta.row(sink.write(s)))
        shards = sink.close()
    except BaseException:
        sink.abort()  # e.g. a full disk: no half-written shard left as a temp file
        raise
    remove_other_shards(out / "shards", probe.name, {s.name for s in shards})
    films_dir = out / "films"
    write_bytes(films_dir / f"{probe.name}.samples.parquet",
                parquet_bytes(table(sample_rows, SAMPLES_SCHEMA)))
    write_bytes(films_dir / f"{probe.name}.frames.parquet",
                parquet_bytes(table(frame_rows, FRAMES_SCHEMA)))

    counts = Counter(r["reason"] or "accepted" for r in frame_rows)
    by_stage = Counter(r["stage"] for r in frame_rows)
    decoded = sum(m.decoded for m in markers)
    # a unit's "decoded a of b frames" counts its own range: the film's counts the whole film,
    # as a single-unit run says it, with the first stopped unit's cause
    stopped = [m.stop_reason for m in markers if m.stopped_early]
    reason = f"decoded {decoded} of {probe.n_frames} frames ({stopped[0]})" if stopped else None
    if "trial" in source:   # decode.max_duration_s cut the film short
        cut = (f"mined its first {probe.duration_s:.1f} s of {source['trial']['film_s']:.1f} s "
               f"(decode.max_duration_s)")
        reason = f"{cut}; {reason}" if reason else cut
    record = {
        "film": probe.name,
        "status": "ok",
        "reason": reason,
        "source": source,
        "probe": probe.to_json(),
        "recipe_digest": digest,
        "units": len(units),
        "counts": {
            "frames": probe.n_frames,
            "decoded": decoded,
            "shots": n_shots,
            "cuts": len(cuts),
            "transitions": len(transitions),
            "candidates": len(frame_rows),
            "sampled": len(frame_rows) - by_stage.get("sampling", 0),
            "filtered": by_stage.get("filter", 0),
            "disparity_rejected": by_stage.get("disparity", 0),
            "accepted": counts.get("accepted", 0),
        },
        "rejections": {k: v for k, v in sorted(counts.items()) if k != "accepted"},
        "cuts": cuts,
        "transitions": transitions,
        "shards": [s.to_json() for s in shards],
    }
    # the record is the resume marker: written only once every shard is in place
    write_bytes(record_path, json.dumps(record, indent=1, sort_keys=True).encode())
    shutil.rmtree(work, ignore_errors=True)
    return record


def film_shards(shards_dir: Path, film: str) -> list[Path]:
    """The shard files of ``film`` (``FILM-NNNNN.tar``; film ``a-1``'s are not ``a``'s)."""
    pattern = re.compile(re.escape(film) + r"-[0-9]{5}\.tar")
    return sorted(p for p in shards_dir.glob(f"{film}-*.tar") if pattern.fullmatch(p.name))


def remove_other_shards(shards_dir: Path, film: str, keep: set[str]) -> None:
    """Shards of ``film`` beyond those just written: left by an earlier mining of it that made
    more (``unmine_film`` killed half-way), they would sit in the corpus unlisted."""
    for p in film_shards(shards_dir, film):
        if p.name not in keep:
            p.unlink(missing_ok=True)


def unmine_film(out: Path, film: str, record: dict) -> None:
    """Take a mined film out of the corpus so that the run mines it again: its record first
    (the resume marker: a run killed meanwhile mines the film again), then its shards and
    tables."""
    film_record_path(out, film).unlink(missing_ok=True)
    for s in record.get("shards", []):
        (out / "shards" / str(s.get("name"))).unlink(missing_ok=True)
    remove_other_shards(out / "shards", film, set())
    for t in ("samples", "frames"):
        (out / "films" / f"{film}.{t}.parquet").unlink(missing_ok=True)


def verify_suspects(out: Path) -> set[str]:
    """The shards the last failed ``verify`` of the corpus named bad (``VERIFY_FAILED``)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return {str(n) for n in json.loads((out / VERIFY_FAILED).read_text())["bad_shards"]}
    return set()


def shard_damage(out: Path, record: dict, suspects: set[str] = frozenset()) -> str | None:
    """Why a mined film's shards cannot be kept, else None: one is missing or of another size
    than its record says (a stat per shard), or, among ``suspects`` (``verify_suspects``),
    its bytes hash to another sha256 (read only for those: a corpus is terabytes)."""
    for s in record.get("shards", []):
        path = out / "shards" / str(s.get("name"))
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"shard {path.name} is missing"
        if size != s.get("bytes"):
            return f"shard {path.name} holds {size} bytes, its record says {s.get('bytes')}"
        if path.name in suspects and sha256_file(path) != s.get("sha256"):
            return f"shard {path.name} is damaged (its sha256 is not its record's)"
    return None


def apply_shot_quota(rows: list[dict], cap: int) -> tuple[list[dict], set[str]]:
    """``sampling.max_per_shot`` over the whole film: the rows of a film's candidates (frame
    order) with every candidate past the first ``cap`` sampled ones of its shot turned into a
    ``shot_quota`` row, as a single work unit would have written it; and the keys of the
    samples so dropped. A work unit only counts its own candidates, so a shot spanning units
    can exceed the cap there (0 = no cap)."""
    if cap <= 0:
        return rows, set()
    taken: Counter[int] = Counter()
    out, dropped = [], set()
    for r in rows:
        if r["stage"] != "sampling" and r["shot_index"] >= 0:
            taken[r["shot_index"]] += 1
            if taken[r["shot_index"]] > cap:
                if r["key"] is not None:
                    dropped.add(r["key"])
                r = {"film": r["film"], "shot_index": r["shot_index"],
                     "frame_index": r["frame_index"], "pts_s": r["pts_s"], "accepted": False,
                     "stage": "sampling", "reason": "shot_quota", "key": None}
        out.append(r)
    return out, dropped


def write_corpus_tables(out: Path, films: list[str]) -> None:
    """Concatenate per-film tables (in film order) into the corpus-level Parquet files."""
    import pyarrow as pa

    for name, schema in (("samples", SAMPLES_SCHEMA), ("frames", FRAMES_SCHEMA)):
        parts = [conform(pq.read_table(p), schema) for f in films
                 if (p := out / "films" / f"{f}.{name}.parquet").is_file()]
        tbl = pa.concat_tables(parts) if parts else schema.empty_table()
        write_bytes(out / f"{name}.parquet", parquet_bytes(tbl))


def manifest(recipe: dict, digest: str, inputs: list[dict], records: dict[str, dict],
             versions: dict[str, str]) -> dict:
    """The corpus manifest: deterministic (no timestamps), so a rerun changes no byte."""
    shards = [dict(s, film=f) for f in sorted(records) for s in records[f]["shards"]]
    return {
        "format": FORMAT,
        "filmmine_version": __version__,
        "versions": versions,
        "recipe": recipe,
        "recipe_digest": digest,
        "inputs": inputs,
        "films": {f: {"counts": r["counts"], "rejections": r["rejections"],
                      "layout": r["probe"]["layout"],
                      "layout_reason": r["probe"]["layout_reason"],
                      "note": r["reason"]} for f, r in sorted(records.items())},
        "totals": {
            "films_ok": len(records),
            "samples": sum(r["counts"]["accepted"] for r in records.values()),
            "candidates": sum(r["counts"]["candidates"] for r in records.values()),
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
        },
        "shards": shards,
    }
