"""A small exception family. Stages raise these; the runner decides the error policy."""

from __future__ import annotations

import re

# the context ffmpeg and ffprobe prefix a message with names the object's address
# ("[matroska,webm @ 0x55d0...]"), different in every process: dropped, so reasons quoting the
# message (film records, the manifest) are the same bytes on every run
ADDRESS = re.compile(r" @ 0x[0-9a-fA-F]+\]")


def scrub_addresses(line: str) -> str:
    """``line`` without ffmpeg's per-process addresses: "[mov @ 0x55d1c...] x" -> "[mov] x"."""
    return ADDRESS.sub("]", line)


class FilmmineError(Exception):
    """Base class: the message is the one-line reason shown to the user."""


class FFmpegNotFound(FilmmineError):
    """No usable ffmpeg/ffprobe binary: fail fast before any work starts."""


class InputError(FilmmineError):
    """An input cannot be mined (not a video, unreadable, mono, missing view...)."""


class DecodeError(FilmmineError):
    """ffmpeg failed or timed out while decoding."""


class NoFrameDecoded(DecodeError):
    """ffmpeg gave no frame of the range (e.g. it lies past the end of a truncated file)."""

    def __init__(self, why: str, ended_cleanly: bool = False) -> None:
        self.why = why   # ffmpeg's clearest error line
        # ffmpeg exited 0: the range lies past the end of the file, not a decoder that failed
        self.ended_cleanly = ended_cleanly
        super().__init__(f"no frame decoded: {why}")


class DecoderDied(DecodeError):
    """ffmpeg ended before the frames it owed, killed by a signal or exiting with an error
    status: the frames it gave are not the film's, whatever a short read looks like. The work
    unit fails; it never becomes a film that stopped early. ``retry``: a signal ended it (a
    kill from outside), so running the unit again may succeed."""

    def __init__(self, message: str, retry: bool = False) -> None:
        self.retry = retry
        super().__init__(message)


class RecipeError(FilmmineError):
    """A recipe file is missing, malformed or names an unknown option."""


class UsageError(FilmmineError):
    """Options that do not fit the command (``--redo`` naming no film of it)."""


class SkippedInput(InputError):
    """An input that is not a film filmmine mines: skipped with its reason, not failed."""


class MonoInput(SkippedInput):
    """The input is a 2D video: skipped, not failed."""


class SphericalInput(SkippedInput):
    """A spherical (360 degree, VR180) video: its equirectangular or mesh views are not flat
    stereo pairs. Skipped until they are reprojected."""


class CorpusBusy(FilmmineError):
    """Another ``filmmine extract`` is writing the corpus directory."""


class ClusterError(FilmmineError):
    """The Dask scheduler given with ``--scheduler`` cannot be reached, or was lost mid-run."""
