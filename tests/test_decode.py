"""filmmine.media.decode: grid frames, ranges, layouts, truncated files and timeouts.

Truth: the synthetic films' rendered views, and a full decode of the same file.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED

from filmmine import synth
from filmmine.errors import DecodeError, DecoderDied, FilmmineError, NoFrameDecoded
from filmmine.media.decode import DecodeStats, Frame, iter_frames, lowres_size
from filmmine.media.layout import views
from filmmine.media.probe import ProbeResult, probe_film
from filmmine.synth import FilmSpec, ShotSpec

SPEC = FilmSpec(shots=(ShotSpec("textured", 30, seed=1), ShotSpec("textured", 30, seed=2)),
                view_width=320, view_height=180, seed=7)
N = synth.n_frames(SPEC)  # 60
CONGO = SHARED / "real_360_topbottom" / "congo.mp4"


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> dict[str, Path]:
    """SPEC written in every layout (separate: the left file's path)."""
    root = tmp_path_factory.mktemp("decode")
    out = {}
    for lay in synth.LAYOUTS:
        if lay == "separate":
            synth.write_film(SPEC, root / "sep", lay)
            out[lay] = root / "sep_left.mp4"
        else:
            synth.write_film(SPEC, root / f"{lay}.mp4", lay)
            out[lay] = root / f"{lay}.mp4"
    return out


def probe_of(films: dict[str, Path], lay: str) -> ProbeResult:
    if lay == "separate":
        left = films[lay]
        return probe_film(lay, (str(left), str(left.with_name("sep_right.mp4"))))
    return probe_film(lay, (str(films[lay]),), requested=lay)


@pytest.fixture(scope="module")
def sbs_full(films) -> list[Frame]:
    """The whole sbs film decoded with grid step 6."""
    return list(iter_frames(probe_of(films, "sbs"), grid_step=6))


def test_every_frame_once_full_only_on_the_grid(films, sbs_full: list[Frame]) -> None:
    p = probe_of(films, "sbs")
    assert [f.index for f in sbs_full] == list(range(N))
    lw, lh = lowres_size(p, 160)
    assert (lw, lh) == (160, 90)
    for f in sbs_full:
        assert f.lowres.shape == (lh, lw, 3) and f.lowres.dtype == np.uint8
        assert (f.full is not None) == (f.index % 6 == 0), f.index
        if f.full is not None:
            assert f.full.shape == (180, 640, 3)


@pytest.mark.parametrize(("start", "count", "step"), [(7, 20, 5), (23, 1, 4), (0, 13, 1)])
def test_grid_in_a_range(films, start: int, count: int, step: int) -> None:
    """Grid frames are those with index % grid_step == 0, whatever the range's start."""
    stats = DecodeStats()
    got = list(iter_frames(probe_of(films, "sbs"), start_frame=start, n_frames=count,
                           grid_step=step, stats=stats))
    assert [f.index for f in got] == list(range(start, start + count))
    assert [f.index for f in got if f.full is not None] == \
        [i for i in range(start, start + count) if i % step == 0]
    assert stats.frames == stats.expected == count and stats.stopped_early is None


@pytest.mark.parametrize(("start", "count"), [(31, 17), (45, None), (1, 5)])
def test_range_mid_film_equals_full_decode(films, sbs_full: list[Frame], start: int,
                                           count: int | None) -> None:
    """Seeking to start_frame gives bit-identical frames to the same indices of a full decode."""
    got = list(iter_frames(probe_of(films, "sbs"), start_frame=start, n_frames=count,
                           grid_step=6))
    assert got[0].index == start and got[-1].index == (N - 1 if count is None else
                                                       start + count - 1)
    for f in got:
        ref = sbs_full[f.index]
        assert np.array_equal(f.lowres, ref.lowres), f.index
        assert (f.full is None) == (ref.full is None)
        if f.full is not None:
            assert np.array_equal(f.full, ref.full), f.index


@pytest.mark.parametrize("lay", synth.LAYOUTS)
def test_views_and_lowres_match_the_render(films, lay: str) -> None:
    """Grid frames unpack to the rendered left/right views; the low-res pass is the left view
    in BGR order at full aspect."""
    p = probe_of(films, lay)
    tol = 5.0 if lay in ("sbs", "tab", "separate") else 9.0
    lw, lh = lowres_size(p, 160)
    assert (lw, lh) == (160, 90)
    checked = 0
    for f in iter_frames(p, grid_step=20):
        left, right, _ = synth.render_frame(SPEC, f.index)
        small = cv2.resize(left, (lw, lh), interpolation=cv2.INTER_AREA).astype(np.float32)
        err_lo = float(np.abs(f.lowres[..., ::-1].astype(np.float32) - small).mean())
        assert err_lo < 6.0, (f.index, err_lo)
        if f.full is None:
            continue
        vl, vr = views(f.full, lay)
        assert vl.shape == vr.shape == left.shape
        err_l = float(np.abs(vl.astype(np.float32) - left).mean())
        err_r = float(np.abs(vr.astype(np.float32) - right).mean())
        assert err_l < tol and err_r < tol, (f.index, err_l, err_r)
        assert float(np.abs(vl.astype(np.float32) - right).mean()) > 3 * err_l  # not swapped
        checked += 1
    assert checked == 3


def test_separate_stacks_left_then_right(films) -> None:
    """For separate files the full frame is left | right, bit-identical to each file's decode."""
    p = probe_of(films, "separate")
    assert p.frame_size == (640, 180)

    def raw(path: Path) -> np.ndarray:
        out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo",
                              "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True)
        return np.frombuffer(out.stdout, np.uint8).reshape(-1, 180, 320, 3)

    left, right = raw(Path(p.paths[0])), raw(Path(p.paths[1]))
    grid = [f for f in iter_frames(p, grid_step=12) if f.full is not None]
    assert [f.index for f in grid] == [0, 12, 24, 36, 48]
    for f in grid:
        assert np.array_equal(f.full[:, :320], left[f.index])
        assert np.array_equal(f.full[:, 320:], right[f.index])


# --------------------------------------------------------------------------------------------
# Truncated files and timeouts


def truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_truncated_mp4_fails_with_one_line(films, tmp_path: Path) -> None:
    """Half an mp4 (moov index at the end is lost): a filmmine error, or a short decode."""
    bad = truncate(films["sbs"], tmp_path / "half.mp4")
    stats = DecodeStats()
    try:
        p = probe_film("half", (str(bad),))
        frames = list(iter_frames(p, stats=stats, timeout_s=120))
    except FilmmineError as e:
        assert "\n" not in str(e) and str(e)
    else:
        assert len(frames) < N and stats.stopped_early
        assert "\n" not in stats.stopped_early


def test_truncated_mkv_decodes_partially(films, sbs_full: list[Frame], tmp_path: Path) -> None:
    """Half a Matroska file: the frames that survive decode, identical to frames of the full
    decode in film order, and stats.stopped_early says why in one line.

    (Only the leading frames are compared by index: at the cut, B-frames whose packets were
    lost are not in the truncated file's own timestamp index, so the index of a later frame
    shifts against the whole file's.)
    """
    mkv = tmp_path / "film.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(films["sbs"]), "-c", "copy",
                    str(mkv)], check=True)
    bad = truncate(mkv, tmp_path / "half.mkv")
    p = probe_film("half", (str(bad),))
    assert p.layout == "sbs" and p.n_frames == N  # the header still promises the whole film
    stats = DecodeStats()
    frames = list(iter_frames(p, grid_step=6, stats=stats, timeout_s=120))
    assert 0 < len(frames) < N
    assert [f.index for f in frames] == list(range(len(frames)))
    matched = []
    for f in frames:
        same = [g.index for g in sbs_full if np.array_equal(f.lowres, g.lowres)]
        assert same, f.index  # a real, undamaged picture of the film
        matched.append(same[0])
    assert matched == sorted(set(matched))  # in film order, none repeated
    assert matched[: len(frames) // 2] == list(range(len(frames) // 2))
    for f in frames[: len(frames) // 2]:
        if f.full is not None:
            assert np.array_equal(f.full, sbs_full[f.index].full)
    assert stats.frames == len(frames) and stats.expected == N
    assert stats.stopped_early and "\n" not in stats.stopped_early
    assert f"decoded {len(frames)} of {N} frames" in stats.stopped_early


def test_start_past_the_end_is_a_decode_error(films) -> None:
    with pytest.raises(DecodeError, match="no frame decoded"):
        list(iter_frames(probe_of(films, "sbs"), start_frame=N + 50, n_frames=10))


@pytest.mark.skipif(not CONGO.is_file(), reason="needs the shared 1080p clip")
def test_decode_timeout_raises() -> None:
    """A decoder running past timeout_s is killed: DecodeError, not a hang or a short film."""
    p = probe_film("congo", (str(CONGO),))
    with pytest.raises(DecodeError, match="timed out"):
        for _ in iter_frames(p, grid_step=1, timeout_s=1e-3):
            pass


def test_decode_timeout_raises_on_synthetic(films) -> None:
    """Same on a small film, consumed slowly enough that the watchdog always fires."""
    import time

    p = probe_of(films, "sbs")
    with pytest.raises(DecodeError, match="timed out"):
        for f in iter_frames(p, grid_step=1, timeout_s=1e-3):
            if f.index == 0:
                time.sleep(0.5)  # let the watchdog (0.2 s period) see the overrun


# --------------------------------------------------------------------------------------------
# Exact indices: frame i is one picture however the film is cut into ranges


def test_index_is_the_same_from_a_seek_after_a_timestamp_gap(films, tmp_path: Path) -> None:
    """A film missing frame 10 (a timestamp gap): index i is one picture however decoded."""
    gap = tmp_path / "gap.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(films["sbs"]), "-vf",
                    "select='not(eq(n,10))'", "-fps_mode", "passthrough", "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "14", "-g", "12", str(gap)], check=True)
    p = probe_film("gap", (str(gap),))
    full = list(iter_frames(p, grid_step=6))
    part = list(iter_frames(p, start_frame=20, n_frames=10, grid_step=6))
    assert len(part) == 10
    for f in part:
        assert np.array_equal(f.lowres, full[f.index].lowres), f.index


def test_a_transport_stream_whose_video_starts_after_its_audio(tmp_path: Path) -> None:
    """An MPEG-TS whose video starts 0.12 s after the container (its audio first): ffmpeg's
    filter graph counts from the video's own start, not the index's. Every frame keeps its
    label, from the start and from a seek: each full-resolution grid frame is the film's
    frame of that index."""
    film = tmp_path / "late_video.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=6", "-itsoffset", "0.12", "-f", "lavfi", "-i",
                    "testsrc2=size=320x180:rate=25:duration=6", "-map", "1:v", "-map", "0:a",
                    "-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-f", "mpegts", str(film)], check=True)
    p = probe_film("late", (str(film),), "sbs")
    assert p.pts is not None and p.pts.clock_us > 100_000
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(film), "-map", "0:v", "-f",
                          "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True,
                         check=True).stdout
    ref = np.frombuffer(raw, np.uint8).reshape(-1, 180, 320, 3)
    for start, n in ((0, 50), (90, 40)):
        got = list(iter_frames(p, start_frame=start, n_frames=n, grid_step=5, lowres_width=64))
        assert [f.index for f in got] == list(range(start, start + n))
        full = [f for f in got if f.full is not None]
        assert [f.index for f in full] == list(range(start, start + n, 5))
        for f in full:
            assert np.abs(f.full.astype(int) - ref[f.index]).mean() < 2.0, (start, f.index)


