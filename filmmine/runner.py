"""The extract run: Dask tasks per film (probe, work units, assembly), resume, manifest.

The driver queues one probe task per film (a local run probes its first films itself while
its cluster starts); when a probe returns it queues the film's work units (frame ranges), and
when all of them are staged, the assembly task that writes shards and the film record. The
queue hands the scheduler no more tasks at once than the cluster has slots.
Finished films (record present) and staged units (marker present) are skipped, so rerunning
after a crash repeats only unfinished work.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import traceback
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import dask
from dask.distributed import (
    Client,
    KilledWorker,
    LocalCluster,
    Nanny,
    Scheduler,
    SpecCluster,
    as_completed,
)

from .atomic import remove_stale_temps, write_bytes
from .corpus import (
    assemble_film,
    film_record_path,
    manifest,
    shard_damage,
    unmine_film,
    verify_suspects,
    write_corpus_tables,
)
from .decode import DECODE_THREADS_ENV
from .errors import (
    ClusterError,
    CorpusBusy,
    DecoderDied,
    FilmmineError,
    RecipeError,
    SkippedInput,
    UsageError,
)
from .ffmpeg_bin import ffmpeg_version, require_ffmpeg
from .flow import GPU_SHARE_ENV, TORCH_BACKENDS, get_backend
from .inputs import FilmInput, InputIssue, resolve_inputs
from .pipeline import (
    backend_options,
    film_chunk_s,
    mine_unit,
    plan_units,
    trial_span,
    unit_context,
)
from .probe import DOUBT, ProbeResult, probe_film
from .progress import Progress
from .recipe import apply_overrides, dump_toml, load_recipe, recipe_digest
from .scenelist import read_scene_list

log = logging.getLogger(__name__)


SUMMARY_OK_LINES = 20   # inputs up to which the end-of-run summary lists every ok film


@dataclass
class RunReport:
    out: Path
    inputs: list[dict] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)
    remined: dict[str, str] = field(default_factory=dict)  # film -> why it was mined again

    @property
    def failed(self) -> list[dict]:
        return [i for i in self.inputs if i["status"] == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self, listed_ok: int = SUMMARY_OK_LINES) -> str:
        """A line per input that failed, was skipped or was mined with a note, and per plain
        ``ok`` film too when there are at most ``listed_ok`` inputs (a library of thousands
        gets one line for those: the manifest and `filmmine inspect` have them); then the
        totals."""
        lines = []
        notes = {i.get("film"): " - ".join(n for n in (self.layout_note(i.get("film")),
                                                       self.no_samples_note(i.get("film"))) if n)
                 for i in self.inputs}
        quiet_ok = [i for i in self.inputs if i["status"] == "ok" and not i.get("reason")
                    and not notes[i.get("film")] and i.get("film") not in self.remined]
        hide_ok = len(self.inputs) > listed_ok
        for i in self.inputs:
            if hide_ok and i in quiet_ok:
                continue
            extra = ""
            rec = self.records.get(i.get("film") or "")
            if rec:
                c = rec["counts"]
                extra = (f"{c['accepted']} samples from {c['candidates']} candidates, "
                         f"{c['shots']} shots")
            again = self.remined.get(i.get("film") or "")
            again = again and f"mined again ({again})"
            text = " - ".join(t for t in (extra, again, i.get("reason"), notes[i.get("film")])
                              if t)
            lines.append(f"  {i['status']:7s} {i['source']}: {text}")
        if hide_ok and quiet_ok:
            lines.append(f"  {'ok':7s} {len(quiet_ok)} film(s) without a note: per film in "
                         f"{self.out / 'manifest.json'} and `filmmine inspect {self.out}`")
        if not self.records and not self.out.exists():
            lines.append(f"nothing to mine: {self.out} not written")
            return "\n".join(lines)
        n = sum(r["counts"]["accepted"] for r in self.records.values())
        shards = sum(len(r["shards"]) for r in self.records.values())
        lines.append(f"{len(self.records)} film(s) mined, {n} samples in {shards} shard(s), "
                     f"{len(self.failed)} failed -> {self.out}")
        return "\n".join(lines)


    def layout_note(self, film: str | None) -> str | None:
        """For a film mined in a layout its own frames disagree with: why, else None."""
        why = (self.records.get(film or "") or {}).get("probe", {}).get("layout_reason") or ""
        return f"layout {why.replace(DOUBT, ', but ', 1)}" if DOUBT in why else None

    def no_samples_note(self, film: str | None) -> str | None:
        """For a film mined into no sample: its top rejection reasons (what to look at, e.g.
        a wrong --layout gives "inconsistent"), else None."""
        rec = self.records.get(film or "")
        if not rec or rec["counts"]["accepted"] or not rec.get("rejections"):
            return None
        top = sorted(rec["rejections"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        return "no samples: " + ", ".join(f"{k} {v}" for k, v in top)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "ffmpeg": ffmpeg_version()}
    for dist in ("numpy", "opencv-contrib-python-headless", "scenedetect", "pyarrow",
                 "webdataset", "dask", "distributed"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


@functools.cache
def software_stack(torch: bool = False) -> tuple[tuple[str, str], ...]:
    """The versions a task's output bytes depend on besides its input and recipe: filmmine,
    ffmpeg (decode, probe), numpy, OpenCV (flow, filters), PySceneDetect (shots), zlib (PNG
    labels), webdataset and pyarrow (shards, tables), and torch for the torch backends.
    Compared between the driver and every worker that runs a task of the run (a node set
    up with other versions would give other bytes, silently: shards no longer the same on
    every run). Python and Dask themselves are left to Dask, which checks them."""
    import zlib

    import cv2
    import numpy as np

    from . import __version__

    # the package's own code, not only its version number: a node with a stale checkout
    src = hashlib.sha256()
    pkg = Path(__file__).parent
    for f in sorted(pkg.rglob("*.py")):
        src.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    stack = {"filmmine": f"{__version__}+{src.hexdigest()[:12]}", "ffmpeg": ffmpeg_version(),
             "numpy": np.__version__, "opencv": cv2.__version__,
             "zlib": zlib.ZLIB_RUNTIME_VERSION}
    for dist in ("scenedetect", "webdataset", "pyarrow", *(("torch",) if torch else ())):
        try:
            stack[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            stack[dist] = "missing"
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
    the task ``reads`` (the driver saw them at the run's start), else a TaskError that says
    why: "cluster" (stops the run) or "unseen" (the driver looks again: ``_Run.on_unseen``)."""
    why = check.problem()
    if why:
        return TaskError("cluster", why)
    unseen = next((p for p in reads if not os.path.exists(p)), None)
    if unseen is not None:
        return TaskError("unseen", (f"{_this_worker()} does not see {unseen}, which the driver "
                                    "does: every worker must see --out and the library at the "
                                    "same paths, e.g. on a shared file system"), unseen)
    return fn(*args)


