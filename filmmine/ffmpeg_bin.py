"""Locate the ffmpeg and ffprobe binaries.

Order: the environment variables ``FILMMINE_FFMPEG`` / ``FILMMINE_FFPROBE`` (full paths), then
``PATH``. A missing binary raises :class:`FFmpegNotFound` with one clear message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache

from .errors import FFmpegNotFound

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


@cache
def ffmpeg_version() -> str:
    out = subprocess.run(
        [find_binary("ffmpeg"), "-version"], capture_output=True, text=True, check=False
    ).stdout
    first = out.splitlines()[0] if out else "unknown"
    return first.split(" Copyright")[0].removeprefix("ffmpeg version ").strip()


def require_ffmpeg() -> tuple[str, str]:
    """Both binaries, or FFmpegNotFound before any work starts."""
    return find_binary("ffmpeg"), find_binary("ffprobe")