def test_closing_the_decoder_early_leaves_no_reader_thread(films) -> None:
    """Stop after the first frame: every decoder thread ends once the generator is closed."""
    import threading
    import time

    before = set(threading.enumerate())
    gen = iter_frames(probe_of(films, "sbs"), grid_step=1)
    next(gen)
    time.sleep(1.0)  # ffmpeg fills the 16-frame full-resolution queue meanwhile
    gen.close()
    for _ in range(20):  # give the threads up to 1 s to notice the end
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left:
            break
        time.sleep(0.05)
    assert not left, [t.name for t in left]


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_b_frame_film_ranges_equal_full_decode(films, tmp_path: Path, ext: str) -> None:
    """B-frames (decode order is not presentation order) in open GOPs (frames after a keyframe
    shown before it) and two timestamp gaps: the index is in presentation order and every
    range, whatever frame it starts on, decodes the same pictures under the same indices as
    the whole film. (In the mp4, the last P-frame references a leading B-frame of the last,
    open, GOP: a decode must start one keyframe earlier.)"""
    film = tmp_path / f"bframes.{ext}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(films["sbs"]), "-vf",
                    "select='not(eq(n,17)+eq(n,40))'", "-fps_mode", "passthrough", "-c:v",
                    "libx264", "-preset", "veryfast", "-crf", "14", "-g", "12", "-bf", "3",
                    "-x264-params", "b-pyramid=normal:open-gop=1", str(film)], check=True)
    packets = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                              "packet=pts", "-of", "csv=p=0", str(film)], capture_output=True,
                             text=True, check=True).stdout.split()
    pts = [int(p) for p in packets]
    assert pts != sorted(pts)  # reordered: the file has B-frames
    p = probe_film("bf", (str(film),))
    assert p.pts is not None and p.pts.n == len(pts) == N - 2
    keys = p.pts.keyframes()
    assert keys is not None and keys[1].any()  # open GOPs
    times = p.pts.times_us()
    assert list(times) == sorted(times)
    full = list(iter_frames(p, grid_step=6))
    assert [f.index for f in full] == list(range(N - 2))
    for start in range(1, N - 2, 4):
        stats = DecodeStats()
        got = list(iter_frames(p, start_frame=start, n_frames=9, grid_step=6, stats=stats))
        assert [f.index for f in got] == list(range(start, min(start + 9, N - 2)))
        assert stats.unmatched == stats.grid_missed == 0
        for f in got:
            ref = full[f.index]
            assert np.array_equal(f.lowres, ref.lowres), (start, f.index)
            assert (f.full is None) == (ref.full is None), (start, f.index)
            if f.full is not None:
                assert np.array_equal(f.full, ref.full), (start, f.index)


