"""Labelled series shipped inside the ``aeon`` wheel (``pip install --no-deps aeon==1.6.0``; BSD-3),
read from its data files without importing aeon's estimators (no numba needed).

- ``"InternalBleeding16"``: UCR anomaly archive 135 (``KDD-TSAD_135``), univariate, a normal train
  part (1,200 points) and a test part (7,501 points) with one labelled anomaly (12 points).
- ``"ecg-diff-count-3"``: aeon's unit-test ECG series with 3 labelled anomalies (10,000 points,
  300 anomalous; synthetic: GutenTAG-generated) and a normal train part.
- ``"Daphnet_S06R02E0"``: 9 accelerometer channels (7,040 points). **Its ``is_anomaly`` column holds
  no anomaly in aeon 1.6.0** (this recording of subject 6 has no freezing-of-gait episode), so it
  cannot be scored; it is loadable for completeness and :func:`load_series` says so in ``note``.
"""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import torch

__all__ = ["aeon_data_dir", "load_series", "SERIES"]

SERIES = {
    "InternalBleeding16": ("KDD-TSAD_135", "135_UCR_Anomaly_InternalBleeding16_TEST.csv", "135_UCR_Anomaly_InternalBleeding16_TRAIN.csv"),
    "ecg-diff-count-3": ("UnitTest", "ecg-diff-count-3_TEST.csv", "ecg-diff-count-3_TRAIN_NA.csv"),
    "Daphnet_S06R02E0": ("Daphnet_S06R02E0", "S06R02E0.csv", None),
}


def aeon_data_dir() -> Path:
    """``aeon/datasets/data`` inside the installed aeon package (found without importing aeon)."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the aeon package is not installed: `pip install --no-deps aeon==1.6.0` reaches its data files")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _read(path: Path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    cols = [i for i, h in enumerate(head) if h not in ("timestamp", "is_anomaly")]
    x = torch.tensor([[float(r[i]) for i in cols] for r in body], dtype=torch.float64)
    y = torch.tensor([int(float(r[head.index("is_anomaly")])) for r in body], dtype=torch.long)
    return x, y, [head[i] for i in cols]


def load_series(name: str) -> dict:
    """``{"test": Tensor[T, C] float64, "labels": Tensor[T] int64, "train": Tensor[T0, C] or None,
    "channels": [...], "note": str}`` for one of :data:`SERIES`."""
    if name not in SERIES:
        raise ValueError(f"load_series: name must be one of {sorted(SERIES)}, got {name!r}")
    folder, test, train = SERIES[name]
    d = aeon_data_dir() / folder
    if not (d / test).is_file():
        raise FileNotFoundError(f"load_series: {d / test} is missing (aeon==1.6.0 ships it)")
    x, y, ch = _read(d / test)
    tr = _read(d / train)[0] if train else None
    note = "" if int(y.sum()) else f"{name}: the labels hold no anomaly; AUROC/AUPRC/VUS-PR are undefined on it"
    return {"test": x, "labels": y, "train": tr, "channels": ch, "note": note}
