"""Dataset adapters: one small class per on-disk format, registered by name in ``SOURCES``.

A source lists *units* (shards or files: what is split across DDP ranks and loader workers),
reads a unit into raw *records* (bytes or paths: cheap, so a resumed stream can skip records
without decoding them) and decodes a record into a ``Sample``. Labels are converted to
disparity (inverse depth) here; their scale and shift stay unknown.

Types (``DatasetSpec.type``; ``detect_type`` tries them in this order):

- ``corpus``: a filmmine corpus, ``shards/*.tar`` with ``KEY.jpg``, ``KEY.disp.png`` and
  ``KEY.json``; disparity ``value * disp_scale + disp_offset`` px, value 0 = invalid. Other
  members (the optional ``KEY.conf.png`` confidence map) are ignored.
- ``kitti``: KITTI stereo, ``image_2/NAME.png`` beside ``disp_occ_0/NAME.png`` (2012:
  ``colored_0/``, ``disp_occ/``), in the folder or its ``training/``; uint16, value / 256 px,
  0 = invalid.
- ``middlebury``: scene folders (the folder itself or below) with ``im0.png`` and
  ``disp0GT.pfm`` (MiddEval3, Middlebury 2014, ETH3D with its ground truth merged in);
  disparity px, +inf = invalid.
- ``eth3d``: ETH3D two-view scenes ``SCENE/im0.png`` with ``disp0GT.pfm`` beside them or in
  the separately downloaded ground-truth tree (``two_view_training_gt/SCENE/``).
- ``middlebury0103``: Middlebury 2001 / 2003 scenes, ``imN.png`` beside ``dispN.png|pgm``;
  8-bit, value x a per-scene scale the files do not store (``SCALES_0103``), 0 = invalid.
- ``folder``: ``DIR/images/STEM.(jpg|png)`` beside ``DIR/labels/STEM.(png|npy|pfm)``; label
  kind and scale per dataset (``.json`` ordinal labels are read by evaluation only).
- ``nyu``: NYU-style depth folders, an RGB image beside a depth image named like it
  (``rgb_00045.jpg`` / ``sync_depth_00045.png``, ``00045_colors.png`` / ``00045_depth.png``,
  ``rgb/X.png`` / ``depth/X.png``); depth, 16-bit PNG in mm, .npy / .pfm in metres, 0 = invalid.
- ``wds``: other WebDataset tars (a directory, a file or a glob) with an image member and a
  label member per key; label png16 / npy / pfm, kind and scale per dataset.

``DatasetSpec`` fields left unset (``None``) take the type's own value (``Source.defaults``):
KITTI's 1/256 px, NYU's depth label, millimetres and 10 m cap.
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
    # None below: the type's own value (Source.defaults), e.g. kitti scale 1/256, nyu depth
    label: str | None = None  # "disparity" or "depth" (converted to 1 / depth)
    scale: float | None = None  # metres (or px) per stored unit: value * scale + offset
    offset: float = 0.0
    invalid: float | None = None  # stored value meaning "no label" (png16 default: 0)
    cap: float | None = None  # depth cap in metres for evaluation (0 = none)
    crop: int = 0  # crop size for this dataset (balance = "per_batch" only; 0 = data.crop)
    images: str | None = None  # folder, kitti: sub-directories of images and labels
    labels: str | None = None
    image_key: str = ""  # wds: member extensions (default: the first image / label found)
    label_key: str = ""

    def __post_init__(self) -> None:
        if self.type not in SOURCES:
            raise TrainerError(f"unknown dataset type {self.type!r}; choose from "
                               f"{', '.join(SOURCES)}")
        for key, value in SOURCES[self.type].defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
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
                               f"{', '.join(SOURCES)}, or give a corpus directory")
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
    if "None" in typ and value.lower() in ("", "none"):
        return None
    try:
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


def pfm_bytes(arr: np.ndarray) -> bytes:
    """[H, W] float32 -> a little-endian greyscale PFM (bottom row first)."""
    a = np.asarray(arr, dtype="<f4")
    return b"Pf\n%d %d\n-1.0\n" % (a.shape[1], a.shape[0]) + np.ascontiguousarray(a[::-1]).tobytes()


def write_pfm(path: str | Path, arr: np.ndarray) -> None:
    with atomic_open(path) as f:
        f.write(pfm_bytes(arr))


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


def to_disparity(raw: np.ndarray, spec: DatasetSpec, default_invalid: float | None,
                 default_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Raw label -> (disparity float32 with 0 where invalid, valid bool). ``default_scale``:
    the record's own unit (a per-scene or per-format scale), used when the spec sets none."""
    invalid = spec.invalid if spec.invalid is not None else default_invalid
    scale = spec.scale if spec.scale is not None else default_scale
    valid = np.isfinite(raw)
    if invalid is not None:
        valid &= raw != invalid
    value = np.where(valid, raw * scale + spec.offset, 0.0)
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
    help: ClassVar[str] = ""  # one line for the command line's help
    # DatasetSpec fields the spec leaves None take these (scale None: per record)
    defaults: ClassVar[dict[str, Any]] = {"label": "disparity", "scale": 1.0, "cap": 0.0,
                                          "images": "images", "labels": "labels"}
    _units: list[str] = field(default_factory=list, init=False, repr=False)

    @classmethod
    def detect(cls, path: Path) -> bool:
        """Whether ``path`` looks like this type's layout (``detect_type``)."""
        return False

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
    help = "a filmmine corpus (DIR/shards/*.tar)"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "shards").is_dir()

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
    help = "other WebDataset tars (image + png16/npy/pfm label per key)"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return bool(_tar_units(str(path)))

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
    help = "DIR/images/STEM.jpg|png beside DIR/labels/STEM.png|npy|pfm|json"
    label_exts: ClassVar[tuple[str, ...]] = (*LABEL_EXTS, ".json")

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "images").is_dir()

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