def test_probe_without_an_index_decodes_ranges_by_frame_rate(films, sbs_full: list[Frame]) -> None:
    """A probe rebuilt from a film record has no timestamp index: a constant-rate film still
    decodes ranges by a time derived from fps and a frame count."""
    import dataclasses

    p = dataclasses.replace(probe_of(films, "sbs"), pts=None)
    for start in (1, 29, 50):
        got = list(iter_frames(p, start_frame=start, n_frames=7, grid_step=6))
        assert [f.index for f in got] == list(range(start, min(start + 7, N)))
        for f in got:
            assert np.array_equal(f.lowres, sbs_full[f.index].lowres), f.index
            assert (f.full is None) == (sbs_full[f.index].full is None)


# --------------------------------------------------------------------------------------------
# Why a decode stopped: the cause ffmpeg names, not its generic last line


def _mkv(films, tmp_path: Path) -> Path:
    mkv = tmp_path / "film.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(films["sbs"]), "-c", "copy",
                    str(mkv)], check=True)
    return mkv


def test_an_mkv_cut_to_its_header_names_the_truncation(films, tmp_path: Path) -> None:
    """1000 bytes of an mkv probe (the header is whole) but decode nothing: ffmpeg's last line
    is "Error marking filters as finished", after "[matroska,webm] File ended prematurely"."""
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(_mkv(films, tmp_path).read_bytes()[:1000])
    p = probe_film("cut", (str(cut),), requested="sbs")
    with pytest.raises(NoFrameDecoded) as e:
        list(iter_frames(p, timeout_s=120))
    assert str(e.value) == "no frame decoded: truncated file: ended prematurely"


