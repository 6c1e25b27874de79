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
import json
import logging
import os
import shutil
import sys
import tomllib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..corpus.assemble import (
    film_record_path,
    manifest,
    shard_damage,
    unmine_film,
    verify_suspects,
    write_corpus_tables,
)
from ..corpus.atomic import remove_stale_temps, write_bytes
from ..errors import (
    RecipeError,
    UsageError,
)
from ..flow import get_backend
from ..media.ffmpeg_bin import require_ffmpeg
from ..media.inputs import FilmInput, InputIssue, resolve_inputs
from ..recipe import apply_overrides, dump_toml, load_recipe, recipe_digest
from .cluster import _client, _default_workers, ctrl_c_deferred, unit_slots
from .lock import CorpusLock
from .report import EventLog, InputState, InputStatus, RunReport
from .scheduler import ExtractRun
from .tasks import PROGRESS_TOPIC, OutputError, _probe_task, versions
from .unit import (
    backend_options,
)

log = logging.getLogger(__name__)


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
        report.inputs = [InputStatus(i.source, None, [i.source], InputState(i.status),
                                     i.reason) for i in issues]
        if not report.failed:
            report.inputs.append(InputStatus(", ".join(inputs) or "(no input)", None,
                                             list(inputs), InputState.FAILED,
                                             "no videos found"))
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
    statuses = {f.name: InputStatus(f.source, f.name, list(f.paths)) for f in films}
    for i in issues:
        report.inputs.append(InputStatus(i.source, None, [i.source], InputState(i.status),
                                         i.reason))

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
                statuses[f.name].status = InputState.OK
                statuses[f.name].reason = record.get("reason")
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
        statuses[f.name].status, statuses[f.name].reason = InputState.FAILED, why

    try:
        if todo:
            _run_tasks(todo, out, rec, digest, device, workers, scheduler, progress, debug,
                       statuses, report, events, films_total=len(films))
    except BaseException:
        events.close()
        raise

    for f in films:
        report.inputs.append(statuses[f.name])
    report.inputs.sort(key=lambda i: (i.source, i.film or ""))
    # every record in the corpus is part of it, including films mined by earlier runs
    for rp in sorted((out / "films").glob("*.json")):
        name = rp.name.removesuffix(".json")
        if name not in report.records:
            report.records[name] = json.loads(rp.read_text())
    work = out / ".work"
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    names = sorted(report.records)
    listed = merged_inputs(out, [i.to_json() for i in report.inputs], report.records)
    man = manifest(rec, digest, listed, report.records, versions())
    try:
        write_corpus_tables(out, names)
        write_bytes(out / "manifest.json", json.dumps(man, indent=1, sort_keys=True).encode())
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror}") from e
    events("end", totals=man["totals"], failed=len(report.failed))
    events.close()
    return report


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
    run = ExtractRun(out, rec, digest, device, statuses, report, events, progress, debug)
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
