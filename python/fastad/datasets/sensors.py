"""Labelled multichannel sensor series as one-class anomaly-detection tasks on window features.

The ``aeon`` wheel (BSD-3; ``pip install --no-deps aeon==1.6.0``) ships small time-series
classification sets as ``.ts`` files. This module reads them straight from the installed package's
``datasets/data`` folder (aeon is never imported, so none of its dependencies are needed) and turns
them into anomaly-detection tasks: one class is normal, the others anomalous.

- ``BasicMotions``: a smart watch's 3-D accelerometer + 3-D gyroscope (6 channels, 10 Hz, 100 steps),
  4 activities (Standing, Running, Walking, Badminton), 40 train + 40 test recordings: an IMU task.
- ``JapaneseVowels``: 12 LPC cepstrum coefficients of a spoken vowel (7-29 frames), 9 speakers, 270
  train + 370 test utterances: an audio-feature task.

(The wheel's ``Daphnet_S06R02E0`` accelerometer recording has no anomaly labels, so it is not a task.)

Each recording is cut into sliding windows (:func:`sliding_windows`); each window becomes a feature
vector (:func:`window_features`: per channel mean, standard deviation, min, max, mean absolute
difference and log band energies of the spectrum). :func:`load_sensor_task` gives the normal class's
training windows and every test window with its label (1 = another class) and recording index.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["AEON_TASKS", "SensorTask", "aeon_data_dir", "load_ts", "sliding_windows", "window_features", "load_sensor_task"]

AEON_TASKS = ("BasicMotions", "JapaneseVowels")
_INSTALL = "pip install --no-deps aeon==1.6.0 (only its data files are read)"


def aeon_data_dir() -> Path:
    """The installed aeon package's ``datasets/data`` folder (found without importing aeon)."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"fastad.datasets.sensors: the aeon wheel is not installed; {_INSTALL}")
    d = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not d.is_dir():
        raise FileNotFoundError(f"fastad.datasets.sensors: {d} does not exist (an aeon without its data files?); {_INSTALL}")
    return d


def load_ts(path) -> tuple[list[np.ndarray], list[str]]:
    """Read a ``.ts`` file (sktime/aeon format, multivariate, class labels, no missing values):
    ``(series, labels)`` with ``series[i]`` an ``ndarray[C, T_i]`` float64 and ``labels[i]`` a str."""
    path = Path(path)
    series, labels, in_data, has_labels = [], [], False, False
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                low = line.lower()
                if low.startswith("@classlabel"):
                    has_labels = low.split()[1] == "true"
                elif low.startswith("@timestamps") and low.split()[1] == "true":
                    raise ValueError(f"load_ts: {path}: series with time stamps are not supported")
                elif low.startswith("@data"):
                    in_data = True
                continue
            parts = line.split(":")
            if has_labels:
                labels.append(parts[-1].strip())
                parts = parts[:-1]
            try:
                series.append(np.array([[float(v) for v in p.split(",")] for p in parts], dtype=np.float64))
            except ValueError as e:
                raise ValueError(f"load_ts: {path}, line {lineno}: {e} (missing values are not supported)") from None
    if not has_labels:
        raise ValueError(f"load_ts: {path} has no class labels (@classLabel true)")
    if not series:
        raise ValueError(f"load_ts: {path} holds no series")
    return series, labels


def sliding_windows(series: np.ndarray, length: int | None, stride: int) -> np.ndarray:
    """``ndarray[W, C, length]`` windows of ``series: ndarray[C, T]`` every ``stride`` steps (the whole
    series as one window when ``length`` is None or longer than ``T``)."""
    C, T = series.shape
    if length is None or length >= T:
        return series[None]
    if length < 2 or stride < 1:
        raise ValueError(f"sliding_windows: length must be >= 2 and stride >= 1, got length={length}, stride={stride}")
    starts = range(0, T - length + 1, stride)
    return np.stack([series[:, s : s + length] for s in starts])


def window_features(windows: np.ndarray, n_bands: int = 4) -> torch.Tensor:
    """``Tensor[W, C * (5 + n_bands)]`` float32 features of ``windows: ndarray[W, C, L]``: per channel
    mean, std, min, max, mean |first difference| and ``log1p`` of the spectrum's energy (``rfft``
    of the mean-removed window) in ``n_bands`` equal frequency bands."""
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 3 or w.shape[2] < 2:
        raise ValueError(f"window_features: windows must be [W, C, L >= 2], got shape {list(w.shape)}")
    feats = [w.mean(2), w.std(2), w.min(2), w.max(2), np.abs(np.diff(w, axis=2)).mean(2)]
    power = np.abs(np.fft.rfft(w - w.mean(2, keepdims=True), axis=2)) ** 2 / w.shape[2]
    for band in np.array_split(np.arange(power.shape[2]), n_bands):
        feats.append(np.log1p(power[:, :, band].sum(2)) if band.size else np.zeros(w.shape[:2]))
    return torch.from_numpy(np.stack(feats, 2).reshape(w.shape[0], -1)).float()


@dataclass
class SensorTask:
    """One one-class task: train on ``train`` (normal windows' features), score ``test``;
    ``test_labels`` 1 = anomalous (another class); ``test_recording`` indexes the test recordings."""

    name: str
    normal_class: str
    train: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    test_recording: torch.Tensor
    classes: tuple[str, ...]


def load_sensor_task(name: str = "BasicMotions", normal_class: str | None = None, *, window: int | None = 20,
                     stride: int = 10, n_bands: int = 4, data_dir=None) -> SensorTask:
    """A one-class task from an aeon classification set: the normal class's ``_TRAIN`` recordings
    are the training data; every ``_TEST`` recording is scored (its class != ``normal_class`` =>
    anomalous). Windows of ``window`` steps every ``stride`` (None: whole recordings; recordings
    shorter than ``window`` are one window), features by :func:`window_features`.

    Args:
        name: one of :data:`AEON_TASKS` (or any labelled multichannel ``<name>/<name>_TRAIN.ts`` under
            ``data_dir``). normal_class: a class label (default: the first in sorted order).
        data_dir: the folder holding ``<name>/`` (default: the installed aeon's data folder).
    """
    root = Path(data_dir) if data_dir is not None else aeon_data_dir()
    files = [root / name / f"{name}_{part}.ts" for part in ("TRAIN", "TEST")]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"load_sensor_task: no {f} (name must be one of {AEON_TASKS} or a set under data_dir)")
    (tr_x, tr_y), (te_x, te_y) = (load_ts(f) for f in files)
    classes = tuple(sorted(set(tr_y) | set(te_y)))
    normal = classes[0] if normal_class is None else str(normal_class)
    if normal not in classes:
        raise ValueError(f"load_sensor_task: normal_class must be one of {list(classes)}, got {normal_class!r}")
    if len({s.shape[0] for s in tr_x + te_x}) != 1:
        raise ValueError(f"load_sensor_task: {name}'s recordings disagree on the channel count")

    def feats(xs):
        out, rec = [], []
        for i, s in enumerate(xs):
            w = sliding_windows(s, window if window is None or window < s.shape[1] else None, stride)
            out.append(window_features(w, n_bands))
            rec += [i] * w.shape[0]
        return torch.cat(out), torch.tensor(rec)

    train, _ = feats([s for s, c in zip(tr_x, tr_y) if c == normal])
    test, rec = feats(te_x)
    labels = torch.tensor([int(te_y[i] != normal) for i in rec.tolist()])
    return SensorTask(name, normal, train, test, labels, rec, classes)