def test_a_half_mkvs_stop_reason_names_the_truncation(films, tmp_path: Path) -> None:
    bad = truncate(_mkv(films, tmp_path), tmp_path / "half.mkv")
    stats = DecodeStats()
    frames = list(iter_frames(probe_film("half", (str(bad),)), stats=stats, timeout_s=120))
    assert 0 < len(frames) < N
    assert stats.stop_reason == "truncated file: ended prematurely"
    assert stats.stopped_early == (f"decoded {len(frames)} of {N} frames "
                                   "(truncated file: ended prematurely)")


def test_a_half_faststart_mp4s_stop_reason_names_the_truncation(films, tmp_path: Path) -> None:
    """An mp4 with its index in front probes whole when cut: the mov demuxer's "partial file"
    lines say why the frames stop."""
    fast = tmp_path / "fast.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(films["sbs"]), "-c", "copy",
                    "-movflags", "+faststart", str(fast)], check=True)
    bad = truncate(fast, tmp_path / "half.mp4")
    stats = DecodeStats()
    frames = list(iter_frames(probe_film("half", (str(bad),)), stats=stats, timeout_s=120))
    assert 0 < len(frames) < N
    assert stats.stop_reason is not None and "@ 0x" not in stats.stop_reason
    assert stats.stop_reason.startswith("truncated MP4: data cut short (stream 0, offset ")
    assert stats.stop_reason.endswith(": partial file)")


