"""Dataset adapters: one small class per on-disk format, registered by name.

A source lists *units* (shards or files: what is split across DDP ranks and loader workers),
reads a unit into raw *records* (bytes or paths: cheap, so a resumed stream can skip records
without decoding them) and decodes a record into a ``Sample``. Labels are converted to
disparity (inverse depth) here; their scale and shift stay unknown.

Types (``DatasetSpec.type``):

- ``corpus``: a filmmine corpus, ``shards/*.tar`` with ``KEY.jpg``, ``KEY.disp.png`` and
  ``KEY.json``; disparity ``value * disp_scale + disp_offset`` px, value 0 = invalid. Other
  members (the optional ``KEY.conf.png`` confidence map) are ignored.
- ``wds``: other WebDataset tars (a directory, a file or a glob) with an image member and a
  label member per key; label png16 / npy / pfm, kind and scale per dataset.
- ``folder``: ``DIR/images/STEM.(jpg|png)`` beside ``DIR/labels/STEM.(png|npy|pfm)``; label
  kind and scale per dataset (``.json`` ordinal labels are read by evaluation only).
- ``middlebury``: scene folders (the folder itself or below) with ``im0.png`` and
  ``disp0GT.pfm``; disparity px, +inf = invalid.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from . import TrainerError
from .atomic import atomic_open

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
LABEL_EXTS = (".png", ".npy", ".pfm")
LABEL_KINDS = ("disparity", "depth")


class SampleError(ValueError):
    """A record that cannot be decoded: counted and skipped by the stream."""


@dataclass
class Sample:
    key: str
    image: np.ndarray  # [H, W, 3] uint8 RGB
    disparity: np.ndarray  # [H, W] float32, inverse-depth up to scale and shift; 0 where invalid
    valid: np.ndarray  # [H, W] bool


@dataclass
class DatasetSpec:
    """One dataset of a run: where, how much of it, and how to read its labels."""

    type: str = "corpus"
    path: str = ""
    name: str = ""  # default: the folder's name
    weight: float = 1.0  # sampling weight for naive mixing
    label: str = "disparity"  # or "depth": converted to 1 / depth
    scale: float = 1.0  # metres (or px) per stored unit: value * scale + offset
    offset: float = 0.0
    invalid: float | None = None  # stored value meaning "no label" (png16 default: 0)
    cap: float = 0.0  # depth cap in metres for evaluation (0 = none)
    crop: int = 0  # crop size for this dataset (balance = "per_batch" only; 0 = data.crop)
    images: str = "images"  # folder: sub-directories of images and labels
    labels: str = "labels"
    image_key: str = ""  # wds: member extensions (default: the first image / label found)
    label_key: str = ""

    def __post_init__(self) -> None:
        if self.type not in SOURCES:
            raise TrainerError(f"unknown dataset type {self.type!r}; choose from {sorted(SOURCES)}")
        if self.label not in LABEL_KINDS:
            raise TrainerError(f"label must be disparity or depth, got {self.label!r}")
        if not self.path:
            raise TrainerError(f"dataset of type {self.type} needs a path")
        if self.weight < 0:
            raise TrainerError(f"dataset weight must be >= 0, got {self.weight}")
        if not self.name:
            self.name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(self.path.rstrip("/")).name) or "data"

    @classmethod
    def parse(cls, text: str) -> DatasetSpec:
        """``TYPE:PATH[,key=value...]``, e.g. ``folder:/data/nyu,label=depth,scale=0.001,cap=10``;
        a bare path is a filmmine corpus."""
        head, *opts = text.split(",")
        typ, sep, path = head.partition(":")
        if sep and typ not in SOURCES and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", typ) \
                and not Path(head).exists():
            # TYPE:PATH with a type that is none of ours (a typo): not a corpus path
            raise TrainerError(f"unknown dataset type {typ!r} in {text!r}; choose from "
                               f"{', '.join(sorted(SOURCES))}, or give a corpus directory")
        if not sep or typ not in SOURCES:
            typ, path = "corpus", head
        kw: dict[str, Any] = {"type": typ, "path": path}
        types = {f.name: f.type for f in fields(cls)}
        for opt in opts:
            k, eq, v = opt.partition("=")
            k = k.strip()
            if not eq or k not in types or k in ("type", "path"):
                raise TrainerError(f"bad dataset option {opt!r} in {text!r}; options: "
                                   f"{sorted(set(types) - {'type', 'path'})}")
            kw[k] = _convert(k, v.strip(), types[k])
        return cls(**kw)

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSpec:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise TrainerError(f"unknown dataset keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


def _convert(key: str, value: str, typ: Any) -> Any:
    typ = str(typ)
    try:
        if "None" in typ:
            return None if value.lower() in ("", "none") else float(value)
        if "float" in typ:
            return float(value)
        if "int" in typ:
            return int(value)
    except ValueError as e:
        raise TrainerError(f"dataset option {key}={value!r}: {e}") from None
    return value


# ----------------------------------------------------------------------------- readers

def read_pfm(data: bytes) -> np.ndarray:
    """PFM bytes -> [H, W] float32, top row first (PFM stores the bottom row first)."""
    buf = io.BytesIO(data)
    kind = buf.readline().strip()
    if kind not in (b"Pf", b"PF"):
        raise SampleError(f"not a PFM file (header {kind[:8]!r})")
    try:
        w, h = (int(v) for v in buf.readline().split())
        scale = float(buf.readline().strip())
    except ValueError as e:
        raise SampleError(f"bad PFM header: {e}") from None
    ch = 3 if kind == b"PF" else 1
    arr = np.frombuffer(buf.read(), dtype="<f4" if scale < 0 else ">f4")
    if arr.size != w * h * ch:
        raise SampleError(f"PFM data has {arr.size} values, expected {w * h * ch}")
    arr = arr.reshape(h, w, ch)[::-1, :, 0]
    return np.ascontiguousarray(arr, dtype=np.float32)


def write_pfm(path: str | Path, arr: np.ndarray) -> None:
    """[H, W] float32 -> a little-endian greyscale PFM (bottom row first)."""
    a = np.asarray(arr, dtype="<f4")
    with atomic_open(path) as f:
        f.write(b"Pf\n%d %d\n-1.0\n" % (a.shape[1], a.shape[0]))
        f.write(np.ascontiguousarray(a[::-1]).tobytes())


def _imdecode(data: bytes, flags: int) -> np.ndarray | None:
    """cv2.imdecode, with None (not a cv2.error) for an empty buffer."""
    if not data:
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None


def decode_image(data: bytes) -> np.ndarray:
    bgr = _imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SampleError("image could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_png16(data: bytes) -> np.ndarray:
    q = _imdecode(data, cv2.IMREAD_UNCHANGED)
    if q is None or q.ndim != 2 or q.dtype not in (np.uint16, np.uint8):
        raise SampleError("label PNG is not a single-channel 8/16-bit image")
    return q


def decode_label(data: bytes, ext: str) -> tuple[np.ndarray, float | None]:
    """Raw label values and the format's default invalid value."""
    ext = ext.lower().rsplit(".", 1)[-1]
    if ext == "png":
        return decode_png16(data).astype(np.float64), 0.0
    if ext == "npy":
        try:  # an empty file is an EOFError; strings or records fail the float conversion
            arr = np.squeeze(np.load(io.BytesIO(data), allow_pickle=False))
            if arr.ndim != 2:
                raise SampleError(f"npy label must be 2-D, got shape {arr.shape}")
            return arr.astype(np.float64), None
        except (ValueError, TypeError, EOFError, OSError) as e:
            if isinstance(e, SampleError):
                raise
            raise SampleError(f"bad npy label: {type(e).__name__}: {e}") from None
    if ext == "pfm":
        return read_pfm(data).astype(np.float64), None
    raise SampleError(f"unsupported label format {ext!r}")


