"""Decode stage: one ffmpeg process per work unit, two outputs from a single decode.

* ``pipe:1`` — every frame, left view only, at low resolution (BGR): the shot-detection pass.
* ``pipe:N`` — only the frames on the sampling grid (``frame_index % grid_step == 0``), full
  resolution RGB, both views packed as in the file.

So the film is decoded once and full-resolution frames are converted and piped only for
candidates, never for every frame. Separate left/right files are stacked side by side by
ffmpeg (``hstack``) and then handled like ``sbs``.

Frame indices are exact: a range starts with a seek to a time between its first frame and the
one before (from the probe's timestamp index), and every decoded frame is numbered by its own
presentation time (``showinfo`` on the low-res branch, read from ffmpeg's log, with
``-copyts -start_at_zero`` so times are those of the index). So frame ``i`` is the same picture
whether the film is decoded whole or in ranges, across timestamp gaps and variable frame rates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import ffmpeg
import numpy as np

from ..errors import DecodeError, DecoderDied, FFmpegNotFound, NoFrameDecoded, scrub_addresses
from .ffmpeg_bin import find_binary, multiview_ffmpeg
from .layout import is_side_by_side, view_size
from .probe import ProbeResult
from .streams import pick_reason

log = logging.getLogger(__name__)


@dataclass
class Frame:
    index: int                 # 0-based index of the decoded frame in the film
    lowres: np.ndarray         # [h, w, 3] uint8 BGR, left view, full aspect, low resolution
    full: np.ndarray | None    # [H, W, 3] uint8 RGB packed stereo frame; only on grid frames


@dataclass
class DecodeStats:
    frames: int = 0
    expected: int = 0
    stopped_early: str | None = None   # one line when ffmpeg stopped before the expected end
    stop_reason: str | None = None     # its cause alone (ffmpeg's clearest error line)
    wall_s: float = 0.0
    unmatched: int = 0                 # decoded frames not yielded: time outside the range
    grid_missed: int = 0               # grid frames yielded without their full-res frame


def lowres_size(probe: ProbeResult, lowres_width: int) -> tuple[int, int]:
    vw, vh = view_size(*probe.frame_size, probe.layout)
    w = max(16, lowres_width // 2 * 2)
    h = max(16, round(w * vh / vw / 2) * 2)
    return w, h


def seek_time(probe: ProbeResult, start_frame: int) -> float | None:
    """Without a timestamp index: where a range starting at ``start_frame`` is sought, from
    the frame rate (exact only while the film has no timestamp gap). None: from the start."""
    if start_frame <= 0:
        return None
    return max(0.0, (start_frame - 0.5) / probe.fps)


# decoder threads of each ffmpeg (unset: ffmpeg's own choice, a thread per core and more).
# A local extract sets it for its workers to the cores per worker: where every core already
# runs a worker, frame threading only adds work
DECODE_THREADS_ENV = "FILMMINE_DECODE_THREADS"


def decoder_threads() -> int | None:
    """``FILMMINE_DECODE_THREADS`` as a positive int, else None (ffmpeg decides)."""
    try:
        n = int(os.environ.get(DECODE_THREADS_ENV, ""))
    except ValueError:
        return None
    return n if n > 0 else None


# ffmpeg runs at log level info (showinfo logs there), each line tagged with its level
LOG_ARGS = ["-hide_banner", "-nostats", "-loglevel", "level+info"]
SHOWINFO = re.compile(rb"\[Parsed_showinfo_\d+ @ [^\]]*\] \[info\] n:\s*\d+ pts:\s*(-?\d+|NOPTS)")
LEVEL = re.compile(rb"((?:\[[^\]]+ @ 0x[0-9a-fA-F]+\] )*)"
                   rb"\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ")
ERROR_LEVELS = {b"panic", b"fatal", b"error"}


def build_command(probe: ProbeResult, start_frame: int, n_frames: int, grid_step: int,
                  lowres_wh: tuple[int, int], hi_fd: int,
                  threads: int | None = None) -> list[str]:
    """ffmpeg argv for frames [start_frame, start_frame + n_frames) of a film; ``threads``:
    the decoder's (None: ffmpeg's choice)."""
    fw, fh = probe.frame_size
    index = probe.pts
    if index is None:  # times from the frame rate: ffmpeg's accurate seek, then a count
        ss = seek_time(probe, start_frame)
        kw = {"ss": f"{ss:.6f}"} if ss is not None else {}
        trim = {"start_frame": 0, "end_frame": n_frames}
    else:
        # the demuxer seeks to a keyframe early enough for every frame of the range to
        # decode; the range itself is cut by time (times as in the index: -copyts)
        seek_us, start_us = index.seek_plan(start_frame)
        kw = {"ss": f"{seek_us / 1e6:.6f}", "noaccurate_seek": None} if seek_us else {}
        # trim runs on the filter graph's clock: the index's less its lag
        lag = index.clock_us
        trim = {"start": f"{(start_us - lag) / 1e6:.6f}"} if start_us is not None else {}
        end = start_frame + n_frames
        if end < index.n:
            trim["end"] = f"{(index.seek_us(end) - lag) / 1e6:.6f}"
    if threads is not None:
        kw["threads"] = str(threads)
    inputs = [ffmpeg.input(p, **kw) for p in probe.paths]
    binary = find_binary("ffmpeg")
    offset = start_frame % grid_step
    pick = f"not(mod(n+{offset},{grid_step}))"
    if probe.layout == "mv-hevc":
        # both views of the one stream, the left eye first; stacked only for the sampled
        # frames, as a stack is a copy of both full-size views
        binary = _multiview_binary()
        first = int((probe.stereo or {}).get("left_view", 0))
        views = [inputs[0][f"v:view:{first}"], inputs[0][f"v:view:{1 - first}"]]
        if trim:
            views = [x.filter("trim", **trim) for x in views]
        left = views[0].split()
        lo = left[0]
        hi = ffmpeg.filter([left[1].filter("select", pick), views[1].filter("select", pick)],
                           "hstack", inputs=2)
    else:
        if len(inputs) == 2:
            v = ffmpeg.filter([inputs[0].video, inputs[1].video], "hstack", inputs=2)
        else:
            v = inputs[0].video
        if trim:
            v = v.filter("trim", **trim)
        v = v.filter("crop", fw, fh, 0, 0)
        split = v.split()
        if is_side_by_side(probe.layout):
            lo = split[0].filter("crop", fw // 2, fh, 0, 0)
        else:
            lo = split[0].filter("crop", fw, fh // 2, 0, 0)
        hi = split[1].filter("select", pick)
    lo = lo.filter("scale", lowres_wh[0], lowres_wh[1], flags="area")
    # each low-res frame's time in microseconds, logged as it leaves the graph
    lo = lo.filter("settb", "AVTB").filter("showinfo", checksum=0)
    out_lo = lo.output("pipe:1", format="rawvideo", pix_fmt="bgr24", fps_mode="passthrough")
    out_hi = hi.output(f"pipe:{hi_fd}", format="rawvideo", pix_fmt="rgb24",
                       fps_mode="passthrough")
    args = ffmpeg.merge_outputs(out_lo, out_hi).compile(cmd=binary)
    # -copyts -start_at_zero: frames keep their times from the container's start (the index's
    # clock, and trim's); without an index ffmpeg's accurate seek drops the frames before -ss
    return [args[0], "-nostdin", *LOG_ARGS, "-copyts", "-start_at_zero", *args[1:]]


def _multiview_binary() -> str:
    found = multiview_ffmpeg()
    if found is None:   # probed where one was, decoded where none is (another node)
        raise FFmpegNotFound("MV-HEVC needs FFmpeg >= 7.1 here too: pip install "
                             "'filmmine[spatial]' or set FILMMINE_FFMPEG")
    return found


EXIT_WAIT_S = 10.0   # for a decoder whose output ended early to exit by itself

# ffmpeg's exit status after SIGINT, SIGTERM or SIGQUIT, which it catches to close its outputs
FFMPEG_SIGNALLED = 255


def exit_failure(returncode: int) -> str | None:
    """How ffmpeg's exit status says it failed, None for a normal end (0)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    if returncode == FFMPEG_SIGNALLED:
        return "stopped by a signal (exit status 255)"
    if returncode != 0:
        return f"exited with status {returncode}"
    return None


