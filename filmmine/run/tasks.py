"""The tasks a run sends to its workers (probe, work unit) and the checks around them: the
worker's software against the driver's, expected failures returned as ``TaskFailure``, and
one-line reasons for the unexpected ones."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import socket
import sys
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from importlib import metadata
from pathlib import Path

from dask.distributed import (
    KilledWorker,
)

from ..errors import (
    DecoderDied,
    FilmmineError,
    SkippedInput,
)
from ..media.ffmpeg_bin import ffmpeg_version
from ..media.inputs import FilmInput
from ..media.probe import ProbeResult, probe_film
from ..media.scenelist import read_scene_list
from .unit import (
    mine_unit,
)

# the packages a corpus's bytes depend on besides filmmine and ffmpeg, by distribution: the
# manifest records their versions (versions) and every worker must have the driver's
# (software_stack)
PACKAGES = ("numpy", "opencv-contrib-python-headless", "scenedetect", "pyarrow", "webdataset")


def installed(dists: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each distribution, "missing" where there is none."""
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def versions() -> dict[str, str]:
    """The versions a manifest records: Python, ffmpeg, ``PACKAGES``, Dask."""
    return {"python": sys.version.split()[0], "ffmpeg": ffmpeg_version(),
            **installed((*PACKAGES, "dask", "distributed"))}


@functools.cache
def software_stack(torch: bool = False) -> tuple[tuple[str, str], ...]:
    """The versions a task's output bytes depend on besides its input and recipe: filmmine,
    ffmpeg (decode, probe), ``PACKAGES`` (numpy; OpenCV: flow, filters; PySceneDetect: shots;
    webdataset and pyarrow: shards, tables), zlib (PNG labels), and torch for the torch
    backends. Compared between the driver and every worker that runs a task of the run (a
    node set up with other versions would give other bytes, silently: shards no longer the
    same on every run). Python and Dask themselves are left to Dask, which checks them."""
    import zlib

    import cv2

    from .. import __version__

    # the package's own code, not only its version number: a node with a stale checkout
    src = hashlib.sha256()
    pkg = Path(__file__).resolve().parents[1]   # the whole package, not this subpackage
    for f in sorted(pkg.rglob("*.py")):
        src.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    stack = {"filmmine": f"{__version__}+{src.hexdigest()[:12]}", "ffmpeg": ffmpeg_version(),
             # the OpenCV imported, whichever distribution installed it
             "opencv": cv2.__version__, "zlib": zlib.ZLIB_RUNTIME_VERSION,
             **installed((*PACKAGES, *(("torch",) if torch else ())))}
    return tuple(sorted(stack.items()))


def stack_mismatch(expected: tuple[tuple[str, str], ...], here: tuple[tuple[str, str], ...],
                   where: str) -> str | None:
    """One line naming what differs between the driver's stack and ``here`` (a worker's),
    or None when they are the same."""
    mine, theirs = dict(expected), dict(here)
    diff = [k for k in sorted(mine.keys() | theirs.keys()) if mine.get(k) != theirs.get(k)]
    if not diff:
        return None
    what = ", ".join(f"{k} {theirs.get(k, 'missing')} (driver: {mine.get(k, 'missing')})"
                     for k in diff)
    return (f"{where} runs other versions than the driver: {what}; its output would not be "
            "the same bytes: install the same versions on every node, then rerun")


RUN_FILE = ".extract.run"   # in OUT while a run's tasks are out: the run's token (WorkerCheck)


@dataclass(frozen=True)
class WorkerCheck:
    """What each task checks on its worker before it runs: the driver's ``software_stack``,
    and that the worker sees ``out`` as the driver does (its ``RUN_FILE`` holds this run's
    ``token``). A node set up otherwise stops the run: a misconfigured node, not a bad film.
    Node-local disks at the --out path had each worker stage and assemble on its own disk,
    and the driver's corpus referenced what it did not have."""

    stack: tuple[tuple[str, str], ...]
    out: str        # absolute
    token: str

    def problem(self) -> str | None:
        here = software_stack(any(k == "torch" for k, _ in self.stack))
        if here != self.stack:
            why = stack_mismatch(self.stack, here, _this_worker())
            if why:
                return why
        seen = None
        for attempt in range(3):   # a network file system may show a new file late
            if attempt:
                time.sleep(0.5 * attempt)
            try:
                seen = (Path(self.out) / RUN_FILE).read_text()
            except OSError:
                seen = None
            if seen == self.token:
                return None
        what = "is not there" if seen is None else "is another run's"
        return (f"{_this_worker()} does not see {self.out} as the driver does ({RUN_FILE} of "
                f"this run {what}): every worker must see --out and the library at the same "
                "paths, e.g. on a shared file system")


