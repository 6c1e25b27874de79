"""The driver's slot queue (``filmmine.run.scheduler.ExtractRun``) against a fake Dask client.

The fake stands in for the client and ``as_completed``: it records every task the run hands
it, finishes them when the run looks for a result (in an order the test picks, or none yet),
and decides what each task returns (a probe, a unit's marker, a film record, a TaskFailure,
an exception). Nothing is decoded: what is tested is the queue, not mining.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

import filmmine.run.scheduler as scheduler
from filmmine.corpus.assemble import assemble_film
from filmmine.corpus.staging import UnitMarker
from filmmine.errors import ClusterError, SkippedInput
from filmmine.media.inputs import FilmInput
from filmmine.media.probe import ProbeResult
from filmmine.recipe import apply_overrides, load_recipe
from filmmine.run.report import EventLog, InputStatus, RunReport
from filmmine.run.tasks import (
    FailureKind,
    OutputError,
    TaskFailure,
    _checked_task,
    _probe_task,
    _unit_task,
)

FPS = 24.0
UNITS = 4                  # units per film: 96 frames cut into 1 s (24-frame) units
FRAMES = UNITS * int(FPS)
ADDRESS = "tcp://fake-scheduler:8786"
KINDS = {_probe_task: "probe", _unit_task: "unit", assemble_film: "assemble"}


@dataclass
class Call:
    """One task the run handed to the fake client."""

    kind: str              # probe | unit | assemble
    film: str
    index: int | None      # the unit's index (units only)
    key: str
    args: tuple            # the task function's own arguments
    reads: tuple
    resources: dict | None
    attempt: int           # 1 for the first submit of this (kind, film, index), 2 for the next


@dataclass
class FakeFuture:
    key: str
    call: Call
    status: str = "pending"
    value: object = None
    error: BaseException | None = None
    _state: object = None   # a cancelled future's reason lives here, as on distributed's

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value

    def exception(self):
        return self.error


def probe_of(name: str, n_frames: int = FRAMES) -> ProbeResult:
    return ProbeResult(name=name, paths=(f"{name}.mp4",), streams=(), layout="sbs",
                       layout_reason="", frame_size=(640, 180), fps=FPS, n_frames=n_frames,
                       duration_s=n_frames / FPS)


def succeed(call: Call):
    """What a task returns when nothing goes wrong: a probe of ``FRAMES`` frames, a marker
    with 2 samples per unit, a film record counting the units' samples."""
    if call.kind == "probe":
        return probe_of(call.args[0].name)
    if call.kind == "unit":
        return UnitMarker(call.args[1], samples=2)
    _out, probe, units, *_ = call.args
    return {"film": probe.name, "counts": {"accepted": 2 * len(units)}, "reason": None}


