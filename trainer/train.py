"""The training loop: ``train(cfg, out)`` runs ``cfg.run.steps`` optimizer steps.

Step-based (datasets are endless streams; an "epoch" is per dataset and per slice, see
``data.py``). One step: a batch mixed from the datasets, a forward pass, the MiDaS loss
(data + alpha * gradient matching) and an update that is the plain gradient (``naive``,
``balanced``) or the min-norm combination of the per-dataset gradients (``pareto``). AMP,
gradient clipping, an LR schedule, ``RUN/metrics.jsonl``, checkpoints in ``RUN/checkpoints/``
(``last.pt`` and periodic ``step-NNNNNNN.pt``); ``resume=True`` restores model, optimizer,
scheduler, scaler, step, RNG and the data streams' positions, so the run continues as if it had
never stopped (a config that differs from the run's outside ``config.RESUMABLE`` is refused).
Validation (``cfg.val``): every ``val.every`` steps and at the last, ``trainer.evaluate`` on
each validation dataset, written to ``metrics.jsonl``; ``checkpoints/best.pt`` holds the step
with the lowest ``val.metric``. Progress: plain log lines with step N/total, rate and ETA. DDP:
started by ``torchrun`` (env ``WORLD_SIZE`` etc.), or inside a process group that the caller
initialised.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import TrainerError, atomic
from .checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig, load_config, resume_conflicts, resumed_config
from .data import (
    LoaderState,
    MixedStream,
    build_loader,
    build_sources,
    loader_workers,
    usable_cpus,
)
from .evaluate import evaluate_model
from .losses import LossTerms, MidasLoss
from .mixing import combine, min_norm_weights
from .model import MidasNet, build_model
from .names import AMP_MODES
from .sources import DatasetSpec

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0  # a progress line at least this often, between log steps too
SLOW_CPU_STEP_S = 1.0  # a CPU step slower than this: point at the CPU-sized configs
CPU_CONFIGS = (("tiny", "a smoke-test model"), ("small", "ResNet-50"))  # smallest first


# ----------------------------------------------------------------------------- distributed

@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistEnv:
    """Join the process group of ``torchrun`` (or the caller's), pick this rank's device."""
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    local = int(os.environ.get("LOCAL_RANK", rank if world > 1 else 0))
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainerError("device cuda requested but torch sees no CUDA device")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev = torch.device("cuda", local % torch.cuda.device_count())
    else:
        dev = torch.device("cpu")
    return DistEnv(rank, world, local, dev, owns)


# ----------------------------------------------------------------------------- building

def build_optimizer(model: MidasNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    return torch.optim.Adam(model.param_groups(o.lr, o.lr_pretrained), betas=tuple(o.betas),
                            weight_decay=o.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    o = cfg.optim
    total = o.schedule_steps or cfg.run.steps
    if o.schedule not in ("constant", "cosine"):
        raise TrainerError(f"unknown schedule {o.schedule!r}; choose constant or cosine")

    def factor(step: int) -> float:  # step = optimizer steps taken so far
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        t = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    mode = cfg.optim.amp
    if mode not in AMP_MODES:
        raise TrainerError(f"unknown amp mode {mode!r}; choose {', '.join(AMP_MODES[:-1])} or "
                           f"{AMP_MODES[-1]}")
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        raise TrainerError("fp16 autocast needs CUDA; use amp = \"bf16\" or \"off\" on CPU")
    return torch.float16


# ----------------------------------------------------------------------------- checkpoints

def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


# ----------------------------------------------------------------------------- metrics

def _metrics_record(line: str) -> dict | None:
    """A metrics.jsonl line's record; None for a blank line or a torn one (a power loss during
    its append), which a resumed run drops."""
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        log.warning("metrics.jsonl: dropping a torn line: %.60s", line)
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("step"), int) else None


def summary_writer() -> type:
    """TensorBoard's ``SummaryWriter``; a TrainerError saying how to install it when missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TrainerError(f"--tensorboard needs the tensorboard package ({e}): pip install "
                           "tensorboard, or train with --no-tensorboard") from None
    return SummaryWriter