def _this_worker() -> str:
    try:
        from distributed import get_worker

        return f"Dask worker {get_worker().address} (host {socket.gethostname()})"
    except ValueError:
        return f"host {socket.gethostname()}"


def _checked_task(check: WorkerCheck, reads: tuple[str, ...], fn, *args):
    """A task: ``fn(*args)`` once ``check`` passes on this worker and it sees the film files
    the task ``reads`` (the driver saw them at the run's start), else a TaskFailure that says
    why: CLUSTER (stops the run) or UNSEEN (the driver looks again)."""
    why = check.problem()
    if why:
        return TaskFailure(FailureKind.CLUSTER, why)
    unseen = next((p for p in reads if not os.path.exists(p)), None)
    if unseen is not None:
        return TaskFailure(FailureKind.UNSEEN,
                           f"{_this_worker()} does not see {unseen}, which the driver does: "
                           "every worker must see --out and the library at the same paths, "
                           "e.g. on a shared file system", unseen)
    return fn(*args)


class FailureKind(StrEnum):
    """What the driver does with a task's expected failure."""

    FAILED = "failed"     # the film fails with the reason
    SKIPPED = "skipped"   # the film is skipped with the reason (not a stereo film, say)
    CLUSTER = "cluster"   # the worker's set-up: the run stops
    UNSEEN = "unseen"     # the worker does not see the film file: ``ExtractRun.on_unseen``
    RETRY = "retry"       # a unit whose decoder was killed: ``ExtractRun.retry_unit``


@dataclass(frozen=True)
class TaskFailure:
    """An expected failure, returned as a task's result rather than raised (the worker does
    not log it as a crash, and it pickles as plain data)."""

    kind: FailureKind
    reason: str
    path: str = ""   # UNSEEN: the file the worker does not see


def _as_data(fn, *args):
    try:
        return fn(*args)
    except SkippedInput as e:
        return TaskFailure(FailureKind.SKIPPED, str(e))
    except DecoderDied as e:
        return TaskFailure(FailureKind.RETRY if e.retry else FailureKind.FAILED, str(e))
    except FilmmineError as e:
        return TaskFailure(FailureKind.FAILED, str(e))


def probe_input(film: FilmInput) -> ProbeResult:
    """The film's probe, with the cuts of its scene list when it has one."""
    probe = probe_film(film.name, film.paths, film.layout, film.layout_from,
                       projection=film.projection)
    if film.scenes is None:
        return probe
    return replace(probe, given_cuts=tuple(read_scene_list(film.scenes, probe.fps,
                                                           probe.n_frames)))


def _probe_task(film: FilmInput) -> ProbeResult | TaskFailure:
    return _as_data(probe_input, film)


PROGRESS_TOPIC = "filmmine-progress"


def _unit_task(probe, unit, recipe, work_dir, device) -> dict | TaskFailure:
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not inside a Dask worker
        worker = None

    def progress(frames: int) -> None:
        if worker is not None:
            worker.log_event(PROGRESS_TOPIC, {"film": probe.name, "unit": unit.index,
                                              "frames": frames})

    return _as_data(mine_unit, probe, unit, recipe, work_dir, device, progress)


OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM}


class OutputError(FilmmineError):
    """The corpus directory cannot be written (disk full, read-only, permissions)."""


def _is_output_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS


def _describe(exc: BaseException, kind: str = "unit", unit=None) -> str:
    """One-line reason for an unexpected exception raised by a task: ``kind`` probe, unit or
    assemble; ``unit``: a unit task's work unit."""
    if isinstance(exc, KilledWorker):
        # the process running the task vanished on every try: the OS or the nanny killed it
        # (out of memory, most often), or it crashed; no Python exception to show
        what = (f"its work unit {unit.index} (frames {unit.start}-{unit.end})"
                if unit is not None else f"its {'assembly' if kind == 'assemble' else kind}")
        return (f"a worker process died on each of {exc.allowed_failures + 1} tries at {what}: "
                "killed by the system, most often for lack of memory (fewer workers per "
                "machine or more memory each; see the worker logs)")
    text = f"internal error: {type(exc).__name__}: {exc}"
    return text.splitlines()[0] + " (rerun with --debug for the traceback)"