@dataclass
class FakeClient:
    """What ExtractRun uses of a distributed Client, plus the as_completed it builds on it.

    ``slots(n)``: the threads the n-th ``scheduler_info`` call reports (one worker each).
    ``pick(client)``: which finished-task-to-be the run gets when it looks for one (an index
    into ``pending``), None for "nothing finished yet". ``behave(call)``: the task's result,
    or it raises (the task raised)."""

    behave: object = succeed
    slots: object = lambda n: 2
    pick: object = lambda client: 0
    calls: list[Call] = field(default_factory=list)
    log: list[tuple] = field(default_factory=list)   # ("submit"|"done", kind, film, index)
    pending: list[FakeFuture] = field(default_factory=list)
    ready: deque = field(default_factory=deque)
    in_flight: int = 0      # handed to the client and not yet handed back to the run
    peak: int = 0
    slots_now: int = 0      # what the last scheduler_info said
    info_calls: int = 0
    looks: int = 0          # has_ready() calls that found nothing finished
    scheduler: object = field(default_factory=lambda: SimpleNamespace(address=ADDRESS))

    @property
    def loop(self):
        return self   # as_completed(loop=client.loop): the fake as_completed finds its client

    def scheduler_info(self, n_workers: int = 0) -> dict:
        assert n_workers == -1   # every worker, not the first few
        self.info_calls += 1
        self.slots_now = n = self.slots(self.info_calls)
        return {"workers": {f"tcp://w{i}": {"nthreads": 1} for i in range(n)}}

    def submit(self, fn, *args, key: str, pure: bool, resources=None) -> FakeFuture:
        assert fn is _checked_task and pure is False
        _check, reads, task, *targs = args
        kind = KINDS[task]
        if kind == "probe":
            film, index = targs[0].name, None
        elif kind == "unit":
            film, index = targs[0].name, targs[1].index
        else:
            film, index = targs[1].name, None
        attempt = 1 + sum(1 for c in self.calls if (c.kind, c.film, c.index) ==
                          (kind, film, index))
        call = Call(kind, film, index, key, tuple(targs), reads, resources, attempt)
        self.calls.append(call)
        self.log.append(("submit", kind, film, index))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        # the queue's promise: never more tasks out than the cluster said it has slots (one
        # when it has none: something must wait on the scheduler for the first worker)
        assert self.in_flight <= max(1, self.slots_now), (self.in_flight, self.slots_now, call)
        return FakeFuture(key, call)

    # as_completed

    def add(self, fut: FakeFuture) -> None:
        self.pending.append(fut)

    def has_ready(self) -> bool:
        if not self.ready and self.pending:
            i = self.pick(self)
            if i is None:
                self.looks += 1
            else:
                self.finish(self.pending.pop(i))
        return bool(self.ready)

    def finish(self, fut: FakeFuture) -> None:
        try:
            fut.value, fut.status = self.behave(fut.call), "finished"
        except Exception as e:   # the task raised: an errored future
            fut.error, fut.status = e, "error"
        self.ready.append(fut)

    def is_empty(self) -> bool:
        return not self.ready and not self.pending

    def __next__(self) -> FakeFuture:
        fut = self.ready.popleft()
        self.in_flight -= 1
        c = fut.call
        self.log.append(("done", c.kind, c.film, c.index))
        return fut

    def submitted(self, kind: str, film: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.kind == kind and film in (None, c.film)]


@pytest.fixture(autouse=True)
def fake_as_completed(monkeypatch):
    monkeypatch.setattr(scheduler, "as_completed", lambda loop: loop)
    monkeypatch.setattr(scheduler, "SLOTS_REFRESH_S", -1.0)   # ask the slots at every pump


@pytest.fixture(scope="module")
def recipe() -> dict:
    return apply_overrides(load_recipe("default"), {"decode": {"chunk_s": 1.0}})


def films_in(tmp_path, names) -> list[FilmInput]:
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    films = []
    for n in names:
        p = lib / f"{n}.mp4"
        p.write_bytes(b"x")
        films.append(FilmInput(n, (str(p),), "sbs", "--layout", str(p)))
    return films


def new_run(tmp_path, recipe, films, device: str = "cpu") -> scheduler.ExtractRun:
    statuses = {f.name: InputStatus(f.source, f.name, list(f.paths)) for f in films}
    out = tmp_path / "out"
    run = scheduler.ExtractRun(out, recipe, "d1g3st", device, statuses, RunReport(out),
                               EventLog(None), progress=False, debug=False)
    run.films_total = len(films)
    return run


def status_of(run) -> dict[str, tuple[str, str | None]]:
    return {n: (s.status, s.reason) for n, s in run.statuses.items()}


