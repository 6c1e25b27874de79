"""The driver's slot queue: submits a run's tasks no faster than the cluster has slots,
follows their results, retries units whose decoder was killed, and assembles each film once
its units are staged."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from pathlib import Path

from dask.distributed import (
    Client,
    as_completed,
)

from ..corpus.assemble import (
    assemble_film,
)
from ..corpus.atomic import write_bytes
from ..corpus.staging import UnitMarker
from ..errors import (
    ClusterError,
)
from ..flow import TORCH_BACKENDS
from ..media.inputs import FilmInput
from ..media.probe import DOUBT, ProbeResult
from .cluster import _slots_now, no_slots_warning, unit_resources
from .plan import film_chunk_s, plan_units, trial_span, unit_context
from .progress import Progress
from .report import EventLog, InputState, RunReport
from .tasks import (
    RUN_FILE,
    FailureKind,
    OutputError,
    TaskFailure,
    WorkerCheck,
    _checked_task,
    _describe,
    _is_output_error,
    _probe_task,
    _unit_task,
    software_stack,
)

log = logging.getLogger(__name__)


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
    the condition, a finish is never missed, and the driver does not poll. Without that
    attribute (another
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


class ExtractRun:
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
        self.queue(kind, name, unit, fn, *args, first=first)
        self.pump(client)

    def queue(self, kind: str, name: str, unit, fn, *args, first: bool = False) -> None:
        task = (kind, name, unit, fn, args)
        if kind == "probe":
            self.waiting_probes.append(task)
        elif first:
            self.waiting.appendleft(task)
        else:
            self.waiting.append(task)

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
        self.statuses[name].status, self.statuses[name].reason = InputState(status), reason
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
        if isinstance(result, TaskFailure) and result.kind is FailureKind.UNSEEN:
            result = self.on_unseen(result)
        if isinstance(result, TaskFailure) and result.kind is FailureKind.CLUSTER:
            raise ClusterError(result.reason)
        if isinstance(result, TaskFailure) and result.kind is FailureKind.RETRY:
            if self.retry_unit(client, name, unit, result.reason):
                return
            result = TaskFailure(FailureKind.FAILED, result.reason)
        if isinstance(result, TaskFailure):
            self.fail(name, result.kind, result.reason)
        elif self.pending_units.get(name) == -1:
            pass  # another unit of this film failed already
        elif kind == "probe":
            self.on_probe(client, result)
        elif kind == "unit":
            self.on_unit(client, by_name[name], unit, result)
        else:
            self.report.records[name] = result
            self.statuses[name].status = InputState.OK
            self.statuses[name].reason = result.get("reason")
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
    def on_unseen(err: TaskFailure) -> TaskFailure:
        """A worker did not see a film file the driver saw at the run's start. Gone for the
        driver too (deleted or moved during a run of days): that film's failure, the rest
        mined. Still there: a node without the library's mount, which stops the run."""
        if os.path.exists(err.path):
            return TaskFailure(FailureKind.CLUSTER, err.reason)
        return TaskFailure(FailureKind.FAILED,
                           f"missing file: {err.path} (gone since the run started)")

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
        # all of the film's units queued before a slot is handed out: the next film's probe
        # waits behind them (``next_task``)
        for u in units:
            self.queue("unit", name, u, _unit_task, probe, u, self.rec, work_dir, self.device)
        self.pump(client)

    def on_unit(self, client: Client, film: FilmInput, unit, marker: UnitMarker) -> None:
        name = film.name
        with self.lock:  # the rest of the unit's frames, whatever progress events said
            rest = (unit.end - unit.start) - self.reported.pop((name, unit.index), 0)
        self.bar.frames(name, max(0, rest))
        self.shots += len(marker.cuts) + len(marker.transitions)
        self.samples += marker.samples
        self.events("unit", film=name, unit=unit.index, start=unit.start, end=unit.end,
                    samples=marker.samples, stopped_early=marker.stopped_early)
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
