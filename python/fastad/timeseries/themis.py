"""THEMIS-style scoring of a series (Lorik et al., "THEMIS: Unlocking Pretrained Knowledge with
Foundation Model Embeddings for Anomaly Detection in Time Series", 2025): window the series, embed
the windows, then score each window with

- ``"lof"``: the local outlier factor of its embedding among all the series' windows (unsupervised,
  each window left out of its own neighbourhood: PyOD's ``LOF().fit(X).decision_scores_``), on
  fastad's exact k-NN kernel (:class:`fastad.detectors.LOF`);
- ``"knn"``: the distance to the k-th nearest other window (PyOD's ``KNN`` training scores);
- ``"spectral"``: the residual of its row of the absolute self-similarity matrix after the rank-k
  eigen-reconstruction (:func:`fastad.timeseries.spectral.spectral_scores`);
- ``"themis"``: the combination of LOF and spectral. The paper ensembles its detector "adapters";
  here each score is min-max normalised over the series and the two are averaged (our reading of
  that combination, stated here because the exact weighting is the paper's, not verified against
  code: THEMIS published none).

Window scores become per-point scores with :func:`fastad.timeseries.windows.window_to_point`.
"""
from __future__ import annotations

import time

import torch

from .embed import get_embedder
from .spectral import spectral_scores
from .windows import as_series, window_to_point, windows

__all__ = ["lof_window_scores", "knn_window_scores", "minmax", "combine", "score_series", "METHODS"]

METHODS = ("lof", "knn", "spectral", "themis")


def lof_window_scores(E: torch.Tensor, n_neighbors: int = 20) -> torch.Tensor:
    """LOF of every row of ``E: Tensor[W, D]`` among the other rows (``Tensor[W]`` float32)."""
    from fastad.detectors import LOF

    return LOF(n_neighbors=n_neighbors).fit(E.float()).decision_scores_


def knn_window_scores(E: torch.Tensor, n_neighbors: int = 5) -> torch.Tensor:
    """Distance of every row of ``E`` to its k-th nearest other row (``Tensor[W]`` float32)."""
    from fastad.detectors import KNN

    return KNN(n_neighbors=n_neighbors, method="largest").fit(E.float()).decision_scores_


def minmax(s: torch.Tensor) -> torch.Tensor:
    """``(s - min) / (max - min)`` in float64 (all zeros for a constant score)."""
    s = s.double()
    lo, hi = s.min(), s.max()
    return (s - lo) / (hi - lo) if float(hi - lo) > 0 else torch.zeros_like(s)


def combine(*scores: torch.Tensor) -> torch.Tensor:
    """The mean of the min-max normalised scores (THEMIS' ensemble as used here)."""
    return torch.stack([minmax(s) for s in scores]).mean(0)


def score_series(series, length: int, stride: int = 1, *, embedder="raw", znorm: bool = True,
                 methods=METHODS, lof_k: int = 20, knn_k: int = 5, eig_k: int = 10, reduce: str = "max",
                 spectral_method: str = "auto", return_windows: bool = False) -> dict:
    """Per-point anomaly scores of ``series`` (``Tensor[T]`` or ``[T, C]``; NaN refused) for each of
    ``methods`` (subset of :data:`METHODS`): ``{method: Tensor[T]}`` plus ``"seconds"`` (wall time
    per stage). ``return_windows=True`` adds ``"window_scores"`` (``{method: Tensor[W]}``) and
    ``"embeddings"`` (``Tensor[W, D]``).

    Args:
        length, stride: the sliding windows (:func:`fastad.timeseries.windows.windows`).
        embedder: ``"raw"`` (default), ``"minirocket"`` or an embedder object (e.g. ``Chronos(path)``).
        znorm: z-normalise each window (THEMIS' setting) before embedding.
        lof_k, knn_k, eig_k: LOF / KNN neighbours and the eigenvectors kept by the spectral score.
        reduce: ``"max"`` or ``"mean"`` over the windows covering a point.
    """
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"score_series: methods must be a non-empty subset of {METHODS}, got {methods!r}")
    x = as_series(series, "score_series")
    T, C = x.shape
    emb = get_embedder(embedder)
    secs = {}
    t0 = time.perf_counter()
    w = windows(x, length, stride, znorm=znorm)
    E = emb(w.view(w.shape[0], length, C)).float()
    secs["embed"] = time.perf_counter() - t0
    if E.shape[0] < 3:
        raise ValueError(f"score_series: only {E.shape[0]} windows (T={T}, length={length}, stride={stride}); need >= 3")
    ws = {}
    need_lof = "lof" in methods or "themis" in methods
    need_spec = "spectral" in methods or "themis" in methods
    if need_lof:
        t0 = time.perf_counter()
        ws["lof"] = lof_window_scores(E, min(lof_k, E.shape[0] - 1))
        secs["lof"] = time.perf_counter() - t0
    if "knn" in methods:
        t0 = time.perf_counter()
        ws["knn"] = knn_window_scores(E, min(knn_k, E.shape[0] - 1))
        secs["knn"] = time.perf_counter() - t0
    if need_spec:
        t0 = time.perf_counter()
        ws["spectral"] = spectral_scores(E, min(eig_k, E.shape[0] - 1), method=spectral_method)
        secs["spectral"] = time.perf_counter() - t0
    if "themis" in methods:
        ws["themis"] = combine(ws["lof"], ws["spectral"])
    out = {m: window_to_point(ws[m], T, length, stride, reduce) for m in methods}
    out["seconds"] = secs
    if return_windows:
        out["window_scores"] = {m: ws[m] for m in methods}
        out["embeddings"] = E
    return out