def test_decoder_threads_from_the_environment_change_no_pixel(films, sbs_full: list[Frame],
                                                              monkeypatch) -> None:
    """FILMMINE_DECODE_THREADS (set by a local extract for its workers) becomes ffmpeg's
    ``-threads`` before the input; single-threaded decoding gives the same frames."""
    from filmmine.media.decode import DECODE_THREADS_ENV, build_command, decoder_threads

    p = probe_of(films, "sbs")
    monkeypatch.setenv(DECODE_THREADS_ENV, "1")
    assert decoder_threads() == 1
    cmd = build_command(p, 0, N, 6, (160, 90), 5, decoder_threads())
    i = cmd.index("-i")
    assert cmd[i - 2:i] == ["-threads", "1"]
    got = list(iter_frames(p, grid_step=6))
    assert [f.index for f in got] == [f.index for f in sbs_full]
    for f, ref in zip(got, sbs_full, strict=True):
        assert np.array_equal(f.lowres, ref.lowres) and (f.full is None) == (ref.full is None)
        if f.full is not None:
            assert np.array_equal(f.full, ref.full), f.index
    for unset in ("", "0", "two"):
        monkeypatch.setenv(DECODE_THREADS_ENV, unset)
        assert decoder_threads() is None
    assert "-threads" not in build_command(p, 0, N, 6, (160, 90), 5, None)


# --------------------------------------------------------------------------------------------
# A decoder that dies is a failure, never the end of the film


def _decoder_of_this_process():
    import psutil

    kids = [p for p in psutil.Process().children() if p.name() == "ffmpeg"]
    assert len(kids) == 1, kids
    return kids[0]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_a_killed_decoder_fails_instead_of_ending_the_film(films, sig) -> None:
    """ffmpeg killed mid-film (kill -9, or a Ctrl-C that reached only the children): the
    decode raises DecoderDied (retry: the unit is worth running again), where a short read
    alone would look like a truncated file."""
    stats = DecodeStats()
    got = []
    with pytest.raises(DecoderDied, match=r"decoder (killed by SIGKILL|stopped by a signal)"
                                          r".* after \d+ of 60 frames") as e:
        # every frame at full resolution: ffmpeg blocks on its pipe ~10 frames ahead
        for f in iter_frames(probe_of(films, "sbs"), grid_step=1, stats=stats):
            got.append(f.index)
            if f.index == 2:
                _decoder_of_this_process().send_signal(sig)  # not reaped here: Popen's
    assert e.value.retry
    assert 3 <= len(got) < N and stats.stopped_early is None


def test_a_decoder_killed_before_its_first_frame_is_not_a_clean_end(films) -> None:
    """Killed before a frame came out: DecoderDied, not NoFrameDecoded (which a unit past the
    end of a truncated file turns into a unit with nothing to mine)."""
    import threading

    def kill_soon() -> None:
        import psutil

        for _ in range(400):
            kids = [p for p in psutil.Process().children() if p.name() == "ffmpeg"]
            if kids:
                kids[0].kill()
                return
            time.sleep(0.005)

    probe = probe_of(films, "sbs")   # first: probing runs ffmpegs too (layout thumbnails)
    t = threading.Thread(target=kill_soon)
    t.start()
    with pytest.raises(DecoderDied) as e:
        # a slow consumer: the kill lands while ffmpeg still owes frames
        for _ in iter_frames(probe, grid_step=1):
            time.sleep(0.5)
    t.join()
    assert e.value.retry


def test_the_end_of_a_truncated_file_is_not_a_dead_decoder(films, tmp_path: Path) -> None:
    """A range past the end of a truncated Matroska file: ffmpeg exits 0 having decoded
    nothing, which is the file's end (NoFrameDecoded, ended_cleanly), not a failure."""
    bad = truncate(_mkv(films, tmp_path), tmp_path / "half.mkv")
    with pytest.raises(NoFrameDecoded) as e:
        list(iter_frames(probe_film("half", (str(bad),)), start_frame=45, n_frames=10))
    assert e.value.ended_cleanly
    assert not isinstance(e.value, DecoderDied)
