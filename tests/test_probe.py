"""filmmine.media.probe (with streams and pts_index): stream facts and stereo layout of real
and constructed inputs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REAL_CLIPS, SHARED

from filmmine.errors import FilmmineError, InputError, MonoInput
from filmmine.media.ffmpeg_bin import find_binary
from filmmine.media.probe import decide_layout, film_pts_index, probe_film
from filmmine.media.pts_index import PtsIndex, index_from_packets
from filmmine.media.streams import StreamInfo, ffprobe_reason, probe_stream

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data at {SHARED}")
CONGO = SHARED / "real_360_topbottom" / "congo.mp4"


def info(w: int, h: int, stereo3d: str | None = None) -> StreamInfo:
    return StreamInfo(path="x.mp4", width=w, height=h, fps=24.0, n_frames=240, duration_s=10.0,
                      codec="h264", pix_fmt="yuv420p", stereo3d=stereo3d, spherical=None,
                      has_audio=False)


def lavfi_video(path: Path, size: str, rate: int = 24) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate={rate}:duration=0.5", "-pix_fmt", "yuv420p",
                    str(path)], check=True)
    return path


# --------------------------------------------------------------------------------------------
# Real files


@needs_shared
@pytest.mark.parametrize(("clip", "layout", "frame_size"), [
    ("sbs_cut_clip.mp4", "sbs", (1280, 360)),
    ("sbs_cut_clip_half.mp4", "half-sbs", (640, 360)),
    ("tb_cut_clip.mp4", "tab", (640, 720)),
])
def test_real_clip_layouts(clip: str, layout: str, frame_size: tuple[int, int]) -> None:
    """Known packings of the real cut clips (12 s, 10 fps, 120 frames, no stereo metadata)."""
    p = probe_film(clip, (str(REAL_CLIPS / clip),))
    assert p.layout == layout, p.layout_reason
    assert p.frame_size == frame_size
    assert p.n_frames == 120 and p.fps == pytest.approx(10.0)
    assert p.duration_s == pytest.approx(12.0, abs=0.15)
    assert p.streams[0].stereo3d is None
    key = "sbs" if layout.endswith("sbs") else "tab"
    other = "tab" if key == "sbs" else "sbs"
    assert p.similarity[key] > 0.5 > p.similarity[other]


@needs_shared
def test_real_360_top_bottom_from_container_metadata() -> None:
    """congo.mp4 carries stereo3d 'top and bottom' side data; no frame is needed to decide."""
    p = probe_film("congo", (str(CONGO),))
    assert p.layout.endswith("tab")
    assert "container" in p.layout_reason
    s = p.streams[0]
    assert s.stereo3d == "top and bottom"
    assert s.spherical == "equirectangular"
    assert (s.width, s.height) == (1920, 1080) and s.n_frames == 300
    assert s.fps == pytest.approx(29.97, abs=0.02) and s.has_audio
    assert p.similarity == {}


@needs_shared
def test_explicit_layout_wins_over_detection() -> None:
    p = probe_film("c", (str(REAL_CLIPS / "tb_cut_clip.mp4"),), requested="half-tab",
                   requested_from="library.json")
    assert p.layout == "half-tab" and p.layout_reason == "from library.json"


@needs_shared
@pytest.mark.parametrize(("clip", "given", "doubt"), [
    ("tb_cut_clip.mp4", "sbs", "its halves are alike tab (r=0.79), not sbs (r=0.07)"),
    ("sbs_cut_clip.mp4", "tab", "its halves are alike sbs (r=0.86), not tab (r=-0.01)"),
    ("sbs_cut_clip_half.mp4", "half-tab", "its halves are alike sbs (r=0.84), not tab"),
    ("sbs_cut_clip_half.mp4", "sbs", None),     # packing right (only the squeeze is not)
])
def test_a_wrong_layout_given_by_hand_is_doubted(clip: str, given: str, doubt: str | None):
    """A layout given by hand is still mined, but the halves' correlation that `auto` decides
    by says when it looks wrong (a tab film cut as sbs mined 0 samples without a word)."""
    p = probe_film("c", (str(REAL_CLIPS / clip),), requested=given)
    assert p.layout == given
    if doubt is None:
        assert p.layout_reason == "from --layout"
    else:
        assert p.layout_reason.startswith(f"from --layout; but {doubt}"), p.layout_reason
        assert p.layout_reason.endswith(": check --layout")


# --------------------------------------------------------------------------------------------
# decide_layout: pure cases


def stereo_thumb(w: int, h: int, packing: str) -> np.ndarray:
    """A grey frame holding one random scene twice (2 px parallax) packed as ``packing``."""
    rng = np.random.default_rng(3)
    scene = cv2.GaussianBlur(rng.uniform(0, 255, (h, w + 2)).astype(np.float32), (0, 0), 3)
    scene = cv2.normalize(scene, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    left, right = scene[:, 2:], scene[:, :-2]
    if packing == "sbs":
        left, right = (cv2.resize(v, (w // 2, h)) for v in (left, right))
        return np.concatenate([left, right], axis=1)
    left, right = (cv2.resize(v, (w, h // 2)) for v in (left, right))
    return np.concatenate([left, right], axis=0)


@pytest.mark.parametrize("requested", ["sbs", "half-sbs", "tab", "half-tab"])
def test_explicit_layout(requested: str) -> None:
    assert decide_layout(info(1920, 1080), requested, None) == (requested, "from --layout", {})


@pytest.mark.parametrize("requested", ["separate", "anaglyph"])
def test_explicit_layout_must_be_a_packing(requested: str) -> None:
    with pytest.raises(InputError, match="unknown layout"):
        decide_layout(info(1920, 1080), requested, None)


@pytest.mark.parametrize(("w", "h", "meta", "want"), [
    (3840, 1080, "side by side", "sbs"),
    (1920, 1080, "side by side", "half-sbs"),
    (1920, 2160, "top and bottom", "tab"),
    (1920, 1080, "top and bottom", "half-tab"),
])
def test_container_stereo3d(w: int, h: int, meta: str, want: str) -> None:
    """Container metadata decides the packing; the aspect decides full or half."""
    layout, why, sim = decide_layout(info(w, h, meta), "auto", None)
    assert layout == want
    assert "container" in why and meta in why
    assert sim == {}


def test_container_says_2d_is_mono() -> None:
    with pytest.raises(MonoInput, match="2D"):
        decide_layout(info(3840, 1080, "2D"), "auto", None)


@pytest.mark.parametrize(("w", "h", "want"), [
    (3840, 1080, "sbs"), (1920, 1080, "half-sbs"), (1920, 1080, "half-tab"), (1280, 1440, "tab")])
def test_heuristic_layout_from_aspect_and_halves(w: int, h: int, want: str) -> None:
    packing = "sbs" if want.endswith("sbs") else "tab"
    thumbs = [stereo_thumb(320, round(320 * h / w / 2) * 2, packing)] * 3
    layout, why, sim = decide_layout(info(w, h), "auto", thumbs)
    assert layout == want, why
    assert sim[packing] > 0.9


@pytest.mark.parametrize(("w", "h"), [(1920, 1080), (3840, 1080), (1280, 1440)])
def test_unrelated_halves_are_mono(w: int, h: int) -> None:
    """A 2D frame (halves not alike either way) is MonoInput, whatever the aspect."""
    rng = np.random.default_rng(0)
    th = round(320 * h / w / 2) * 2
    thumbs = [cv2.GaussianBlur(rng.uniform(0, 255, (th, 320)).astype(np.uint8), (0, 0), 2)
              for _ in range(3)]
    with pytest.raises(MonoInput, match="mono"):
        decide_layout(info(w, h), "auto", thumbs)


def test_alike_both_ways_is_undecidable() -> None:
    """A pattern repeating in both halves (test card, tiling) is refused with a hint."""
    rng = np.random.default_rng(1)
    tile = cv2.GaussianBlur(rng.uniform(0, 255, (90, 160)).astype(np.uint8), (0, 0), 2)
    thumb = np.tile(tile, (2, 2))
    with pytest.raises(MonoInput, match="--layout"):
        decide_layout(info(1920, 1080), "auto", [thumb])


def test_middle_aspect_without_frames_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no frame could be decoded"):
        decide_layout(info(1920, 1080), "auto", [])


# --------------------------------------------------------------------------------------------
# Bad inputs: one-line InputError


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (d / "notes.txt").write_text("not a film\nat all\n")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.5",
                    str(d / "audio.m4a")], check=True)
    return d


@pytest.mark.parametrize(("name", "text"), [
    ("empty.mp4", "empty file"),
    ("noise.mp4", "not a readable video"),
    ("notes.txt", "not a readable video"),
    ("missing.mp4", "missing file"),
    ("audio.m4a", "no video stream"),
    (".", "not a file"),
])
def test_probe_stream_bad_inputs(bad_dir: Path, name: str, text: str) -> None:
    with pytest.raises(InputError) as e:
        probe_stream(bad_dir / name)
    msg = str(e.value)
    assert text in msg
    assert "\n" not in msg and msg.strip() == msg


def test_ffprobe_reason_drops_the_per_process_address() -> None:
    """Reasons go into film records and the manifest: ffmpeg's "@ 0x..." object addresses,
    different in every process, would make two runs' outputs differ."""
    stderr = (b"ffprobe version 5.1.9 Copyright (c) 2007-2026 the FFmpeg developers\n"
              b"[matroska,webm @ 0x55afba180180] EBML header parsing failed\n")
    assert ffprobe_reason(stderr, "/films/bad.mkv") == "[matroska,webm] EBML header parsing failed"
    stderr = (b"ffprobe version 5.1.9 Copyright (c) 2007-2026 the FFmpeg developers\n"
              b"[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5581c2a3e4c0] moov atom not found\n")
    assert (ffprobe_reason(stderr, "/films/half.mp4")
            == "truncated or unfinished MP4: no index (moov atom not found)")
    assert ffprobe_reason(None, "/films/half.mp4") == "ffprobe failed"


