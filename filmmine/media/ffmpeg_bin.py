"""Locate the ffmpeg and ffprobe binaries.

Order: the environment variables ``FILMMINE_FFMPEG`` / ``FILMMINE_FFPROBE`` (full paths), then
``PATH``. A missing binary raises :class:`FFmpegNotFound` with one clear message.

MV-HEVC (spatial video: two views in one HEVC stream) needs an FFmpeg >= 7.1 to decode its
second view (``multiview_ffmpeg``): ``FILMMINE_FFMPEG`` or the one on ``PATH`` when new enough,
else the static build of the ``imageio-ffmpeg`` wheel (``pip install filmmine[spatial]``).
Films in other layouts always use the ffmpeg above, so their corpora do not change with it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache

from ..errors import FFmpegNotFound

ENV_VARS = {"ffmpeg": "FILMMINE_FFMPEG", "ffprobe": "FILMMINE_FFPROBE"}


@cache
def find_binary(name: str) -> str:
    """Absolute path of ``ffmpeg`` or ``ffprobe``; raises FFmpegNotFound."""
    env = os.environ.get(ENV_VARS[name])
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise FFmpegNotFound(f"{ENV_VARS[name]}={env} is not an executable file")
    found = shutil.which(name)
    if found is None:
        raise FFmpegNotFound(
            f"{name} not found on PATH; install ffmpeg (e.g. `apt-get install ffmpeg`) "
            f"or set {ENV_VARS[name]} to its full path"
        )
    return found


MULTIVIEW_MIN = (7, 1)   # the first FFmpeg whose hevc decoder outputs more than the base view
VERSION = re.compile(r"^n?(\d+)\.(\d+)")


@cache
def ffmpeg_version(binary: str | None = None) -> str:
    """``ffmpeg -version``'s version (e.g. ``5.1.8-0+deb12u1``, ``n9.0.2-17-g2a571b6068``)."""
    try:
        out = subprocess.run([binary or find_binary("ffmpeg"), "-version"], capture_output=True,
                             text=True, check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    first = out.splitlines()[0] if out else "unknown"
    return first.split(" Copyright")[0].removeprefix("ffmpeg version ").strip()


def version_tuple(version: str) -> tuple[int, int] | None:
    """(major, minor) of a release version; None for git builds (``N-...``) and the unknown."""
    m = VERSION.match(version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _wheel_ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:   # the wheel without its binary (another platform's)
        return None


@cache
def multiview_ffmpeg() -> str | None:
    """An ffmpeg that decodes both views of MV-HEVC (>= 7.1): ``FILMMINE_FFMPEG``, the one on
    ``PATH``, then imageio-ffmpeg's static build; None when there is none."""
    candidates = [os.environ.get(ENV_VARS["ffmpeg"]), shutil.which("ffmpeg"), _wheel_ffmpeg()]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            v = version_tuple(ffmpeg_version(c))
            if v is not None and v >= MULTIVIEW_MIN:
                return c
    return None


def require_ffmpeg() -> tuple[str, str]:
    """Both binaries, or FFmpegNotFound before any work starts."""
    return find_binary("ffmpeg"), find_binary("ffprobe")
