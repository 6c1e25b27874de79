"""Decode stage: one ffmpeg process per work unit, two outputs from a single decode.

* ``pipe:1`` — every frame, left view only, at low resolution (BGR): the shot-detection pass.
* ``pipe:N`` — only the frames on the sampling grid (``frame_index % grid_step == 0``), full
  resolution RGB, both views packed as in the file.

So the film is decoded once and full-resolution frames are converted and piped only for
candidates, never for every frame. Separate left/right files are stacked side by side by
ffmpeg (``hstack``) and then handled like ``sbs``.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import ffmpeg
import numpy as np

from .errors import DecodeError
from .ffmpeg_bin import find_binary
from .layout import is_side_by_side, view_size
from .probe import ProbeResult

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
    wall_s: float = 0.0


def lowres_size(probe: ProbeResult, lowres_width: int) -> tuple[int, int]:
    vw, vh = view_size(*probe.frame_size, probe.layout)
    w = max(16, lowres_width // 2 * 2)
    h = max(16, round(w * vh / vw / 2) * 2)
    return w, h


def build_command(probe: ProbeResult, start_frame: int, n_frames: int, grid_step: int,
                  lowres_wh: tuple[int, int], hi_fd: int) -> list[str]:
    """ffmpeg argv for frames [start_frame, start_frame + n_frames) of a film."""
    ss = max(0.0, (start_frame - 0.5) / probe.fps) if start_frame > 0 else None
    kw = {"ss": f"{ss:.6f}"} if ss is not None else {}
    inputs = [ffmpeg.input(p, **kw) for p in probe.paths]
    if len(inputs) == 2:
        v = ffmpeg.filter([inputs[0].video, inputs[1].video], "hstack", inputs=2)
    else:
        v = inputs[0].video
    fw, fh = probe.frame_size
    v = v.filter("trim", start_frame=0, end_frame=n_frames).filter("crop", fw, fh, 0, 0)
    split = v.split()
    if is_side_by_side(probe.layout):
        lo = split[0].filter("crop", fw // 2, fh, 0, 0)
    else:
        lo = split[0].filter("crop", fw, fh // 2, 0, 0)
    lo = lo.filter("scale", lowres_wh[0], lowres_wh[1], flags="area")
    offset = start_frame % grid_step
    hi = split[1].filter("select", f"not(mod(n+{offset},{grid_step}))")
    out_lo = lo.output("pipe:1", format="rawvideo", pix_fmt="bgr24", fps_mode="passthrough")
    out_hi = hi.output(f"pipe:{hi_fd}", format="rawvideo", pix_fmt="rgb24",
                       fps_mode="passthrough")
    args = ffmpeg.merge_outputs(out_lo, out_hi).compile(cmd=find_binary("ffmpeg"))
    return [args[0], "-nostdin", "-v", "error", *args[1:]]


def iter_frames(probe: ProbeResult, *, start_frame: int = 0, n_frames: int | None = None,
                grid_step: int = 6, lowres_width: int = 160, timeout_s: float = 1800.0,
                stats: DecodeStats | None = None) -> Iterator[Frame]:
    """Yield every frame of [start_frame, start_frame + n_frames) in order.

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
    cmd = build_command(probe, start_frame, n_frames, grid_step, (lw, lh), w_fd)
    err_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the generator's finally)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file,
                                stdin=subprocess.DEVNULL, pass_fds=(w_fd,))
    finally:
        os.close(w_fd)
    hi_reader = os.fdopen(r_fd, "rb", buffering=0)
    hi_q: queue.Queue[bytearray | None] = queue.Queue(maxsize=8)
    lo_q: queue.Queue[bytes | None] = queue.Queue()  # small frames: never let ffmpeg block on them
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

    def watchdog() -> None:
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout_s:
                timed_out.set()
                proc.kill()
                return
            time.sleep(0.2)

    readers = [threading.Thread(target=read_lo, daemon=True),
               threading.Thread(target=read_hi, daemon=True)]
    for t in readers:
        t.start()
    threading.Thread(target=watchdog, daemon=True).start()
    hi_done = False
    try:
        for i in range(n_frames):
            buf = lo_q.get()
            if buf is None:
                break
            index = start_frame + i
            full = None
            if index % grid_step == 0 and not hi_done:
                item = hi_q.get(timeout=max(timeout_s, 1.0))
                if item is None:
                    hi_done = True
                else:
                    full = np.frombuffer(item, np.uint8).reshape(fh, fw, 3)
            stats.frames += 1
            yield Frame(index, np.frombuffer(buf, np.uint8).reshape(lh, lw, 3), full)
    except queue.Empty as e:
        proc.kill()
        raise DecodeError("decoder stalled: no full-resolution frame arrived") from e
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stop.set()  # a dead ffmpeg gives the readers EOF; the flag frees a blocked put
        for t in readers:
            t.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
        stats.wall_s = time.monotonic() - t0
        err_file.seek(0)
        err = err_file.read().decode(errors="replace").strip().splitlines()
        err_file.close()
    if timed_out.is_set():
        raise DecodeError(f"decode timed out after {timeout_s:.0f} s")
    if stats.frames == 0:
        raise DecodeError(f"no frame decoded: {err[-1] if err else 'ffmpeg failed'}")
    if stats.frames < n_frames:
        why = err[-1] if err else "stream ended"
        stats.stopped_early = (f"decoded {stats.frames} of {n_frames} frames ({why})")
    log.debug("decoded %d frames in %.2fs", stats.frames, stats.wall_s)