_LOG_END = object()  # the frame-time queue's end: ffmpeg closed its log


def iter_frames(probe: ProbeResult, *, start_frame: int = 0, n_frames: int | None = None,
                grid_step: int = 6, lowres_width: int = 160, timeout_s: float = 1800.0,
                stats: DecodeStats | None = None) -> Iterator[Frame]:
    """Yield every frame of [start_frame, start_frame + n_frames) in order.

    ``Frame.index`` is the frame's place in the probe's timestamp index (see the module
    docstring); a probe without one numbers frames by counting from a time-based seek.
    ``Frame.full`` is set exactly on frames with ``index % grid_step == 0``. A decoder that
    runs past ``timeout_s`` is killed (DecodeError). A file that ends early (truncated) yields
    what decodes and records why in ``stats.stopped_early``.
    """
    stats = stats if stats is not None else DecodeStats()
    n_frames = probe.n_frames - start_frame if n_frames is None else n_frames
    stats.expected = n_frames
    lw, lh = lowres_size(probe, lowres_width)
    fw, fh = probe.frame_size
    lo_bytes, hi_bytes = lw * lh * 3, fw * fh * 3
    r_fd, w_fd = os.pipe()
    cmd = build_command(probe, start_frame, n_frames, grid_step, (lw, lh), w_fd,
                        decoder_threads())
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, pass_fds=(w_fd,))
    finally:
        os.close(w_fd)
    hi_reader = os.fdopen(r_fd, "rb", buffering=0)
    hi_q: queue.Queue[bytearray | None] = queue.Queue(maxsize=8)
    lo_q: queue.Queue[bytes | None] = queue.Queue()  # small frames: never let ffmpeg block on them
    pts_q: queue.Queue = queue.Queue()  # a low-res frame's time in µs (None: NOPTS), in order
    errors: deque[str] = deque(maxlen=20)  # ffmpeg's error lines, as `-v error` printed them
    timed_out = threading.Event()
    stop = threading.Event()  # the consumer went away: readers must not block on a full queue

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read_hi() -> None:
        # the thread owns the read end: it closes it only when it stops reading
        with hi_reader:
            while True:
                buf = bytearray(hi_bytes)
                view = memoryview(buf)
                got = 0
                while got < hi_bytes:
                    n = hi_reader.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got < hi_bytes:
                    put(hi_q, None)
                    return
                if not put(hi_q, buf):
                    return

    def read_lo() -> None:
        assert proc.stdout is not None
        while True:
            buf = proc.stdout.read(lo_bytes)
            if len(buf) < lo_bytes:
                put(lo_q, None)
                return
            if not put(lo_q, buf):
                return

    def read_log() -> None:
        # reads to the end whatever the consumer does: a full stderr pipe would stall ffmpeg
        assert proc.stderr is not None
        level = b"info"
        try:
            for raw in proc.stderr:
                m = SHOWINFO.match(raw)
                if m:
                    pts_q.put(None if m.group(1) == b"NOPTS" else int(m.group(1)))
                    continue
                lv = LEVEL.match(raw)
                if lv:  # a line without a tag continues the previous message
                    level = lv.group(2)
                    raw = lv.group(1) + raw[lv.end():]
                if level in ERROR_LEVELS:
                    line = scrub_addresses(raw.decode(errors="replace").strip())
                    if line:
                        errors.append(line)
        finally:
            pts_q.put(_LOG_END)

    def watchdog() -> None:
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout_s:
                timed_out.set()
                proc.kill()
                return
            time.sleep(0.2)

    readers = [threading.Thread(target=read_lo, daemon=True),
               threading.Thread(target=read_hi, daemon=True),
               threading.Thread(target=read_log, daemon=True)]
    for t in readers:
        t.start()
    threading.Thread(target=watchdog, daemon=True).start()
    index = probe.pts
    end = start_frame + n_frames
    last = start_frame - 1
    hi_done = log_done = eof = False
    wait_s = max(timeout_s, 1.0)
    try:
        for count in range(n_frames):
            buf = lo_q.get()
            if buf is None:
                eof = True
                break
            item = None
            # the select on the full-res branch counts frames from the seek
            if (start_frame + count) % grid_step == 0 and not hi_done:
                try:
                    item = hi_q.get(timeout=wait_s)
                except queue.Empty as e:
                    raise DecodeError("decoder stalled: no full-resolution frame arrived") from e
                if item is None:
                    hi_done = True
            label = last + 1
            if index is not None and not log_done:
                try:
                    t_us = pts_q.get(timeout=wait_s)
                except queue.Empty as e:
                    raise DecodeError("decoder stalled: no frame time arrived") from e
                if t_us is _LOG_END:
                    log_done = True
                elif t_us is not None:
                    found = index.lookup(t_us + index.clock_us, label)
                    label = -1 if found is None else found
            if not last < label < end:  # before the range, repeated, or not in the index
                stats.unmatched += 1
                continue
            full = None
            if label % grid_step == 0:
                if item is not None:
                    full = np.frombuffer(item, np.uint8).reshape(fh, fw, 3)
                elif not hi_done:
                    stats.grid_missed += 1
            last = label
            stats.frames += 1
            yield Frame(label, np.frombuffer(buf, np.uint8).reshape(lh, lw, 3), full)
    finally:
        if eof or hi_done:
            # its output ended early: ffmpeg is exiting (a kill closes its pipes before it
            # can be reaped), and how it exits tells a file's end from a kill
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=EXIT_WAIT_S)
        ended_itself = proc.poll() is not None
        if not ended_itself:
            proc.kill()
        proc.wait()
        stop.set()  # a dead ffmpeg gives the readers EOF; the flag frees a blocked put
        for t in readers:
            t.join(timeout=10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        stats.wall_s = time.monotonic() - t0
    err = list(errors)
    if stats.unmatched or stats.grid_missed:
        log.warning("%s frames [%d, %d): %d decoded frames outside the range or the index, "
                    "%d grid frames without their full-resolution frame", probe.name,
                    start_frame, end, stats.unmatched, stats.grid_missed)
    if timed_out.is_set():
        raise DecodeError(f"decode timed out after {timeout_s:.0f} s")
    # ffmpeg's last error line, unless it is generic ("Error marking filters as finished")
    # and an earlier one names the cause ("File ended prematurely": a truncated file)
    why = pick_reason(err, probe.paths)
    short = stats.frames < n_frames or stats.grid_missed > 0
    rc = proc.returncode if ended_itself else 0
    signalled = rc < 0 or rc == FFMPEG_SIGNALLED
    if short and (signalled or (rc != 0 and stats.frames > 0)):
        # a short read from a decoder that did not end normally (a kill: the OOM killer, a
        # signal meant for a script; or an error mid-film), not where the file ends
        raise DecoderDied(f"decoder {exit_failure(rc)} after {stats.frames} of {n_frames} "
                          "frames" + (f" ({why})" if why else ""), retry=signalled)
    if stats.frames == 0:
        raise NoFrameDecoded(why or f"ffmpeg {exit_failure(rc) or 'gave no frame'}",
                             ended_cleanly=rc == 0)
    if stats.frames < n_frames:
        stats.stop_reason = why or "stream ended"
        stats.stopped_early = f"decoded {stats.frames} of {n_frames} frames ({stats.stop_reason})"
    log.debug("decoded %d frames in %.2fs", stats.frames, stats.wall_s)