BANNER = (b"ffprobe version 5.1.9 Copyright (c) 2007-2026 the FFmpeg developers\n"
          b"  built with gcc 12 (Debian 12.2.0-14)\n"
          b"  libavformat    59. 27.100 / 59. 27.100\n")
MOV = b"[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5581c2a3e4c0] "
MKV = b"[matroska,webm @ 0x55afba180180] "


@pytest.mark.parametrize(("lines", "reason"), [
    # ffprobe 5.1 on an mp4 cut short (moov index at the end, lost): the demuxer's line says
    # why, the last one only "invalid data"
    ([MOV + b"moov atom not found", b"/f/half.mp4: Invalid data found when processing input"],
     "truncated or unfinished MP4: no index (moov atom not found)"),
    # cut inside the index
    ([MOV + b"reached eof, corrupted STCO atom", MOV + b"error reading header",
      b"/f/half.mp4: End of file"],
     "truncated MP4: index cut short (reached eof, corrupted STCO atom)"),
    # random bytes: a demuxer's weak guess fails; not "a truncated mp4"
    ([MOV + b"Format mov,mp4,m4a,3gp,3g2,mj2 detected only with low score of 1, misdetection "
      b"possible!", MOV + b"moov atom not found",
      b"/f/half.mp4: Invalid data found when processing input"],
     "unrecognised data (no known video container format)"),
    # another demuxer's specific line is kept, without its address
    ([MKV + b"EBML header parsing failed",
      b"/f/half.mp4: Invalid data found when processing input"],
     "[matroska,webm] EBML header parsing failed"),
    # nothing more specific: the last line
    ([b"/f/half.mp4: Invalid data found when processing input"],
     "Invalid data found when processing input"),
    # ffprobe 5.1 on an mkv cut to 300 bytes: "Input/output error" is generic too, and the
    # cause is the line that names it, not the demuxer's last line
    ([MKV + b"File ended prematurely at pos. 300 (0x12c)", MKV + b"Duplicate element",
      b"Truncating packet of size 140 to 1", b"/f/half.mp4: Input/output error"],
     "truncated file: ended prematurely at byte 300"),
    # cut to 100 bytes: no position
    ([MKV + b"File ended prematurely", b"/f/half.mp4: Input/output error"],
     "truncated file: ended prematurely"),
    # cut to 200 bytes: only the packet reader says so
    ([b"Truncating packet of size 83 to 70", b"/f/half.mp4: Input/output error"],
     "truncated file: last packet cut short (Truncating packet of size 83 to 70)"),
    # a specific line before "Input/output error" is kept
    ([MKV + b"Duplicate element", b"/f/half.mp4: Input/output error"],
     "[matroska,webm] Duplicate element"),
    # nothing more specific: the last line
    ([b"/f/half.mp4: Input/output error"], "Input/output error"),
])
def test_ffprobe_reason_names_the_cause(lines: list[bytes], reason: str) -> None:
    """The last stderr line is the error code's text; when it is the generic "invalid data",
    the demuxer's own line before it says what is wrong (a truncated mp4 by name)."""
    assert ffprobe_reason(BANNER + b"\n".join(lines) + b"\n", "/f/half.mp4") == reason