def _worker_setup() -> None:
    import cv2

    # one Dask worker per core: OpenCV's and torch's own threads would only contend (and the
    # result of a single-threaded DIS is the same on every machine). Measured on the 60 s
    # benchmark film (2 cores): torch's default threads cost ~30 s of system time spinning.
    # torch is imported only by the backends that use it (470 MiB, 1.5 s a process):
    # OMP_NUM_THREADS gives it one thread when it is; a worker that has it already is set.
    cv2.setNumThreads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    tune_malloc()


# glibc's mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc() -> bool:
    """In this process, glibc malloc as ``_worker_environ`` sets it for local workers: buffers
    up to 32 MiB from the heap, kept (trimmed past 128 MiB). Done again at run time because
    workers started by `dask worker` (a remote cluster: its nanny sets Dask's
    ``MALLOC_TRIM_THRESHOLD_=64 KiB``) never see the local cluster's environment: each frame
    buffer was a fresh mmap, faulted in and unmapped again (two such workers mining the 60 s
    benchmark film: 16.5 s of system time; tuned, 1.9 s). False where the C library is not
    glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, 128 * 2**20))


@dataclass(frozen=True)
class TaskError:
    """An expected failure, returned as data (the worker does not log it as a crash).
    ``status``: "failed" | "skipped" | "cluster" (the worker's set-up: stops the run) |
    "unseen" (the worker does not see the film file ``path``: ``_Run.on_unseen``) |
    "retry" (a unit whose decoder was killed: ``_Run.retry_unit``)."""

    status: str
    reason: str
    path: str = ""


def _as_data(fn, *args):
    try:
        return fn(*args)
    except SkippedInput as e:
        return TaskError("skipped", str(e))
    except DecoderDied as e:
        return TaskError("retry" if e.retry else "failed", str(e))
    except FilmmineError as e:
        return TaskError("failed", str(e))


def probe_input(film: FilmInput) -> ProbeResult:
    """The film's probe, with the cuts of its scene list when it has one."""
    probe = probe_film(film.name, film.paths, film.layout, film.layout_from,
                       projection=film.projection)
    if film.scenes is None:
        return probe
    return replace(probe, given_cuts=tuple(read_scene_list(film.scenes, probe.fps,
                                                           probe.n_frames)))


def _probe_task(film: FilmInput) -> ProbeResult | TaskError:
    return _as_data(probe_input, film)


PROGRESS_TOPIC = "filmmine-progress"


def _unit_task(probe, unit, recipe, work_dir, device) -> dict | TaskError:
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


class EventLog:
    """Optional JSON-lines log of the run, for machines (one object per line, with ``t``)."""

    def __init__(self, path: str | Path | None) -> None:
        self._f = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields) -> None:
        if self._f is None:
            return
        with self._lock:
            self._f.write(json.dumps({"t": round(time.time(), 3), "event": event, **fields},
                                     sort_keys=True, default=str) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


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


def _holds_work(out: Path) -> bool:
    """Whether ``out`` holds a mined film or a staged work unit (what binds it to a recipe)."""
    return any((out / "films").glob("*.json")) or any((out / ".work").glob("*/unit-*.json"))


def _recipe_diff(old: dict, new: dict, most: int = 4) -> str:
    """The keys two resolved recipes differ in, as "table.key old -> new", at most ``most``."""
    diffs = []
    for table in sorted(set(old) | set(new)):
        a, b = old.get(table), new.get(table)
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {}
            diffs += [f"{table}.{k} {a.get(k)!r} -> {b.get(k)!r}"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b and table != "name":   # the names are said already
            diffs.append(f"{table} {a!r} -> {b!r}")
    more = f" and {len(diffs) - most} more" if len(diffs) > most else ""
    return ", ".join(diffs[:most]) + more


def _check_recipe(out: Path, recipe: dict, digest: str) -> None:
    existing = out / "recipe.toml"
    if existing.is_file() and _holds_work(out):
        # the resolved recipe as the corpus was made: compared as stored, not merged over
        # today's defaults (which would fill in keys an older corpus was made without).
        # A corpus without a film or a staged unit (a run that found nothing) binds nothing
        try:
            old = tomllib.loads(existing.read_text())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise RecipeError(f"cannot read the recipe of {out} ({existing.name}: {e}); "
                              "use another --out") from e
        if recipe_digest(old) != digest:
            raise RecipeError(
                f"{out} was made with recipe {old.get('name', '?')!r} "
                f"({recipe_digest(old)}), not {recipe.get('name', '?')!r} ({digest}): "
                f"{_recipe_diff(old, recipe)}; use another --out or the same recipe")
    write_bytes(existing, dump_toml(recipe).encode())


def extract(inputs: list[str], out: str | Path, *, layout: str = "auto",
            recipe: str | Path = "default", workers: int | None = None,
            scheduler: str | None = None, device: str = "cpu", progress: bool = True,
            debug: bool = False, log_jsonl: str | Path | None = None,
            overrides: dict[str, dict] | None = None, redo: list[str] | None = None,
            force: bool = False, limit: int | None = None,
            projection: str = "auto") -> RunReport:
    """Mine ``inputs`` into the corpus directory ``out``; see the module docstring.
    ``overrides``: recipe keys set over the recipe (``--set``; ``recipe.parse_overrides``).
    ``redo``: films (ids or the paths named) mined again in place; ``force``: every film of
    the command. Films whose shards are missing, resized or found bad by ``verify`` are mined
    again anyway."""
    require_ffmpeg()
    if not debug:  # distributed sets its loggers up on import (some with levels of their
        # own, e.g. distributed.client: its traceback when the scheduler goes away); the run
        # reports task failures and a lost scheduler itself, in one line each
        for name in list(logging.root.manager.loggerDict):
            if name.split(".")[0] in ("distributed", "dask"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    rec = apply_overrides(load_recipe(recipe), overrides or {})
    digest = recipe_digest(rec)
    d = rec["disparity"]
    # fail fast on a backend/device that cannot work, before any task starts
    get_backend(d["backend"], device=device, **backend_options(rec))
    out = Path(out)
    films, issues = resolve_inputs(inputs, layout, known_films(out), projection)
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: give at least 1 film")
    if limit is not None and len(films) > limit:
        issues += [InputIssue(f.paths[0] if f.source != f.paths[0] else f.source, "skipped",
                              f"--limit {limit}: not among the command's first {limit} films")
                   for f in films[limit:]]
        films = films[:limit]
    again = {f.name for f in films} if force else films_named(redo or [], films)
    if not films:
        # nothing to mine (an empty directory, a typo in a path): the reasons, no corpus
        report = RunReport(out)
        report.inputs = [{"source": i.source, "film": None, "paths": [i.source],
                          "status": i.status, "reason": i.reason} for i in issues]
        if not any(i["status"] == "failed" for i in report.inputs):
            report.inputs.append({"source": ", ".join(inputs) or "(no input)", "film": None,
                                  "paths": list(inputs), "status": "failed",
                                  "reason": "no videos found"})
        return report
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = CorpusLock(out)
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror}") from e
    try:
        return _extract_locked(films, issues, inputs, out, layout, rec, digest, workers,
                               scheduler, device, progress, debug, log_jsonl, again)
    finally:
        lock.release()


class CorpusLock:
    """One ``extract`` at a time per corpus: an exclusive ``flock`` on ``out/.extract.lock``.

    Two runs on one corpus (a job submitted twice) deleted each other's temp files at their
    start, removed each other's staging after assembling a film (the other's assembly then
    failed), and the run that ended last wrote the manifest. The second run now stops at
    once with a one-line reason. The kernel drops the lock with its process, so after
    ``kill -9`` the next run takes it (the file stays until a run ends). A file system
    without ``flock`` (some network mounts) raises ENOLCK/EOPNOTSUPP: the run goes on
    unlocked, as before."""

    NAME = ".extract.lock"

    def __init__(self, out: Path) -> None:
        import fcntl

        self.path = out / self.NAME
        self.fd: int | None = None
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CorpusBusy(f"{out} is being written by another filmmine extract "
                                 f"({holder}); wait for it to end, or use another --out") from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                log.warning("%s: no file locking here (%s); not guarded against a second run",
                            out, e.strerror)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
            else:  # locked a file the run before removed as it ended: lock the new one
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())

    def release(self) -> None:
        """Remove the lock file, then drop the lock (a run that opens the file before the
        removal finds it locked; one after it makes a new one)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


def films_named(names: list[str], films: list[FilmInput]) -> set[str]:
    """The ids of the films ``names`` (``--redo``) name, by id or by a path of the command;
    UsageError for a name that is none of them."""
    found = set()
    for n in names:
        hits = {f.name for f in films if n in (f.name, f.source) or
                os.path.abspath(n) in (os.path.abspath(p) for p in (f.source, *f.paths))}
        if not hits:
            listed = ", ".join(sorted(f.name for f in films)[:10]) or "none"
            raise UsageError(f"--redo {n}: no film of this command has that id or path "
                             f"(its films: {listed})")
        found |= hits
    return found


def known_films(out: Path) -> dict[tuple[str, ...], str]:
    """The films of the corpus at ``out``: their files -> their id (from the film records)."""
    known = {}
    for rp in sorted((out / "films").glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            known[tuple(json.loads(rp.read_text())["source"]["paths"])] = rp.stem
    return known


def merged_inputs(out: Path, inputs: list[dict], records: dict[str, dict]) -> list[dict]:
    """This run's inputs, those of earlier runs into the corpus that this one did not name
    (from the last manifest), and an entry for each film record none of them names."""
    merged: dict[tuple[str, str], dict] = {}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        for i in json.loads((out / "manifest.json").read_text())["inputs"]:
            # an earlier failure of a film mined since is no longer the corpus's state
            if i["status"] == "ok" or i["film"] not in records:
                merged[(i["source"], i["film"] or "")] = i
    for i in inputs:
        merged[(i["source"], i["film"] or "")] = i
    named = {i["film"] for i in merged.values()}
    for name, rec in records.items():
        if name not in named:
            src = rec.get("source", {})
            merged[(src.get("input", name), name)] = {
                "source": src.get("input", name), "film": name, "paths": src.get("paths", []),
                "status": "ok", "reason": rec.get("reason")}
    return [i for _, i in sorted(merged.items())]


def _extract_locked(films: list, issues: list, inputs: list[str], out: Path, layout: str,
                    rec: dict, digest: str, workers: int | None, scheduler: str | None,
                    device: str, progress: bool, debug: bool,
                    log_jsonl: str | Path | None, again: set[str]) -> RunReport:
    """``extract`` once it holds the corpus (``CorpusLock``), ``films`` and ``issues`` as
    ``resolve_inputs`` gave them; ``again``: the films to mine again (``--redo``)."""
    try:
        _check_recipe(out, rec, digest)
        remove_stale_temps(out)
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror}") from e
    report = RunReport(out)
    events = EventLog(log_jsonl)
    events("start", inputs=inputs, out=str(out), recipe=digest, films=len(films),
           workers=workers, scheduler=scheduler, device=device)
    for i in issues:
        events("input", source=i.source, status=i.status, reason=i.reason)
    statuses: dict[str, dict] = {}
    for f in films:
        statuses[f.name] = {"source": f.source, "film": f.name, "paths": list(f.paths),
                            "status": "pending", "reason": None}
    for i in issues:
        report.inputs.append({"source": i.source, "film": None, "paths": [i.source],
                              "status": i.status, "reason": i.reason})

    todo = []
    suspects = verify_suspects(out)
    for f in films:
        rp = film_record_path(out, f.name)
        if not rp.is_file():
            todo.append(f)
            continue
        record = json.loads(rp.read_text())
        mined_layout = record.get("probe", {}).get("layout")
        if record["source"]["paths"] != list(f.paths):
            why = (f"film id {f.name!r} is already in {out} from "
                   f"{', '.join(record['source']['paths'])}; give it another name")
        elif f.layout != "auto" and f.layout != mined_layout:
            why = (f"film {f.name!r} is already in {out} as {mined_layout}, not "
                   f"{f.layout}; use another --out")
        elif record.get("recipe_digest") != digest:
            why = (f"film {f.name!r} is already in {out} from recipe "
                   f"{record.get('recipe_digest')}, not {digest}; use another --out")
        else:
            redo = "--redo" if f.name in again else shard_damage(out, record, suspects)
            if redo is None:
                report.records[f.name] = record  # mined by an earlier run
                statuses[f.name].update(status="ok", reason=record.get("reason"))
                shutil.rmtree(out / ".work" / f.name, ignore_errors=True)
                continue
            try:
                unmine_film(out, f.name, record)
            except OSError as e:
                raise OutputError(f"cannot write to {out}: {e.strerror}") from e
            report.remined[f.name] = redo
            events("remine", film=f.name, why=redo)
            todo.append(f)
            continue
        statuses[f.name].update(status="failed", reason=why)

    try:
        if todo:
            _run_tasks(todo, out, rec, digest, device, workers, scheduler, progress, debug,
                       statuses, report, events, films_total=len(films))
    except BaseException:
        events.close()
        raise

    for f in films:
        report.inputs.append(statuses[f.name])
    report.inputs.sort(key=lambda i: (i["source"], i["film"] or ""))
    # every record in the corpus is part of it, including films mined by earlier runs
    for rp in sorted((out / "films").glob("*.json")):
        name = rp.name.removesuffix(".json")
        if name not in report.records:
            report.records[name] = json.loads(rp.read_text())
    work = out / ".work"
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    names = sorted(report.records)
    man = manifest(rec, digest, merged_inputs(out, report.inputs, report.records),
                   report.records, versions())
    try:
        write_corpus_tables(out, names)
        write_bytes(out / "manifest.json", json.dumps(man, indent=1, sort_keys=True).encode())
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror}") from e
    events("end", totals=man["totals"], failed=len(report.failed))
    events.close()
    return report


def unit_resources(device: str) -> dict[str, int] | None:
    """Dask resources a work unit needs: one GPU when its flow runs on one.

    Given to ``client.submit(resources=...)`` directly: resources set with ``dask.annotate``
    are dropped when a graph is optimised.
    """
    return {"GPU": 1} if device.startswith("cuda") else None


def unit_slots(client: Client, device: str) -> int:
    """How many work units the cluster runs at once, as its workers stand when asked: their
    threads, or on a GPU run their GPU resources (a unit holds one). At least 1."""
    return max(1, _slots_now(client, device))


def _slots_now(client: Client, device: str) -> int:
    """``unit_slots`` as it is: 0 while no worker (or, on a GPU run, no GPU worker) is
    connected."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    if unit_resources(device):
        return sum(min(int(w.get("nthreads", 1)), int(w.get("resources", {}).get("GPU", 0)))
                   for w in workers)
    return sum(int(w.get("nthreads", 1)) for w in workers)


def no_slots_warning(device: str, address: str, waited_s: float) -> str:
    """What the driver says when the cluster has had no slot for a unit for ``waited_s``:
    its workers have not started yet (batch jobs still queued), or on a GPU run none was
    started with the GPU resource the units need (they would wait for ever)."""
    if unit_resources(device):
        return (f"no worker of the Dask cluster at {address} offers the GPU resource a "
                f"--device {device} unit needs, for {waited_s:.0f} s: the run waits for one "
                "(start GPU workers with --resources GPU=1, one per GPU)")
    return (f"no Dask worker connected to the scheduler at {address} for {waited_s:.0f} s: "
            "the run waits for one")


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


# A local cluster's housekeeping, which its workers inherit. Sampled with py-spy on a worker
# mining the benchmark film, Dask's periodic callbacks took 5.6 % of its busy time: the
# statistical profiler walking the task thread's stack every 10 ms (the dashboard's profile
# page), psutil's system monitor every 500 ms, the event-loop tick every 20 ms and the memory
# monitor every 100 ms. A unit runs for tens of seconds: coarser housekeeping loses nothing.
LOCAL_DASK_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.tick.interval": "200ms",
    "distributed.worker.memory.monitor-interval": "500ms",
}