def check_order(client: FakeClient, films: list[FilmInput], slots: int,
                probes: bool = True) -> None:
    """A film's units go out after its probe came back, its assembly after all its units
    did; ``probes``: a film's probe goes out only while fewer units and assemblies wait than
    there are slots (not every probe first)."""
    done: set[tuple] = set()
    out: Counter = Counter()
    for i, (what, kind, film, index) in enumerate(client.log):
        if what == "done":
            done.add((kind, film, index))
            continue
        out[kind, film] += 1
        if kind == "unit":
            assert ("probe", film, None) in done, (i, client.log[:i + 1])
        elif kind == "assemble":
            assert all(("unit", film, u) in done for u in range(UNITS)), (i, film)
        elif probes:   # fewer tasks of probed films waiting than slots
            waiting = sum(UNITS - out["unit", f.name] for f in films
                          if ("probe", f.name, None) in done)
            waiting += sum(1 for f in films if ("probe", f.name, None) in done
                           and all(("unit", f.name, u) in done for u in range(UNITS))
                           and not out["assemble", f.name])
            assert waiting < slots, (i, film, waiting)


@pytest.mark.parametrize("slots,seed", [(1, None), (2, None), (3, None), (2, 0), (3, 1),
                                        (5, 2)])
def test_never_more_tasks_out_than_slots_and_each_step_after_the_one_it_needs(
        tmp_path, recipe, slots, seed):
    """Three films of four units each, the tasks finishing oldest first (seed None) or in a
    random order: at most ``slots`` tasks out at any time and all of them used, each unit
    and assembly submitted exactly once, in the order their inputs allow; every film ok with
    the record its assembly returned."""
    rng = np.random.default_rng(seed)
    pick = (lambda c: 0) if seed is None else (lambda c: int(rng.integers(len(c.pending))))
    client = FakeClient(slots=lambda n: slots, pick=pick)
    films = films_in(tmp_path, ["a", "b", "c"])
    run = new_run(tmp_path, recipe, films)
    run.run(client, films)

    assert client.peak == slots   # never more (asserted at each submit), and no fewer
    assert client.in_flight == 0 and client.is_empty()
    assert status_of(run) == {f.name: ("ok", None) for f in films}
    assert run.report.records == {f.name: {"film": f.name, "counts": {"accepted": 2 * UNITS},
                                           "reason": None} for f in films}
    assert (run.samples, run.shots) == (2 * UNITS * len(films), 0)
    for f in films:
        assert len(client.submitted("probe", f.name)) == 1
        assert sorted(c.index for c in client.submitted("unit", f.name)) == list(range(UNITS))
        (asm,) = client.submitted("assemble", f.name)
        out, probe, units, _rec, digest, source = asm.args
        assert out == run.out_abs and probe.name == f.name and digest == "d1g3st"
        assert [(u.start, u.end) for u in units] == [(24 * i, 24 * i + 24)
                                                     for i in range(UNITS)]
        assert source == {"input": f.source, "paths": list(f.paths)}
        # probe and units read the film's files (the worker checks it sees them), assembly none
        assert client.submitted("unit", f.name)[0].reads == f.paths
        assert asm.reads == ()
    assert client.calls[0].kind == "probe"
    keys = [c.key for c in client.calls]
    assert len(set(keys)) == len(keys)   # Dask would hand one result to tasks of one key
    assert all(c.resources is None for c in client.calls)   # a CPU run asks no GPU
    check_order(client, films, slots, probes=False)


def test_a_probed_films_units_go_out_before_the_next_films_probe(tmp_path, recipe):
    """``next_task``: the next film's probe goes out only while fewer units wait than the
    cluster has slots. Two slots, three films of four units: when film a's probe comes back
    its four units wait, so its first unit, not film c's probe, takes the slot it freed."""
    client = FakeClient(slots=lambda n: 2)
    films = films_in(tmp_path, ["a", "b", "c"])
    run = new_run(tmp_path, recipe, films)
    run.run(client, films)
    assert client.log.index(("submit", "unit", "a", 0)) < \
        client.log.index(("submit", "probe", "c", None))
    check_order(client, films, 2)


