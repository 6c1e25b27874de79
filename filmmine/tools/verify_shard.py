"""One shard of a corpus checked: hashed, read through ``corpus.reader`` and decoded.

Each shard is read once, as a stream: the bytes go through sha256 while ``tarfile`` parses them
(``r|`` mode), so a shard is never held in memory and never read twice. Per sample: safe member
names, the three members, JSON that parses and names the right key and film, a JPEG that
decodes, a uint16 disparity PNG whose valid fraction is the JSON's ``valid_fraction``, both of
the JSON's ``size``; the optional ``KEY.conf.png`` (in every sample when the manifest's recipe
has ``output.confidence = true``, in none when false): a uint8 PNG of the disparity's size, 0
exactly where the disparity is invalid.

A member of a name verify does not know (``KEY.extra.bin``) is no error: CORPUS.md tells readers
to ignore members they do not know, so that the format can grow. Its name must still be safe
and belong to a sample; it is counted, reported as a note, and neither read nor decoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..corpus.encode import imdecode
from ..corpus.reader import KNOWN_MEMBERS, READ_BLOCK, ShardError, iter_samples
from ..corpus.shards import MEMBERS

# valid_fraction is stored rounded to 6 decimals: 1e-5 still catches a few changed pixels
VALID_FRACTION_TOL = 1e-5


@dataclass
class ShardCheck:
    """What one shard turned out to hold (filled in by :func:`check_shard`)."""

    name: str
    exists: bool = True
    bytes: int = 0
    sha256: str | None = None
    keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # messages about this shard
    kinds: set[str] = field(default_factory=set)
    unknown: Counter[str] = field(default_factory=Counter)  # members verify does not know, by ext

    def add(self, kind: str, message: str) -> None:
        self.kinds.add(kind)
        self.problems.append(message)


class _HashingReader:
    """A file wrapper that hashes and counts every byte read through it."""

    def __init__(self, f) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        b = self.f.read(size)
        self.h.update(b)
        self.n += len(b)
        return b

    def drain(self) -> None:
        while self.read(READ_BLOCK):
            pass


class _DecoderMessages:
    """Captures what libjpeg / libpng write to fd 2 while decoding (a corrupt-data warning).

    So a damaged image is reported against its sample instead of as stray lines on stderr.
    Redirects this process's fd 2 for the duration of one decode call.
    """

    text = ""

    def __enter__(self) -> _DecoderMessages:
        sys.stderr.flush()
        self._tmp = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._tmp.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read().decode(errors="replace").strip()
        self._tmp.close()


def check_sample(key: str, members: dict[str, bytes], film: str | None,
                 decode: bool = True, confidence: bool | None = None) -> list[str]:
    """Problems of one sample (empty when it is sound). ``confidence``: whether the corpus's
    recipe stores ``KEY.conf.png`` (None: unknown, the member is optional)."""
    missing = [e for e in MEMBERS if e not in members]
    if confidence and "conf.png" not in members:
        missing.append("conf.png")
    if missing:
        dotted = sorted(e for e in members if e not in KNOWN_MEMBERS
                        and any(e.endswith("." + m) for m in KNOWN_MEMBERS))
        hint = (f" (members {_some_exts(dotted)}: a dot in the key? WebDataset splits member "
                "names at the first dot)") if dotted else ""
        return [f"sample {key}: missing member(s) {', '.join('.' + e for e in missing)}{hint}"]
    try:
        meta = json.loads(members["json"])
    except ValueError as e:
        return [f"sample {key}: JSON does not parse ({e})"]
    if not isinstance(meta, dict):
        return [f"sample {key}: JSON is not an object"]
    out = []
    if confidence is False and "conf.png" in members:
        out.append(f"sample {key}: has a .conf.png member, but the recipe says "
                   "output.confidence = false")
    if meta.get("key") != key:
        out.append(f"sample {key}: JSON key is {meta.get('key')!r}")
    if film is not None and meta.get("film") != film:
        out.append(f"sample {key}: JSON film is {meta.get('film')!r}, shard is {film!r}")
    if not decode:
        return out
    size = meta.get("size")
    want = (size[1], size[0]) if isinstance(size, list) and len(size) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size) else None
    if want is None:  # the images cannot be checked against it
        out.append(f"sample {key}: JSON size is {size!r}, not [w, h]")
    with _DecoderMessages() as jpeg_msgs:
        img = imdecode(members["jpg"], cv2.IMREAD_COLOR)
    with _DecoderMessages() as png_msgs:
        q = imdecode(members["disp.png"], cv2.IMREAD_UNCHANGED)
    decoded_members = [("JPEG", jpeg_msgs, img), ("disparity PNG", png_msgs, q)]
    conf = None
    if "conf.png" in members:
        with _DecoderMessages() as conf_msgs:
            conf = imdecode(members["conf.png"], cv2.IMREAD_UNCHANGED)
        decoded_members.append(("confidence PNG", conf_msgs, conf))
    for what, msgs, decoded in decoded_members:
        said = f": {msgs.text.splitlines()[0]}" if msgs.text else ""
        if decoded is None:
            out.append(f"sample {key}: {what} does not decode{said}")
        elif said:
            out.append(f"sample {key}: {what} decoder{said}")
    if img is not None and want is not None and img.shape[:2] != want:
        out.append(f"sample {key}: JPEG is {img.shape[1]}x{img.shape[0]}, JSON size {size}")
    if q is None:
        return out
    if q.dtype != np.uint16 or q.ndim != 2:
        out.append(f"sample {key}: disparity PNG is {q.dtype} with {q.ndim} dims, not uint16 "
                   "single-channel")
        return out
    if want is not None and q.shape != want:
        out.append(f"sample {key}: disparity is {q.shape[1]}x{q.shape[0]}, JSON size {size}")
    vf = float(np.count_nonzero(q)) / q.size
    stored = meta.get("valid_fraction")
    if not isinstance(stored, (int, float)) or not abs(vf - stored) <= VALID_FRACTION_TOL:
        out.append(f"sample {key}: disparity PNG valid fraction {vf:.6f}, JSON says {stored}")
    if conf is not None:
        out.extend(_confidence_problems(key, conf, q))
    return out


def _some_exts(exts: list[str], k: int = 3) -> str:
    more = f" (+{len(exts) - k})" if len(exts) > k else ""
    return ", ".join("." + e for e in exts[:k]) + more


def _confidence_problems(key: str, conf: np.ndarray, q: np.ndarray) -> list[str]:
    """``KEY.conf.png`` (decoded) against the disparity's values ``q`` (0 = invalid)."""
    if conf.dtype != np.uint8 or conf.ndim != 2:
        return [f"sample {key}: confidence PNG is {conf.dtype} with {conf.ndim} dims, not uint8 "
                "single-channel"]
    if conf.shape != q.shape:
        return [f"sample {key}: confidence map is {conf.shape[1]}x{conf.shape[0]}, disparity "
                f"{q.shape[1]}x{q.shape[0]}"]
    out = []
    invalid = q == 0
    n_bad = int(np.count_nonzero(conf[invalid]))
    if n_bad:
        out.append(f"sample {key}: confidence is nonzero at {n_bad} pixel(s) where the "
                   "disparity is invalid")
    n_zero = int(np.count_nonzero(conf[~invalid] == 0))
    if n_zero:
        out.append(f"sample {key}: confidence is 0 at {n_zero} pixel(s) where the disparity "
                   "is valid")
    return out


