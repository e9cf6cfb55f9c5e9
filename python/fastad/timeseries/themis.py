"""THEMIS-style scoring of a series (Lorik et al., "THEMIS: Unlocking Pretrained Knowledge with
Foundation Model Embeddings for Anomaly Detection in Time Series", 2025): window the series, embed
the windows, then score each window with

- ``"lof"``: the local outlier factor of its embedding among all the series' windows (unsupervised,
  each window left out of its own neighbourhood: PyOD's ``LOF().fit(X).decision_scores_``), on
  float64-exact neighbours (:func:`exact_neighbours`: ``fastad.ops.knn`` candidates re-ranked);
- ``"knn"``: the distance to the k-th nearest other window (PyOD's ``KNN`` training scores);
- ``"spectral"``: the residual of its row of the absolute self-similarity matrix after the rank-k
  eigen-reconstruction (:func:`fastad.timeseries.spectral.spectral_scores`);
- ``"themis"``: LOF and spectral combined: each min-max normalised over the series, then averaged.
  This combination is ours, stated plainly: the paper (as far as its abstract and summaries go;
  its method text was not available offline here) describes modular "adapters" on the windowed
  absolute similarity matrix - spectral residual, LOF, mean similarity, trimmed top-k - reported
  one by one, and publishes no code. LOF here runs on the window embeddings, as issue 19 asks.

Window scores become per-point scores with :func:`fastad.timeseries.windows.window_to_point`.
"""
from __future__ import annotations

import time

import torch

from .embed import get_embedder
from .spectral import spectral_scores
from .windows import as_series, window_to_point, windows

__all__ = ["exact_neighbours", "lof_window_scores", "knn_window_scores", "minmax", "combine", "score_series", "METHODS"]

METHODS = ("lof", "knn", "spectral", "themis")


def exact_neighbours(E: torch.Tensor, k: int, margin: int | None = None, chunk_bytes: int = 32 << 20):
    """The ``k`` nearest other rows of ``E: Tensor[W, D]`` with float64 Euclidean distances:
    ``(d Tensor[W, k] float64, i Tensor[W, k] int64)``, nearest first.

    Candidates come from ``fastad.ops.knn`` (float32, ``k + margin`` per row, each row left out of
    its own list); their distances are recomputed in float64 and re-sorted (ties by index). A row
    whose float64 k-th distance is not below its last candidate's distance by more than the float32
    selection error bound is redone with a 4x margin, so the result is the float64 k-NN (what scikit-learn computes on
    float64 input) even when float32 rounding reorders near-ties. ``margin`` defaults to 8;
    memory per step is about ``chunk_bytes``.
    """
    import fastad.ops as ops

    W = E.shape[0]
    if not (isinstance(k, int) and 1 <= k <= W - 1):
        raise ValueError(f"exact_neighbours: k must be an int in [1, W - 1] = [1, {W - 1}], got {k!r}")
    X64, X32 = E.double(), E.float().contiguous()
    D = E.shape[1]
    nrm = (X64 - X64.mean(0)).square().sum(1)  # squared norms about the mean (the kernel centres its data)
    d_out = torch.empty(W, k, dtype=torch.float64, device=E.device)
    i_out = torch.empty(W, k, dtype=torch.long, device=E.device)
    rows, m = torch.arange(W, device=E.device), (8 if margin is None else int(margin))
    while rows.numel():
        kk = min(W - 1, k + m)
        chunk = max(1, int(chunk_bytes) // (8 * kk * D))
        redo = []
        allc = _knn_rows(ops, X32, rows, kk) if kk < W - 1 else None  # one kernel call for all rows
        for c0 in range(0, rows.numel(), chunk):
            r = rows[c0 : c0 + chunk]
            if allc is None:  # every other row is a candidate: exact by construction
                cand = torch.stack([torch.cat([torch.arange(0, int(j)), torch.arange(int(j) + 1, W)]) for j in r.tolist()])
                d32 = None
            else:
                d32, cand = allc[0][c0 : c0 + chunk], allc[1][c0 : c0 + chunk]
            d = (X64[r][:, None, :] - X64[cand]).square().sum(-1).sqrt()
            o = torch.sort(cand, dim=1, stable=True).indices  # ties: the smaller index first
            d, cand = d.gather(1, o), cand.gather(1, o)
            o = torch.sort(d, dim=1, stable=True).indices
            d, cand = d.gather(1, o)[:, :k], cand.gather(1, o)[:, :k]
            d_out[r], i_out[r] = d, cand
            if d32 is not None:
                # the kernel selects on |q|^2 + |b|^2 - 2 q.b in float32 (error <= delta); a row is exact
                # when its float64 k-th distance is below every non-candidate's: d_k^2 + 2 delta <= d_last^2
                # (rounding of a blocked FMA dot product over 8 lanes: about (D / 8 + 8) ulps of |q|^2 + |b|^2)
                delta = 2 * (D / 8 + 8) * 2.0**-24 * (nrm[r] + nrm.max())
                bad = d[:, -1].square() + 2 * delta > d32[:, -1].double().square()
                if bool(bad.any()):
                    redo.append(r[bad])
        rows = torch.cat(redo) if redo else rows[:0]
        m *= 4
    return d_out, i_out


def _knn_rows(ops, X32: torch.Tensor, r: torch.Tensor, kk: int):
    """float32 k-NN of rows ``r`` of ``X32`` among all rows, the row itself left out."""
    d, i = ops.knn(X32[r].contiguous(), X32, kk + 1, "l2")
    keep = i != r[:, None]
    # drop the row itself (or, if it is not among the kk + 1, the last one)
    drop_last = keep.all(1)
    keep[drop_last, -1] = False
    return d[keep].view(-1, kk), i[keep].view(-1, kk)


def lof_window_scores(E: torch.Tensor, n_neighbors: int = 20) -> torch.Tensor:
    """LOF of every row of ``E: Tensor[W, D]`` among the other rows (``Tensor[W]`` float64): PyOD's
    ``LOF(n_neighbors).fit(E).decision_scores_`` (scikit-learn's LOF, its ``1e-10`` guard), on the
    float64 neighbours of :func:`exact_neighbours`."""
    d, i = exact_neighbours(E, n_neighbors)
    kdist = d[:, -1]
    lrd = 1.0 / (torch.maximum(d, kdist[i]).mean(1) + 1e-10)
    return lrd[i].mean(1) / lrd


def knn_window_scores(E: torch.Tensor, n_neighbors: int = 5) -> torch.Tensor:
    """Distance of every row of ``E`` to its k-th nearest other row (``Tensor[W]`` float64): PyOD's
    ``KNN(n_neighbors, method="largest").fit(E).decision_scores_``."""
    return exact_neighbours(E, n_neighbors)[0][:, -1]


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