class KittiSource(FolderSource):
    """KITTI stereo as downloaded: ``image_2/NAME.png`` beside ``disp_occ_0/NAME.png`` (2015;
    2012: ``colored_0/`` and ``disp_occ/``), in the folder or its ``training/``; uint16 PNG,
    disparity = value / 256 px, 0 = no label. Only the annotated frames (``*_10``) are read;
    ``labels=disp_noc_0`` takes the non-occluded ground truth instead."""

    kind = "kitti"
    help = "KITTI stereo: image_2/ + disp_occ_0/ (uint16 / 256 px, 0 = none)"
    # images / labels None: the first of LAYOUTS found
    defaults: ClassVar[dict[str, Any]] = {**Source.defaults, "scale": 1 / 256, "images": None,
                                          "labels": None}
    LAYOUTS: ClassVar[tuple[tuple[str, str], ...]] = (("image_2", "disp_occ_0"),
                                                      ("colored_0", "disp_occ"))

    @classmethod
    def _find(cls, path: Path, images: str | None = None, labels: str | None = None
              ) -> tuple[Path, Path] | None:
        for root in (path, path / "training"):
            for i, lab in cls.LAYOUTS:
                idir, ldir = root / (images or i), root / (labels or lab)
                if idir.is_dir() and ldir.is_dir():
                    return idir, ldir
        return None

    @classmethod
    def detect(cls, path: Path) -> bool:
        return cls._find(path) is not None

    def _dirs(self) -> tuple[Path, Path]:
        found = self._find(Path(self.spec.path), self.spec.images, self.spec.labels)
        if found is None:
            want = " or ".join(f"{i}/ + {lab}/" for i, lab in self.LAYOUTS)
            raise TrainerError(f"kitti dataset {self.spec.path}: expected {want} there or in "
                               "training/")
        return found

    def list_units(self) -> list[str]:
        # label-driven: image_2 also holds the unannotated *_11 frames
        idir, ldir = self._dirs()
        units, missing = [], 0
        for lab in sorted(ldir.glob("*.png")):
            if (idir / lab.name).is_file():
                units.append(f"{idir / lab.name}\n{lab}")
            else:
                missing += 1
        if missing:
            log.warning("%s: %d label(s) without an image in %s skipped", self.name, missing,
                        idir)
        return units