@pytest.fixture
def fake_ffprobe(tmp_path: Path, monkeypatch):
    """FILMMINE_FFPROBE: a script that fails as ffprobe does, its last line naming an address
    that differs in every process."""
    script = tmp_path / "ffprobe"
    script.write_text("#!/bin/sh\n"
                      'echo "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55$(printf %08x $$)] moov atom not found"'
                      " >&2\n"
                      "exit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("FILMMINE_FFPROBE", str(script))
    find_binary.cache_clear()
    yield script
    find_binary.cache_clear()


def test_probe_reasons_are_the_same_bytes_in_every_process(tmp_path: Path, fake_ffprobe) -> None:
    film = tmp_path / "half.mp4"
    film.write_bytes(b"\0" * 100)
    reasons = set()
    for _ in range(2):
        with pytest.raises(InputError) as e:
            probe_stream(film)
        reasons.add(str(e.value))
    assert reasons == {"not a readable video: truncated or unfinished MP4: no index "
                       "(moov atom not found)"}


def test_a_truncated_mp4s_reason_has_no_address(tmp_path: Path) -> None:
    """The real ffprobe on half an mp4 (its moov index lost): the reason names the cause."""
    src = lavfi_video(tmp_path / "v.mp4", "320x180")
    half = tmp_path / "half.mp4"
    half.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(InputError, match="not a readable video") as e:
        probe_stream(half)
    assert "0x" not in str(e.value) and "\n" not in str(e.value)
    assert str(e.value) == ("not a readable video: truncated or unfinished MP4: no index "
                            "(moov atom not found)")


@pytest.mark.parametrize("size", [100, 300, 600])
def test_an_mkv_cut_very_short_is_named_truncated(tmp_path: Path, size: int) -> None:
    """The real ffprobe on an mkv cut to a few hundred bytes ends with a generic "Input/output
    error"; its earlier "File ended prematurely" line names the cause."""
    src = lavfi_video(tmp_path / "v.mp4", "320x180")
    mkv = tmp_path / "v.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c", "copy", str(mkv)],
                   check=True)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv.read_bytes()[:size])
    with pytest.raises(InputError) as e:
        probe_stream(cut)
    msg = str(e.value)
    assert msg.startswith("not a readable video: truncated file: ")
    assert "Input/output error" not in msg and "0x" not in msg and "\n" not in msg
    if size == 300:  # ffprobe 5.1 says where: "File ended prematurely at pos. 300 (0x12c)"
        assert msg == "not a readable video: truncated file: ended prematurely at byte 300"