def test_a_gpu_run_counts_gpu_slots_and_gives_units_a_gpu(tmp_path, recipe):
    """On cuda a slot is a worker thread holding a GPU: workers of 4 threads and one GPU, and
    one of 2 threads and none, run one unit per GPU; units ask Dask for a GPU, probes and
    assemblies do not."""
    client = FakeClient()

    def info(n_workers=0):
        client.info_calls += 1
        client.slots_now = 2   # what the queue may use: one GPU on each of two workers
        return {"workers": {"w0": {"nthreads": 4, "resources": {"GPU": 1}},
                            "w1": {"nthreads": 4, "resources": {"GPU": 1}},
                            "w2": {"nthreads": 2}}}

    client.scheduler_info = info
    films = films_in(tmp_path, ["a", "b"])
    run = new_run(tmp_path, recipe, films, device="cuda")
    run.run(client, films)
    assert status_of(run) == {"a": ("ok", None), "b": ("ok", None)}
    assert client.peak == 2
    assert {c.kind: c.resources for c in client.calls} == {
        "probe": None, "unit": {"GPU": 1}, "assemble": None}


def test_a_worker_that_joins_gets_a_task_before_any_running_one_ends(tmp_path, recipe):
    """A remote cluster whose workers arrive one by one: one slot, then three. No task ends
    until three are out: the run must hand out waiting tasks while it waits for a result."""
    joined = 4   # the 4th scheduler_info call on sees three workers

    def pick(client):
        if pick.first_finish_at is None:
            if client.in_flight < 3 and client.looks <= 150:
                return None   # nothing ends yet
            pick.first_finish_at = client.in_flight
        return 0
    pick.first_finish_at = None

    client = FakeClient(slots=lambda n: 1 if n < joined else 3, pick=pick)
    films = films_in(tmp_path, ["a", "b", "c"])
    run = new_run(tmp_path, recipe, films)
    run.run(client, films)
    assert client.calls[0].kind == "probe" and client.slots_now == 3
    assert pick.first_finish_at == 3
    assert client.peak == 3
    assert status_of(run) == {f.name: ("ok", None) for f in films}


def test_a_unit_whose_decoder_was_killed_is_mined_again_under_a_key_of_its_own(
        tmp_path, recipe):
    """Unit 1 of film a returns RETRY twice, then its marker: it is submitted three times
    (keys ``...-try2``, ``-try3``: Dask would hand back the first result for the same key),
    each time after the previous try came back; the film is assembled once, ok."""
    def behave(call):
        if (call.kind, call.film, call.index) == ("unit", "a", 1) and call.attempt < 3:
            return TaskFailure(FailureKind.RETRY, "ffmpeg killed by signal 9")
        return succeed(call)

    client = FakeClient(behave=behave, slots=lambda n: 2)
    films = films_in(tmp_path, ["a", "b"])
    run = new_run(tmp_path, recipe, films)
    run.run(client, films)
    tries = [c for c in client.submitted("unit", "a") if c.index == 1]
    assert [c.attempt for c in tries] == [1, 2, 3]
    assert tries[1].key == tries[0].key + "-try2" and tries[2].key == tries[0].key + "-try3"
    # each try submitted after the one before it came back
    subs = [i for i, e in enumerate(client.log) if e == ("submit", "unit", "a", 1)]
    dones = [i for i, e in enumerate(client.log) if e == ("done", "unit", "a", 1)]
    assert len(subs) == len(dones) == 3 and subs[1] > dones[0] and subs[2] > dones[1]
    assert status_of(run) == {"a": ("ok", None), "b": ("ok", None)}
    assert len(client.submitted("assemble", "a")) == 1
    assert run.samples == 2 * UNITS * 2   # a retried unit's samples counted once
    assert client.peak <= 2


