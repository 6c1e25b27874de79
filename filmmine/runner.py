"""The extract run: Dask tasks per film (probe, work units, assembly), resume, manifest.

The driver submits one probe task per film; when a probe returns it submits the film's work
units (frame ranges), and when all of them are staged, the assembly task that writes shards
and the film record. Finished films (record present) and staged units (marker present) are
skipped, so rerunning after a crash repeats only unfinished work.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from dask.distributed import Client, LocalCluster, as_completed
from tqdm import tqdm

from .atomic import remove_stale_temps, write_bytes
from .corpus import assemble_film, film_record_path, manifest, write_corpus_tables
from .errors import FilmmineError, MonoInput, RecipeError
from .ffmpeg_bin import ffmpeg_version, require_ffmpeg
from .flow import get_backend
from .inputs import FilmInput, resolve_inputs
from .pipeline import backend_options, mine_unit, plan_units
from .probe import ProbeResult, probe_film
from .recipe import dump_toml, load_recipe, recipe_digest

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    out: Path
    inputs: list[dict] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [i for i in self.inputs if i["status"] == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        lines = []
        for i in self.inputs:
            extra = ""
            rec = self.records.get(i.get("film") or "")
            if rec:
                c = rec["counts"]
                extra = (f"{c['accepted']} samples from {c['candidates']} candidates, "
                         f"{c['shots']} shots")
            reason = f" - {i['reason']}" if i.get("reason") else ""
            lines.append(f"  {i['status']:7s} {i['source']}: {extra}{reason}")
        n = sum(r["counts"]["accepted"] for r in self.records.values())
        shards = sum(len(r["shards"]) for r in self.records.values())
        lines.append(f"{len(self.records)} film(s) mined, {n} samples in {shards} shard(s), "
                     f"{len(self.failed)} failed -> {self.out}")
        return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "ffmpeg": ffmpeg_version()}
    for dist in ("numpy", "opencv-contrib-python-headless", "scenedetect", "pyarrow",
                 "webdataset", "dask", "distributed"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def _worker_setup() -> None:
    import cv2

    # one Dask worker per core: OpenCV's own threads would only contend (and the result of
    # a single-threaded DIS is the same on every machine)
    cv2.setNumThreads(1)


@dataclass(frozen=True)
class TaskError:
    """An expected failure, returned as data (the worker does not log it as a crash)."""

    status: str   # "failed" | "skipped"
    reason: str


def _as_data(fn, *args):
    try:
        return fn(*args)
    except MonoInput as e:
        return TaskError("skipped", str(e))
    except FilmmineError as e:
        return TaskError("failed", str(e))


def _probe_task(film: FilmInput) -> ProbeResult | TaskError:
    return _as_data(probe_film, film.name, film.paths, film.layout, film.layout_from)


def _unit_task(*args) -> dict | TaskError:
    return _as_data(mine_unit, *args)


def _describe(exc: BaseException) -> str:
    """One-line reason for an unexpected exception raised by a task."""
    text = f"internal error: {type(exc).__name__}: {exc}"
    return text.splitlines()[0] + " (rerun with --debug for the traceback)"


def _check_recipe(out: Path, recipe: dict, digest: str) -> None:
    existing = out / "recipe.toml"
    if existing.is_file():
        try:
            old = load_recipe(existing)
        except RecipeError:
            old = None
        if old is not None and recipe_digest(old) != digest:
            raise RecipeError(
                f"{out} was made with a different recipe ({recipe_digest(old)}); "
                "use another --out or the same recipe"
            )
    write_bytes(existing, dump_toml(recipe).encode())


def extract(inputs: list[str], out: str | Path, *, layout: str = "auto",
            recipe: str | Path = "default", workers: int | None = None,
            scheduler: str | None = None, device: str = "cpu", progress: bool = True,
            debug: bool = False) -> RunReport:
    """Mine ``inputs`` into the corpus directory ``out``; see the module docstring."""
    require_ffmpeg()
    if not debug:  # distributed sets its loggers up on import; keep the run's output readable
        for name in ("distributed", "dask"):
            logging.getLogger(name).setLevel(logging.ERROR)
    rec = load_recipe(recipe)
    digest = recipe_digest(rec)
    d = rec["disparity"]
    # fail fast on a backend/device that cannot work, before any task starts
    get_backend(d["backend"], device=device, **backend_options(rec))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_recipe(out, rec, digest)
    remove_stale_temps(out)
    films, issues = resolve_inputs(inputs, layout)
    report = RunReport(out)
    statuses: dict[str, dict] = {}
    for f in films:
        statuses[f.name] = {"source": f.source, "film": f.name, "paths": list(f.paths),
                            "status": "pending", "reason": None}
    for i in issues:
        report.inputs.append({"source": i.source, "film": None, "paths": [i.source],
                              "status": i.status, "reason": i.reason})

    todo = []
    for f in films:
        rp = film_record_path(out, f.name)
        if not rp.is_file():
            todo.append(f)
            continue
        record = json.loads(rp.read_text())
        if record["source"]["paths"] == list(f.paths):
            report.records[f.name] = record  # mined by an earlier run
            statuses[f.name].update(status="ok", reason=record.get("reason"))
            shutil.rmtree(out / ".work" / f.name, ignore_errors=True)
        else:
            statuses[f.name].update(
                status="failed",
                reason=f"film id {f.name!r} is already in {out} from "
                       f"{', '.join(record['source']['paths'])}; give it another name")

    if todo:
        _run_tasks(todo, out, rec, digest, device, workers, scheduler, progress, debug,
                   statuses, report)

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
    write_corpus_tables(out, names)
    man = manifest(rec, digest, report.inputs, report.records, versions())
    write_bytes(out / "manifest.json", json.dumps(man, indent=1, sort_keys=True).encode())
    return report


def _client(workers: int | None, scheduler: str | None) -> tuple[Client, LocalCluster | None]:
    if scheduler:
        client = Client(scheduler)
        client.register_worker_callbacks(_worker_setup)
        return client, None
    n = workers if workers is not None else max(1, min(os.cpu_count() or 1, 8))
    if n == 0:  # in-process threads: for debugging
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                               dashboard_address=":0", silence_logs=logging.ERROR)
    else:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    client.register_worker_callbacks(_worker_setup)
    return client, cluster


def _run_tasks(films, out, rec, digest, device, workers, scheduler, progress, debug,
               statuses, report) -> None:
    client, cluster = _client(workers, scheduler)
    if progress and client.dashboard_link:
        print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr)
    by_name = {f.name: f for f in films}
    pending_units: dict[str, int] = {}
    probes: dict[str, ProbeResult] = {}
    units_of: dict[str, list] = {}
    bar = tqdm(total=0, unit="frame", desc="extract", disable=not progress, smoothing=0.1,
               dynamic_ncols=True)
    meta: dict[str, tuple] = {}
    try:
        ac = as_completed()
        for f in films:
            fut = client.submit(_probe_task, f, key=f"probe-{f.name}-{digest}", pure=False)
            meta[fut.key] = ("probe", f.name, None)
            ac.add(fut)
        for fut in ac:
            kind, name, unit = meta.pop(fut.key)
            if fut.status == "error":
                exc = fut.exception()
                if debug:
                    log.error("".join(traceback.format_exception(exc)))
                statuses[name].update(status="failed", reason=_describe(exc))
                pending_units[name] = -1
                continue
            result = fut.result()
            if isinstance(result, TaskError):
                statuses[name].update(status=result.status, reason=result.reason)
                pending_units[name] = -1
                continue
            if pending_units.get(name) == -1:
                continue  # another unit of this film failed already
            if kind == "probe":
                probe = result
                probes[name] = probe
                units = plan_units(probe, rec["decode"]["chunk_s"])
                units_of[name] = units
                pending_units[name] = len(units)
                bar.total += probe.n_frames
                bar.refresh()
                work_dir = out / ".work" / name
                for u in units:
                    uf = client.submit(_unit_task, probe, u, rec, work_dir, device,
                                       key=f"unit-{name}-{u.index}-{digest}", pure=False)
                    meta[uf.key] = ("unit", name, u)
                    ac.add(uf)
            elif kind == "unit":
                bar.update(unit.end - unit.start)
                pending_units[name] -= 1
                if pending_units[name] == 0:
                    f = by_name[name]
                    source = {"input": f.source, "paths": list(f.paths)}
                    af = client.submit(assemble_film, out, probes[name], units_of[name], rec,
                                       digest, source, key=f"assemble-{name}-{digest}",
                                       pure=False)
                    meta[af.key] = ("assemble", name, None)
                    ac.add(af)
            elif kind == "assemble":
                record = result
                report.records[name] = record
                statuses[name].update(status="ok", reason=record.get("reason"))
                bar.set_postfix_str(f"{len(report.records)}/{len(films)} films")
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