def _scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for k, v in record.items():
        if isinstance(v, dict):
            yield from _scalars(v, f"{prefix}{k}/")
        elif isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
            yield f"{prefix}{k}", v


class MetricsLog:
    """``RUN/metrics.jsonl`` (one JSON object per log step and per validation pass) and
    optional TensorBoard."""

    def __init__(self, out: Path, start_step: int, enabled: bool, tensorboard: bool):
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if self.path.exists():  # drop lines past the checkpoint we resume from
            keep = [ln for ln in self.path.read_text().splitlines()
                    if (rec := _metrics_record(ln)) is not None and rec["step"] <= start_step]
            atomic.write_text(self.path, "".join(ln + "\n" for ln in keep))
        if tensorboard:
            self.tb = summary_writer()(str(out / "tensorboard"), purge_step=start_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        atomic.append_line(self.path, json.dumps(record, sort_keys=True))
        if self.tb is not None:
            for k, v in _scalars(record):
                self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- one step

@dataclass
class StepStats:
    loss: float
    per_dataset: dict[int, float]
    grad_norm: float
    weights: list[float] | None = None
    skipped: bool = False   # fp16 loss scaling found inf/NaN gradients: no optimizer step


def pareto_backward(params: list[nn.Parameter], terms: LossTerms, dataset: torch.Tensor,
                    k: int, scale: float, env: DistEnv) -> list[float]:
    """Per-dataset losses -> their gradients on the shared parameters (``[K, P]``) -> the
    min-norm convex combination, written to ``p.grad``. Returns the weights.

    A dataset with no valid pixel in the batch (on every rank) is no task at this step: its
    zero row would be the min-norm point and cancel the update; it gets weight 0. Under DDP a
    task's gradient is the mean over the ranks whose batch has a valid pixel of it."""
    rows = []
    count = torch.zeros(k, dtype=torch.float64, device=dataset.device)  # valid pixels
    for i in range(k):
        sel = dataset == i
        count[i] = terms.den[:, sel].sum().detach().double()
        if not bool(count[i] > 0):
            rows.append(torch.zeros(sum(p.numel() for p in params), device=dataset.device))
            continue
        grads = torch.autograd.grad(terms.value(sel) * scale, params, retain_graph=True,
                                    allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params, strict=True)]))
    g = torch.stack(rows)  # [K, P]
    if env.distributed:
        # DDP is bypassed in this mode: average each task's gradient here, over the ranks that
        # drew the dataset (a rank without it has a zero row, which would shrink the average)
        ranks = (count > 0).to(g.dtype)
        dist.all_reduce(g)
        dist.all_reduce(ranks)
        g /= ranks.clamp(min=1)[:, None]
        dist.all_reduce(count)
    live = count > 0
    w = torch.zeros(k, dtype=g.dtype, device=g.device)
    if bool(live.any()):
        w[live] = min_norm_weights(g[live]).to(w.dtype)
    flat = combine(g, w)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
    return [float(x) for x in w]