class MiddleburySource(Source):
    """Middlebury-format scenes: ``im0.png`` and ``disp0GT.pfm`` (+inf = no label)."""

    kind = "middlebury"
    help = "scene folders with im0.png + disp0GT.pfm (MiddEval3, 2014; px, inf = none)"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return any((p.parent / "im0.png").is_file() for p in path.rglob("disp0GT.pfm"))

    def list_units(self) -> list[str]:
        root = Path(self.spec.path)
        return sorted(str(p.parent) for p in root.rglob("disp0GT.pfm")
                      if (p.parent / "im0.png").is_file())

    def records(self, unit: str) -> Iterator[tuple[str, Any]]:
        yield Path(unit).name, unit

    def decode(self, key: str, record: Any) -> Sample:
        scene = Path(record)
        return _pfm_sample(key, scene / "im0.png", scene / "disp0GT.pfm", self.spec)


def _pfm_sample(key: str, image_path: Path, label_path: Path, spec: DatasetSpec) -> Sample:
    try:
        image = decode_image(image_path.read_bytes())
        raw = read_pfm(label_path.read_bytes()).astype(np.float64)
    except OSError as e:
        raise SampleError(f"{type(e).__name__}: {e}") from None
    _check_shapes(key, image, raw)
    disp, valid = to_disparity(raw, spec, None)
    return Sample(key, image, disp, valid)


class Eth3dSource(Source):
    """ETH3D two-view scenes: ``SCENE/im0.png`` with ``disp0GT.pfm`` (+inf = no label) beside it
    or in the ground-truth archive's own tree: ``X_gt/SCENE/`` for ``X/SCENE/`` (as
    ``two_view_training_gt/`` beside ``two_view_training/``), the dataset being ``X`` or the
    folder above it."""

    kind = "eth3d"
    help = "ETH3D two-view: SCENE/im0.png, disp0GT.pfm beside it or in two_view_training_gt/"

    @staticmethod
    def _label(image: Path, root: Path) -> Path | None:
        scene = image.parent
        for top in (scene, *scene.parents):
            gt = top.parent / f"{top.name}_gt" / scene.relative_to(top) / "disp0GT.pfm"
            if top == scene:
                gt = scene / "disp0GT.pfm"
            if gt.is_file():
                return gt
            if top == root.parent:
                break
        return None

    @staticmethod
    def _images(root: Path) -> list[Path]:
        return sorted(p for p in root.rglob("im0.png")
                      if not any(d.endswith("_gt") for d in p.relative_to(root).parts[:-1]))

    @classmethod
    def detect(cls, path: Path) -> bool:
        # scenes whose ground truth sits beside them are the middlebury type's (tried first)
        return any(cls._label(p, path) is not None for p in cls._images(path))

    def list_units(self) -> list[str]:
        root = Path(self.spec.path)
        units, missing = [], []
        for image in self._images(root):
            gt = self._label(image, root)
            if gt is None:
                missing.append(image.parent.name)
            else:
                units.append(f"{image}\n{gt}")
        if missing and not units:
            raise TrainerError(f"eth3d dataset {root}: {len(missing)} scene(s) with im0.png but "
                               "no disp0GT.pfm beside them or in a *_gt tree (ETH3D's "
                               "two_view_training_gt archive)")
        if missing:
            log.warning("%s: %d scene(s) without ground truth skipped: %s", self.name,
                        len(missing), ", ".join(missing[:5]))
        return units

    def records(self, unit: str) -> Iterator[tuple[str, Any]]:
        image, label = unit.split("\n")
        yield Path(image).parent.name, (image, label)

    def decode(self, key: str, record: Any) -> Sample:
        return _pfm_sample(key, Path(record[0]), Path(record[1]), self.spec)


# px per stored unit of the Middlebury 2001 / 2003 ground truth, by scene (the files do not
# store it); teddy and cones: 1 at full size (1800 px wide), 1/4 at the usual quarter size
SCALES_0103: dict[str, float] = {
    "tsukuba": 1 / 16, "venus": 1 / 8, "sawtooth": 1 / 8, "bull": 1 / 8, "poster": 1 / 8,
    "barn1": 1 / 8, "barn2": 1 / 8, "map": 1 / 8,
}
FULL_WIDTH_2003 = {"teddy": 1800, "cones": 1800}
_PAIRS_0103 = re.compile(r"disp(\d)\.(png|pgm)$|truedisp\.row3\.col3\.pgm$")


