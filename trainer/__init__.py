"""MiDaS-style training on mined film corpora mixed with other depth datasets.

Reads corpora only through their documented shard format (``manifests/CORPUS.md``); imports
nothing of filmmine's extraction stages. Modules: ``sources`` (dataset adapters), ``data``
(streams, augmentation, mixing of datasets into batches), ``model``, ``losses``, ``mixing``
(Pareto / MGDA weights), ``train``, ``evaluate``, ``predict``, ``cli``, and ``names`` (the
values of the enumerated settings).
"""

from __future__ import annotations


class TrainerError(Exception):
    """A run cannot start or go on: the message is the one-line reason shown to the user."""