def test_a_unit_killed_on_every_try_fails_its_film_and_the_rest_is_mined(tmp_path, recipe):
    """RETRY on every try: ``UNIT_TRIES`` submits of that unit, then the film fails with the
    decoder's reason; its units still waiting are dropped, it is never assembled, and the
    other film is mined."""
    why = "ffmpeg killed by signal 9 at frame 30"

    def behave(call):
        if (call.kind, call.film, call.index) == ("unit", "a", 0):
            return TaskFailure(FailureKind.RETRY, why)
        return succeed(call)

    client = FakeClient(behave=behave, slots=lambda n: 1)
    films = films_in(tmp_path, ["a", "b"])
    run = new_run(tmp_path, recipe, films)
    run.run(client, films)
    assert [c.index for c in client.submitted("unit", "a")] == [0] * scheduler.UNIT_TRIES
    assert status_of(run) == {"a": ("failed", why), "b": ("ok", None)}
    assert client.submitted("assemble", "a") == [] and "a" not in run.report.records
    assert len(client.submitted("unit", "b")) == UNITS


def test_a_cluster_failure_stops_the_run(tmp_path, recipe):
    """A task that finds its worker set up otherwise (CLUSTER) stops the run with that reason,
    whatever film it was: nothing more is submitted."""
    why = "Dask worker tcp://w1 runs other versions than the driver: numpy 1.0 (driver: 2.0)"

    def behave(call):
        if (call.kind, call.film, call.index) == ("unit", "a", 2):
            return TaskFailure(FailureKind.CLUSTER, why)
        return succeed(call)

    client = FakeClient(behave=behave, slots=lambda n: 2)
    films = films_in(tmp_path, ["a", "b"])
    run = new_run(tmp_path, recipe, films)
    with pytest.raises(ClusterError) as err:
        run.run(client, films)
    assert str(err.value) == why
    assert client.log[-1] == ("done", "unit", "a", 2)   # nothing submitted after it
    assert "a" not in run.report.records


def test_a_skipped_probe_skips_its_film_with_the_reason(tmp_path, recipe):
    """A probe returning SKIPPED (a 2D video): the film is skipped with that reason, none of
    its units is submitted; the other films are mined."""
    why = "mono: the two halves of every frame are the same picture"

    def behave(call):
        if (call.kind, call.film) == ("probe", "b"):
            return TaskFailure(FailureKind.SKIPPED, why)
        return succeed(call)

    client = FakeClient(behave=behave, slots=lambda n: 2)
    films = films_in(tmp_path, ["a", "b", "c"])
    run = new_run(tmp_path, recipe, films)
    run.run(client, films)
    assert status_of(run) == {"a": ("ok", None), "b": ("skipped", why), "c": ("ok", None)}
    assert client.submitted("unit", "b") == [] and client.submitted("assemble", "b") == []
    assert sorted(run.report.records) == ["a", "c"]


def test_a_task_that_raises_fails_its_film_in_one_line(tmp_path, recipe):
    """An unexpected exception in a unit: the film fails with a one-line reason naming it;
    its other units' results are ignored and it is not assembled. A full disk stops the run
    (OutputError), whatever film it was."""
    def behave(call):
        if (call.kind, call.film, call.index) == ("unit", "a", 1):
            raise KeyError("frames\nsecond line")
        return succeed(call)

    client = FakeClient(behave=behave, slots=lambda n: 2)
    films = films_in(tmp_path, ["a", "b"])
    run = new_run(tmp_path, recipe, films)
    run.run(client, films)
    status, reason = status_of(run)["a"]
    assert status == "failed" and reason.startswith("internal error: KeyError: ")
    assert "\n" not in reason and reason.endswith("(rerun with --debug for the traceback)")
    assert client.submitted("assemble", "a") == [] and status_of(run)["b"] == ("ok", None)

    def full(call):
        if call.kind == "unit":
            raise OSError(errno.ENOSPC, "No space left on device")
        return succeed(call)

    client = FakeClient(behave=full)
    run = new_run(tmp_path, recipe, films)
    with pytest.raises(OutputError, match="No space left on device"):
        run.run(client, films)