class Middlebury0103Source(Source):
    """Middlebury 2001 / 2003 scenes: ``imN.png|ppm`` beside ``dispN.png|pgm`` (the lowest N
    with both; Tsukuba as distributed: ``scene1.row3.col3.ppm``, ``truedisp.row3.col3.pgm``);
    8-bit disparity, value x the scene's scale (``SCALES_0103``, by the folder's name), 0 = no
    label. A scene not in the table needs ``scale=`` (px per stored unit)."""

    kind = "middlebury0103"
    help = ("Middlebury 2001/2003: SCENE/imN.png + dispN.png|pgm, 8-bit with the scene's "
            "scale (tsukuba 1/16, venus 1/8, teddy 1/4, ...)")
    defaults: ClassVar[dict[str, Any]] = {**Source.defaults, "scale": None}

    @staticmethod
    def _pair(scene: Path) -> tuple[Path, Path] | None:
        for label in sorted(scene.iterdir()):
            m = _PAIRS_0103.fullmatch(label.name)
            if not m:
                continue
            names = [f"im{m.group(1)}.png", f"im{m.group(1)}.ppm"] if m.group(1) else \
                ["scene1.row3.col3.ppm", "scene1.row3.col3.png"]
            for name in names:
                if (scene / name).is_file():
                    return scene / name, label
        return None

    @classmethod
    def _scenes(cls, root: Path) -> list[tuple[Path, Path]]:
        dirs = sorted({p.parent for p in root.rglob("*disp*") if _PAIRS_0103.fullmatch(p.name)})
        return [pair for d in dirs if (pair := cls._pair(d)) is not None]

    @classmethod
    def detect(cls, path: Path) -> bool:
        return bool(cls._scenes(path))

    @staticmethod
    def scene_scale(scene: str, width: int) -> float | None:
        """px per stored unit of a known scene at this image width, else None."""
        name = scene.lower()
        if name in FULL_WIDTH_2003:
            return width / FULL_WIDTH_2003[name]
        return SCALES_0103.get(name)

    def list_units(self) -> list[str]:
        pairs = self._scenes(Path(self.spec.path))
        unknown = [i.parent.name for i, _ in pairs
                   if i.parent.name.lower() not in (*SCALES_0103, *FULL_WIDTH_2003)]
        if unknown and self.spec.scale is None:
            raise TrainerError(f"middlebury0103 dataset {self.spec.path}: no known disparity "
                               f"scale for scene(s) {', '.join(unknown)} (known: "
                               f"{', '.join([*SCALES_0103, *FULL_WIDTH_2003])}); give "
                               "scale=PX_PER_UNIT")
        return [f"{i}\n{lab}" for i, lab in pairs]

    def records(self, unit: str) -> Iterator[tuple[str, Any]]:
        image, label = unit.split("\n")
        yield Path(image).parent.name, (image, label)

    def decode(self, key: str, record: Any) -> Sample:
        image_path, label_path = (Path(p) for p in record)
        try:
            image = decode_image(image_path.read_bytes())
            raw = decode_png16(label_path.read_bytes()).astype(np.float64)
        except OSError as e:
            raise SampleError(f"{type(e).__name__}: {e}") from None
        _check_shapes(key, image, raw)
        scale = self.scene_scale(key, image.shape[1])
        disp, valid = to_disparity(raw, self.spec, 0.0, 1.0 if scale is None else scale)
        return Sample(key, image, disp, valid)


_COLOUR_WORD = re.compile(r"rgb|colou?rs?|image|img", re.IGNORECASE)
_COLOUR_DIRS = ("rgb", "color", "colour", "image", "images", "img")


