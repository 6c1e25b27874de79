"""What a preview shows, read and decoded: samples picked evenly and read from their shards,
rejected frames picked reason by reason and decoded again from their source film."""

from __future__ import annotations

import functools
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..corpus.encode import decode_disparity, decode_jpeg
from ..corpus.reader import ShardError, iter_samples, shard_path
from ..errors import FilmmineError
from .summary import REASON_ORDER, Corpus

log = logging.getLogger(__name__)


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


def decode_views(record: dict, frame_index: int, view: str | None = None,
                 spherical: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) full-aspect RGB views of one frame, decoded from the source film; of a
    spherical film, its ``view`` (a tag) as the recipe's ``spherical`` table cuts it, without
    the right eye's rotation (the frames table does not keep it)."""
    from ..media.decode import iter_frames
    from ..media.layout import split_views, views

    probe = probe_from_record(record, with_index=True)
    frame = next(iter_frames(probe, start_frame=frame_index, n_frames=1, grid_step=1,
                             timeout_s=120.0), None)
    if frame is None or frame.full is None:
        raise FilmmineError(f"frame {frame_index} did not decode")
    if view is None or probe.projection == "flat" or spherical is None:
        return views(frame.full, probe.layout)
    from ..stages.projection import ViewCutter, spherical_views, view_tag

    cut = [v for v in spherical_views(probe.projection, spherical) if view_tag(v) == view]
    if not cut:
        raise FilmmineError(f"view {view} is not among the recipe's")
    cutter = ViewCutter(probe.projection, cut, spherical["fisheye_fov_deg"])
    eyes = split_views(frame.full, probe.layout)
    size = (eyes[0].shape[1], eyes[0].shape[0])
    left, right = (cutter.cut(cutter.prepare(e), size, cut[0]) for e in eyes)
    return left, right


@dataclass
class Rejected:
    row: dict                             # frames.parquet row
    views: tuple[np.ndarray, np.ndarray] | None
    problem: str | None                   # source missing / changed / undecodable


def load_rejected(corpus: Corpus, rows: list[dict], threads: int = 4) -> list[Rejected]:
    problems = {f: source_problem(corpus.records[f]) if f in corpus.records
                else "source missing: no film record" for f in {r["film"] for r in rows}}
    spherical = corpus.manifest.get("recipe", {}).get("spherical")

    def one(r: dict) -> Rejected:
        why = problems[r["film"]]
        if why is not None:
            return Rejected(r, None, why)
        try:
            return Rejected(r, decode_views(corpus.records[r["film"]], r["frame_index"],
                                           r.get("view"), spherical), None)
        except FilmmineError as e:
            return Rejected(r, None, f"source frame undecodable: {e}")

    with ThreadPoolExecutor(max_workers=threads) as pool:  # ffmpeg processes do the work
        return list(pool.map(one, rows))
