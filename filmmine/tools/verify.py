"""Check a corpus against its manifest: every shard hashed, read and decoded, counts agreed.

Shards are checked in parallel worker processes, each by :func:`.verify_shard.check_shard`
(hash, members, decoded images). Then the counts: per shard (manifest, ``samples.parquet``'s
``shard`` column, the tar), and in total (accepted rows of ``frames.parquet``); the film
records and the manifest's totals against the shards.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from ..corpus.assemble import VERIFY_FAILED
from ..corpus.atomic import write_bytes
from ..corpus.reader import is_shard_name, read_manifest, read_table, shard_path
from ..errors import FilmmineError
from .summary import human_bytes
from .verify_shard import check_shard

MAX_PROBLEMS_PER_SHARD = 20
PARALLEL_MIN_BYTES = 64 << 20
# a shard entry's fields besides its name (manifest.schema.json: all required)
SHARD_FIELDS = {"film": str, "samples": int, "bytes": int, "sha256": str}


@dataclass(frozen=True)
class Problem:
    where: str      # shard name, or a corpus file (manifest.json, samples.parquet...)
    kind: str       # missing | corrupt | mismatch | unlisted | table; note: not a problem
    message: str

    def line(self) -> str:
        return f"{self.kind.upper():9s}{self.where}: {self.message}"


@dataclass
class VerifyReport:
    corpus: str
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    seconds: float = 0.0
    decoded: bool = True
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)  # findings that are no problem
    unknown_members: int = 0  # members of names verify does not know, ignored (CORPUS.md)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_shards(self) -> list[str]:
        return sorted({p.where for p in self.problems if p.where.endswith(".tar")})

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> str:
        what = "hashed, read and decoded" if self.decoded else "hashed and read (--quick)"
        head = (f"{self.shards} shard(s), {self.samples} samples, {human_bytes(self.bytes)} "
                f"{what} in {self.seconds:.1f} s")
        if self.unknown_members:
            head += f"; {self.unknown_members} unknown member(s) ignored"
        if self.ok:
            return f"verify OK: {head}"
        bad = self.bad_shards
        kinds = Counter(p.kind for p in self.problems)
        return (f"verify FAILED: {len(self.problems)} problem(s) "
                f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); "
                f"{len(bad)} bad shard(s){': ' + ', '.join(bad) if bad else ''}; {head}"
                + ("; the extract command that made the corpus, run again, mines their films "
                   "again" if bad else ""))

    def to_json(self) -> dict:
        return {"corpus": self.corpus, "ok": self.ok, "shards": self.shards,
                "samples": self.samples, "bytes": self.bytes, "decoded": self.decoded,
                "seconds": round(self.seconds, 3), "bad_shards": self.bad_shards,
                "problems": [p.__dict__ for p in self.problems],
                "unknown_members": self.unknown_members,
                "notes": [p.__dict__ for p in self.notes]}


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one worker process per core already


def _pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: safe from a parent that runs threads (fork would copy their locks)
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None
    return ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                               mp_context=multiprocessing.get_context(method))


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def stores_confidence(man: dict) -> bool | None:
    """The manifest recipe's ``output.confidence``: whether every sample has ``KEY.conf.png``
    (None: a corpus that predates the key, or a manifest without it; the member is optional)."""
    recipe = man.get("recipe")
    output = recipe.get("output") if isinstance(recipe, dict) else None
    value = output.get("confidence") if isinstance(output, dict) else None
    return value if isinstance(value, bool) else None


def verify_corpus(corpus: str | Path, *, workers: int | None = None,
                  decode: bool = True) -> VerifyReport:
    """Every check above; problems come back as data, one per finding, naming the shard."""
    t0 = time.monotonic()
    root = Path(corpus)
    man = read_manifest(root)
    report = VerifyReport(str(root), decoded=decode)
    problems = report.problems
    listed = []
    entries = _manifest_field(man, "shards", list, [], problems)
    for s in entries:
        if isinstance(s, dict) and is_shard_name(s.get("name")):
            listed.append(_shard_entry(s, problems))
        else:  # never open a path a manifest made up (../../x)
            name = s.get("name") if isinstance(s, dict) else s
            problems.append(Problem("manifest.json", "mismatch",
                                    f"shard entry {name!r} is not a shard name"))
    tables = {}
    for name in ("samples", "frames"):
        try:
            tables[name] = read_table(root, name)
        except FilmmineError as e:
            problems.append(Problem(f"{name}.parquet", "table", str(e)))
    keys_by_shard: dict[str, list[str]] = {}
    if "samples" in tables:
        cols = tables["samples"].select(["key", "shard"]).to_pydict()
        for k, s in zip(cols["key"], cols["shard"], strict=True):
            keys_by_shard.setdefault(s, []).append(k)

    if workers is None:
        # worker processes take about a second to start: not worth it for a small corpus
        total = sum(s.get("bytes") or 0 for s in listed)
        workers = default_workers() if total >= PARALLEL_MIN_BYTES else 1
    n = max(1, min(workers, len(listed) or 1))
    confidence = stores_confidence(man)
    jobs = {s["name"]: (str(shard_path(root, s["name"])), s.get("sha256"), s.get("bytes"),
                        s.get("film"), decode, confidence) for s in listed}
    if n == 1:
        checks = {name: check_shard(*job) for name, job in jobs.items()}
    else:
        with _pool(n) as pool:
            futures = {name: pool.submit(check_shard, *job) for name, job in jobs.items()}
            checks = {name: fut.result() for name, fut in futures.items()}

    for s in listed:
        c = checks[s["name"]]
        kind = "missing" if not c.exists else "corrupt"
        shown = c.problems[:MAX_PROBLEMS_PER_SHARD]
        for msg in shown:
            problems.append(Problem(s["name"], kind, msg))
        if len(c.problems) > len(shown):
            problems.append(Problem(s["name"], kind,
                                    f"... and {len(c.problems) - len(shown)} more problem(s)"))
        if not c.exists:
            continue
        if c.unknown:
            n_unknown = sum(c.unknown.values())
            report.unknown_members += n_unknown
            counts = sorted(c.unknown.items())
            exts = ", ".join(f".{e} ({n})" for e, n in counts[:5])
            exts += f" and {len(counts) - 5} other name(s)" if len(counts) > 5 else ""
            report.notes.append(Problem(s["name"], "note", f"{n_unknown} member(s) of unknown "
                                        f"name ignored: {exts}; readers ignore members they do "
                                        "not know (CORPUS.md)"))
        report.bytes += c.bytes
        report.samples += len(c.keys)
        if len(c.keys) != s.get("samples"):
            problems.append(Problem(s["name"], "mismatch", f"holds {len(c.keys)} samples, "
                                    f"manifest says {s.get('samples')}"))
        if "samples" in tables:
            want = keys_by_shard.get(s["name"], [])
            if sorted(want) != sorted(c.keys):
                extra = sorted(set(c.keys) - set(want))
                lost = sorted(set(want) - set(c.keys))
                problems.append(Problem(s["name"], "mismatch",
                                        f"samples.parquet lists {len(want)} samples, the shard "
                                        f"holds {len(c.keys)}" + _some(" not in the table", extra)
                                        + _some(" not in the shard", lost)))
    report.shards = len(listed)
    _check_totals(root, man, listed, tables, keys_by_shard, problems)
    _leave_bad_shards(root, report.bad_shards)
    report.seconds = time.monotonic() - t0
    return report


def _leave_bad_shards(root: Path, bad: list[str]) -> None:
    """Name the bad shards in ``VERIFY_FAILED`` for the next ``extract`` (it mines their films
    again); none: remove it. A corpus verify may not write to (read-only) is still verified."""
    with contextlib.suppress(OSError):
        if bad:
            write_bytes(root / VERIFY_FAILED, json.dumps({"bad_shards": bad}).encode())
        else:
            (root / VERIFY_FAILED).unlink(missing_ok=True)


def _manifest_field(man: dict, key: str, typ: type, default, problems: list[Problem]):
    """``man[key]`` when it has the type the schema gives it, else ``default`` (reported)."""
    value = man.get(key, default)
    if not isinstance(value, typ):
        problems.append(Problem("manifest.json", "mismatch", f"{key} is {value!r}, not a "
                                f"{typ.__name__}"))
        return default
    return value


def _shard_entry(s: dict, problems: list[Problem]) -> dict:
    """The entry with every field of the wrong type (or missing) reported and set to None, so
    the checks below treat it as unknown: a manifest's damage is a finding, not a crash."""
    out = dict(s)
    for key, typ in SHARD_FIELDS.items():
        v = s.get(key)
        if not isinstance(v, typ) or isinstance(v, bool):
            problems.append(Problem("manifest.json", "mismatch",
                                    f"shard entry {s['name']}: {key} is "
                                    f"{'missing' if key not in s else repr(v)}"))
            out[key] = None
    return out


