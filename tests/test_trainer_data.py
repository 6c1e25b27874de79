"""trainer.sources and trainer.data: adapters, splitting, mixing, resume, failures."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainer import TrainerError
from trainer.data import (
    AugmentConfig,
    LoaderState,
    MixConfig,
    MixedStream,
    SourceStream,
    augment,
    build_loader,
)
from trainer.sources import (
    CorpusSource,
    DatasetSpec,
    FolderSource,
    MiddleburySource,
    Sample,
    WdsSource,
    build_source,
    detect_type,
    read_pfm,
    write_pfm,
)

NO_AUG = AugmentConfig(crop=32, zoom=(1.0, 1.0), crop_mode="center", flip=0.0, jitter=0.0)


# ----------------------------------------------------------------------------- helpers

def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _jpg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def synthetic_sample(seed: int, h: int = 40, w: int = 56) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    disp = np.linspace(-3, 9, w, dtype=np.float32)[None].repeat(h, 0) + rng.normal(0, .1, (h, w))
    disp[: h // 5] = np.nan  # invalid band
    return image, disp.astype(np.float32)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def corpus_members(key: str, image: np.ndarray, disp: np.ndarray) -> list[tuple[str, bytes]]:
    """A sample in the documented corpus format (CORPUS.md)."""
    scale, offset = 1 / 256, -10.0
    q = np.zeros(disp.shape, np.uint16)
    ok = np.isfinite(disp)
    q[ok] = np.clip(np.rint((disp[ok] - offset) / scale), 1, 65535)
    meta = {"key": key, "disp_scale": scale, "disp_offset": offset,
            "size": [image.shape[1], image.shape[0]]}
    return [(f"{key}.jpg", _jpg(image)), (f"{key}.disp.png", _png(q)),
            (f"{key}.json", json.dumps(meta).encode())]


def write_synthetic_corpus(root: Path, shards: int, per_shard: int, start: int = 0) -> Path:
    for s in range(shards):
        members = []
        for i in range(per_shard):
            n = start + s * per_shard + i
            members += corpus_members(f"syn_{n:08d}", *synthetic_sample(n))
        write_tar(root / "shards" / f"syn-{s:05d}.tar", members)
    return root


def all_keys(source) -> list[str]:
    return [k for u in source.units() for k, _ in source.records(u)]


# ----------------------------------------------------------------------------- adapters

def test_corpus_source_decodes_the_documented_format(corpus):
    from filmmine.corpus.encode import decode_disparity, decode_jpeg  # reference decoder

    src = CorpusSource(DatasetSpec(path=str(corpus)))
    unit = src.units()[0]
    n = 0
    for key, rec in src.records(unit):
        s = src.decode(key, rec)
        meta = json.loads(rec["json"])
        ref = decode_disparity(rec["disp.png"], meta["disp_scale"], meta["disp_offset"])
        np.testing.assert_array_equal(s.valid, np.isfinite(ref))
        np.testing.assert_allclose(s.disparity[s.valid], ref[s.valid], rtol=1e-6)
        np.testing.assert_array_equal(s.image, decode_jpeg(rec["jpg"]))
        assert s.image.shape[:2] == tuple(meta["size"][::-1])
        n += 1
    assert n > 5


def test_pfm_round_trip_and_bottom_row_first(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    a[0, 0] = np.inf
    write_pfm(tmp_path / "x.pfm", a)
    raw = (tmp_path / "x.pfm").read_bytes()
    data = np.frombuffer(raw[raw.index(b"-1.0\n") + 5 :], "<f4")
    np.testing.assert_array_equal(data[:4], a[2])  # first stored row = bottom row
    np.testing.assert_array_equal(read_pfm(raw), a)


def test_folder_adapter_png16_depth_with_scale_and_invalid(tmp_path):
    image, _ = synthetic_sample(1)
    depth_mm = np.full(image.shape[:2], 2000, np.uint16)
    depth_mm[:, :10] = 4000
    depth_mm[0, 0] = 0  # invalid
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), image[..., ::-1])
    cv2.imwrite(str(tmp_path / "labels" / "a.png"), depth_mm)
    cv2.imwrite(str(tmp_path / "images" / "b.jpg"), image[..., ::-1])  # no label: skipped
    spec = DatasetSpec.parse(f"folder:{tmp_path},label=depth,scale=0.001")
    src = build_source(spec)
    samples = list(src)
    assert [s.key for s in samples] == ["a"]
    s = samples[0]
    assert not s.valid[0, 0] and s.valid.sum() == s.valid.size - 1
    assert s.disparity[5, 0] == pytest.approx(1 / 4.0)
    assert s.disparity[5, 20] == pytest.approx(1 / 2.0)
    assert detect_type(str(tmp_path)) == "folder"


@pytest.mark.parametrize("fmt", ["npy", "pfm"])
def test_folder_adapter_float_labels(tmp_path, fmt):
    image, disp = synthetic_sample(2)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "x.png"), image[..., ::-1])
    if fmt == "npy":
        np.save(tmp_path / "labels" / "x.npy", disp)
    else:
        write_pfm(tmp_path / "labels" / "x.pfm", np.where(np.isnan(disp), np.inf, disp))
    (s,) = list(FolderSource(DatasetSpec(type="folder", path=str(tmp_path))))
    np.testing.assert_array_equal(s.valid, np.isfinite(disp))
    np.testing.assert_allclose(s.disparity[s.valid], disp[s.valid])
    np.testing.assert_array_equal(s.image, image)


def test_middlebury_adapter(tmp_path):
    image, disp = synthetic_sample(3)
    scene = tmp_path / "scene1"
    scene.mkdir()
    cv2.imwrite(str(scene / "im0.png"), image[..., ::-1])
    write_pfm(scene / "disp0GT.pfm", np.where(np.isnan(disp), np.inf, disp))
    spec = DatasetSpec(type="middlebury", path=str(tmp_path))
    (s,) = list(MiddleburySource(spec))
    assert s.key == "scene1"
    np.testing.assert_array_equal(s.valid, np.isfinite(disp))
    np.testing.assert_allclose(s.disparity[s.valid], disp[s.valid])
    assert detect_type(str(tmp_path)) == "middlebury"


def test_wds_adapter_other_corpus(tmp_path):
    members = []
    for i in range(3):
        image, disp = synthetic_sample(10 + i)
        buf = io.BytesIO()
        np.save(buf, np.nan_to_num(1 / np.abs(disp) + 0.0, nan=0.0).astype(np.float32))
        members += [(f"k{i}.jpg", _jpg(image)), (f"k{i}.depth.npy", buf.getvalue())]
    write_tar(tmp_path / "other-000.tar", members)
    spec = DatasetSpec.parse(f"wds:{tmp_path},label=depth,invalid=0,weight=0.5")
    assert spec.weight == 0.5 and spec.invalid == 0.0
    samples = list(WdsSource(spec))
    assert [s.key for s in samples] == ["k0", "k1", "k2"]
    assert samples[0].valid.any() and not samples[0].valid[0].any()


def test_dataset_spec_parsing():
    s = DatasetSpec.parse("/data/my corpus")
    assert (s.type, s.path, s.name, s.weight) == ("corpus", "/data/my corpus", "my_corpus", 1.0)
    s = DatasetSpec.parse("middlebury:/mb,weight=2,name=mb14")
    assert (s.type, s.name, s.weight, s.label) == ("middlebury", "mb14", 2.0, "disparity")
    with pytest.raises(TrainerError, match="bad dataset option"):
        DatasetSpec.parse("folder:/x,colour=blue")
    with pytest.raises(TrainerError) as e:   # a typo in the type, not a corpus path
        DatasetSpec.parse("bogus:/data/nyu")
    assert str(e.value).startswith("unknown dataset type 'bogus' in 'bogus:/data/nyu'; "
                                   "choose from ")
    assert "middlebury" in str(e.value) and "folder" in str(e.value)
    with pytest.raises(TrainerError, match="label"):
        DatasetSpec.parse("folder:/x,label=normals")


# ----------------------------------------------------------------------------- splitting

def _keys_of_rank(corpus: Path, rank: int, workers: int) -> list[str]:
    stream = MixedStream([CorpusSource(DatasetSpec(path=str(corpus)))],
                         MixConfig(batch_size=4, shuffle_buffer=8), NO_AUG, seed=3, rank=rank,
                         world_size=2, epochs=1)
    loader = build_loader(stream, num_workers=workers)
    return [k for batch in loader for k in batch["key"]]


def test_two_ranks_two_workers_read_every_sample_once_per_epoch(corpus):
    expected = all_keys(CorpusSource(DatasetSpec(path=str(corpus))))
    got = _keys_of_rank(corpus, 0, 2) + _keys_of_rank(corpus, 1, 2)
    dup = [k for k, c in Counter(got).items() if c > 1]
    assert not dup
    assert sorted(got) == sorted(expected)


def test_fewer_shards_than_slices_splits_by_sample(tmp_path):
    root = write_synthetic_corpus(tmp_path, shards=1, per_shard=10)
    src = CorpusSource(DatasetSpec(path=str(root)))
    per_slice = [[k for k, _ in SourceStream(src, 0, i, 4, seed=1, buffer=3, epochs=1)]
                 for i in range(4)]
    flat = [k for keys in per_slice for k in keys]
    assert sorted(flat) == sorted(all_keys(src)) and len(set(flat)) == 10
    assert all(len(keys) in (2, 3) for keys in per_slice)


def test_epochs_reshuffle_the_same_samples(tmp_path):
    root = write_synthetic_corpus(tmp_path, shards=3, per_shard=6)
    src = CorpusSource(DatasetSpec(path=str(root)))
    stream = SourceStream(src, 0, 0, 1, seed=5, buffer=4, epochs=2)
    keys = [k for k, _ in stream]
    first, second = keys[:18], keys[18:]
    assert sorted(first) == sorted(second) == sorted(all_keys(src))
    assert first != second


# ----------------------------------------------------------------------------- mixing

def _two_sources(tmp_path: Path) -> list[CorpusSource]:
    a = write_synthetic_corpus(tmp_path / "a", shards=2, per_shard=5)
    b = write_synthetic_corpus(tmp_path / "b", shards=2, per_shard=5, start=100)
    return [CorpusSource(DatasetSpec(path=str(a), weight=3.0)),
            CorpusSource(DatasetSpec(path=str(b), weight=1.0))]


def test_mix_modes(tmp_path):
    srcs = _two_sources(tmp_path)
    naive = iter(MixedStream(srcs, MixConfig("naive", batch_size=8), NO_AUG, seed=0))
    counts = Counter(int(d) for _ in range(20) for d in next(naive)["dataset"])
    assert 0.6 < counts[0] / 160 < 0.9  # weights 3 : 1
    bal = iter(MixedStream(srcs, MixConfig("balanced", batch_size=4), NO_AUG, seed=0))
    batch = next(bal)
    assert batch["dataset"].tolist() == [0, 0, 1, 1]
    assert all(k.startswith("syn_0000000") for k in batch["key"][:2])
    per = iter(MixedStream(srcs, MixConfig("balanced", "per_batch", batch_size=3), NO_AUG))
    assert [next(per)["dataset"].tolist() for _ in range(3)] == [[0] * 3, [1] * 3, [0] * 3]
    with pytest.raises(TrainerError, match="multiple"):
        MixedStream(srcs, MixConfig("pareto", batch_size=3), NO_AUG)


def test_per_dataset_crop_needs_one_dataset_per_batch(tmp_path):
    srcs = _two_sources(tmp_path)
    srcs[1].spec.crop = 48
    with pytest.raises(TrainerError, match="per_batch"):
        MixedStream(srcs, MixConfig("naive", batch_size=4), NO_AUG)
    per = iter(MixedStream(srcs, MixConfig("balanced", "per_batch", batch_size=2), NO_AUG))
    assert next(per)["image"].shape == (2, 3, 32, 32)
    assert next(per)["image"].shape == (2, 3, 48, 48)




def test_resumed_stream_continues_exactly(tmp_path):
    srcs = _two_sources(tmp_path)
    aug = AugmentConfig(crop=32, zoom=(1.0, 1.4), flip=0.5, jitter=0.2)
    mix = MixConfig("naive", batch_size=3, shuffle_buffer=4)
    ref = iter(MixedStream(srcs, mix, aug, seed=9))
    batches = [next(ref) for _ in range(9)]  # 27 samples of 20: crosses an epoch
    state = batches[4]["state"]
    resumed = iter(MixedStream(srcs, mix, aug, seed=9,
                               resume={"nworkers": 1, "workers": {0: state}}))
    for want in batches[5:]:
        got = next(resumed)
        assert got["key"] == want["key"]
        for name in ("image", "disparity", "valid_mask", "dataset"):
            torch.testing.assert_close(got[name], want[name])


def test_resume_with_two_workers_keeps_the_round_robin(tmp_path):
    srcs = _two_sources(tmp_path)
    aug = AugmentConfig(crop=32, flip=0.5, jitter=0.2)
    mix = MixConfig("naive", batch_size=2, shuffle_buffer=4)

    def loader(resume=None):
        return iter(build_loader(MixedStream(srcs, mix, aug, seed=4, resume=resume), 2))

    ref = loader()
    batches = [next(ref) for _ in range(8)]
    del ref
    state = LoaderState()
    for b in batches[:3]:  # consumed 3 batches: worker 1 is next
        state.update(b["state"])
    resumed = loader(state.to_dict())
    for want in batches[3:]:
        got = next(resumed)
        assert got["key"] == want["key"]
        torch.testing.assert_close(got["image"], want["image"])


def test_failing_samples_are_counted_and_skipped(tmp_path):
    members = corpus_members("good_00000000", *synthetic_sample(0))
    members += [("bad_00000001.jpg", b"not a jpeg"), *corpus_members(
        "bad_00000001", *synthetic_sample(1))[1:]]  # bad image
    members += corpus_members("miss_00000003", *synthetic_sample(3))[:2]  # no json
    members += corpus_members("good_00000004", *synthetic_sample(4))
    write_tar(tmp_path / "shards" / "x-00000.tar", members)
    src = CorpusSource(DatasetSpec(path=str(tmp_path)))
    stream = MixedStream([src], MixConfig(batch_size=1, shuffle_buffer=1), NO_AUG, epochs=1)
    batches = list(DataLoader(stream, batch_size=None))
    assert sorted(k for b in batches for k in b["key"]) == ["good_00000000", "good_00000004"]
    assert len(batches) == 2
    assert batches[-1]["state"]["failed"] == [2]


def test_undecodable_label_and_image_files_are_counted_and_skipped(tmp_path):
    # a folder dataset with broken files: training counts and skips them, evaluation skips them
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    image, disp = synthetic_sample(5)
    bad_labels = {
        "empty": b"",  # a 0-byte .npy (interrupted copy)
        "fields": np.zeros((40, 56), dtype=[("a", "f4"), ("b", "i4")]),  # structured array
        "text": np.full((40, 56), "x"),  # strings
    }
    for stem in ("good0", "good1", *bad_labels, "noimage"):
        cv2.imwrite(str(tmp_path / "images" / f"{stem}.png"), image[..., ::-1])
        np.save(tmp_path / "labels" / f"{stem}.npy", disp)
    for stem, label in bad_labels.items():
        if isinstance(label, bytes):
            (tmp_path / "labels" / f"{stem}.npy").write_bytes(label)
        else:
            np.save(tmp_path / "labels" / f"{stem}.npy", label)
    (tmp_path / "images" / "noimage.png").write_bytes(b"")  # a 0-byte image
    src = FolderSource(DatasetSpec(type="folder", path=str(tmp_path)))
    stream = MixedStream([src], MixConfig(batch_size=8, shuffle_buffer=1), NO_AUG, epochs=1)
    (batch,) = list(stream)  # one partial batch, after every record was tried
    assert sorted(batch["key"]) == ["good0", "good1"]
    assert batch["state"]["failed"] == [4]
    assert sorted(s.key for s in src) == ["good0", "good1"]


def test_truncated_shard_is_counted_not_fatal(tmp_path):
    root = write_synthetic_corpus(tmp_path, shards=2, per_shard=4)
    shard = root / "shards" / "syn-00001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    src = CorpusSource(DatasetSpec(path=str(root)))
    stream = MixedStream([src], MixConfig(batch_size=2, shuffle_buffer=1), NO_AUG, epochs=2)
    batches = list(DataLoader(stream, batch_size=None))
    keys = [k for b in batches for k in b["key"]]
    assert {f"syn_{i:08d}" for i in range(4)} <= set(keys)
    assert batches[-1]["state"]["failed"][0] >= 1  # the first epoch's failure


def test_augment_crop_flip_and_label_alignment():
    image, disp = synthetic_sample(7, h=60, w=90)
    valid = np.isfinite(disp)
    s = Sample("k", image, np.nan_to_num(disp), valid)
    cfg = AugmentConfig(crop=30, zoom=(1.0, 1.0), crop_mode="center", flip=1.0, jitter=0.0)
    out = augment(s, np.random.default_rng(0), cfg)
    assert out.image.shape == (30, 30, 3) and out.disparity.shape == out.valid.shape == (30, 30)
    # disparity grows to the right in the input: flipped, it decreases
    row = out.disparity[-1]
    assert row[0] > row[-1]
    assert not out.valid[0].any() and out.valid[-1].all()
    jit = augment(s, np.random.default_rng(0), AugmentConfig(crop=30, jitter=0.5))
    assert jit.image.dtype == np.uint8


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(TrainerError, match="nothing found"):
        MixedStream([CorpusSource(DatasetSpec(path=str(tmp_path)))], MixConfig(), NO_AUG)


def test_wds_adapter_on_a_filmmine_corpus_takes_the_disparity_not_the_confidence(corpus):
    """A filmmine corpus read as a generic WebDataset: KEY.conf.png sorts before KEY.disp.png;
    without label_key the adapter must still take the disparity (here: its raw uint16 values,
    0 = invalid), never the confidence map."""
    from trainer.sources import decode_png16

    src = WdsSource(DatasetSpec.parse(f"wds:{corpus / 'shards'}"))
    unit = src.units()[0]
    key, rec = next(iter(src.records(unit)))
    assert "conf.png" in rec and list(rec).index("conf.png") < list(rec).index("disp.png")
    s = src.decode(key, rec)
    raw = decode_png16(rec["disp.png"])
    np.testing.assert_array_equal(s.valid, raw > 0)
    assert s.valid.mean() > 0.5
    # the label is the disparity (up to the adapter's scale), not the confidence
    v = s.valid
    assert np.corrcoef(s.disparity[v], raw[v].astype(np.float64))[0, 1] > 0.999