def test_random_bytes_named_mp4_are_not_called_a_truncated_mp4(bad_dir: Path) -> None:
    """ffprobe guesses mp4 for random bytes named .mp4 and then finds no moov atom too."""
    with pytest.raises(InputError) as e:
        probe_stream(bad_dir / "noise.mp4")
    assert str(e.value) == ("not a readable video: unrecognised data "
                            "(no known video container format)")


def test_probe_stream_good_file(tmp_path: Path) -> None:
    s = probe_stream(lavfi_video(tmp_path / "v.mp4", "320x180"))
    assert (s.width, s.height, s.n_frames) == (320, 180, 12)
    assert s.fps == pytest.approx(24.0) and s.codec == "h264" and s.pix_fmt == "yuv420p"
    assert s.stereo3d is None and not s.has_audio


def test_separate_views_of_different_size(tmp_path: Path) -> None:
    left = lavfi_video(tmp_path / "l.mp4", "320x180")
    right = lavfi_video(tmp_path / "r.mp4", "336x180")
    with pytest.raises(InputError, match="differ in size: 320x180 vs 336x180") as e:
        probe_film("f", (str(left), str(right)))
    assert "\n" not in str(e.value)


def test_separate_views_of_different_rate(tmp_path: Path) -> None:
    left = lavfi_video(tmp_path / "l.mp4", "320x180", rate=24)
    right = lavfi_video(tmp_path / "r.mp4", "320x180", rate=25)
    with pytest.raises(InputError, match="frame rate"):
        probe_film("f", (str(left), str(right)))


def test_separate_views_stack_side_by_side(tmp_path: Path) -> None:
    left = lavfi_video(tmp_path / "l.mp4", "320x180")
    p = probe_film("f", (str(left), str(left)))
    assert p.layout == "separate" and p.frame_size == (640, 180) and p.n_frames == 12


def test_missing_right_view(tmp_path: Path) -> None:
    left = lavfi_video(tmp_path / "l.mp4", "320x180")
    with pytest.raises(FilmmineError, match="missing file"):
        probe_film("f", (str(left), str(tmp_path / "nope.mp4")))