def to_disparity(raw: np.ndarray, spec: DatasetSpec, default_invalid: float | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Raw label -> (disparity float32 with 0 where invalid, valid bool)."""
    invalid = spec.invalid if spec.invalid is not None else default_invalid
    valid = np.isfinite(raw)
    if invalid is not None:
        valid &= raw != invalid
    value = np.where(valid, raw * spec.scale + spec.offset, 0.0)
    if spec.label == "depth":
        valid &= value > 0
        disp = np.divide(1.0, value, out=np.zeros_like(value), where=valid)
    else:
        disp = value
    return disp.astype(np.float32), valid


def _check_shapes(key: str, image: np.ndarray, label: np.ndarray) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise SampleError(f"{key}: image {image.shape[:2]} and label {label.shape[:2]} differ")


# ----------------------------------------------------------------------------- sources

@dataclass
class Source:
    """Base adapter. Subclasses set ``kind`` and implement units / records / decode."""

    spec: DatasetSpec
    kind: ClassVar[str] = ""
    _units: list[str] = field(default_factory=list, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def units(self) -> list[str]:
        if not self._units:
            self._units = self.list_units()
            if not self._units:
                raise TrainerError(f"dataset {self.name} ({self.kind}): nothing found at "
                                   f"{self.spec.path}")
        return self._units

    def list_units(self) -> list[str]:
        raise NotImplementedError

    def records(self, unit: str) -> Iterator[tuple[str, Any]]:
        raise NotImplementedError

    def decode(self, key: str, record: Any) -> Sample:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        """Every sample in order (evaluation); undecodable ones are logged and skipped."""
        for unit in self.units():
            for key, rec in self.records(unit):
                try:
                    yield self.decode(key, rec)
                except SampleError as e:
                    log.warning("%s: skipping %s: %s", self.name, key, e)


def iter_tar(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """WebDataset grouping: members ``KEY.EXT`` with consecutive equal keys form one record.
    The key is the member path up to the first dot of its file name."""
    key, rec = None, {}
    with tarfile.open(path, mode="r|") as tar:
        for m in tar:
            if not m.isfile():
                continue
            d, _, base = m.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not dot or not stem:
                continue
            k = f"{d}/{stem}" if d else stem
            if k != key:
                if rec:
                    yield key, rec
                key, rec = k, {}
            f = tar.extractfile(m)
            rec[ext.lower()] = f.read() if f is not None else b""
    if rec:
        yield key, rec


def _tar_units(path: str) -> list[str]:
    p = Path(path)
    if p.is_dir():
        return sorted(str(x) for x in p.rglob("*.tar"))
    if p.is_file():
        return [str(p)]
    return sorted(glob.glob(path))


class CorpusSource(Source):
    """A filmmine corpus (``filmmine-corpus/1``): the mined WebDataset shards."""

    kind = "corpus"

    def list_units(self) -> list[str]:
        shards = Path(self.spec.path) / "shards"
        return _tar_units(str(shards if shards.is_dir() else self.spec.path))

    def records(self, unit: str) -> Iterator[tuple[str, Any]]:
        return iter_tar(unit)

    def decode(self, key: str, record: Any) -> Sample:
        try:
            meta = json.loads(record["json"])
            scale, offset = float(meta["disp_scale"]), float(meta["disp_offset"])
            image = decode_image(record["jpg"])
            q = decode_png16(record["disp.png"])
        except (KeyError, TypeError, ValueError) as e:  # SampleError is a ValueError
            raise SampleError(f"bad corpus sample: {type(e).__name__}: {e}") from None
        _check_shapes(key, image, q)
        valid = q != 0
        disp = np.where(valid, q.astype(np.float32) * np.float32(scale) + np.float32(offset), 0)
        return Sample(key, image, disp.astype(np.float32), valid)


_LABEL_FIRST = ("disp", "depth")
_LABEL_LAST = ("conf", "mask", "valid", "seg")


def _label_member(record: dict, image_key: str | None) -> str | None:
    """The label member of a record: label-typed (png/npy/pfm), not the image; ``disp*`` and
    ``depth*`` before others, confidence/mask/validity maps last (a filmmine corpus holds
    ``conf.png`` beside ``disp.png``, and tar order puts it first)."""
    names = [k for k in record if k != image_key and not k.startswith("_")
             and ("." + k.rsplit(".", 1)[-1]) in LABEL_EXTS]

    def rank(k: str) -> int:
        stem = k.rsplit(".", 1)[0].lower()
        if any(h in stem for h in _LABEL_LAST):
            return 2
        return 0 if any(h in stem for h in _LABEL_FIRST) else 1

    return min(names, key=rank) if names else None


class WdsSource(Source):
    """Another WebDataset corpus: an image member and a label member per key (without
    ``label_key``: the first label-typed member, one named like a disparity or depth first,
    one named like a confidence, mask or validity map last)."""

    kind = "wds"

    def list_units(self) -> list[str]:
        return _tar_units(self.spec.path)

    def records(self, unit: str) -> Iterator[tuple[str, Any]]:
        return iter_tar(unit)

    def decode(self, key: str, record: Any) -> Sample:
        ik = self.spec.image_key or next(
            (k for k in record if "." + k in IMAGE_EXTS and k != self.spec.label_key), None)
        lk = self.spec.label_key or _label_member(record, ik)
        if ik not in record or lk not in record:
            raise SampleError(f"no image/label members among {sorted(record)}")
        image = decode_image(record[ik])
        raw, default_invalid = decode_label(record[lk], lk)
        _check_shapes(key, image, raw)
        disp, valid = to_disparity(raw, self.spec, default_invalid)
        return Sample(key, image, disp, valid)


class FolderSource(Source):
    """``DIR/images/STEM.(jpg|png)`` beside ``DIR/labels/STEM.(png|npy|pfm|json)``."""

    kind = "folder"
    label_exts: ClassVar[tuple[str, ...]] = (*LABEL_EXTS, ".json")

    def _dirs(self) -> tuple[Path, Path]:
        root = Path(self.spec.path)
        return root / self.spec.images, root / self.spec.labels

    def list_units(self) -> list[str]:
        idir, ldir = self._dirs()
        if not idir.is_dir() or not ldir.is_dir():
            raise TrainerError(f"folder dataset {self.spec.path}: expected sub-directories "
                               f"{self.spec.images}/ and {self.spec.labels}/")
        labels: dict[str, Path] = {}
        for p in sorted(ldir.iterdir()):
            if p.suffix.lower() in self.label_exts:
                labels.setdefault(p.name.split(".")[0], p)
        units, unmatched = [], 0
        for p in sorted(idir.iterdir()):
            if p.suffix.lower() not in IMAGE_EXTS:
                continue
            stem = p.name.split(".")[0]
            if stem in labels:
                units.append(f"{p}\n{labels[stem]}")
            else:
                unmatched += 1
        if unmatched:
            log.warning("%s: %d image(s) without a label skipped", self.name, unmatched)
        return units

    def records(self, unit: str) -> Iterator[tuple[str, Any]]:
        image, label = unit.split("\n")
        yield Path(image).name.split(".")[0], (image, label)

    def decode(self, key: str, record: Any) -> Sample:
        image_path, label_path = record
        try:
            image = decode_image(Path(image_path).read_bytes())
            raw, default_invalid = decode_label(Path(label_path).read_bytes(), label_path)
        except OSError as e:
            raise SampleError(f"{type(e).__name__}: {e}") from None
        _check_shapes(key, image, raw)
        disp, valid = to_disparity(raw, self.spec, default_invalid)
        return Sample(key, image, disp, valid)


class MiddleburySource(Source):
    """Middlebury-format scenes: ``im0.png`` and ``disp0GT.pfm`` (+inf = no label)."""

    kind = "middlebury"

    def list_units(self) -> list[str]:
        root = Path(self.spec.path)
        return sorted(str(p.parent) for p in root.rglob("disp0GT.pfm")
                      if (p.parent / "im0.png").is_file())

    def records(self, unit: str) -> Iterator[tuple[str, Any]]:
        yield Path(unit).name, unit

    def decode(self, key: str, record: Any) -> Sample:
        scene = Path(record)
        try:
            image = decode_image((scene / "im0.png").read_bytes())
            raw = read_pfm((scene / "disp0GT.pfm").read_bytes()).astype(np.float64)
        except OSError as e:
            raise SampleError(f"{type(e).__name__}: {e}") from None
        _check_shapes(key, image, raw)
        disp, valid = to_disparity(raw, self.spec, None)
        return Sample(key, image, disp, valid)


SOURCES: dict[str, type[Source]] = {
    c.kind: c for c in (CorpusSource, WdsSource, FolderSource, MiddleburySource)
}


def build_source(spec: DatasetSpec) -> Source:
    return SOURCES[spec.type](spec)


def detect_type(path: str) -> str:
    """Guess a dataset's type from its layout (evaluation convenience)."""
    p = Path(path)
    if (p / "shards").is_dir():
        return "corpus"
    if next(p.rglob("disp0GT.pfm"), None) is not None:
        return "middlebury"
    if (p / "images").is_dir():
        return "folder"
    if _tar_units(path):
        return "wds"
    raise TrainerError(f"cannot tell the dataset type of {path}: expected a corpus, Middlebury "
                       "scenes (im0.png + disp0GT.pfm), images/ + labels/, or tar shards")
