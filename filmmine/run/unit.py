"""One work unit of extraction: a frame range of one film, streamed through every stage.

decode (one ffmpeg pass) -> shots (every low-res frame) -> sampling (grid candidates, decided
once the boundaries around them are final) -> views and crop -> filters -> disparity ->
encoded samples in a staging tar. The unit ends with a JSON marker naming its outcome; the
film is assembled into shards from the staged units afterwards (see ``assemble``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .. import flow
from ..corpus.atomic import write_bytes
from ..corpus.encode import dumps, encode_confidence, encode_disparity, encode_jpeg
from ..corpus.schema import (
    Alignment,
    DisparityPercentiles,
    EyeRotationRecord,
    SampleMeta,
    StereoRig,
    VerticalStats,
    ViewRecord,
)
from ..corpus.shards import StagingWriter
from ..corpus.staging import UnitMarker, WorkUnit, unit_paths
from ..errors import NoFrameDecoded
from ..flow import FlowBackend, get_backend
from ..media.decode import DecodeStats, Frame, iter_frames
from ..media.layout import split_views, views
from ..media.probe import ProbeResult
from ..media.spatial import stereo_record
from ..recipe import recipe_digest
from ..stages import filters
from ..stages.crop import detect_crop
from ..stages.disparity import compute_disparity
from ..stages.projection import ViewCutter, eye_rotation, spherical_views, view_tag
from ..stages.sampling import SamplingPlan, sampling_reason
from ..stages.shots import GivenShots, ShotTracker
from .plan import unit_context

log = logging.getLogger(__name__)


def stored_size(crop_w: int, crop_h: int, max_width: int) -> tuple[int, int]:
    if crop_w <= max_width:
        return crop_w, crop_h
    s = max_width / crop_w
    return max_width // 2 * 2, max(2, round(crop_h * s / 2) * 2)


def sample_key(film: str, frame_index: int, view: str | None = None) -> str:
    """``FILM_FRAME``, and ``_VIEW`` for a view of a spherical film (``view_tag``)."""
    return f"{film}_{frame_index:08d}" + (f"_{view}" if view else "")


def prepare_views(full_rgb: np.ndarray, layout: str, recipe: dict):
    """Packed frame -> (left, right) cropped and resized for storage, crop box, view size."""
    left, right = views(full_rgb, layout)
    c = recipe["crop"]
    crop = detect_crop(left, max_luma=c["letterbox_max_luma"],
                       max_std=c["letterbox_max_std"], min_content_frac=c["min_content_frac"],
                       side_frac=c["side_frac"])
    x, y, w, h = crop
    size = stored_size(w, h, recipe["output"]["max_width"])
    out = []
    for v in (left, right):
        v = v[y : y + h, x : x + w]
        if (w, h) != size:
            v = cv2.resize(v, size, interpolation=cv2.INTER_AREA)
        out.append(np.ascontiguousarray(v))
    return out[0], out[1], crop, (left.shape[1], left.shape[0])


# the disparity stage's statistics a frame row keeps: the verdict's evidence
ALIGNMENT_EVIDENCE = ("vertical_matches", "vertical_inliers", "vertical_offset_px",
                      "vertical_rotation_deg", "vertical_scale_pct", "vertical_keystone_px",
                      "vertical_residual_px", "vertical_field_exceed_fraction",
                      "vertical_field_abs_p95_px")


VERDICT_EVIDENCE = ("valid_fraction", "vertical_fail_fraction", "range_px",
                    "matchable_fraction", "consistency_rate", *ALIGNMENT_EVIDENCE)


@dataclass
class _Waiting:
    """A candidate that passed the filters, waiting for the batched disparity stage."""

    frame_index: int
    row: dict
    left: np.ndarray            # stored-size RGB left view
    grey_left: np.ndarray
    grey_right: np.ndarray
    crop: tuple
    view_wh: tuple[int, int]
    view: ViewRecord | None = None   # a spherical film's: the view the pair was cut as


class UnitMiner:
    """Holds the per-unit state of the streaming stages."""

    def __init__(self, probe: ProbeResult, unit: WorkUnit, recipe: dict,
                 backend: FlowBackend | Future[FlowBackend], staging: StagingWriter,
                 batch: int = 1) -> None:
        self.probe, self.unit, self.recipe = probe, unit, recipe
        self._backend = backend     # a Future while it is being built (``backend_soon``)
        self.staging = staging
        # candidates that passed the filters, waiting for one batched disparity call
        self.batch = max(1, int(batch))
        self.waiting: list[_Waiting] = []
        sh = recipe["shots"]
        self.tracker: ShotTracker | GivenShots = ShotTracker(
            probe.fps, content_threshold=sh["content_threshold"],
            fade_threshold=sh["fade_threshold"], dissolve_window_s=sh["dissolve_window_s"],
            dissolve_threshold=sh["dissolve_threshold"],
        ) if probe.given_cuts is None else GivenShots(probe.given_cuts)
        self.plan = SamplingPlan.from_recipe(probe.fps, recipe)
        # frames decoded on either side of the unit: enough for every decision near its seams
        # (lookahead + 2 * tracker.window + 1), and one grid step more before it: the grid
        # frames in [shadow_from, start) are decided again without a row ("shadow"), so the
        # first candidate's frozen test compares with the shot's previous candidate as in a
        # whole-film pass (the previous unit owns their rows). Frames before shadow_from lack
        # the shot detector's full history.
        self.context_before, self.context = unit_context(probe.fps, recipe)
        self.shadow_from = unit.start - self.plan.lookahead - self.plan.grid_step
        self.pending: deque[Frame] = deque()
        self.taken: dict[int, int] = {}           # shot start -> samples taken from it
        # (shot start, view) -> the last candidate's grey left view; view None: a flat film
        self.prev_grey: dict[tuple[int, str | None], np.ndarray] = {}
        self.result = UnitMarker(unit)
        self.cutter: ViewCutter | None = None
        if probe.projection != "flat":
            sph = recipe["spherical"]
            self.cutter = ViewCutter(probe.projection,
                                     spherical_views(probe.projection, sph),
                                     sph["fisheye_fov_deg"])

    @property
    def backend(self) -> FlowBackend:
        """The flow backend; the first use waits for it when it is still being built (the
        wait is timed as ``backend_wait``)."""
        if isinstance(self._backend, Future):
            t0 = time.perf_counter()
            self._backend = self._backend.result()
            self._tick("backend_wait", t0)
        return self._backend

    def _tick(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.result.timings[stage] = self.result.timings.get(stage, 0.0) + now - t0
        return now

    def push(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        self.tracker.push(frame.index, frame.lowres)
        self._tick("shots", t0)
        if frame.full is not None and self.shadow_from <= frame.index < self.unit.end:
            self.pending.append(frame)
        while self.pending and (
            self.pending[0].index + self.plan.lookahead <= self.tracker.known_until
        ):
            self._decide(self.pending.popleft())

    def finish(self, last_index: int) -> UnitMarker:
        self.tracker.finish(last_index)
        while self.pending:
            self._decide(self.pending.popleft())
        self._flush()
        b = self.tracker.boundaries
        u = self.unit
        self.result.cuts = [c for c in b.cuts if u.start <= c < u.end]
        self.result.transitions = [[s, e] for s, e in b.transitions if u.start <= s < u.end]
        return self.result

    def _pts_s(self, frame: int) -> float:
        """When the frame is shown, in seconds from the container's start: its time in the
        film's timestamp index (exact on variable frame rates and after dropped frames), else
        the nominal ``frame / fps``."""
        index = self.probe.pts
        if index is None or not 0 <= frame < index.n:
            return round(frame / self.probe.fps, 6)
        return round(index.time_us(frame) / 1e6, 6)

    def _row(self, frame: int, stage: str, reason: str | None, **scores) -> dict:
        row = {"frame_index": frame, "pts_s": self._pts_s(frame), "accepted": reason is None,
               "stage": stage, "reason": reason, "key": None}
        # NaN scores (e.g. no previous frame) are stored as nulls
        row.update({k: (v if v == v else None) for k, v in scores.items()})
        self.result.frames.append(row)
        return row

    def _decide(self, frame: Frame) -> None:
        b = self.tracker.boundaries
        start = max(b.shot_begin(frame.index, 0), 0)   # the shot's key: its first frame
        reason = sampling_reason(frame.index, b, self.plan, film_start=0,
                                 film_end=self.probe.n_frames,
                                 taken_in_shot=self.taken.get(start, 0))
        shadow = frame.index < self.unit.start
        if reason is not None:
            if not shadow:
                self._row(frame.index, "sampling", reason)
            return
        if not shadow:
            self.taken[start] = self.taken.get(start, 0) + 1
        assert frame.full is not None
        # the previous candidates of this shot only: a new shot starts afresh
        self.prev_grey = {k: g for k, g in self.prev_grey.items() if k[0] == start}
        if self.cutter is not None:
            self._decide_views(frame.index, frame.full, start, shadow)
            return
        t0 = time.perf_counter()
        left, right, crop, view_wh = prepare_views(frame.full, self.probe.layout, self.recipe)
        self._tick("views", t0)
        self._filter(frame.index, start, shadow, left, right, crop, view_wh)

    def _decide_views(self, index: int, full: np.ndarray, start: int, shadow: bool) -> None:
        """A spherical frame: each eye cut into the recipe's pinhole views, the right eye's
        with its fitted rotation undone; each view is a candidate of its own."""
        assert self.cutter is not None
        t0 = time.perf_counter()
        left_eye, right_eye = split_views(full, self.probe.layout)   # no aspect to restore
        fit = None if shadow else self._eye_rotation(left_eye, right_eye)
        t0 = self._tick("rectify", t0)
        rotation = fit.rotation() if fit is not None else None
        size = (left_eye.shape[1], left_eye.shape[0])
        lp = self.cutter.prepare(left_eye)
        # a shadow frame only gives each view's previous grey left view
        rp = None if shadow else self.cutter.prepare(right_eye)
        for view in self.cutter.views:
            left = self.cutter.cut(lp, size, view)
            right = left if rp is None else self.cutter.cut(rp, size, view, rotation)
            self._tick("views", t0)
            rec = ViewRecord(
                tag=view_tag(view), projection=self.probe.projection, yaw_deg=view.yaw_deg,
                pitch_deg=view.pitch_deg, fov_deg=view.fov_deg,
                focal_px=round(view.focal_px, 4),
                eye_rotation=None if fit is None else EyeRotationRecord(
                    pitch_deg=round(fit.pitch_deg, 4), roll_deg=round(fit.roll_deg, 4),
                    matches=fit.matches, inliers=fit.inliers,
                    residual_deg=round(fit.residual_deg, 4)))
            wh = (view.width, view.height)
            self._filter(index, start, shadow, left, right, (0, 0, *wh), wh, rec)
            t0 = time.perf_counter()

    def _eye_rotation(self, left_eye: np.ndarray, right_eye: np.ndarray):
        """The right eye's fitted rotation against the left's (None: rectify off, or too few
        confident matches), on eyes no wider than ``rectify_width``."""
        sph = self.recipe["spherical"]
        if not sph["rectify"]:
            return None
        grey = []
        for eye in (left_eye, right_eye):
            g = filters.luma(eye)
            w = int(sph["rectify_width"])
            if g.shape[1] > w:
                g = cv2.resize(g, (w, max(2, round(g.shape[0] * w / g.shape[1]))),
                               interpolation=cv2.INTER_AREA)
            grey.append(g)
        return eye_rotation(grey[0], grey[1], self.probe.projection, sph["fisheye_fov_deg"])

    def _filter(self, index: int, start: int, shadow: bool, left: np.ndarray,
                right: np.ndarray, crop: tuple, view_wh: tuple[int, int],
                view: ViewRecord | None = None) -> None:
        """The filters on one stereo pair; the pair that passes waits for the disparity."""
        t0 = time.perf_counter()
        gl = filters.luma(left)
        key = (start, view.tag if view is not None else None)
        prev = self.prev_grey.get(key)
        self.prev_grey[key] = gl
        if shadow:
            return
        gr = filters.luma(right)
        scores = filters.score_frame(left, right, prev, (gl, gr))
        reason = filters.decide(scores, self.recipe["filters"])
        self._tick("filters", t0)
        tag = {} if view is None else {"view": view.tag}
        if reason is not None:
            self._row(index, "filter", reason, **tag, **scores)
            return
        # the row keeps its place in frame order; the disparity stage fills it in
        row = self._row(index, "disparity", None, **tag, **scores)
        self.waiting.append(_Waiting(index, row, left, gl, gr, crop, view_wh, view))
        if len(self.waiting) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        """One disparity call for the waiting candidates (both directions of every pair),
        then their verdicts and samples in frame order."""
        if not self.waiting:
            return
        batch, self.waiting = self.waiting, []
        t0 = time.perf_counter()
        results = compute_disparity([w.grey_left for w in batch], [w.grey_right for w in batch],
                                    self.backend, self.recipe["disparity"])
        t0 = self._tick("disparity", t0)
        for w, res in zip(batch, results, strict=True):
            # NaN (e.g. no fit: too few matches) is stored as null
            w.row.update({k: (v if v == v else None) for k, v in res.stats.items()
                          if k in VERDICT_EVIDENCE})
            if res.reason is not None:
                w.row.update(accepted=False, reason=res.reason)
                continue
            key = sample_key(self.probe.name, w.frame_index, w.view.tag if w.view else None)
            w.row.update(stage="accepted", key=key)
            self._stage_sample(key, w.frame_index, w.left, res, w.crop, w.view_wh, w.view)
        self._tick("encode_write", t0)

    def _stage_sample(self, key, frame_index, left, res, crop, view_wh, view=None) -> None:
        out = self.recipe["output"]
        png, scale, offset = encode_disparity(res.disparity, out["disp_step_px"])
        h, w = left.shape[:2]
        st = res.stats
        fit = {k.removeprefix("vertical_"): (v if v == v else None)
               for k, v in st.items() if k in ALIGNMENT_EVIDENCE}
        meta = SampleMeta(
            film=self.probe.name, key=key, frame_index=frame_index,
            pts_s=self._pts_s(frame_index), layout=self.probe.layout,
            view_size=tuple(view_wh), crop=tuple(crop), size=(w, h),
            disp_scale=scale, disp_offset=offset, backend=self.backend.name,
            valid_fraction=round(st["valid_fraction"], 6),
            lr_pass_fraction=round(st["lr_pass_fraction"], 6),
            vertical=VerticalStats(fail_fraction=round(st["vertical_fail_fraction"], 6),
                                   median_px=round(st["vertical_median_px"], 4),
                                   abs_p95_px=round(st["vertical_abs_p95_px"], 4)),
            disp_percentiles_px=DisparityPercentiles(p1=round(st["disp_p1_px"], 4),
                                                     p50=round(st["disp_p50_px"], 4),
                                                     p99=round(st["disp_p99_px"], 4)),
            range_px=round(st["range_px"], 4),
            matchable_fraction=round(st["matchable_fraction"], 6),
            consistency_rate=round(st["consistency_rate"], 6),
            alignment=Alignment(**fit) if fit else None,
            stereo=(StereoRig(**stereo_record(self.probe.stereo, view_wh, crop, (w, h)))
                    if self.probe.stereo is not None else None),
            view=view)
        sample = {"__key__": key, "jpg": encode_jpeg(left, out["jpeg_quality"]),
                  "disp.png": png, "json": dumps(meta.to_json())}
        if out["confidence"]:
            if res.confidence is None:
                raise ValueError(f"{key}: the disparity stage gave no confidence map")
            sample["conf.png"] = encode_confidence(res.confidence, np.isfinite(res.disparity))
        self.staging.write(sample)
        self.result.samples += 1


_BACKENDS: dict[str, FlowBackend] = {}


def _backend_key(recipe: dict, device: str) -> str:
    return json.dumps([recipe["disparity"]["backend"], device, backend_options(recipe)],
                      sort_keys=True)   # lists are not hashable


def backend_for(recipe: dict, device: str) -> FlowBackend:
    """One flow backend per worker process and configuration (models are built once)."""
    key = _backend_key(recipe, device)
    if key not in _BACKENDS:
        _BACKENDS[key] = get_backend(recipe["disparity"]["backend"], device=device,
                                     **backend_options(recipe))
    return _BACKENDS[key]


# one thread builds backends (``backend_soon``): never two builds of one model at once
_BUILDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="filmmine-backend")


def backend_soon(recipe: dict, device: str) -> Future[FlowBackend]:
    """``backend_for`` while the caller goes on: a worker's first unit builds its model while
    its ffmpeg starts, not before (importing torch and building a model takes seconds; the
    first disparity call comes after a batch of candidates is decoded). Built already: a
    finished Future."""
    built = _BACKENDS.get(_backend_key(recipe, device))
    if built is not None:
        done: Future[FlowBackend] = Future()
        done.set_result(built)
        return done
    return _BUILDER.submit(backend_for, recipe, device)


def disparity_batch(recipe: dict, device: str) -> int:
    """Stereo pairs per disparity call: ``[disparity] batch``, 0 = auto (16 on CUDA, where a
    batch fills the GPU; 1 on the CPU, where the backends loop over pairs anyway)."""
    n = int(recipe["disparity"].get("batch", 0))
    if n > 0:
        return n
    return 16 if str(device).startswith("cuda") else 1


def backend_options(recipe: dict) -> dict:
    """Keyword options of the recipe's flow backend (every backend ignores others' keys)."""
    return flow.backend_options(recipe["disparity"])


PROGRESS_EVERY = 48  # frames between progress reports


def mine_unit(probe: ProbeResult, unit: WorkUnit, recipe: dict, work_dir: Path,
              device: str = "cpu", progress: Callable[[int], None] | None = None
              ) -> UnitMarker:
    """Run one work unit; writes its staging tar, then its JSON marker. Returns the marker.

    ``progress(n)`` is called now and then with the number of the unit's own frames decoded
    since the last call.
    """
    tar_path, marker = unit_paths(work_dir, unit)
    made_from = unit_fingerprint(probe, unit, recipe)
    if marker.is_file():
        done = UnitMarker.read(marker)
        if done.made_from == made_from:
            return done
        # staged by a run that saw another film, layout, frame range or recipe (a rerun
        # after a crash with other arguments): never mixed into this film, mined again
        log.warning("%s %s: staged from other inputs, mined again", probe.name, unit.stem)
        marker.unlink()
    backend = backend_soon(recipe, device)
    staging = StagingWriter(tar_path)
    miner = UnitMiner(probe, unit, recipe, backend, staging, disparity_batch(recipe, device))
    # context before the unit lets the shot detector see cuts that shape its first samples
    start = max(0, unit.start - miner.context_before)
    stop = min(probe.n_frames, unit.end + miner.context)
    stats = DecodeStats()
    last = start - 1
    t_wait = time.perf_counter()
    reported = 0
    try:
        try:
            for frame in iter_frames(probe, start_frame=start, n_frames=stop - start,
                                     grid_step=miner.plan.grid_step,
                                     lowres_width=recipe["decode"]["lowres_width"],
                                     timeout_s=recipe["decode"]["timeout_s"], stats=stats):
                miner._tick("decode_wait", t_wait)
                miner.push(frame)
                last = frame.index
                done = max(0, min(last + 1, unit.end) - unit.start)
                if progress is not None and done - reported >= PROGRESS_EVERY:
                    progress(done - reported)
                    reported = done
                t_wait = time.perf_counter()
        except NoFrameDecoded as e:
            if start == 0 or not e.ended_cleanly:
                # nothing of the film decodes (it fails, as in a single-unit run), or the
                # decoder failed rather than reaching the file's end
                raise
            # the range lies past where a truncated file ends: the unit stopped early with
            # nothing decoded (a single-unit run stops before it), not a failed film
            stats.stop_reason = e.why
            stats.stopped_early = f"decoded 0 of {stop - start} frames ({e.why})"
        result = miner.finish(last)
        # a backend that cannot be built fails the unit even when no candidate needed it,
        # as when it was built before decoding
        miner.backend  # noqa: B018
    except BaseException:
        staging.abort()
        raise
    staging.close()
    result.decoded = max(0, min(last + 1, unit.end) - unit.start)
    if last + 1 < unit.end:
        result.stopped_early, result.stop_reason = stats.stopped_early, stats.stop_reason
    result.made_from = made_from
    write_bytes(marker, dumps(result.to_json()))
    return result


def unit_fingerprint(probe: ProbeResult, unit: WorkUnit, recipe: dict) -> str:
    """What a staged unit was computed from: the film's files, layout, size, frame count and
    rate, the unit's frame range and the recipe. A resumed run reuses a staged unit only when
    they are the same."""
    what = [list(probe.paths), probe.layout, list(probe.frame_size), probe.n_frames,
            probe.fps, unit.start, unit.end, recipe_digest(recipe)]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