# --------------------------------------------------------------------------------------------
# The timestamp index: frame k is the k-th presentation time of the stream's packets


def test_pts_index_of_a_two_hour_film_is_small() -> None:
    """172,627 frames at 24000/1001 fps: a few KB however it is pickled, times exact."""
    import pickle

    n = 172_627
    times = (np.arange(n, dtype=np.int64) * 1_001_000_000 + 12_000) // 24_000
    idx = PtsIndex.from_times(times, keyframes=np.arange(0, n, 24))
    assert idx.n == n and np.array_equal(idx.times_us(), times)
    assert len(idx.steps_z) < 8_000 and len(pickle.dumps(idx)) < 12_000
    assert np.array_equal(idx.keyframes()[0], np.arange(0, n, 24))
    # variable rate (random steps): still exact, ~2 bytes a frame
    rng = np.random.default_rng(0)
    vfr = np.cumsum(rng.integers(30_000, 50_000, n))
    idx = PtsIndex.from_times(rng.permutation(vfr))  # any order in: sorted
    assert np.array_equal(idx.times_us(), vfr) and len(idx.steps_z) < 4 * n


def test_pts_index_lookup_and_seek_across_gaps() -> None:
    t = [0, 40_000, 80_000, 200_000, 240_000, 240_000, 280_000]  # a gap, two equal times
    idx = PtsIndex.from_times(t)
    assert [idx.lookup(x) for x in (0, 1, 79_999, 200_001, 280_002)] == [0, 0, 2, 3, 6]
    assert idx.lookup(150_000) in (2, 3) and idx.lookup(-30_000) is None
    assert idx.lookup(330_000) is None and idx.lookup(300_000) == 6  # within half a step
    assert idx.lookup(240_001, expected=5) == 5 and idx.lookup(240_001, expected=4) == 4
    assert idx.seek_us(0) is None and idx.seek_us(3) == 140_000 and idx.seek_us(1) == 20_000
    assert idx.time_us(8) == 360_000  # past the end: at the last step
    assert idx.seek_plan(3) == (140_000, 140_000)  # no keyframes known: seek to the time


def test_seek_plan_starts_at_a_keyframe_that_decodes_the_range() -> None:
    t = np.arange(100) * 40_000
    idx = PtsIndex.from_times(t, keyframes=[0, 24, 48, 72], open_gop=[False, False, True, True])
    assert idx.seek_plan(0) == (None, None)
    assert idx.seek_plan(10) == (None, 380_000)        # before the second keyframe
    assert idx.seek_plan(24) == (24 * 40_000, 940_000)  # on a closed keyframe
    assert idx.seek_plan(30) == (24 * 40_000, 1_180_000)
    assert idx.seek_plan(50) == (24 * 40_000, 1_980_000)  # 48 is open: one keyframe earlier
    assert idx.seek_plan(99) == (48 * 40_000, 3_940_000)
    assert idx.seek_plan(150)[0] == 48 * 40_000        # past the end (a truncated file)


def test_index_from_packets_in_decode_order() -> None:
    """B-frames (decode order), dts where pts is missing, discarded packets, start time."""
    csv = "\n".join([
        "512,-512,K_",     # I  (pts 512 = 1/48 s in 1/24576)
        "2048,0,__",       # P
        "1024,512,__",     # B
        "N/A,1024,__",     # B without pts: its dts
        "4096,1536,K_",    # open keyframe: the next packet is shown before it
        "3072,2048,__",
        "3584,2560,_D",    # discard (outside the edit list): no frame
        "6144,3072,K_",    # closed keyframe
        "6656,3584,__",
        "",
    ])
    idx = index_from_packets(csv, "1/24576", "0.020833")
    us = [round(x / 24576 * 1e6) - 20_833 for x in (512, 1024, 1024, 2048, 3072, 4096, 6144,
                                                     6656)]
    assert list(idx.times_us()) == us
    keys, is_open = idx.keyframes()
    assert list(keys) == [0, 5, 6] and list(is_open) == [False, True, False]
    with pytest.raises(ValueError, match="2 of 3 packets without a timestamp"):
        index_from_packets("N/A,N/A,K_\nN/A,N/A,__\n40,40,__\n", "1/1000", None)
    with pytest.raises(ValueError, match="time base"):
        index_from_packets("0,0,K_\n", "0/1", None)


