"""What ``extract`` would do with an input, without mining it: ``filmmine probe``.

The same resolution of inputs and the same probe as extract (``inputs.resolve_inputs``,
``probe.probe_film``), plus what a user wants to see before a long run: every stream of the
container, its stereo-3D and spherical side data, the layout and why, and the letterbox bars
``crop.detect_crop`` finds on a few frames decoded at full resolution.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ffmpeg

from ..errors import FilmmineError, SkippedInput
from ..media.decode import iter_frames
from ..media.ffmpeg_bin import find_binary
from ..media.inputs import resolve_inputs
from ..media.layout import eye_size, view_size, views
from ..media.probe import ProbeResult, probe_film
from ..stages.crop import detect_crop
from ..stages.filters import luma
from ..stages.projection import spherical_views, view_tag
from ..stages.sampling import SamplingPlan

log = logging.getLogger(__name__)


@dataclass
class Letterbox:
    """Bars in view pixels, from the most frequent crop over the frames looked at."""

    top: int
    bottom: int
    left: int
    right: int
    crop: list[int]                      # [x, y, w, h] in view pixels, bars only
    extract_crop: list[int]              # what extract keeps: bars and floating-window margins
    frames: list[int]                    # frame indices decoded
    crops: list[list[int]]               # the crop found on each of them
    agree: int                           # how many frames gave the reported crop
    side_px: int                         # floating-window margin extract cuts from each side


@dataclass
class FilmProbe:
    source: str
    film: str | None
    paths: list[str]
    status: str                          # ok | skipped | failed
    reason: str | None = None
    container: list[dict] = field(default_factory=list)   # per file: format, size, streams
    probe: dict | None = None            # ProbeResult.to_json()
    view_size: list[int] | None = None
    letterbox: Letterbox | None = None
    letterbox_note: str | None = None    # why there is no letterbox result
    plan: dict | None = None             # candidates, work units, stored size
    views: list[dict] | None = None      # spherical films: the pinhole views cut of each eye

    def to_json(self) -> dict:
        return asdict(self)


def container_info(path: str) -> dict:
    """Format and every stream of one file (ffprobe), for display."""
    meta = ffmpeg.probe(path, cmd=find_binary("ffprobe"))
    fmt = meta.get("format", {})
    streams = []
    for s in meta.get("streams", []):
        d = {"index": s.get("index"), "type": s.get("codec_type", "?"),
             "codec": s.get("codec_name", "?"),
             "language": (s.get("tags") or {}).get("language")}
        if d["type"] == "video":
            d.update(width=s.get("width"), height=s.get("height"), pix_fmt=s.get("pix_fmt"),
                     fps=s.get("avg_frame_rate"), frames=s.get("nb_frames"),
                     attached_pic=bool((s.get("disposition") or {}).get("attached_pic")))
            for sd in s.get("side_data_list") or []:
                if sd.get("side_data_type") == "Stereo 3D":
                    d["stereo3d"] = {k: v for k, v in sd.items() if k != "side_data_type"}
                elif sd.get("side_data_type") == "Spherical Mapping":
                    d["spherical"] = {k: v for k, v in sd.items() if k != "side_data_type"}
            mode = (s.get("tags") or {}).get("stereo_mode")
            if mode:
                d["stereo_mode_tag"] = mode
        elif d["type"] == "audio":
            d.update(channels=s.get("channels"), sample_rate=s.get("sample_rate"))
        streams.append(d)
    return {"path": path, "format": fmt.get("format_name"),
            "size_bytes": int(fmt.get("size") or Path(path).stat().st_size),
            "duration_s": float(fmt.get("duration") or 0.0),
            "bit_rate": int(fmt["bit_rate"]) if fmt.get("bit_rate") else None,
            "streams": streams}


def detect_letterbox(probe: ProbeResult, recipe: dict, n_frames: int = 5) -> Letterbox | None:
    """Decode ``n_frames`` frames spread over the film; the most frequent crop wins."""
    c = recipe["crop"]
    idx = sorted({min(probe.n_frames - 1, round(probe.n_frames * (0.1 + 0.8 * i / max(
        n_frames - 1, 1)))) for i in range(n_frames)})
    crops, extract_crops, used = [], [], []
    for k in idx:
        try:
            frame = next(iter_frames(probe, start_frame=k, n_frames=1, grid_step=1,
                                     timeout_s=120.0), None)
        except FilmmineError as e:
            log.debug("frame %d: %s", k, e)
            continue
        if frame is None or frame.full is None:
            continue
        grey = luma(views(frame.full, probe.layout)[0])
        opts = {"max_luma": c["letterbox_max_luma"], "max_std": c["letterbox_max_std"],
                "min_content_frac": c["min_content_frac"]}
        crops.append(list(detect_crop(grey, **opts)))
        extract_crops.append(list(detect_crop(grey, **opts, side_frac=c["side_frac"])))
        used.append(k)
    if not crops:
        return None
    best, agree = Counter(tuple(x) for x in crops).most_common(1)[0]
    x, y, w, h = best
    vw, vh = view_size(*probe.frame_size, probe.layout)
    return Letterbox(top=y, bottom=vh - y - h, left=x, right=vw - x - w, crop=list(best),
                     extract_crop=extract_crops[crops.index(list(best))], frames=used,
                     crops=crops, agree=agree, side_px=round(c["side_frac"] * vw))


def probe_inputs(inputs: list[str], recipe: dict, layout: str = "auto",
                 letterbox_frames: int = 5, projection: str = "auto") -> list[FilmProbe]:
    """A report per input, as extract would resolve and probe it; problems as data."""
    films, issues = resolve_inputs(inputs, layout, projection=projection)
    out = [FilmProbe(i.source, None, [i.source], i.status, i.reason) for i in issues]
    for f in films:
        fp = FilmProbe(f.source, f.name, list(f.paths), "ok")
        out.append(fp)
        try:
            for p in f.paths:
                # an unreadable file: probe_film below gives the one-line reason
                if Path(p).is_file():
                    with contextlib.suppress(ffmpeg.Error):
                        fp.container.append(container_info(p))
            probe = probe_film(f.name, f.paths, f.layout, f.layout_from,
                               projection=f.projection)
        except SkippedInput as e:
            fp.status, fp.reason = "skipped", str(e)
            continue
        except FilmmineError as e:
            fp.status, fp.reason = "failed", str(e)
            continue
        fp.probe = probe.to_json()
        vw, vh = view_size(*probe.frame_size, probe.layout)
        fp.view_size = [vw, vh]
        if probe.projection != "flat":
            # an eye as stored (no aspect to restore); no letterbox on a sphere
            fp.view_size = list(eye_size(*probe.frame_size, probe.layout))
            fp.views = [{"tag": view_tag(v), "yaw_deg": v.yaw_deg, "pitch_deg": v.pitch_deg,
                         "fov_deg": v.fov_deg, "size": [v.width, v.height],
                         "focal_px": round(v.focal_px, 2),
                         "rectify": recipe["spherical"]["rectify"]}
                        for v in spherical_views(probe.projection, recipe["spherical"])]
            letterbox_frames = 0
        if letterbox_frames > 0:
            fp.letterbox = detect_letterbox(probe, recipe, letterbox_frames)
            fp.letterbox_note = None if fp.letterbox else "no frame decoded"
        else:
            fp.letterbox_note = ("none looked for: a spherical film is cut into views"
                                 if fp.views else "not looked for (--frames 0)")
        # imported here, only when a plan is asked for: the pipeline imports every stage
        from ..run.plan import plan_units
        from ..run.unit import stored_size

        plan = SamplingPlan.from_recipe(probe.fps, recipe)
        cw, ch = fp.letterbox.extract_crop[2:] if fp.letterbox else (vw, vh)
        stored = (fp.views[0]["size"] if fp.views
                  else list(stored_size(cw, ch, recipe["output"]["max_width"])))
        fp.plan = {"candidates": len(range(0, probe.n_frames, plan.grid_step)),
                   "grid_step": plan.grid_step,
                   "work_units": len(plan_units(probe, recipe["decode"]["chunk_s"])),
                   "stored_size": stored}
    return out


def _stream_line(s: dict) -> str:
    lang = f" [{s['language']}]" if s.get("language") else ""
    if s["type"] == "video":
        extra = f" {s.get('width')}x{s.get('height')} {s.get('pix_fmt')} {s.get('fps')} fps"
        if s.get("frames"):
            extra += f", {s['frames']} frames"
        if s.get("attached_pic"):
            extra += " (cover image)"
        if s.get("stereo3d"):
            extra += f"; stereo3d: {s['stereo3d'].get('type')}"
            if s["stereo3d"].get("inverted"):
                extra += " (inverted)"
        if s.get("spherical"):
            extra += f"; spherical: {s['spherical'].get('projection')}"
        if s.get("stereo_mode_tag"):
            extra += f"; stereo_mode tag: {s['stereo_mode_tag']}"
    elif s["type"] == "audio":
        extra = f" {s.get('channels')} ch {s.get('sample_rate')} Hz"
    else:
        extra = ""
    return f"    #{s['index']} {s['type']} {s['codec']}{extra}{lang}"


def format_probe(fp: FilmProbe) -> str:
    from ..media.ffmpeg_bin import ffmpeg_version
    from .summary import hms, human_bytes

    head = f"{fp.source}" + (f"  (film id {fp.film})" if fp.film else "")
    if fp.status != "ok":
        return f"{head}\n  {fp.status}: {fp.reason}"
    p = fp.probe or {}
    lines = [head]
    for c in fp.container:
        rate = f", {c['bit_rate'] / 1e6:.1f} Mb/s" if c.get("bit_rate") else ""
        lines.append(f"  file {c['path']}: {c['format']}, {human_bytes(c['size_bytes'])}, "
                     f"{hms(c['duration_s'])}{rate}")
        lines += [_stream_line(s) for s in c["streams"]]
    fw, fh = p["frame_size"]
    lines.append(f"  video: {fw}x{fh} packed, {p['fps']:.3f} fps, {p['n_frames']} frames, "
                 f"{hms(p['duration_s'])} ({p['duration_s']:.2f} s)")
    meta = [f"stereo3d: {s['stereo3d']}" for s in p["streams"] if s.get("stereo3d")]
    meta += [f"spherical: {s['spherical']}" for s in p["streams"] if s.get("spherical")]
    st = p.get("stereo")
    if st:   # spatial video: Apple's boxes, which ffprobe does not show
        meta.append(f"spatial video: baseline {st['baseline_mm']} mm, horizontal field of view "
                    f"{st['hfov_deg']} deg, disparity adjustment {st['disparity_adjustment']}, "
                    f"left eye view {st['left_view']}")
    lines.append(f"  stereo metadata: {', '.join(meta) if meta else 'none in the container'}")
    lines.append("  decoded by: " + (f"FFmpeg {st['decoder']} (both views of MV-HEVC; "
                                     f"FFmpeg >= 7.1)" if st else f"ffmpeg {ffmpeg_version()}"))
    sim = p.get("similarity") or {}
    simtxt = (f"; halves alike: side by side r={sim['sbs']:.2f}, top-bottom r={sim['tab']:.2f}"
              if sim else "")
    lines.append(f"  layout: {p['layout']} ({p['layout_reason']}){simtxt}")
    vw, vh = fp.view_size or (0, 0)
    if fp.views:
        v0 = fp.views[0]
        yaws = sorted({v["yaw_deg"] for v in fp.views})
        pitches = sorted({v["pitch_deg"] for v in fp.views})
        lines.append(f"  projection: {p['projection']} ({p['projection_from']}); each eye "
                     f"{vw}x{vh}")
        lines.append(f"  views: {len(fp.views)} pinhole views of {v0['size'][0]}x"
                     f"{v0['size'][1]}, {v0['fov_deg']:g} deg ({v0['focal_px']} px focal), "
                     f"yaw {', '.join(f'{y:g}' for y in yaws)}, pitch "
                     f"{', '.join(f'{q:g}' for q in pitches)} (recipe [spherical]), the same "
                     "for both eyes" + ("; the right eye's rotation fitted and undone on "
                                        "each frame" if v0.get("rectify") else ""))
    else:
        lines.append(f"  view: {vw}x{vh} (full aspect)")
    lb = fp.letterbox
    if lb is None:
        lines.append(f"  letterbox: {fp.letterbox_note}")
    else:
        bars = ", ".join(f"{k} {v} px" for k, v in (("top", lb.top), ("bottom", lb.bottom),
                                                     ("left", lb.left), ("right", lb.right))
                         if v)
        x, y, w, h = lb.crop
        lines.append(f"  letterbox: {bars or 'none'} (crop {w}x{h}+{x}+{y}; same on "
                     f"{lb.agree} of {len(lb.frames)} frames {lb.frames}); floating-window "
                     f"margin {lb.side_px} px each side")
    if fp.plan:
        sw, sh = fp.plan["stored_size"]
        step = fp.plan["grid_step"]
        every = "every frame" if step == 1 else f"1 frame in {step}"
        lines.append(f"  extract: {fp.plan['candidates']} candidate frames ({every}), "
                     f"{fp.plan['work_units']} work unit(s), "
                     f"samples stored at {sw}x{sh}")
    return "\n".join(lines)