def train_one_step(model: nn.Module, raw_model: MidasNet, batch: dict[str, Any],
                   loss_fn: MidasLoss, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, cfg: TrainConfig, env: DistEnv,
                   n_datasets: int) -> StepStats:
    dev = env.device
    image = batch["image"].to(dev, non_blocking=True).float().div_(255)  # [B, 3, H, W] RGB 0..1
    target = batch["disparity"].to(dev, non_blocking=True)  # [B, H, W] disparity in [0, 1]
    mask = batch["valid_mask"].to(dev, non_blocking=True)  # [B, H, W] bool
    dataset = batch["dataset"].to(dev, non_blocking=True)  # [B] dataset index
    dtype = amp_dtype(cfg, dev)
    pareto = cfg.data.mix.mode == "pareto"
    if pareto and env.distributed:  # as DDP does before each forward: rank 0's BN statistics
        for b in raw_model.buffers():
            dist.broadcast(b.data, 0)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        pred = model(image)  # [B, H, W] relative disparity
    terms = loss_fn.terms(pred.float(), target, mask)
    loss = terms.value()
    weights = None
    params = [p for p in raw_model.parameters() if p.requires_grad]
    if pareto:
        # scaler.scale() (not get_scale()) starts the scaler's state: unscale_ needs it
        scale = float(scaler.scale(loss.new_ones(()))) if scaler.is_enabled() else 1.0
        weights = pareto_backward(params, terms, dataset, n_datasets, scale, env)
    else:
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    clip = cfg.optim.clip_grad_norm
    gn = nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    # the scaler skips the step and lowers its scale when a gradient overflowed
    skipped = before is not None and scaler.get_scale() < before
    with torch.no_grad():
        per = {i: float(terms.value(dataset == i)) for i in range(n_datasets)
               if bool((dataset == i).any())}
    return StepStats(float(loss.detach()), per, float(gn), weights, skipped)


# ----------------------------------------------------------------------------- the run

@dataclass
class TrainResult:
    model: MidasNet
    step: int
    out: Path
    last: dict[str, Any] = field(default_factory=dict)


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> TrainResult:
    out = Path(out)
    env = setup_distributed(cfg.run.device)
    try:
        return _train(cfg, out, resume, env)
    finally:
        if env.owns_group:
            dist.destroy_process_group()


@dataclass
class _Run:
    """What one process trains with: built fresh, then restored from a checkpoint."""

    cfg: TrainConfig
    model: MidasNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    step: int = 0
    loader_state: dict | None = None  # this rank's LoaderState.to_dict()
    rng_state: dict | None = None  # this rank's RNG at the checkpoint
    best: dict | None = None  # {metric, value, step, datasets} of RUN/checkpoints/best.pt
    workers: int = 0  # DataLoader workers: cfg.data.workers capped at the usable cores


def _open_checkpoint(cfg: TrainConfig, out: Path, resume: bool) -> dict | None:
    last_ck = checkpoint_dir(out) / "last.pt"
    if resume and last_ck.is_file():
        return load_checkpoint(last_ck)
    if resume:
        log.warning("no checkpoint in %s: starting from step 0", checkpoint_dir(out))
    elif last_ck.is_file():
        raise TrainerError(f"{out} already holds a run (checkpoints/last.pt): pass --resume "
                           "to continue it, or choose another --out")
    return None


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict) -> None:
    """A checkpoint of a run without fp16 loss scaling (CPU, bf16) holds an empty scaler state;
    resumed where fp16 is on (``amp = "auto"`` on a GPU) the scaler starts afresh instead of
    failing to load it."""
    if state:
        scaler.load_state_dict(state)
    elif scaler.is_enabled():
        log.info("the checkpoint has no loss-scaler state (saved without fp16): starting one")


def _resumed(cfg: TrainConfig, ck: dict) -> TrainConfig:
    """The checkpoint's config with ``cfg``'s RESUMABLE values; other differences refused (the
    optimizer state, the data positions and best.pt belong to the saved values)."""
    saved = TrainConfig.from_dict(ck["config"])
    changed = resume_conflicts(saved, cfg)
    if changed:
        raise TrainerError("a resumed run keeps its saved config; these differ: " + ", ".join(
            f"{k} {want!r} (saved {was!r})" for k, (want, was) in changed.items()))
    return resumed_config(saved, cfg)