def _client(workers: int | None, scheduler: str | None,
            device: str = "cpu") -> tuple[Client, SpecCluster | None]:
    if scheduler:
        try:
            client = Client(scheduler)
        except (OSError, ValueError, TypeError) as e:   # refused, timed out, no such address
            why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {why}") from e
        client.register_worker_callbacks(_worker_setup)
        return client, None
    with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ(),
                          **LOCAL_DASK_CONFIG}):
        cluster = _local_cluster(workers, device)
    client = Client(cluster)
    client.register_worker_callbacks(_worker_setup)
    return client, cluster


def _worker_environ() -> dict:
    """Dask's worker environment with glibc malloc tuned for frame-sized buffers.

    Dask sets ``MALLOC_TRIM_THRESHOLD_=64 KiB``, which also freezes glibc's mmap threshold at
    128 KiB: every decoded frame (12 MB at 3840x1080) was then a fresh mmap, page-faulted in
    and unmapped again. Measured on the 60 s benchmark film: 30 s of system time of 125 s.
    Buffers up to 32 MiB now come from the heap and are reused."""
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env["MALLOC_MMAP_THRESHOLD_"] = 32 * 2**20
    env["MALLOC_TRIM_THRESHOLD_"] = 128 * 2**20
    return env


def _default_workers(cpu_count: int | None) -> int:
    """Local worker processes when ``--workers`` is not given: one per core, at most 8."""
    return max(1, min(cpu_count or 1, 8))


