"""trainer.train: overfitting, resume, DDP, mixing modes, the CLI."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from filmmine.cli import main as filmmine_main
from trainer import TrainerError
from trainer.checkpoint import load_checkpoint
from trainer.config import TrainConfig, load_config
from trainer.losses import MidasLoss
from trainer.mixing import min_norm_weights
from trainer.model import build_model
from trainer.sources import DatasetSpec, iter_tar
from trainer.train import DistEnv, pareto_backward, train


def make_few_corpus(corpus: Path, dst: Path, n: int) -> Path:
    """The first ``n`` samples of a mined corpus as a corpus of one shard."""
    src = sorted((corpus / "shards").glob("*.tar"))[0]
    (dst / "shards").mkdir(parents=True, exist_ok=True)
    with tarfile.open(dst / "shards" / "few-00000.tar", "w") as tar:
        for i, (key, rec) in enumerate(iter_tar(str(src))):
            if i == n:
                break
            for ext, data in rec.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return dst


@pytest.fixture(scope="module")
def few(corpus, tmp_path_factory) -> Path:
    return make_few_corpus(corpus, tmp_path_factory.mktemp("few") / "few", 4)


def tiny_config(*paths: Path, steps: int, **data) -> TrainConfig:
    cfg = load_config("tiny")
    cfg.data.datasets = [DatasetSpec(path=str(p)) for p in paths]
    cfg.run.steps, cfg.run.log_every = steps, 1
    for k, v in data.items():
        k = "mode" if k == "mix" else k
        obj = cfg.data.augment if hasattr(cfg.data.augment, k) else cfg.data.mix
        assert hasattr(obj, k), k
        setattr(obj, k, v)
    return cfg


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_overfits_a_handful_of_mined_samples(few, tmp_path):
    cfg = tiny_config(few, steps=40, crop_mode="center", zoom=(1.0, 1.0), flip=0.0,
                      shuffle_buffer=1)
    cfg.optim.lr = 3e-3
    res = train(cfg, tmp_path / "run")
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert [m["step"] for m in metrics(tmp_path / "run")] == list(range(1, 41))
    assert np.mean(losses[-5:]) < losses[0] / 5, losses
    assert res.step == 40
    rec = metrics(tmp_path / "run")[-1]
    assert set(rec) >= {"step", "loss", "losses", "lr", "samples_per_s"}
    assert rec["losses"] == {"few": pytest.approx(rec["loss"])}
    assert rec["failed"] == {"few": 0}
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["step"] == 40 and ck["datasets"] == ["few"]


def test_resume_continues_step_count_and_loss_curve(corpus, tmp_path):
    n = 3
    cfg = tiny_config(corpus, steps=n, jitter=0.2, shuffle_buffer=16)  # every random augmentation
    cfg.data.workers = 0
    cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.schedule_steps = "cosine", 2, 2 * n
    train(cfg, tmp_path / "a")
    with pytest.raises(TrainerError, match="--resume"):
        train(cfg, tmp_path / "a")
    with open(tmp_path / "a" / "metrics.jsonl", "a") as f:  # logged after the checkpoint
        f.write(json.dumps({"step": n + 1, "loss": 99.0}) + "\n")
    cfg.run.steps = 2 * n
    resumed = train(cfg, tmp_path / "a", resume=True)
    whole = train(cfg, tmp_path / "b")
    got, want = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [m["step"] for m in got] == list(range(1, 2 * n + 1))
    np.testing.assert_allclose([m["loss"] for m in got], [m["loss"] for m in want], rtol=1e-5)
    np.testing.assert_allclose([m["lr"] for m in got], [m["lr"] for m in want])
    for (k, v), w in zip(resumed.model.state_dict().items(),
                         whole.model.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-4, atol=1e-6, msg=k)


def _ddp_worker(rank: int, world: int, init: str, cfg: dict, out: str, result: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        res = train(TrainConfig.from_dict(cfg), out)
        # parameters only: BatchNorm statistics are rank 0's from the next forward on (DDP)
        torch.save(dict(res.model.named_parameters()), f"{result}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mix", ["naive", "pareto"])
def test_one_ddp_step_on_two_cpu_processes(corpus, few, tmp_path, mix):
    cfg = tiny_config(corpus, few, steps=1, mix=mix)
    torch.manual_seed(cfg.run.seed)
    init_state = dict(build_model(cfg.model).named_parameters())
    mp.spawn(_ddp_worker, nprocs=2, join=True,
             args=(2, f"file://{tmp_path / 'init'}", cfg.to_dict(), str(tmp_path / "run"),
                   str(tmp_path)))
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    changed = 0
    for k in s0:
        torch.testing.assert_close(s0[k], s1[k], rtol=0, atol=0, msg=k)
        changed += not torch.equal(s0[k], init_state[k])
    assert changed > 10  # the step moved the weights, identically on both ranks
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert len(ck["loader"]) == 2  # both ranks' data positions
    rec = metrics(tmp_path / "run")[0]
    assert rec["step"] == 1 and np.isfinite(rec["loss"])
    if mix == "pareto":
        assert sum(rec["weights"].values()) == pytest.approx(1.0)


@pytest.mark.parametrize("mix", ["balanced", "pareto"])
def test_cli_train_mixes_two_datasets(corpus, few, tmp_path, mix):
    run = tmp_path / "run"
    rc = filmmine_main(["train", "--config", "tiny", "--corpus", str(corpus),
                        "--data", f"corpus:{few},name=handful", "--mix", mix, "--steps", "2",
                        "--log-every", "1", "--out", str(run), "--quiet"])
    assert rc == 0
    recs = metrics(run)
    assert [r["step"] for r in recs] == [1, 2]
    names = {corpus.name, "handful"}  # a dataset is named after its folder unless named
    assert set(recs[-1]["losses"]) == names
    if mix == "pareto":
        w = recs[-1]["weights"]
        assert set(w) == names and sum(w.values()) == pytest.approx(1.0)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["mix"]["mode"] == mix
    assert [d["name"] for d in cfg["data"]["datasets"]] == [corpus.name, "handful"]


def test_cli_resume_keeps_the_runs_config(few, tmp_path):
    run = str(tmp_path / "run")
    assert filmmine_main(["train", "--config", "tiny", "--corpus", str(few), "--steps", "2",
                          "--log-every", "1", "--out", run, "--quiet"]) == 0
    # no --config, no --steps: the run's own config (tiny, 2 steps), not default.toml's
    assert filmmine_main(["train", "--corpus", str(few), "--out", run, "--resume",
                          "--quiet"]) == 0
    assert [r["step"] for r in metrics(Path(run))] == [1, 2]
    assert filmmine_main(["train", "--out", run, "--resume", "--steps", "3", "--quiet"]) == 0
    assert [r["step"] for r in metrics(Path(run))] == [1, 2, 3]
    assert load_checkpoint(Path(run) / "checkpoints" / "last.pt")["config"]["model"][
        "encoder"] == "test_resnet"


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = filmmine_main(["train", "--config", "tiny", "--steps", "1", "--out", str(tmp_path)])
    assert rc == 2
    assert "no dataset" in capsys.readouterr().err
    rc = filmmine_main(["train", "--config", "nope", "--corpus", str(tmp_path), "--steps", "1",
                        "--out", str(tmp_path)])
    assert rc == 2
    capsys.readouterr()
    rc = filmmine_main(["train", "--config", "tiny", "--corpus", str(tmp_path), "--steps", "1",
                        "--log-every", "0", "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "run.log_every must be >= 1" in err and err.strip().count("\n") == 0


def test_configs_load_and_unknown_keys_are_errors(tmp_path):
    for name in ("default", "small", "tiny"):
        cfg = load_config(name)
        assert cfg.loss.alpha == 0.5 and cfg.loss.data == "ssitrim" and cfg.loss.scales == 4
    d = load_config("default")
    assert (d.optim.lr, d.optim.lr_pretrained, d.data.augment.crop) == (1e-4, 1e-5, 384)
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "tiny"\n[optim]\nlearning_rate = 1.0\n')
    with pytest.raises(TrainerError, match="learning_rate"):
        load_config(str(bad))
    round_trip = TrainConfig.from_dict(load_config("tiny").to_dict())
    assert round_trip == load_config("tiny")
    # a zero interval would divide by zero at the first step: refused when the config loads
    for key, value in (("log_every", 0), ("ckpt_every", 0), ("keep_every", -1)):
        bad.write_text(f'base = "tiny"\n[run]\n{key} = {value}\n')
        with pytest.raises(TrainerError, match=f"run.{key}"):
            load_config(str(bad))


def test_trainer_imports_nothing_of_filmmine():
    code = ("import sys, trainer.cli, trainer.train, trainer.evaluate, trainer.predict; "
            "print([m for m in sys.modules if m.split('.')[0] == 'filmmine'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_pareto_leaves_out_datasets_without_a_valid_pixel():
    # a dataset absent from the batch, or whose crops hold no label, has no gradient: a zero row
    # would be the min-norm point of the hull and cancel the step for every other dataset
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, 3, padding=1)
    params = list(net.parameters())
    image, target = torch.rand(6, 3, 8, 8), torch.rand(6, 8, 8)
    mask = torch.rand(6, 8, 8) > 0.2
    mask[4:] = False  # dataset 2: two crops without a label; dataset 3: absent
    dataset = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = MidasLoss()
    terms = loss.terms(net(image)[:, 0], target, mask)
    weights = pareto_backward(params, terms, dataset, 4, 1.0, DistEnv())
    got = torch.cat([p.grad.reshape(-1) for p in params])
    rows = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        loss(net(image[i : i + 2])[:, 0], target[i : i + 2], mask[i : i + 2]), params)])
        for i in (0, 2)])
    want_w = min_norm_weights(rows)
    assert weights[2:] == [0.0, 0.0]
    np.testing.assert_allclose(weights[:2], want_w.tolist(), atol=1e-6)
    torch.testing.assert_close(got, want_w @ rows, rtol=1e-5, atol=1e-7)
    assert float(got.norm()) > 0


def test_resume_gives_the_next_step_the_uninterrupted_runs_torch_rng(tmp_path, monkeypatch):
    # whatever draws from torch's generator in a step (dropout, drop-path, random ops) must
    # draw the same numbers after --resume as in a run that never stopped
    from test_trainer_data import write_synthetic_corpus

    import trainer.train as train_mod

    corpus = write_synthetic_corpus(tmp_path / "corpus", shards=1, per_shard=6)
    seen: list[torch.Tensor] = []
    real = train_mod.train_one_step

    def spy(*args, **kwargs):
        seen.append(torch.get_rng_state())
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_step", spy)
    cfg = tiny_config(corpus, steps=2)
    train(cfg, tmp_path / "a")
    cfg.run.steps = 4
    seen.clear()
    train(cfg, tmp_path / "a", resume=True)
    resumed = list(seen)
    seen.clear()
    train(cfg, tmp_path / "b")
    assert len(resumed) == 2 and len(seen) == 4
    assert all(torch.equal(r, w) for r, w in zip(resumed, seen[2:], strict=True))


def test_metrics_lr_is_the_rate_the_logged_step_used(tmp_path):
    from test_trainer_data import write_synthetic_corpus

    cfg = tiny_config(write_synthetic_corpus(tmp_path / "c", shards=1, per_shard=4), steps=3)
    cfg.optim.warmup_steps = 4  # rates 1/4, 2/4, 3/4 of the peak for steps 1, 2, 3
    train(cfg, tmp_path / "run")
    recs = metrics(tmp_path / "run")
    want = [cfg.optim.lr * k / 4 for k in (1, 2, 3)]
    np.testing.assert_allclose([r["lr"] for r in recs], want)
    np.testing.assert_allclose([r["lr_pretrained"] for r in recs], want)  # encoder: no weights


def test_pareto_step_under_loss_scaling_matches_the_unscaled_step():
    # fp16 AMP (CUDA) trains with a GradScaler: pareto's per-dataset gradients are scaled by
    # it, then unscaled; the step must run and move the weights as the unscaled step does
    import copy

    from trainer.train import build_optimizer, train_one_step

    cfg = load_config("tiny")
    cfg.data.mix.mode = "pareto"
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8),
        "disparity": torch.rand(4, 32, 32, generator=g),
        "valid_mask": torch.rand(4, 32, 32, generator=g) > 0.2,
        "dataset": torch.tensor([0, 0, 1, 1]),
        "key": ["a", "b", "c", "d"],
    }
    torch.manual_seed(0)
    model = build_model(cfg.model)
    loss = MidasLoss()
    out = {}
    for scaled in (False, True):
        m = copy.deepcopy(model)
        opt = build_optimizer(m, cfg)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=scaled)
        stats = train_one_step(m, m, batch, loss, opt, scaler, cfg, DistEnv(), 2)
        assert np.isfinite(stats.loss) and sum(stats.weights) == pytest.approx(1.0)
        out[scaled] = (stats, dict(m.named_parameters()))
    assert out[True][0].weights == pytest.approx(out[False][0].weights, abs=1e-5)
    assert out[True][0].grad_norm == pytest.approx(out[False][0].grad_norm, rel=1e-4)
    for k, v in out[False][1].items():
        torch.testing.assert_close(out[True][1][k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_a_checkpoint_without_loss_scaling_resumes_with_it():
    """A CPU (or bf16) run saves an empty GradScaler state; resumed on a GPU, amp = "auto"
    turns fp16 loss scaling on, and GradScaler.load_state_dict({}) raises. An enabled CPU
    scaler shows the same failure."""
    from trainer.train import load_scaler_state

    saved = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    assert saved == {}
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    with pytest.raises(RuntimeError, match="empty"):
        scaler.load_state_dict(saved)
    load_scaler_state(scaler, saved)
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0
    full = torch.amp.GradScaler("cpu", init_scale=8.0, enabled=True)
    full.scale(torch.ones(()))
    load_scaler_state(scaler, full.state_dict())
    assert scaler.get_scale() == 8.0


def test_an_overflowed_fp16_step_does_not_advance_the_schedule(tmp_path, monkeypatch):
    """fp16 loss scaling skips a step whose gradients overflowed: the optimizer does not move,
    so the learning-rate schedule must not move either (it counts optimizer steps)."""
    from test_trainer_data import write_synthetic_corpus

    import trainer.train as train_mod

    real = torch.amp.GradScaler

    def scaler(device, enabled=True, **_kw):
        # the first step's scale overflows every gradient; the back-off makes the next ones fine
        return real("cpu", init_scale=1e38, backoff_factor=1e-30, enabled=True)

    monkeypatch.setattr(train_mod.torch.amp, "GradScaler", scaler)
    cfg = tiny_config(write_synthetic_corpus(tmp_path / "c", shards=1, per_shard=4), steps=3)
    cfg.optim.warmup_steps = 4
    cfg.run.log_every = 1
    train(cfg, tmp_path / "run")
    recs = metrics(tmp_path / "run")
    assert [r["skipped_steps"] for r in recs] == [1, 0, 0]
    # step 1 was skipped: step 2 still uses the first rate, step 3 the second
    want = [cfg.optim.lr * k / 4 for k in (1, 1, 2)]
    np.testing.assert_allclose([r["lr"] for r in recs], want)
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["scheduler"]["last_epoch"] == 2


def _pareto_batch(rank: int):
    """Rank 0: datasets 0 and 1; rank 1: dataset 0 only (mixing draws per rank)."""
    g = torch.Generator().manual_seed(10 + rank)
    image, target = torch.rand(4, 3, 8, 8, generator=g), torch.rand(4, 8, 8, generator=g)
    mask = torch.rand(4, 8, 8, generator=g) > 0.2
    dataset = torch.tensor([0, 0, 1, 1]) if rank == 0 else torch.tensor([0, 0, 0, 0])
    return image, target, mask, dataset


def _pareto_ddp_worker(rank: int, world: int, init: str, result: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = torch.nn.Conv2d(3, 1, 3, padding=1)
        params = list(net.parameters())
        image, target, mask, dataset = _pareto_batch(rank)
        terms = MidasLoss().terms(net(image)[:, 0], target, mask)
        w = pareto_backward(params, terms, dataset, 2, 1.0, DistEnv(rank=rank, world_size=world))
        torch.save({"w": torch.tensor(w), "grad": torch.cat([p.grad.reshape(-1) for p in params])},
                   f"{result}/pareto{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_pareto_averages_a_dataset_over_the_ranks_that_drew_it(tmp_path):
    # a rank without a dataset has no gradient for it; averaging its zero row in would shrink
    # that dataset's gradient by the share of ranks that lack it and bias the min-norm weights
    mp.spawn(_pareto_ddp_worker, nprocs=2, join=True,
             args=(2, f"file://{tmp_path / 'init'}", str(tmp_path)))
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, 3, padding=1)
    params = list(net.parameters())
    loss = MidasLoss()

    def grad(rank: int, ds: int) -> torch.Tensor:
        image, target, mask, dataset = _pareto_batch(rank)
        sel = dataset == ds
        terms = loss.terms(net(image)[:, 0], target, mask)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(terms.value(sel), params)])

    rows = torch.stack([(grad(0, 0) + grad(1, 0)) / 2, grad(0, 1)])
    want_w = min_norm_weights(rows)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"pareto{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["w"], want_w.to(got["w"].dtype), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["grad"], want_w.to(rows.dtype) @ rows, rtol=1e-4,
                                   atol=1e-7)


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    """`eval` / `predict` on a text file or a pickle that holds code: one line saying it is
    not a checkpoint, never torch's advice to load it with weights_only=False."""
    import pickle

    from filmmine.cli import main
    from trainer import TrainerError

    text = tmp_path / "notes.pt"
    text.write_text("hello\n")
    code = tmp_path / "code.pt"
    code.write_bytes(pickle.dumps({"x": Path("/")}))
    for f in (text, code):
        with pytest.raises(TrainerError) as e:
            load_checkpoint(f)
        assert str(e.value).startswith(f"{f} is not a ") and "weights_only" not in str(e.value)
        rc = main(["eval", "--checkpoint", str(f), "--dataset", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc != 0 and "Traceback" not in err and "weights_only" not in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    """`train` / `predict` with --out naming an existing file: one line, exit 2, the file
    untouched (a FileExistsError traceback before)."""
    from filmmine.cli import main

    f = tmp_path / "taken"
    f.write_text("mine\n")
    for argv in (["train", "--corpus", str(tmp_path), "--steps", "1", "--out", str(f)],
                 ["predict", "--checkpoint", str(tmp_path / "ck.pt"), "--out", str(f),
                  str(tmp_path / "img.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        what = "run (checkpoints, metrics)" if argv[0] == "train" else "predictions"
        assert err.strip() == f"filmmine: error: --out {f} is a file; give a directory for " \
                              f"the {what}"
        assert f.read_text() == "mine\n"


# ----------------------------------------------------------------------------- the everyday CLI

def _train_cli(*argv: str) -> int:
    return filmmine_main(["train", "--config", "tiny", *argv])


def _lines(err: str, prefix: str = "step ") -> dict[int, str]:
    """Progress lines by step."""
    return {int(ln.split()[1].split("/")[0]): ln for ln in err.splitlines()
            if ln.startswith(prefix)}


def test_progress_lines_give_total_rate_and_eta_never_carriage_returns(tmp_path, capsys,
                                                                       monkeypatch):
    """stderr is no terminal here (captured): periodic plain lines, each with step N/total,
    a rate and an ETA."""
    from test_trainer_data import write_synthetic_corpus

    import trainer.train as train_mod

    c = write_synthetic_corpus(tmp_path / "c", shards=1, per_shard=4)
    assert _train_cli("--corpus", str(c), "--steps", "4", "--log-every", "2",
                      "--out", str(tmp_path / "a")) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = _lines(err)
    assert set(lines) == {1, 2, 4}  # the first step at once, then every log_every
    for step in (2, 4):
        line = lines[step]
        assert line.startswith(f"step {step}/4 ({25 * step}%) loss "), line
        assert re.search(r"\| [0-9.]+ (steps/s|s/step), [0-9.]+ samples/s, ETA \d+:\d\d:\d\d$",
                         line), line
    assert lines[4].endswith("ETA 0:00:00")
    # between log steps, a line at least every HEARTBEAT_S seconds
    monkeypatch.setattr(train_mod, "HEARTBEAT_S", 0.0)
    assert _train_cli("--corpus", str(c), "--steps", "3", "--log-every", "10",
                      "--out", str(tmp_path / "b")) == 0
    lines = _lines(capsys.readouterr().err)
    assert set(lines) == {1, 2, 3}
    assert re.search(r"\| [0-9.]+ (steps/s|s/step), ETA \d+:\d\d:\d\d$", lines[2]), lines[2]


def test_a_cpu_run_logs_its_first_step_caps_workers_and_points_at_small_configs(
        tmp_path, capsys, monkeypatch):
    """`train --workers 4` on a 1-core machine: 1 loader worker; the first step's line at
    once (log_every 10); a slow CPU step says what the run costs and names the CPU-sized
    configs with a smaller encoder than the run's."""
    import os

    from test_trainer_data import write_synthetic_corpus

    import trainer.train as train_mod
    from trainer.data import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    assert (loader_workers(4), loader_workers(0)) == (1, 0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    assert (loader_workers(8), loader_workers(8, ranks_here=2), loader_workers(3)) == (4, 2, 3)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0}, raising=False)
    started: list[int] = []
    real = train_mod.build_loader

    def loader(dataset, num_workers, pin_memory=False):
        started.append(num_workers)
        return real(dataset, 0, pin_memory)  # no worker process: the test stays fast

    monkeypatch.setattr(train_mod, "build_loader", loader)
    monkeypatch.setattr(train_mod, "SLOW_CPU_STEP_S", 0.0)  # as the default model's steps
    c = str(write_synthetic_corpus(tmp_path / "c", shards=1, per_shard=4))
    # an encoder of none of the CPU-sized configs, as small as tiny's: a fast test
    assert _train_cli("--corpus", c, "--steps", "3", "--workers", "4", "--encoder",
                      "test_efficientnet", "--out", str(tmp_path / "a")) == 0
    err = capsys.readouterr().err
    assert started == [1]
    assert "1 loader worker (not 4: 1 usable core)" in err, err
    lines = _lines(err)
    assert set(lines) == {1, 3}, err
    assert re.search(r"^step 1/3 \(33%\) loss [0-9.]+ \| first batch [0-9.]+ s, first step "
                     r"[0-9.]+ s, ETA ~\d+:\d\d:\d\d$", lines[1]), lines[1]
    note = [ln for ln in err.splitlines() if ln.startswith("on the CPU")]
    assert len(note) == 1, err
    assert re.fullmatch(r"on the CPU a step of test_efficientnet \(batch 4 of 64 px\) takes "
                        r"[0-9.]+ s \(1 to go: about \d+:\d\d:\d\d\); a smaller model trains "
                        r"faster on a CPU: --config tiny \(a smoke-test model\) or --config "
                        r"small \(ResNet-50\)", note[0]), note[0]
    # tiny's own encoder: nothing smaller to point at
    assert _train_cli("--corpus", c, "--steps", "3", "--out", str(tmp_path / "b")) == 0
    err = capsys.readouterr().err
    assert "on the CPU" not in err and set(_lines(err)) == {1, 3}, err


def test_resume_refuses_changed_flags_and_says_when_there_is_nothing_to_train(tmp_path,
                                                                              capsys):
    from test_trainer_data import write_synthetic_corpus

    c = str(write_synthetic_corpus(tmp_path / "c", shards=1, per_shard=4))
    run = tmp_path / "run"
    assert _train_cli("--corpus", c, "--steps", "2", "--log-every", "1", "--out", str(run),
                      "--quiet") == 0
    capsys.readouterr()

    def resume(*argv: str) -> tuple[int, str]:
        rc = filmmine_main(["train", "--out", str(run), "--resume", "--quiet", *argv])
        return rc, capsys.readouterr().err.strip()

    rc, err = resume("--lr", "0.5", "--batch-size", "2", "--steps", "3")
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "--lr 0.5 (saved 0.001)" in err and "--batch-size 2 (saved 4)" in err, err
    rc, err = resume("--config", "small", "--corpus", c, "--steps", "3")
    assert rc == 2 and "--config small: model.encoder resnet50 (saved test_resnet)" in err, err
    rc, err = resume("--corpus", str(tmp_path), "--steps", "3")
    assert rc == 2 and f"--corpus/--data corpus:{tmp_path} (saved corpus:{c})" in err, err
    assert [r["step"] for r in metrics(run)] == [1, 2]  # nothing was trained
    # the same command line again, and the flags that only say how the run goes on: accepted
    rc, err = resume("--config", "tiny", "--corpus", c, "--steps", "4", "--log-every", "2",
                     "--ckpt-every", "3")
    assert rc == 0, err
    assert [r["step"] for r in metrics(run)] == [1, 2, 4]
    saved = json.loads((run / "config.json").read_text())["run"]
    assert (saved["steps"], saved["log_every"], saved["ckpt_every"]) == (4, 2, 3)
    rc, err = resume("--steps", "3")
    assert rc == 2 and err == f"filmmine: error: {run} is at step 4 already, past --steps 3: " \
                              "give --steps above 4 to train on", err
    rc, err = resume()
    assert rc == 0 and err == f"{run} is at step 4 of 4 already: nothing to train (give " \
                              "--steps above 4 to train on)", err
    # train(resume=True) from Python: the same refusal, by config key
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    cfg.run.steps, cfg.optim.lr = 5, 0.5
    with pytest.raises(TrainerError, match=r"optim.lr 0.5 \(saved 0.001\)"):
        train(cfg, run, resume=True)


def test_tensorboard_missing_is_one_line_before_anything_is_written(tmp_path, capsys,
                                                                    monkeypatch):
    from types import ModuleType

    from test_trainer_data import write_synthetic_corpus

    c = str(write_synthetic_corpus(tmp_path / "c", shards=1, per_shard=4))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    run = tmp_path / "run"
    assert _train_cli("--corpus", c, "--steps", "1", "--out", str(run), "--tensorboard") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install tensorboard" in err, err
    assert not run.exists()  # no config.json that says tensorboard = true
    # installed (a stand-in): the scalars go to RUN/tensorboard, nested ones by path
    scalars: list[tuple[str, float, int]] = []

    class SummaryWriter:
        def __init__(self, logdir, purge_step=None):
            assert logdir == str(run / "tensorboard") and purge_step == 1

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            pass

    fake = ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = SummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    assert _train_cli("--corpus", c, "--steps", "1", "--out", str(run), "--tensorboard",
                      "--quiet") == 0
    assert json.loads((run / "config.json").read_text())["run"]["tensorboard"] is True
    tags = {t for t, _v, step in scalars if step == 1}
    assert {"loss", "losses/c", "failed/c", "grad_norm"} <= tags, tags


def test_validation_pass_writes_metrics_and_keeps_the_best_checkpoint(tmp_path, capsys):
    """`--val middlebury:DIR --val-every 2`: the eval metrics of trainer.evaluate in
    metrics.jsonl at steps 2, 4 (and the last), and checkpoints/best.pt at the step with the
    lowest val metric, which it names; carried over a resume."""
    from test_trainer_data import write_synthetic_corpus
    from test_trainer_evaluate import write_motorcycle

    from trainer.evaluate import evaluate_checkpoint

    c = str(write_synthetic_corpus(tmp_path / "c", shards=1, per_shard=4))
    mb = write_motorcycle(tmp_path / "mb")
    run = tmp_path / "run"
    assert _train_cli("--corpus", c, "--val", f"corpus:{c}", "--out", str(run)) == 2
    assert "mined corpus" in capsys.readouterr().err
    assert _train_cli("--corpus", c, "--steps", "5", "--val", f"middlebury:{mb}",
                      "--val-every", "2", "--val-metric", "rmse", "--out", str(run),
                      "--quiet") == 0
    vals = [r for r in metrics(run) if "val" in r]
    assert [r["step"] for r in vals] == [2, 4, 5]
    for r in vals:
        assert set(r["val"]["mb"]) == {"absrel", "delta_1.25_pct", "rmse", "images"}
        assert r["val_metric"] == "rmse" and r["val_value"] == r["val"]["mb"]["rmse"]
    lowest = np.minimum.accumulate([r["val_value"] for r in vals])
    assert [r["best"] for r in vals] == [True, *(lowest[1:] < lowest[:-1])]
    best = min(vals, key=lambda r: r["val_value"])
    ck = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ck["step"] == best["step"]
    assert ck["val_best"] == {"metric": "rmse", "value": best["val_value"],
                              "step": best["step"], "datasets": ["mb"]}
    # the saved model scores what was recorded: the same evaluation, not a copy of it
    rep = evaluate_checkpoint(run / "checkpoints" / "best.pt",
                              DatasetSpec(type="middlebury", path=str(mb)))
    for k in ("absrel", "delta_1.25_pct", "rmse"):
        assert rep["metrics"][k] == pytest.approx(best["val"]["mb"][k], rel=1e-6)
    assert not list((run / "checkpoints").glob("*.tmp*"))
    # resumed, the best so far is the one to beat: best.pt moves only for a lower value
    assert filmmine_main(["train", "--out", str(run), "--resume", "--steps", "6",
                          "--quiet"]) == 0
    vals = [r for r in metrics(run) if "val" in r]
    assert [r["step"] for r in vals] == [2, 4, 5, 6]
    best = min(vals, key=lambda r: r["val_value"])
    assert vals[-1]["best"] == (vals[-1] is best)
    assert load_checkpoint(run / "checkpoints" / "best.pt")["step"] == best["step"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["val_best"]["step"] == best["step"]
