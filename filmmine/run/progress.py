"""The extract run's progress: the share of the films' bytes mined so far.

Counted in bytes of film files, whose total is known before any film is probed (a stat each),
so the share never falls as films are probed (their frames are known only then). A film's
bytes are spread evenly over the frames it mines once it is probed; a film that fails counts
as done, so a run that ends is at 100 %. On a terminal a tqdm bar; otherwise (a batch
job's log) a plain line every ``interval_s``, as ``\\r`` updates are noise in a file.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import TextIO

from tqdm import tqdm

LOG_EVERY_S = 30.0   # seconds between progress lines when stderr is not a terminal


def _hms(s: float) -> str:
    s = round(s)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class Progress:
    """``add_film`` each film to mine (its files' bytes), then ``frames``/``film_done`` as
    they come in; ``note`` sets the trailing counts. Thread-safe (workers' progress events
    arrive on the client's thread)."""

    def __init__(self, enabled: bool, stream: TextIO | None = None, tty: bool | None = None,
                 interval_s: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled, self.tty = enabled, tty
        self.interval_s = LOG_EVERY_S if interval_s is None else interval_s
        self.lock = threading.Lock()
        self.size: dict[str, float] = {}      # film -> its bytes
        self.done: dict[str, float] = {}      # film -> bytes counted
        self.per_frame: dict[str, float] = {}
        self.total = self.count = 0.0
        self.text = ""
        self.t0 = self.last = time.monotonic()
        self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1000, desc="extract",
                        smoothing=0.05, dynamic_ncols=True,
                        file=self.stream) if enabled and tty else None

    def add_film(self, name: str, paths: tuple[str, ...] | list[str]) -> None:
        size = 0
        for p in paths:
            with contextlib.suppress(OSError):
                size += os.path.getsize(p)
        size = max(size, 1)   # a film of unknown size still has a share
        with self.lock:
            self.size[name], self.done[name] = size, 0.0
            self.total += size
            if self.bar is not None:
                self.bar.total = self.total
                self.bar.refresh()

    def probed(self, name: str, frames: int) -> None:
        """The film mines ``frames`` frames: each counts its share of the film's bytes."""
        with self.lock:
            self.per_frame[name] = self.size.get(name, 0.0) / max(1, frames)

    def frames(self, name: str, n: int) -> None:
        self._add(name, n * self.per_frame.get(name, 0.0))

    def undo_frames(self, name: str, n: int) -> None:
        """Frames counted for a unit that runs again: they are mined again."""
        self._add(name, -n * self.per_frame.get(name, 0.0))

    def film_done(self, name: str) -> None:
        """Mined or failed: the rest of its share (rounding, frames never decoded)."""
        self._add(name, self.size.get(name, 0.0))

    def _add(self, name: str, n: float) -> None:
        if name not in self.size:
            return
        with self.lock:
            new = min(self.size[name], max(0.0, self.done[name] + n))
            step, self.done[name] = new - self.done[name], new
            self.count += step
            if self.bar is not None:
                self.bar.update(step)
            else:
                self._maybe_line()

    def note(self, text: str) -> None:
        with self.lock:
            self.text = text
            if self.bar is not None:
                self.bar.set_postfix_str(text, refresh=True)
            else:
                self._maybe_line()

    def line(self) -> str:
        """The plain progress line: share, bytes, rate, time left, counts."""
        elapsed = time.monotonic() - self.t0
        pct = 100.0 * self.count / self.total if self.total else 0.0
        rate = self.count / elapsed if elapsed > 0 else 0.0
        left = (f", {_hms((self.total - self.count) / rate)} left"
                if rate > 0 and pct < 99.5 else "")   # not at 100 %, whatever the rounding
        return (f"extract: {pct:.0f}% ({_gb(self.count)} of {_gb(self.total)} of film, "
                f"{_hms(elapsed)} elapsed{left}){'; ' + self.text if self.text else ''}")

    def _maybe_line(self) -> None:
        if not self.enabled or self.tty:
            return
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        with self.lock:
            if self.bar is not None:
                self.bar.close()
            elif self.enabled and self.total:
                print(self.line(), file=self.stream, flush=True)