def _build_run(cfg: TrainConfig, ck: dict | None, env: DistEnv) -> _Run:
    if ck is not None:
        cfg = _resumed(cfg, ck)
    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
    # on resume every weight comes from the checkpoint: no weights file, no download
    mcfg = dataclasses.replace(cfg.model, weights="", pretrained=False) if ck else cfg.model
    model = build_model(mcfg).to(env.device)
    optimizer = build_optimizer(model, cfg)
    run = _Run(cfg, model, optimizer, build_scheduler(optimizer, cfg),
               torch.amp.GradScaler(env.device.type,
                                    enabled=amp_dtype(cfg, env.device) == torch.float16))
    # torchrun's ranks on one machine share its cores
    run.workers = loader_workers(cfg.data.workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if ck is None:
        return run
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    run.scheduler.load_state_dict(ck["scheduler"])
    load_scaler_state(run.scaler, ck["scaler"])
    run.step = int(ck["step"])
    run.best = ck.get("val_best")
    log.info("resuming at step %d", run.step)
    ranks, rngs = ck.get("loader") or [], ck.get("rng") or []
    workers = max(run.workers, 1)  # the main process is the one slice without workers
    if len(ranks) == env.world_size and ranks[env.rank].get("nworkers") in (None, workers):
        run.loader_state = ranks[env.rank]
    else:
        log.warning("the checkpoint's data positions are for another number of ranks or "
                    "workers: the data streams restart")
    if len(rngs) == env.world_size:
        run.rng_state = rngs[env.rank]  # set once the loader's iterator has drawn its seed
    return run


def _loader(run: _Run, env: DistEnv) -> tuple[Any, list[str]]:
    cfg = run.cfg
    sources = build_sources(cfg.data.datasets)
    # streams restarted mid-run (no saved positions) take a new seed: no replayed order
    seed = cfg.run.seed if run.loader_state or run.step == 0 else cfg.run.seed + run.step
    stream = MixedStream(sources, cfg.data.mix, cfg.data.augment, seed=seed, rank=env.rank,
                         world_size=env.world_size, resume=run.loader_state)
    loader = build_loader(stream, run.workers, pin_memory=env.device.type == "cuda")
    return loader, [s.name for s in sources]


def _train(cfg: TrainConfig, out: Path, resume: bool, env: DistEnv) -> TrainResult:
    if cfg.run.tensorboard:
        summary_writer()  # before anything is written: no run records a log it cannot keep
    run = _build_run(cfg, _open_checkpoint(cfg, out, resume), env)
    cfg, model = run.cfg, run.model
    if not cfg.data.datasets:
        raise TrainerError("no dataset to train on: give --corpus or --data")
    if run.step >= cfg.run.steps:
        return _nothing_to_train(run, out)
    val = build_sources(cfg.val.datasets)
    for src in val:
        src.units()  # a missing or empty validation set fails now, not at the first pass
    wrapped: nn.Module = model
    if env.distributed:
        _broadcast_parameters(model)
        if cfg.data.mix.mode != "pareto":  # pareto all-reduces its [K, P] gradients itself
            ids = [env.device.index] if env.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
    loader, names = _loader(run, env)
    state = LoaderState(run.loader_state)
    loss_fn = MidasLoss(cfg.loss.data, cfg.loss.trim, cfg.loss.alpha, cfg.loss.scales)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        # temp files of a run killed while writing (each write removes its own otherwise)
        atomic.remove_stale_temps(checkpoint_dir(out))
        atomic.remove_stale_temps(out, ("config.json", "metrics.jsonl"))
        atomic.write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        _log_start(run, env)
    metrics = MetricsLog(out, run.step, env.is_main, cfg.run.tensorboard)
    acc: dict[str, Any] = defaultdict(list)
    t_log, n_log = time.perf_counter(), 0
    last: dict[str, Any] = {}
    progress = Progress(cfg.run.steps)
    model.train()
    it = iter(loader)  # draws the workers' base seed from torch's generator
    if run.rng_state is not None:  # so the RNG is restored after it, not before
        _set_rng_state(run.rng_state)
    try:
        while run.step < cfg.run.steps:
            t_wait = time.perf_counter()
            batch = next(it)
            t_step = time.perf_counter()
            state.update(batch["state"])
            stats = train_one_step(wrapped, model, batch, loss_fn, run.optimizer, run.scaler,
                                   cfg, env, len(names))
            lrs = _group_lrs(run.optimizer)  # the rates this step used
            if not stats.skipped:  # the schedule counts optimizer steps, not overflowed ones
                run.scheduler.step()
            run.step += 1
            n_log += len(batch["key"])
            _accumulate(acc, stats)
            step = run.step
            nth = progress.step_done(step, t_step - t_wait, time.perf_counter() - t_step)
            if step % cfg.run.log_every == 0 or step == cfg.run.steps:
                last = _log_record(step, acc, names, lrs, state, n_log,
                                   time.perf_counter() - t_log, env)
                metrics.write(last)
                if env.is_main:
                    log.info(progress.line(step, last["loss"], last["losses"],
                                           last["samples_per_s"]))
                acc.clear()
                t_log, n_log = time.perf_counter(), 0
            elif env.is_main and (nth == 1 or progress.due()):
                # off the log steps: rank 0's own losses (a collective here could deadlock)
                log.info(progress.line(step, *_local_losses(acc, names)))
            if env.is_main and nth == 2:  # the first step alone also holds one-time costs
                _cpu_note(run, env, progress.min_step_s)
            files = []
            if val and (step % cfg.val.every == 0 or step == cfg.run.steps):
                files += _validate(run, [v.spec for v in val], env, metrics)
            if step % cfg.run.ckpt_every == 0 or step == cfg.run.steps:
                files.append("last.pt")
            if cfg.run.keep_every and step % cfg.run.keep_every == 0:
                files += ["last.pt", f"step-{step:07d}.pt"]
            if files:
                _checkpoint(out, run, state, names, env, list(dict.fromkeys(files)))
    finally:
        metrics.close()
        del it
    return TrainResult(model, run.step, out, last)


def _nothing_to_train(run: _Run, out: Path) -> TrainResult:
    """A resumed run at or past ``steps``: said, not silently skipped."""
    step, steps = run.step, run.cfg.run.steps
    if step > steps:
        raise TrainerError(f"{out} is at step {step} already, past --steps {steps}: give "
                           f"--steps above {step} to train on")
    log.warning("%s is at step %d of %d already: nothing to train (give --steps above %d to "
                "train on)", out, step, steps, step)
    return TrainResult(run.model, step, out)


# ----------------------------------------------------------------------------- progress

def _hms(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _rate(s_per_step: float) -> str:
    if s_per_step >= 1:
        return f"{s_per_step:.1f} s/step"
    return f"{1 / max(s_per_step, 1e-9):.1f} steps/s"


class Progress:
    """Progress lines: step N/total, the rate and the ETA. Plain log lines, never ``\\r``
    updates, so a log file or a pipe reads as a terminal does."""

    def __init__(self, total: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.clock = total, clock
        self.steps = 0  # taken by this process
        self.first_step = 0  # this process's first step, and when it ended
        self.first_end = 0.0
        self.first_wait_s = 0.0  # the first step's wait for its batch (the loader's start)
        self.step_s = 0.0  # the last step's compute
        self.min_step_s = math.inf  # the fastest step's: a busy moment of the machine aside
        self.t_line = clock()

    def step_done(self, step: int, wait_s: float, step_s: float) -> int:
        """Note a finished step; returns how many this process has taken."""
        self.steps += 1
        self.step_s, self.min_step_s = step_s, min(self.min_step_s, step_s)
        if self.steps == 1:
            self.first_step, self.first_end, self.first_wait_s = step, self.clock(), wait_s
        return self.steps

    def s_per_step(self, step: int) -> float:
        """Since the first step (which holds the start-up); before that its own compute."""
        n = step - self.first_step
        return (self.clock() - self.first_end) / n if n > 0 else self.step_s

    def due(self) -> bool:
        return self.clock() - self.t_line >= HEARTBEAT_S

    def line(self, step: int, loss: float, losses: dict[str, float],
             samples_per_s: float | None = None) -> str:
        self.t_line = self.clock()
        head = f"step {step}/{self.total} ({100 * step / self.total:.0f}%) loss {loss:.4f}"
        if len(losses) > 1:
            head += " (" + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) + ")"
        eta = _hms((self.total - step) * self.s_per_step(step))
        if step == self.first_step:
            timing = (f"first batch {self.first_wait_s:.1f} s, first step "
                      f"{self.step_s:.1f} s, ETA ~{eta}")
        else:
            timing = _rate(self.s_per_step(step))
            if samples_per_s is not None:
                timing += f", {samples_per_s:.1f} samples/s"
            timing += f", ETA {eta}"
        return f"{head} | {timing}"


def _local_losses(acc: dict[str, Any], names: list[str]) -> tuple[float, dict[str, float]]:
    return float(np.mean(acc["loss"])), {
        n: float(np.mean(acc[f"ds{i}"])) for i, n in enumerate(names) if acc.get(f"ds{i}")}


def _log_start(run: _Run, env: DistEnv) -> None:
    cfg = run.cfg
    n = sum(p.numel() for p in run.model.parameters()) / 1e6
    asked = cfg.data.workers
    workers = _count(run.workers, "loader worker")
    if run.workers < asked:
        workers += f" (not {asked}: {_count(usable_cpus(), 'usable core')})"
    log.info("training %s (%.1f M parameters) on %s, steps %d to %d, batch %d of %d px, %s",
             cfg.model.encoder, n, env.device, run.step + 1, cfg.run.steps,
             cfg.data.mix.batch_size, cfg.data.augment.crop, workers)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _cpu_note(run: _Run, env: DistEnv, step_s: float) -> None:
    """On a CPU, a slow step says what the rest of the run costs and which of the CPU-sized
    configs (smallest first) has a smaller encoder."""
    cfg = run.cfg
    left = cfg.run.steps - run.step
    if env.device.type != "cpu" or step_s < SLOW_CPU_STEP_S or left <= 0:
        return
    offers = []
    for name, what in CPU_CONFIGS:
        if load_config(name).model.encoder == cfg.model.encoder:
            break
        offers.append(f"--config {name} ({what})")
    if not offers:  # already the smallest: the progress lines say the time
        return
    log.warning("on the CPU a step of %s (batch %d of %d px) takes %.1f s (%d to go: about %s); "
                "a smaller model trains faster on a CPU: %s", cfg.model.encoder,
                cfg.data.mix.batch_size, cfg.data.augment.crop, step_s, left,
                _hms(step_s * left), " or ".join(offers))


# ----------------------------------------------------------------------------- validation

def _validate(run: _Run, specs: list[DatasetSpec], env: DistEnv, metrics: MetricsLog
              ) -> list[str]:
    """Rank 0 evaluates; every rank gets its record, so all decide alike on best.pt. Returns
    the checkpoint files to write: ``best.pt`` when ``val.metric`` improved."""
    rec: dict[str, Any] = _val_record(run, specs, env.device) if env.is_main else {}
    if env.distributed:
        box = [rec]
        dist.broadcast_object_list(box, 0)
        rec = box[0]
    if "error" in rec:
        raise TrainerError(rec["error"])
    metrics.write(rec)
    metric, value = rec["val_metric"], rec["val_value"]
    if env.is_main:
        log.info("validation at step %d: %s; %s %.4f%s", run.step, "; ".join(
            f"{name} " + " ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "images")
            for name, m in rec["val"].items()), metric, value, " (best)" if rec["best"] else "")
    if not rec["best"]:
        return []
    run.best = {"metric": metric, "value": value, "step": run.step,
                "datasets": list(rec["val"])}
    return ["best.pt"]


def _val_record(run: _Run, specs: list[DatasetSpec], device: torch.device) -> dict[str, Any]:
    """``trainer.evaluate`` on each validation dataset; ``{"error": ...}`` when one fails."""
    metric = run.cfg.val.metric
    per: dict[str, dict[str, float]] = {}
    try:
        for spec in specs:
            rep = evaluate_model(run.model, spec, run.cfg.eval_size, device)
            if metric not in rep["metrics"]:
                return {"error": f"val.metric {metric}: validation dataset {spec.name} gives "
                                 f"only {', '.join(rep['metrics'])}"}
            per[spec.name] = {**rep["metrics"], "images": rep["images"]}
    except TrainerError as e:
        return {"error": str(e)}
    finally:
        run.model.train()
    value = float(np.mean([m[metric] for m in per.values()]))
    return {"step": run.step, "val": per, "val_metric": metric, "val_value": value,
            "best": run.best is None or value < run.best["value"]}


def _accumulate(acc: dict[str, Any], stats: StepStats) -> None:
    acc["loss"].append(stats.loss)
    acc["grad_norm"].append(stats.grad_norm)
    acc["skipped"].append(int(stats.skipped))
    for i, v in stats.per_dataset.items():
        acc[f"ds{i}"].append(v)
    if stats.weights is not None:
        acc["weights"].append(stats.weights)


def _broadcast_parameters(model: nn.Module) -> None:
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, 0)


def _group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}