def _some(label: str, keys: list[str], k: int = 3) -> str:
    if not keys:
        return ""
    more = f" (+{len(keys) - k})" if len(keys) > k else ""
    return f";{label}: {', '.join(keys[:k])}{more}"


def _check_totals(root: Path, man: dict, listed: list[dict], tables: dict,
                  keys_by_shard: dict[str, list[str]], problems: list[Problem]) -> None:
    names = [s["name"] for s in listed]
    for name, n in Counter(names).items():
        if n > 1:
            problems.append(Problem(name, "mismatch", f"listed {n} times in the manifest"))
    shard_dir = root / "shards"
    on_disk = {p.name for p in shard_dir.glob("*.tar")} if shard_dir.is_dir() else set()
    for name in sorted(on_disk - set(names)):
        problems.append(Problem(name, "unlisted", "shard file not in the manifest"))
    total = sum(s["samples"] or 0 for s in listed)
    declared = _manifest_field(man, "totals", dict, {}, problems).get("samples")
    if declared is not None and declared != total:
        problems.append(Problem("manifest.json", "mismatch",
                                f"totals.samples is {declared}, its shards hold {total}"))
    if "samples" in tables:
        n_rows = tables["samples"].num_rows
        if n_rows != total:
            problems.append(Problem("samples.parquet", "mismatch",
                                    f"{n_rows} rows, manifest shards hold {total} samples"))
        for shard in sorted(set(keys_by_shard) - set(names)):
            problems.append(Problem("samples.parquet", "mismatch",
                                    f"{len(keys_by_shard[shard])} rows name shard {shard}, "
                                    "which the manifest does not list"))
    if "frames" in tables:
        accepted = tables["frames"].filter(tables["frames"]["accepted"])
        if accepted.num_rows != total:
            problems.append(Problem("frames.parquet", "mismatch",
                                    f"{accepted.num_rows} accepted rows, manifest shards hold "
                                    f"{total} samples"))
        if "samples" in tables:
            a = set(accepted["key"].to_pylist())
            b = set(tables["samples"]["key"].to_pylist())
            if a != b:
                problems.append(Problem("frames.parquet", "mismatch",
                                        f"accepted keys differ from samples.parquet: "
                                        f"{len(a - b)} only in frames, {len(b - a)} only in "
                                        "samples"))
    for film, info in _manifest_field(man, "films", dict, {}, problems).items():
        if not isinstance(info, dict):
            problems.append(Problem("manifest.json", "mismatch", f"films.{film} is {info!r}"))
            info = {}
        if not (root / "films" / f"{film}.json").is_file():
            problems.append(Problem(f"films/{film}.json", "missing", "film record not found"))
        counts = info.get("counts")
        acc = counts.get("accepted") if isinstance(counts, dict) else None
        have = sum(s["samples"] or 0 for s in listed if s["film"] == film)
        if acc is not None and acc != have:
            problems.append(Problem("manifest.json", "mismatch",
                                    f"film {film}: {acc} accepted, its shards hold {have}"))


def format_report(report: VerifyReport) -> str:
    return "\n".join([*(p.line() for p in report.problems), *(p.line() for p in report.notes),
                      report.summary()])