def _gpu_worker_layout(workers: int | None, cpu_count: int | None, gpus: int) -> list[int]:
    """The GPU (index among the visible ones) of each local worker process of a CUDA run.

    ``workers`` processes in all when given, else as many as on the CPU (one per core, at most
    8) but at least one per GPU; dealt round robin over the GPUs. A work unit runs all its
    stages (decode, shot detection, filters, flow, encoding) in one worker, so one worker per
    GPU left the other cores idle: 8.0x ffmpeg's decode-only wall on a 16-core H100 node.
    """
    if gpus < 1:
        raise ValueError("no GPU to lay workers out on")
    n = workers if workers is not None else max(gpus, _default_workers(cpu_count))
    return [i % gpus for i in range(max(1, n))]


def _cuda_visible(index: int) -> str:
    """``CUDA_VISIBLE_DEVICES`` of a worker on visible GPU ``index``: that entry of the
    driver's own setting (a job scheduler's "2,5" or GPU UUIDs), else the index."""
    given = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
             if d.strip()]
    return given[index] if index < len(given) else str(index)


def _local_cluster(workers: int | None, device: str) -> SpecCluster:
    quiet = {"dashboard_address": ":0", "silence_logs": logging.CRITICAL}
    if unit_resources(device):
        gpus = _gpu_count()
        if gpus == 0:
            raise FilmmineError(f"--device {device}: no CUDA device visible to torch")
        if workers == 0:  # in-process thread, on the device as named: for debugging
            return LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                resources={"GPU": 1}, **quiet)
        return _gpu_cluster(_gpu_worker_layout(workers, os.cpu_count(), gpus), device)
    n = workers if workers is not None else _default_workers(os.cpu_count())
    if n == 0:  # in-process threads: for debugging
        return LocalCluster(n_workers=1, threads_per_worker=1, processes=False, **quiet)
    # CPU: one single-threaded worker process per core, its ffmpeg on its share of the cores
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                        env=_decode_threads_env(n, os.cpu_count()), **quiet)