def _log_record(step: int, acc: dict[str, Any], names: list[str],
                groups: dict[str, float], state: LoaderState, n: int, dt: float,
                env: DistEnv) -> dict[str, Any]:
    vals = [float(np.mean(acc["loss"]))] + [
        float(np.mean(acc[f"ds{i}"])) if acc.get(f"ds{i}") else float("nan")
        for i in range(len(names))]
    if env.distributed:  # mean over ranks (NaN = a dataset absent on a rank: ignored)
        t = torch.tensor(vals, dtype=torch.float64)
        ok = (~torch.isnan(t)).double()
        t = torch.nan_to_num(t)
        both = torch.stack([t, ok])
        dist.all_reduce(both)
        vals = (both[0] / both[1].clamp(min=1)).tolist()
        vals = [v if c > 0 else float("nan") for v, c in zip(vals, both[1].tolist(), strict=True)]
    rec: dict[str, Any] = {
        "step": step,
        "loss": vals[0],
        "losses": {n: v for n, v in zip(names, vals[1:], strict=True) if not math.isnan(v)},
        "lr": groups.get("decoder"),
        "lr_pretrained": groups.get("encoder"),
        "samples_per_s": n * env.world_size / max(dt, 1e-9),
        "grad_norm": float(np.mean(acc["grad_norm"])),
        "skipped_steps": int(sum(acc["skipped"])),   # overflowed fp16 steps since the last record
        "failed": dict(zip(names, state.failed() or [0] * len(names), strict=True)),
    }
    if acc.get("weights"):
        rec["weights"] = dict(zip(names, np.mean(acc["weights"], 0).tolist(), strict=True))
    return rec


def _checkpoint(out: Path, run: _Run, state: LoaderState, names: list[str], env: DistEnv,
                files: list[str]) -> None:
    """The same checkpoint under each of ``files`` in RUN/checkpoints/."""
    loader = [state.to_dict()]
    rng = [_rng_state()]
    if env.distributed:  # every rank's stream positions and RNG go into the one file
        loader, rng = [None] * env.world_size, [None] * env.world_size
        dist.all_gather_object(loader, state.to_dict())
        dist.all_gather_object(rng, _rng_state())
    if not env.is_main:
        return
    ck = {
        "format": CHECKPOINT_FORMAT,
        "step": run.step,
        "config": run.cfg.to_dict(),
        "datasets": names,
        "model": run.model.state_dict(),  # unwrapped: loads without DDP
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng,
        "loader": loader,
        "val_best": run.best,  # {metric, value, step, datasets} of best.pt, or None
    }
    for name in files:
        save_checkpoint(checkpoint_dir(out) / name, ck)