def check_shard(path: str, expected_sha256: str | None, expected_bytes: int | None,
                film: str | None, decode: bool = True,
                confidence: bool | None = None) -> ShardCheck:
    """Hash, stream-read and (optionally) decode one shard. Runs in a worker process.
    ``confidence``: see :func:`check_sample`."""
    p = Path(path)
    check = ShardCheck(p.name)
    try:
        f = p.open("rb")
    except FileNotFoundError:
        check.exists = False
        check.add("missing", "shard file not found")
        return check
    except OSError as e:
        check.add("corrupt", f"unreadable: {e.strerror}")
        return check
    with f:
        reader = _HashingReader(f)
        try:
            # members of names verify does not know are counted, not read (CORPUS.md)
            for s in iter_samples(reader, members=KNOWN_MEMBERS,
                                  on_problem=lambda msg: check.add("corrupt", msg)):
                check.keys.append(s.key)
                check.unknown.update(s.unread)
                members = {**dict.fromkeys(s.unread, b""), **s.members}
                for msg in check_sample(s.key, members, film, decode, confidence):
                    check.add("corrupt", msg)
        except ShardError as e:
            check.add("corrupt", str(e))
        except OSError as e:
            after = f" after sample {check.keys[-1]}" if check.keys else ""
            check.add("corrupt", f"tar unreadable{after}: {e}")
        reader.drain()
    check.bytes, check.sha256 = reader.n, reader.h.hexdigest()
    if expected_bytes is not None and check.bytes != expected_bytes:
        what = "truncated" if check.bytes < expected_bytes else "size differs"
        check.problems.insert(0, f"{what}: {check.bytes} bytes, manifest says {expected_bytes}")
        check.kinds.add("corrupt")
    if expected_sha256 is not None and check.sha256 != expected_sha256:
        check.problems.insert(0, f"sha256 {check.sha256[:16]}... differs from the manifest's "
                                 f"{expected_sha256[:16]}...")
        check.kinds.add("corrupt")
    return check