def test_a_cancelled_task_stops_the_run_naming_the_scheduler(tmp_path, recipe):
    """A task cancelled under the run (the scheduler's connection lost): ClusterError naming
    the scheduler's address and that the rerun resumes."""
    class Lost(FakeClient):
        def finish(self, fut):
            if fut.call.kind == "unit":
                fut.status = "cancelled"
                fut._state = SimpleNamespace(exception=SimpleNamespace(
                    reason="scheduler-connection-lost"))
                self.ready.append(fut)
                return
            super().finish(fut)

    client = Lost()
    films = films_in(tmp_path, ["a"])
    run = new_run(tmp_path, recipe, films)
    with pytest.raises(ClusterError) as err:
        run.run(client, films)
    assert str(err.value).startswith(
        f"lost the Dask scheduler at {ADDRESS} (scheduler-connection-lost); ")
    assert scheduler.RESUME in str(err.value)


def test_a_file_a_worker_does_not_see(tmp_path, recipe):
    """UNSEEN: the driver looks again. The file still there: a node without the library's
    mount, the run stops. Gone for the driver too: that film fails, the rest is mined."""
    films = films_in(tmp_path, ["a", "b"])
    gone = films[0].paths[0]

    def behave(call):
        if (call.kind, call.film, call.index) == ("unit", "a", 0):
            return TaskFailure(FailureKind.UNSEEN, f"worker does not see {gone}", gone)
        return succeed(call)

    run = new_run(tmp_path, recipe, films)
    with pytest.raises(ClusterError, match="worker does not see"):
        run.run(FakeClient(behave=behave), films)

    client = FakeClient(behave=behave, slots=lambda n: 1)
    run = new_run(tmp_path / "again", recipe, films)

    def deleting(call):
        if call.kind == "unit":
            (tmp_path / "lib" / "a.mp4").unlink(missing_ok=True)   # deleted during the run
        return behave(call)

    client.behave = deleting
    run.run(client, films)
    assert status_of(run) == {
        "a": ("failed", f"missing file: {gone} (gone since the run started)"),
        "b": ("ok", None)}


def test_films_probed_in_the_driver_go_first_and_are_not_probed_again(tmp_path, recipe):
    """``probed``: films the driver probed itself while the cluster started. Their units are
    the first tasks out; they get no probe task; a driver probe that raised fails its film."""
    films = films_in(tmp_path, ["a", "b", "c"])
    done, bad = Future(), Future()
    done.set_result(probe_of("b"))
    bad.set_exception(SkippedInput("not a stereo film"))   # raised, not returned as data
    client = FakeClient(slots=lambda n: 2)
    run = new_run(tmp_path, recipe, films)
    run.run(client, films, {"b": done, "c": bad})
    assert [(c.kind, c.film) for c in client.calls[:2]] == [("unit", "b"), ("unit", "b")]
    assert [c.film for c in client.submitted("probe")] == ["a"]
    assert status_of(run)["a"] == ("ok", None) and status_of(run)["b"] == ("ok", None)
    status, reason = status_of(run)["c"]
    assert status == "failed" and "not a stereo film" in reason
    assert client.submitted("unit", "c") == []


def test_no_slots_is_said_once(tmp_path, recipe, monkeypatch, caplog):
    """A cluster without a worker: one task waits on the scheduler, and the run says once
    that there is none (after ``NO_SLOTS_WARN_S``), not at every look."""
    monkeypatch.setattr(scheduler, "NO_SLOTS_WARN_S", 0.1)
    caplog.set_level(logging.WARNING, logger="filmmine.run.scheduler")

    def pick(client):
        return 0 if client.looks > 20 else None   # ~0.4 s of looks with no worker

    client = FakeClient(slots=lambda n: 0 if client.looks <= 20 else 1, pick=pick)
    films = films_in(tmp_path, ["a"])
    run = new_run(tmp_path, recipe, films)
    run.run(client, films)
    said = [r.getMessage() for r in caplog.records if "no Dask worker" in r.getMessage()]
    assert len(said) == 1 and ADDRESS in said[0], said
    assert status_of(run) == {"a": ("ok", None)}
    assert client.peak == 1
