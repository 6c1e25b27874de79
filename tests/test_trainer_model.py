"""trainer.model: shapes, local encoder weights, learning-rate groups, pretrained errors."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch

from trainer import TrainerError
from trainer.model import MidasNet, ModelConfig, build_model

TINY = dict(encoder="test_resnet", features=32)


def test_forward_shape_range_and_no_nan():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY)).eval()
    for h, w in [(64, 64), (96, 160), (70, 100)]:  # also sides that are not multiples of 32
        with torch.no_grad():
            out = model(torch.rand(2, 3, h, w))
        assert out.shape == (2, h, w)
        assert torch.isfinite(out).all() and (out >= 0).all()


def test_every_parameter_gets_a_gradient():  # DDP needs it (no unused parameters)
    model = MidasNet(ModelConfig(**TINY))
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_decoder_follows_the_paper():
    model = MidasNet(ModelConfig(**TINY))
    assert len(model.project) == len(model.fusion) == 4
    assert all(p.out_channels == 32 and p.kernel_size == (3, 3) for p in model.project)
    convs = [m for m in model.head if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(32, 16), (16, 32), (32, 1)]
    assert isinstance(model.head[-1], torch.nn.ReLU)


def test_local_weights_load_into_encoder_and_get_the_lower_lr(tmp_path):
    torch.manual_seed(1)
    classifier = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "test_resnet.pth"
    torch.save(classifier.state_dict(), path)
    model = MidasNet(ModelConfig(**TINY, weights=str(path)))
    own = model.encoder.state_dict()
    ref = classifier.state_dict()
    shared = [k for k in own if k in ref]
    assert len(shared) == len(own)  # every encoder tensor came from the file
    for k in shared:
        torch.testing.assert_close(own[k], ref[k])
    groups = {g["name"]: g for g in model.param_groups(1e-4, 1e-5)}
    assert groups["encoder"]["lr"] == 1e-5 and groups["decoder"]["lr"] == 1e-4
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())
    scratch = MidasNet(ModelConfig(**TINY))  # not pretrained: the encoder is a new layer too
    assert {g["name"]: g["lr"] for g in scratch.param_groups(1e-4, 1e-5)} == {
        "encoder": 1e-4, "decoder": 1e-4}


def test_safetensors_and_wrapped_state_dicts(tmp_path):
    from safetensors.torch import save_file

    sd = timm.create_model("test_resnet", pretrained=False).state_dict()
    save_file(sd, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        model = MidasNet(ModelConfig(**TINY, weights=str(tmp_path / name)))
        got = model.encoder.state_dict()["conv1.0.weight"]
        torch.testing.assert_close(got, sd["conv1.0.weight"])


def test_weights_that_are_not_a_plain_state_dict_are_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"x": argparse.Namespace(a=1)}, bad)  # weights_only refuses arbitrary objects
    with pytest.raises(TrainerError, match="cannot read weights"):
        MidasNet(ModelConfig(**TINY, weights=str(bad)))
    other = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(TrainerError, match="no tensor matches"):
        MidasNet(ModelConfig(**TINY, weights=str(other)))
    with pytest.raises(TrainerError, match="not found"):
        MidasNet(ModelConfig(**TINY, weights=str(tmp_path / "missing.pt")))


def test_pretrained_offline_is_one_clear_error(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise RuntimeError("Cannot send a request, as the client has been closed.\nmore")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(TrainerError, match="could not be fetched through timm") as e:
        MidasNet(ModelConfig(**TINY, pretrained=True))
    assert "\n" not in str(e.value)


def test_unknown_encoder_is_an_error():
    with pytest.raises(TrainerError, match="encoder"):
        MidasNet(ModelConfig(encoder="no_such_model_xyz"))
