"""Streams of training batches: sources split by DDP rank and loader worker, shuffled,
augmented and mixed into batches; resumable mid-epoch.

Splitting. A *slice* is one (rank, worker) pair; ``n_slices = world_size * num_workers``. Every
epoch the units of a source (shards, files) are permuted with a seed that depends only on the
epoch, so all slices agree on the order; slice ``i`` takes units ``i, i + n, i + 2n, ...``.
When a source has fewer units than slices, every slice reads all units and keeps records
``i, i + n, ...`` instead (it reads bytes it skips, but decodes each sample exactly once). In
both cases each record is decoded by exactly one slice per epoch.

Determinism. A stream's position is ``(epoch, pos)``: records emitted in this epoch. Replaying
an epoch to ``pos`` needs no decoding (records are raw bytes or paths). Mixing and augmentation
draw from one generator per worker whose state travels with every batch, so the trainer keeps
the state of the last batch it consumed from each worker and a resumed run continues exactly
where the checkpoint was taken (same ``num_workers`` and world size).

Batches: ``image`` ``[B, 3, H, W]`` uint8 RGB, ``disparity`` ``[B, H, W]`` float32 scaled to
[0, 1] over valid pixels (inverse depth, unknown scale and shift), ``valid_mask`` ``[B, H, W]``
bool, ``dataset`` ``[B]`` int64 index into the run's dataset list, ``key`` list of str, and
``state`` (the worker's stream state after this batch).
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import TrainerError
from .names import BALANCE_MODES, MIX_MODES
from .sources import DatasetSpec, Sample, SampleError, Source, build_source

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 1000


@dataclass
class AugmentConfig:
    crop: int = 384  # output side, px: a random square crop resized to crop x crop
    zoom: tuple[float, float] = (1.0, 1.5)  # crop side = short side / U(zoom)
    crop_mode: str = "random"  # or "center" (deterministic: tests, overfitting)
    flip: float = 0.5  # horizontal flip probability
    jitter: float = 0.1  # colour jitter strength (brightness, contrast, saturation); 0 = off


# ----------------------------------------------------------------------------- augmentation

def augment(s: Sample, rng: np.random.Generator, cfg: AugmentConfig, crop: int | None = None
            ) -> Sample:
    """Random square crop resized to ``crop`` px, horizontal flip, colour jitter."""
    out = crop or cfg.crop
    h, w = s.valid.shape
    lo, hi = cfg.zoom
    z = rng.uniform(lo, hi) if hi > lo else lo
    side = max(1, min(h, w, round(min(h, w) / max(z, 1.0))))
    if cfg.crop_mode == "center":
        y0, x0 = (h - side) // 2, (w - side) // 2
    else:
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    win = np.s_[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > out else cv2.INTER_LINEAR
    image = cv2.resize(s.image[win], (out, out), interpolation=interp)
    # nearest for labels: never blend a valid value with an invalid one
    disp = cv2.resize(s.disparity[win], (out, out), interpolation=cv2.INTER_NEAREST)
    valid = cv2.resize(s.valid[win].view(np.uint8), (out, out),
                       interpolation=cv2.INTER_NEAREST).astype(bool)
    if cfg.flip > 0 and rng.random() < cfg.flip:
        image, disp, valid = image[:, ::-1], disp[:, ::-1], valid[:, ::-1]
    if cfg.jitter > 0:
        image = color_jitter(image, rng, cfg.jitter)
    return Sample(s.key, np.ascontiguousarray(image), np.ascontiguousarray(disp),
                  np.ascontiguousarray(valid))


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by U(1 - strength, 1 + strength)."""
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = image.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - grey[..., None]) * s + grey[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def normalize_target(disp: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Shift and scale valid disparity to [0, 1] (paper); 0 where invalid."""
    if not valid.any():
        return np.zeros_like(disp)
    v = disp[valid]
    lo, hi = float(v.min()), float(v.max())
    out = (disp - lo) / (hi - lo) if hi > lo else disp - lo
    return np.where(valid, out, 0).astype(np.float32)


def collate(samples: Sequence[Sample], datasets: Sequence[int]) -> dict[str, Any]:
    return {
        "image": torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2)
        .contiguous(),  # [B, 3, H, W] uint8
        "disparity": torch.from_numpy(np.stack(
            [normalize_target(s.disparity, s.valid) for s in samples])),  # [B, H, W] in [0, 1]
        "valid_mask": torch.from_numpy(np.stack([s.valid for s in samples])),  # [B, H, W] bool
        "dataset": torch.as_tensor(list(datasets), dtype=torch.int64),  # [B]
        "key": [s.key for s in samples],
    }


# ----------------------------------------------------------------------------- streams

def shuffle_buffer(it: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Approximate shuffle with a buffer of ``size`` items (WebDataset-style)."""
    if size <= 1:
        yield from it
        return
    buf: list = []
    for item in it:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


class SourceStream:
    """The records of one source seen by one slice, epoch after epoch."""

    def __init__(self, source: Source, index: int, slice_id: int, n_slices: int, seed: int,
                 buffer: int, epoch: int = 0, pos: int = 0, epochs: int | None = None):
        self.source, self.index = source, index
        self.slice_id, self.n_slices = slice_id, n_slices
        self.seed, self.buffer, self.epochs = seed, buffer, epochs
        self.epoch, self.pos = epoch, pos
        self.read_failures = 0
        self._it: Iterator | None = None
        self._replaying = False

    def _unit_records(self, unit: str) -> Iterator[tuple[str, Any]]:
        try:
            yield from self.source.records(unit)
        except (OSError, EOFError, tarfile.TarError) as e:  # a truncated or corrupt shard
            if not self._replaying:
                self.read_failures += 1
                log.warning("%s: stopped reading %s: %s: %s", self.source.name, unit,
                            type(e).__name__, e)

    def _epoch(self, epoch: int) -> Iterator[tuple[str, Any]]:
        units = self.source.units()
        order = np.random.default_rng([self.seed, self.index, epoch]).permutation(len(units))
        if len(units) >= self.n_slices:
            mine = order[self.slice_id :: self.n_slices]
            records = (r for i in mine for r in self._unit_records(units[i]))
        else:
            every = (r for i in order for r in self._unit_records(units[i]))
            records = (r for j, r in enumerate(every) if j % self.n_slices == self.slice_id)
        rng = np.random.default_rng([self.seed, self.index, epoch, self.slice_id, 1])
        return shuffle_buffer(records, self.buffer, rng)

    def __iter__(self) -> SourceStream:
        return self

    def __next__(self) -> tuple[str, Any]:
        while True:
            if self.epochs is not None and self.epoch >= self.epochs:
                raise StopIteration
            if self._it is None:
                self._it = self._epoch(self.epoch)
                self._replaying = True
                for _ in range(self.pos):  # resume mid-epoch: skip without decoding
                    next(self._it)
                self._replaying = False
            try:
                rec = next(self._it)
            except StopIteration:
                if self.pos == 0:
                    raise TrainerError(f"dataset {self.source.name}: no readable sample for "
                                       f"slice {self.slice_id} of {self.n_slices}") from None
                self.epoch, self.pos, self._it = self.epoch + 1, 0, None
                continue
            self.pos += 1
            return rec

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}


@dataclass
class MixConfig:
    mode: str = "naive"  # naive | balanced | pareto
    balance: str = "share"  # balanced: equal share per batch, or one dataset per batch
    batch_size: int = 8
    shuffle_buffer: int = 256


@dataclass
class MixedStream(IterableDataset):
    """Endless batches mixed from several sources for one rank (split again per worker)."""

    sources: list[Source]
    mix: MixConfig
    augment: AugmentConfig
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    resume: dict | None = None  # LoaderState.to_dict() of the interrupted run
    epochs: int | None = None  # None = endless; 1 = one pass (tests, evaluation of coverage)
    weights: list[float] = field(default_factory=list)
    crops: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        IterableDataset.__init__(self)
        k = len(self.sources)
        if k == 0:
            raise TrainerError("no dataset to train on: give --corpus or --data")
        if self.mix.mode not in MIX_MODES:
            raise TrainerError(f"unknown mix {self.mix.mode!r}; choose from {MIX_MODES}")
        if self.mix.balance not in BALANCE_MODES:
            raise TrainerError(f"unknown balance {self.mix.balance!r}; choose {BALANCE_MODES}")
        shares = self.mix.mode == "pareto" or (self.mix.mode == "balanced"
                                               and self.mix.balance == "share")
        if shares and self.mix.batch_size % k:
            raise TrainerError(f"batch size {self.mix.batch_size} is not a multiple of the "
                               f"{k} datasets ({self.mix.mode} mixing: equal shares)")
        self.weights = [s.spec.weight for s in self.sources]
        if self.mix.mode == "naive" and sum(self.weights) <= 0:
            raise TrainerError("dataset weights sum to 0")
        self.crops = [s.spec.crop or self.augment.crop for s in self.sources]
        per_batch = self.mix.mode == "balanced" and self.mix.balance == "per_batch"
        if len(set(self.crops)) > 1 and not per_batch:
            raise TrainerError("per-dataset crop sizes need --mix balanced with "
                               "balance = \"per_batch\" (one dataset per batch)")
        for s in self.sources:
            s.units()  # fail early, in the main process, on an empty dataset

    def _plan(self, rng: np.random.Generator, batch_index: int, worker: int, nworkers: int
              ) -> list[int]:
        k, b = len(self.sources), self.mix.batch_size
        if self.mix.mode == "naive":
            p = np.asarray(self.weights, np.float64)
            return [int(i) for i in rng.choice(k, size=b, p=p / p.sum())]
        if self.mix.mode == "balanced" and self.mix.balance == "per_batch":
            # the global batch index is the same on every rank at a step: same dataset
            return [(batch_index * nworkers + worker) % k] * b
        return [i for i in range(k) for _ in range(b // k)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        st = None
        if self.resume and self.resume.get("nworkers") == nworkers:
            # a fresh DataLoader takes its first batch from worker 0: the worker that was next
            # in the interrupted run's round robin plays worker 0 now
            worker = (worker + self.resume.get("consumed", 0)) % nworkers
            st = self.resume["workers"].get(worker)
        slice_id = self.rank * nworkers + worker
        n_slices = self.world_size * nworkers
        streams = [SourceStream(src, i, slice_id, n_slices, self.seed, self.mix.shuffle_buffer,
                                epochs=self.epochs, **(st["streams"][i] if st else {}))
                   for i, src in enumerate(self.sources)]
        rng = np.random.default_rng([self.seed, slice_id, 2])
        failed = [0] * len(self.sources)
        batch_index = 0
        if st:
            rng.bit_generator.state = st["rng"]
            failed, batch_index = list(st["failed"]), st["batches"]
        while True:
            plan = self._plan(rng, batch_index, worker, nworkers)
            samples, used = [], []
            for k in plan:
                s = self._next_sample(streams[k], rng, failed, k)
                if s is None:  # a finite stream ended: yield what is left, then stop
                    if samples:
                        yield self._batch(samples, used, streams, rng, failed, batch_index,
                                          worker, nworkers)
                    return
                samples.append(s)
                used.append(k)
            batch_index += 1
            yield self._batch(samples, used, streams, rng, failed, batch_index, worker, nworkers)

    def _next_sample(self, stream: SourceStream, rng: np.random.Generator, failed: list[int],
                     k: int) -> Sample | None:
        for _ in range(MAX_CONSECUTIVE_FAILURES):
            try:
                key, rec = next(stream)
            except StopIteration:
                return None
            try:
                return augment(stream.source.decode(key, rec), rng, self.augment, self.crops[k])
            except (SampleError, cv2.error) as e:
                failed[k] += 1
                if failed[k] <= 10 or failed[k] % 1000 == 0:
                    log.warning("%s: skipping sample %s (%d skipped so far): %s",
                                stream.source.name, key, failed[k], e)
        raise TrainerError(f"dataset {stream.source.name}: {MAX_CONSECUTIVE_FAILURES} samples in "
                           "a row failed to load")

    def _batch(self, samples: list[Sample], used: list[int], streams: list[SourceStream],
               rng: np.random.Generator, failed: list[int], batch_index: int, worker: int,
               nworkers: int) -> dict[str, Any]:
        batch = collate(samples, used)
        batch["state"] = {
            "worker": worker, "nworkers": nworkers, "batches": batch_index,
            "streams": [s.state() for s in streams], "rng": rng.bit_generator.state,
            "failed": [f + s.read_failures for f, s in zip(failed, streams, strict=True)],
        }
        return batch


class LoaderState:
    """The state of the last batch consumed from each worker: what a checkpoint saves."""

    def __init__(self, resume: dict | None = None) -> None:
        self.workers: dict[int, dict] = dict(resume["workers"]) if resume else {}
        self.nworkers = resume["nworkers"] if resume else 0
        self.consumed = resume.get("consumed", 0) if resume else 0  # batches, for round robin

    def update(self, state: dict) -> None:
        self.nworkers = state["nworkers"]
        self.workers[state["worker"]] = state
        self.consumed += 1

    def failed(self) -> list[int]:
        per = [s["failed"] for s in self.workers.values()]
        return [sum(v) for v in zip(*per, strict=True)] if per else []

    def to_dict(self) -> dict:
        return {"nworkers": self.nworkers, "workers": dict(self.workers),
                "consumed": self.consumed}


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)  # the workers are the parallelism; no nested thread pools
    torch.set_num_threads(1)


def unique_names(names: Sequence[str]) -> list[str]:
    """A repeated name gets its position as a suffix: names key the per-dataset losses."""
    return [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def build_sources(specs: Sequence[DatasetSpec]) -> list[Source]:
    for s, name in zip(specs, unique_names([s.name for s in specs]), strict=True):
        s.name = name
    return [build_source(s) for s in specs]


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_workers(requested: int, ranks_here: int = 1) -> int:
    """``requested`` DataLoader workers, at most this rank's share of the usable cores (more
    only queue for the same cores; torch warns about it). 0 stays 0: loading in the main
    process."""
    if requested <= 0:
        return 0
    return max(1, min(requested, usable_cpus() // max(ranks_here, 1)))


def build_loader(dataset: MixedStream, num_workers: int, pin_memory: bool = False) -> DataLoader:
    # forkserver, not fork: a worker forked after OpenCV ran threads in the parent can deadlock
    # on a lock copied in its held state (seen with cv2.resize before the fork); spawned
    # workers abort at exit when batches are still in flight ("terminate called ...")
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      worker_init_fn=_worker_init if num_workers else None,
                      multiprocessing_context="forkserver" if num_workers else None,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)