def test_probe_film_indexes_a_variable_frame_rate_film(tmp_path: Path) -> None:
    """Dropped frames keep their gaps in the index; separate films index the left file."""
    src = lavfi_video(tmp_path / "cfr.mp4", "320x180")  # 12 frames at 24 fps

    def drop(frames: tuple[int, ...], out: Path) -> Path:
        expr = "+".join(f"eq(n,{f})" for f in frames)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-vf",
                        f"select='not({expr})'", "-fps_mode", "passthrough", str(out)],
                       check=True)
        return out

    vfr = drop((3, 7, 8), tmp_path / "vfr.mp4")
    p = probe_film("v", (str(vfr),), requested="sbs")
    kept = [i for i in range(12) if i not in (3, 7, 8)]
    assert p.pts is not None and p.n_frames == p.pts.n == 9
    assert np.allclose(p.pts.times_us(), [k * 1e6 / 24 for k in kept], atol=100)
    assert "pts" not in p.to_json()
    other = probe_film("o", (str(drop((3, 6, 8), tmp_path / "other.mp4")),), requested="sbs")
    assert not np.array_equal(other.pts.times_us(), p.pts.times_us())
    sep = probe_film("s", (str(vfr), other.paths[0]))
    assert np.array_equal(sep.pts.times_us(), p.pts.times_us())
    assert np.array_equal(film_pts_index(vfr).times_us(), p.pts.times_us())


@needs_shared
def test_a_spherical_video_is_probed_with_its_projection() -> None:
    """congo.mp4 (360 degree equirectangular, top-bottom): probe_film says it is spherical,
    which projection and from where; a flat film's probe record has no projection."""
    p = probe_film("congo", (str(CONGO),))
    assert (p.projection, p.projection_from) == ("equirect", "spherical side data")
    assert p.to_json()["projection"] == "equirect"
    flat = probe_film("c", (str(CONGO),), projection="flat")
    assert flat.projection == "flat" and "projection" not in flat.to_json()


VR = SHARED / "vr_spherical"


@needs_shared
def test_the_projection_comes_from_the_sv3d_box_or_is_given_by_hand() -> None:
    """sphericalv2.mp4 is a Spherical Video V2 *mesh* (its sv3d box), though ffprobe 5.1
    reports its older XML's "equirectangular": skipped as a projection filmmine cannot
    reproject. iceland0.ts carries no side data: flat unless --projection says it is
    equirectangular. --projection flat mines congo.mp4's panorama as a flat film."""
    from filmmine.errors import SphericalInput
    from filmmine.media.probe import film_projection

    assert probe_stream(VR / "sphericalv2.mp4").spherical == "equirectangular"
    with pytest.raises(SphericalInput, match=r"^spherical video \(mesh projection, sv3d box\): "
                                             "filmmine cannot reproject this projection$"):
        probe_film("s", (str(VR / "sphericalv2.mp4"),))
    assert probe_film("i", (str(VR / "iceland0.ts"),)).projection == "flat"
    given = probe_film("i", (str(VR / "iceland0.ts"),), projection="equirect")
    assert (given.layout, given.projection, given.projection_from) == \
        ("tab", "equirect", "from --projection")
    assert probe_film("c", (str(CONGO),), projection="flat").layout.endswith("tab")
    # pure: given wins; sv3d equirect bounds cropping half the width are VR180
    assert film_projection("fisheye", "equirectangular", None) == ("fisheye", "from --projection")
    assert film_projection("auto", "equirectangular", ("equirect", (0, 0, 0.25, 0.25)))[0] == \
        "half-equirect"
    assert film_projection("auto", "half_equirectangular", None)[0] == "half-equirect"
    assert film_projection("auto", "rectilinear", None) == ("flat", "spherical side data")
    assert film_projection("auto", None, None) == ("flat", "no spherical metadata")
    with pytest.raises(InputError, match="unknown projection 'cubic'"):
        film_projection("cubic", None, None)


@needs_shared
def test_extract_takes_the_projection_given_by_hand(tmp_path) -> None:
    """iceland0.ts has no side data: --projection equirect mines it as a spherical film, its
    views from its first second (a transport stream whose video starts after its audio)."""
    from filmmine.run.extract import extract

    report = extract([str(VR / "iceland0.ts")], tmp_path / "out", workers=0, progress=False,
                     projection="equirect", overrides={"decode": {"max_duration_s": 1.0}})
    [got] = report.inputs
    assert got.status == "ok", report.summary()
    rec = report.records["iceland0"]
    assert rec["probe"]["projection"] == "equirect"
    assert rec["counts"]["accepted"] >= 0.8 * rec["counts"]["candidates"] > 0, rec["counts"]