def _decode_threads_env(workers: int, cpu_count: int | None) -> dict[str, str]:
    """The worker environment giving each worker's ffmpeg the cores per local worker (at
    least one): with a worker on every core, ffmpeg's frame threads only add work."""
    return {DECODE_THREADS_ENV: str(max(1, (cpu_count or 1) // max(1, workers)))}


def _gpu_cluster(layout: list[int], device: str) -> SpecCluster:
    """Single-threaded worker processes holding GPU=1 each, several per GPU, each building its
    own flow model. ``--device cuda`` pins each to its GPU (``CUDA_VISIBLE_DEVICES``, set before
    the process starts: "cuda" is then that GPU); a named one ("cuda:1") is used by all."""
    pin = device == "cuda"
    workers = {}
    for i, gpu in enumerate(layout):
        env = {"CUDA_VISIBLE_DEVICES": _cuda_visible(gpu)} if pin else {}
        env.update(_decode_threads_env(len(layout), os.cpu_count()))
        # the workers sharing a GPU split its memory (census_sgm sizes its chunks by it): 8
        # workers each sized for the whole H100 failed every unit of the benchmark film
        env[GPU_SHARE_ENV] = str(layout.count(gpu) if pin else len(layout))
        # fewer stranded blocks when chunk shapes vary from batch to batch
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        workers[f"gpu{gpu}-{i}" if pin else f"worker-{i}"] = {"cls": Nanny, "options": {
            "host": "127.0.0.1", "nthreads": 1, "resources": {"GPU": 1}, "env": env,
            "memory_limit": 1 / len(layout), "silence_logs": logging.CRITICAL}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": True,
                                               "dashboard_address": ":0"}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.CRITICAL)


SLOTS_REFRESH_S = 2.0   # how often the driver asks the cluster's slots while tasks wait
RESULT_POLL_S = 0.25    # the driver's wait for a finished task between looks at the slots
NO_SLOTS_WARN_S = 30.0  # a cluster with no slot for a unit this long is said to be so

# tries of a unit whose decoder a signal killed: its own retry, not Dask's ``retries=``, which
# would also rerun a unit that failed on a full disk or a bug
UNIT_TRIES = 3

PLAN_FILE = "plan.json"   # in .work/FILM: the unit length the film's staged units were cut by


RESUME = "films finished and work units staged so far are kept: rerun the same command to resume"


def _wait_for_one(ac: as_completed, timeout_s: float) -> None:
    """Until a task of ``ac`` finishes or ``timeout_s`` passes. as_completed notifies its
    ``thread_condition`` after queueing each finished future: checked and waited on under
    the condition, a finish is never missed. (A first version polled every 20 ms: driver
    CPU 1.73 and 1.82 s on the 20 s benchmark film vs 1.43 and 1.59 s before, two runs
    each, within this VM's noise but for nothing.) Without that attribute (another
    distributed), a plain poll."""
    cond = getattr(ac, "thread_condition", None)
    if cond is None:
        time.sleep(min(timeout_s, 0.02))
        return
    with cond:
        if not ac.has_ready():
            cond.wait(timeout=timeout_s)


def _cancelled_reason(client: Client, fut) -> str:
    """One line for a task of the run cancelled under it: the driver lost its scheduler (it
    died, its node went away), or someone cancelled the task's key on a shared scheduler.
    The run stops there; what it had finished and staged is kept for the rerun."""
    # FutureCancelledError with the reason, kept on the future's state: read it there, as
    # fut.result() goes through the client's event loop, which is closing when it lost
    exc = getattr(getattr(fut, "_state", None), "exception", None)
    why = str(getattr(exc, "reason", None) or "cancelled")
    if "connection-lost" in why:
        return _lost_reason(client, why)
    return (f"a task of this run was cancelled on the Dask scheduler at "
            f"{_address(client)} ({why}); {RESUME}")


def _lost_reason(client: Client, why: str) -> str:
    return f"lost the Dask scheduler at {_address(client)} ({why}); {RESUME}"


def _address(client: Client) -> str:
    return getattr(client.scheduler, "address", None) or "?"


class _Run:
    """Submits and follows the tasks of one extract run (driver side)."""

    def __init__(self, out: Path, rec: dict, digest: str, device: str, statuses: dict,
                 report: RunReport, events: EventLog, progress: bool, debug: bool) -> None:
        self.out, self.rec, self.digest, self.device = out, rec, digest, device
        # what tasks are given: a remote worker runs in a working directory of its own, where
        # a relative --out named another directory (shards and records written there, and
        # the driver's corpus referencing shards it did not have)
        self.out_abs = out.absolute()
        # task keys name the corpus too: on a shared scheduler, runs of the same film and
        # recipe into other corpora must not get these tasks (Dask dedupes by key)
        self.out_tag = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
        self.statuses, self.report, self.events, self.debug = statuses, report, events, debug
        self.meta: dict[str, tuple] = {}
        self.pending_units: dict[str, int] = {}
        self.probes: dict[str, ProbeResult] = {}
        self.trials: dict[str, dict] = {}   # films cut short by decode.max_duration_s
        self.units_of: dict[str, list] = {}
        self.reported: dict[tuple[str, int], int] = {}  # frames reported per unit
        self.tries: dict[tuple[str, int], int] = {}     # units run again: their try now
        self.shots = self.samples = 0
        self.slots = 1          # units the cluster runs at once (``unit_slots``), at the start
        # tasks wait here until a slot is free (``pump``): a worker holds only the task it runs;
        # probes apart, taken only while too few units wait (``next_task``)
        self.waiting: deque[tuple] = deque()
        self.waiting_probes: deque[tuple] = deque()
        self.outstanding = 0    # tasks handed to the scheduler and not yet back
        self.limit, self.limit_at = 1, float("-inf")  # slots now, and when that was asked
        self.no_slots_since: float | None = None  # since when the cluster has had none
        self.no_slots_said = False
        self.ac: as_completed | None = None
        # what each task checks its worker against: set by ``mark_out``
        self.check: WorkerCheck | None = None
        self.paths_of: dict[str, tuple[str, ...]] = {}   # each film's files, as the driver saw
        self.films_total = 1    # films of the command, mined by an earlier run or not
        self.lock = threading.Lock()
        self.bar = Progress(progress)

    def on_progress(self, event) -> None:
        """Worker progress events (frames decoded within a unit), on the client's thread."""
        _, msg = event
        with self.lock:
            key = (msg["film"], msg["unit"])
            self.reported[key] = self.reported.get(key, 0) + msg["frames"]
        self.bar.frames(msg["film"], msg["frames"])

    def postfix(self, films_total: int) -> None:
        done = len(self.report.records)
        self.bar.note(f"films {done}/{films_total} cuts {self.shots} samples {self.samples}")

    def submit(self, client: Client, kind: str, name: str, unit, fn, *args,
               first: bool = False) -> None:
        """Queue a task (``first``: ahead of the others), then hand tasks to the scheduler
        while slots are free (``pump``)."""
        task = (kind, name, unit, fn, args)
        if kind == "probe":
            self.waiting_probes.append(task)
        elif first:
            self.waiting.appendleft(task)
        else:
            self.waiting.append(task)
        self.pump(client)

    def next_task(self) -> tuple | None:
        """The next task to hand out: a film's last step first, then units in the order their
        films were probed, the next film's probe as soon as fewer units wait than the cluster
        has slots. Not every probe first: a library of thousands of films was probed whole
        (each ffprobe reads its film's packets: a NAS's read of the library) before any film
        was mined, and a run killed meanwhile had nothing to keep."""
        if self.waiting_probes and (not self.waiting or (self.waiting[0][0] != "assemble"
                                                         and len(self.waiting) < self.limit)):
            return self.waiting_probes.popleft()
        return self.waiting.popleft() if self.waiting else None

    def pump(self, client: Client) -> None:
        """Hand waiting tasks to the scheduler, no more at once than the cluster has slots.

        Dask sends a worker more tasks than it has threads, and when a worker process dies
        (the OOM killer, preemption) every task it held counts as a suspect: a film whose
        unit kills its workers took a film queued behind it down with it after Dask's four
        tries (KilledWorker). Holding tasks here, a worker holds the one it runs. The
        slots are asked again every ``SLOTS_REFRESH_S`` while tasks wait, finished tasks
        or not: workers that join a remote cluster get work."""
        if not (self.waiting or self.waiting_probes):
            return
        self.refresh_slots(client)
        while self.outstanding < self.limit and (task := self.next_task()) is not None:
            kind, name, unit, fn, args = task
            if kind != "probe" and self.pending_units.get(name) == -1:
                continue  # a unit of this film failed: the film is given up
            key = (f"{kind}-{name}-{unit.index if unit is not None else 0}-{self.digest}-"
                   f"{self.out_tag}")
            if kind == "unit" and (n := self.tries.get((name, unit.index), 1)) > 1:
                key += f"-try{n}"   # a key of its own: Dask would hand back the first result
            resources = unit_resources(self.device) if kind == "unit" else None
            reads = self.paths_of.get(name, ()) if kind in ("probe", "unit") else ()
            fut = client.submit(_checked_task, self.check, reads, fn, *args, key=key,
                                pure=False, resources=resources)
            self.meta[fut.key] = (kind, name, unit)
            self.outstanding += 1
            assert self.ac is not None
            self.ac.add(fut)

    def refresh_slots(self, client: Client) -> None:
        """Ask the cluster's slots when the last answer is ``SLOTS_REFRESH_S`` old; say so
        once when it has had none for ``NO_SLOTS_WARN_S`` (and again after it had some)."""
        now = time.monotonic()
        if now - self.limit_at <= SLOTS_REFRESH_S:
            return
        n, self.limit_at = _slots_now(client, self.device), now
        self.limit = max(1, n)
        if n:
            self.no_slots_since = None
            return
        if self.no_slots_since is None:
            self.no_slots_since, self.no_slots_said = now, False
        elif not self.no_slots_said and now - self.no_slots_since >= NO_SLOTS_WARN_S:
            log.warning(no_slots_warning(self.device, _address(client),
                                         now - self.no_slots_since))
            self.events("waiting", why="no slots", seconds=round(now - self.no_slots_since))
            self.no_slots_said = True

    def mark_out(self) -> None:
        """Write this run's token to ``OUT/RUN_FILE`` (atomically), for ``WorkerCheck``."""
        token = f"{socket.gethostname()} {os.getpid()} {os.urandom(8).hex()}"
        try:
            write_bytes(self.out_abs / RUN_FILE, token.encode())
        except OSError as e:
            if _is_output_error(e):
                raise OutputError(f"cannot write to {self.out}: {e.strerror}") from e
            raise
        stack = software_stack(self.rec["disparity"]["backend"] in TORCH_BACKENDS)
        self.check = WorkerCheck(stack, str(self.out_abs), token)

    def unmark_out(self) -> None:
        with contextlib.suppress(OSError):
            (self.out_abs / RUN_FILE).unlink()

    def fail(self, name: str, status: str, reason: str) -> None:
        self.statuses[name].update(status=status, reason=reason)
        self.pending_units[name] = -1
        self.bar.film_done(name)
        self.events("film", film=name, status=status, reason=reason)

    def run(self, client: Client, films: list[FilmInput],
            probed: dict[str, Future] | None = None) -> None:
        """Follow every film to its record or failure. ``probed``: films already being probed
        in the driver (``early_probes``); the others get a probe task."""
        by_name = {f.name: f for f in films}
        # the files the driver sees: one missing here too is the film's problem (a manifest
        # naming a missing view), reported as the film's reason
        self.paths_of = {f.name: tuple(p for p in f.paths if os.path.exists(p)) for f in films}
        for f in films:
            self.bar.add_film(f.name, self.paths_of[f.name])
        probed = probed or {}
        # this run's client's loop: as_completed() alone takes the default client's, which is
        # another run's when two runs share the process (it closes, and this run hangs)
        self.ac = ac = as_completed(loop=client.loop)
        for f in films:   # the films probed in the driver first: their units go first
            if f.name in probed:
                exc = probed[f.name].exception()
                self.on_result(client, by_name, "probe", f.name, None, exc,
                               None if exc else probed[f.name].result())
        for f in films:
            if f.name not in probed:
                self.submit(client, "probe", f.name, None, _probe_task, f)
        while True:
            if not ac.has_ready():
                if ac.is_empty():
                    break
                # nothing back yet: a worker that joined meanwhile gets a waiting task (the
                # slots are asked every 2 s), not only once a running one ends, which on a
                # remote cluster whose workers arrive one by one is a whole unit later
                _wait_for_one(ac, RESULT_POLL_S)
                if self.waiting or self.waiting_probes or self.no_slots_since is not None:
                    self.refresh_slots(client)   # not when the slots are of no use yet
                self.pump(client)
                continue
            fut = next(ac)
            kind, name, unit = self.meta.pop(fut.key)
            if fut.status == "cancelled":
                raise ClusterError(_cancelled_reason(client, fut))
            self.outstanding -= 1
            if fut.status == "error":
                self.on_result(client, by_name, kind, name, unit, fut.exception(), None)
            else:
                try:
                    result = fut.result()
                except OSError as e:   # CommClosedError: the scheduler relays each result
                    raise ClusterError(_lost_reason(client, type(e).__name__)) from e
                self.on_result(client, by_name, kind, name, unit, None, result)
            self.pump(client)
            self.postfix(len(films))

    def on_result(self, client: Client, by_name: dict[str, FilmInput], kind: str, name: str,
                  unit, exc: BaseException | None, result) -> None:
        """A finished task's outcome: ``exc`` when it raised, else its ``result``."""
        if exc is not None:
            if self.debug:
                log.error("".join(traceback.format_exception(exc)))
            if _is_output_error(exc):
                # the corpus cannot be written: stop; atomic writes left nothing half done
                raise OutputError(f"cannot write to {self.out}: {exc.strerror}") from exc
            self.fail(name, "failed", _describe(exc, kind, unit))
            return
        if isinstance(result, TaskError) and result.status == "unseen":
            result = self.on_unseen(result)
        if isinstance(result, TaskError) and result.status == "cluster":
            raise ClusterError(result.reason)
        if isinstance(result, TaskError) and result.status == "retry":
            if self.retry_unit(client, name, unit, result.reason):
                return
            result = TaskError("failed", result.reason)
        if isinstance(result, TaskError):
            self.fail(name, result.status, result.reason)
        elif self.pending_units.get(name) == -1:
            pass  # another unit of this film failed already
        elif kind == "probe":
            self.on_probe(client, result)
        elif kind == "unit":
            self.on_unit(client, by_name[name], unit, result)
        else:
            self.report.records[name] = result
            self.statuses[name].update(status="ok", reason=result.get("reason"))
            self.bar.film_done(name)
            self.events("film", film=name, status="ok", reason=result.get("reason"),
                        counts=result["counts"])

    def chunk_s(self, probe: ProbeResult) -> float:
        """The film's unit length: the recipe's, shortened when the run has fewer films than
        unit slots (``film_chunk_s``: each film gets its share of the slots)."""
        dec = self.rec["decode"]
        share = -(-self.slots // max(1, self.films_total))
        duration = probe.n_frames / probe.fps if probe.fps > 0 else 0.0
        return film_chunk_s(duration, dec["chunk_s"], dec["min_chunk_s"], share)

    def planned_chunk_s(self, probe: ProbeResult, work_dir: Path) -> float:
        """The film's unit length: the one an earlier run of this corpus planned it with when
        that run left staged work (``.work/FILM/plan.json``), else ``chunk_s``, recorded there
        before any unit runs. A rerun after a crash on a cluster of another size (or with
        other films) keeps the units the first run staged: those of another split would be
        other frame ranges, all mined again."""
        path = work_dir / PLAN_FILE
        try:
            kept = float(json.loads(path.read_text())["chunk_s"])
        except (OSError, ValueError, KeyError, TypeError):
            kept = None
        if kept is not None and 0 <= kept <= self.rec["decode"]["chunk_s"]:
            return kept
        chunk = self.chunk_s(probe)
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
            write_bytes(path, json.dumps({"chunk_s": chunk, "slots": self.slots,
                                          "films": self.films_total}).encode())
        except OSError as e:
            if _is_output_error(e):
                raise OutputError(f"cannot write to {self.out}: {e.strerror}") from e
            raise
        return chunk

    def retry_unit(self, client: Client, name: str, unit, reason: str) -> bool:
        """Run a unit whose decoder was killed again, ahead of the queue, up to ``UNIT_TRIES``
        tries in all; False when they are spent (the film fails with ``reason``)."""
        if self.pending_units.get(name) == -1:
            return True   # the film failed already: nothing to retry for
        n = self.tries.get((name, unit.index), 1)
        if n >= UNIT_TRIES:
            return False
        self.tries[(name, unit.index)] = n + 1
        log.warning("%s frames [%d, %d): %s; mining them again (try %d of %d)", name,
                    unit.start, unit.end, reason, n + 1, UNIT_TRIES)
        self.events("retry", film=name, unit=unit.index, reason=reason, attempt=n + 1)
        with self.lock:   # the frames already counted are decoded again
            counted = self.reported.pop((name, unit.index), 0)
        self.bar.undo_frames(name, counted)
        self.submit(client, "unit", name, unit, _unit_task, self.probes[name], unit, self.rec,
                    self.out_abs / ".work" / name, self.device, first=True)
        return True

    @staticmethod
    def on_unseen(err: TaskError) -> TaskError:
        """A worker did not see a film file the driver saw at the run's start. Gone for the
        driver too (deleted or moved during a run of days): that film's failure, the rest
        mined. Still there: a node without the library's mount, which stops the run."""
        if os.path.exists(err.path):
            return TaskError("cluster", err.reason)
        return TaskError("failed", f"missing file: {err.path} (gone since the run started)")

    def on_probe(self, client: Client, probe: ProbeResult) -> None:
        name = probe.name
        whole = probe
        probe = trial_span(probe, self.rec["decode"]["max_duration_s"])
        if probe is not whole:
            self.trials[name] = {"max_duration_s": self.rec["decode"]["max_duration_s"],
                                 "film_s": round(whole.duration_s, 3)}
        self.probes[name] = probe
        work_dir = self.out_abs / ".work" / name
        units = plan_units(probe, self.planned_chunk_s(probe, work_dir),
                           lead=unit_context(probe.fps, self.rec)[0])
        self.units_of[name] = units
        self.pending_units[name] = len(units)
        self.bar.probed(name, probe.n_frames)
        if DOUBT in probe.layout_reason:
            log.warning("%s: layout %s %s", name, probe.layout,
                        probe.layout_reason.replace(DOUBT, ", but ", 1))
        self.events("probed", film=name, layout=probe.layout, why=probe.layout_reason,
                    frames=probe.n_frames, fps=probe.fps, units=len(units))
        for u in units:
            self.submit(client, "unit", name, u, _unit_task, probe, u, self.rec, work_dir,
                        self.device)

    def on_unit(self, client: Client, film: FilmInput, unit, marker: dict) -> None:
        name = film.name
        with self.lock:  # the rest of the unit's frames, whatever progress events said
            rest = (unit.end - unit.start) - self.reported.pop((name, unit.index), 0)
        self.bar.frames(name, max(0, rest))
        self.shots += len(marker["cuts"]) + len(marker["transitions"])
        self.samples += marker["samples"]
        self.events("unit", film=name, unit=unit.index, start=unit.start, end=unit.end,
                    samples=marker["samples"], stopped_early=marker["stopped_early"])
        self.pending_units[name] -= 1
        if self.pending_units[name] == 0:
            source = {"input": film.source, "paths": list(film.paths)}
            if film.scenes is not None:
                source["scenes"] = film.scenes
            if name in self.trials:
                source["trial"] = self.trials[name]
            # first: a film's last step frees its staging space and completes its record
            self.submit(client, "assemble", name, None, assemble_film, self.out_abs,
                        self.probes[name], self.units_of[name], self.rec, self.digest, source,
                        first=True)


@contextlib.contextmanager
def ctrl_c_deferred():
    """Start the run's processes without handing them Ctrl-C. At a terminal Ctrl-C reaches
    every process of the group: local workers interrupted in their imports print tracebacks of
    their own, and driver-side ffprobes die, to be reported as unreadable films.
    SIGINT is ignored while they start (an ignored signal stays ignored across exec, and
    Python keeps it so: they leave Ctrl-C to the driver, which closes them). A Ctrl-C of that
    time is not lost: a ``sleep`` started before, in the same group and not ignoring it, dies
    of it, and KeyboardInterrupt is raised on leaving. (Blocking SIGINT instead would leave it
    to native threads, OpenBLAS's among them, which drop an ignored signal.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        canary = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        canary = None   # no sleep(1): a Ctrl-C of the next seconds goes unseen
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        if canary is not None:
            died = canary.poll()
            canary.kill()
            canary.wait()
            if died == -signal.SIGINT:
                raise KeyboardInterrupt


def early_probes(films: list[FilmInput], n: int) -> tuple[ThreadPoolExecutor, dict[str, Future]]:
    """Probe the first ``n`` films in driver threads, started before a local cluster: the
    cluster's start (worker processes, imports: ~1 s) and the probes (two ffprobe runs each,
    0.6-0.8 s) overlap instead of following each other. Only for local clusters: a remote
    scheduler's workers may see the films under paths the driver does not have."""
    pool = ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="filmmine-probe")
    return pool, {f.name: pool.submit(_probe_task, f) for f in films[:max(0, n)]}


def _run_tasks(films, out, rec, digest, device, workers, scheduler, progress, debug,
               statuses, report, events, films_total: int | None = None) -> None:
    """``films``: those to mine; ``films_total``: the run's films, mined before or not (the
    units' plan depends on the command, not on how far an earlier run got: a rerun after a
    crash plans the same units and keeps what they staged)."""
    pool, probed = None, {}
    client = cluster = None
    try:
        with ctrl_c_deferred():
            if not scheduler:
                n = workers if workers else _default_workers(os.cpu_count())
                pool, probed = early_probes(films, min(len(films), n))
            client, cluster = _client(workers, scheduler, device)
    except BaseException:   # a Ctrl-C deferred lands here, on leaving the block
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        raise
    if progress and client.dashboard_link:
        print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr)
    run = _Run(out, rec, digest, device, statuses, report, events, progress, debug)
    run.slots = unit_slots(client, device)
    run.films_total = max(1, films_total or len(films))
    client.subscribe_topic(PROGRESS_TOPIC, run.on_progress)
    try:
        run.mark_out()
        run.run(client, films, probed)
    finally:
        run.unmark_out()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        run.bar.close()
        client.unsubscribe_topic(PROGRESS_TOPIC)
        client.close()
        if cluster is not None:
            cluster.close()