def _depth_label(image: Path) -> Path | None:
    """The depth file named like an RGB image: the colour word swapped for ``depth`` or
    ``sync_depth``, ``STEM_depth``, or ``../depth/STEM`` for an image in ``rgb/``."""
    stem = image.name.split(".")[0]
    cands = []
    m = _COLOUR_WORD.search(stem)
    if m:
        cands += [stem[:m.start()] + word + stem[m.end():] for word in ("depth", "sync_depth")]
    cands.append(f"{stem}_depth")
    paths = [image.with_name(c + ext) for c in cands for ext in LABEL_EXTS]
    if image.parent.name.lower() in _COLOUR_DIRS:
        paths += [image.parent.parent / "depth" / (stem + ext) for ext in LABEL_EXTS]
    return next((p for p in paths if p.is_file()), None)


class NyuSource(Source):
    """NYU-style depth folders (the folder itself or below): an RGB image beside a depth image
    named like it, ``rgb_00045.jpg`` / ``sync_depth_00045.png`` (BTS's split),
    ``00045_colors.png`` / ``00045_depth.png``, ``X.png`` / ``X_depth.npy``, or ``rgb/X.png`` /
    ``depth/X.png``. Depth label; a 16-bit PNG holds millimetres, .npy / .pfm metres (unless
    ``scale=``); 0 = no label; evaluation caps depth at 10 m (the paper's NYU protocol)."""

    kind = "nyu"
    help = ("NYU-style depth: rgb_N.jpg + (sync_)depth_N.png, N_colors + N_depth, rgb/ + "
            "depth/ (PNG mm, npy/pfm m, cap 10 m)")
    defaults: ClassVar[dict[str, Any]] = {**Source.defaults, "label": "depth", "scale": None,
                                          "cap": 10.0}
    PNG_SCALE = 0.001  # a 16-bit depth PNG holds millimetres (NYU, BTS, Marigold)
    _DETECT_FILES = 20000  # detection stops looking after this many files

    @staticmethod
    def _pairs(root: Path, limit: int = 0) -> Iterator[tuple[Path, Path]]:
        for n, p in enumerate(sorted(root.rglob("*"))):
            if limit and n >= limit:
                return
            # a depth PNG is not an RGB image of its own
            if p.suffix.lower() in IMAGE_EXTS and "depth" not in p.name.lower() \
                    and p.parent.name.lower() != "depth":
                label = _depth_label(p)
                if label is not None:
                    yield p, label

    @classmethod
    def detect(cls, path: Path) -> bool:
        return next(cls._pairs(path, cls._DETECT_FILES), None) is not None

    def list_units(self) -> list[str]:
        return [f"{i}\n{lab}" for i, lab in self._pairs(Path(self.spec.path))]

    def records(self, unit: str) -> Iterator[tuple[str, Any]]:
        image, label = unit.split("\n")
        key = str(Path(image).relative_to(self.spec.path).with_suffix(""))
        yield key, (image, label)

    def decode(self, key: str, record: Any) -> Sample:
        image_path, label_path = record
        try:
            image = decode_image(Path(image_path).read_bytes())
            raw, default_invalid = decode_label(Path(label_path).read_bytes(), label_path)
        except OSError as e:
            raise SampleError(f"{type(e).__name__}: {e}") from None
        _check_shapes(key, image, raw)
        png = label_path.lower().endswith(".png")
        disp, valid = to_disparity(raw, self.spec, default_invalid,
                                   self.PNG_SCALE if png else 1.0)
        return Sample(key, image, disp, valid)


# the order is detect_type's: specific layouts before the generic ones they could look like
SOURCES: dict[str, type[Source]] = {
    c.kind: c for c in (CorpusSource, KittiSource, MiddleburySource, Eth3dSource,
                        Middlebury0103Source, FolderSource, NyuSource, WdsSource)
}


def build_source(spec: DatasetSpec) -> Source:
    return SOURCES[spec.type](spec)


def detect_type(path: str) -> str:
    """Guess a dataset's type from its layout (evaluation convenience): the first type of
    ``SOURCES`` whose ``detect`` accepts it."""
    p = Path(path)
    for kind, cls in SOURCES.items():
        if cls.detect(p):
            return kind
    if not p.exists():
        raise TrainerError(f"dataset {path} not found")
    raise TrainerError(f"cannot tell the dataset type of {path}: none of the layouts of "
                       f"{', '.join(SOURCES)} found there (--help lists them)")
