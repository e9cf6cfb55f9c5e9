"""Time-series anomaly detection on fastad's kernels: sliding windows -> window embeddings ->
THEMIS-style scores (LOF over the embeddings via ``fastad.ops.knn``, the spectral residual of the
absolute self-similarity matrix, their combination) -> per-point scores; range metrics (VUS-PR).

Recipe (real data from the aeon wheel, ``pip install --no-deps aeon==1.6.0``)::

    from fastad.timeseries import load_series, score_series, vus_pr
    from fastad.metrics import auroc, average_precision
    d = load_series("InternalBleeding16")
    out = score_series(d["test"], length=100, stride=1)      # {"lof", "knn", "spectral", "themis"}
    for m in ("lof", "spectral", "themis"):
        print(m, auroc(out[m], d["labels"]), average_precision(out[m], d["labels"]), vus_pr(d["labels"], out[m]))

NaN gaps are refused (``ValueError``); :func:`interpolate_gaps` fills them linearly if that is wanted.
"""
from .data import SERIES, load_series
from .embed import Chronos, MiniRocket, RawWindows, get_embedder
from .metrics import range_pr_auc, vus_pr
from .spectral import spectral_scores, top_eigenpairs
from .themis import METHODS, combine, exact_neighbours, knn_window_scores, lof_window_scores, score_series
from .windows import interpolate_gaps, window_starts, window_to_point, windows

__all__ = ["windows", "window_starts", "window_to_point", "interpolate_gaps", "RawWindows", "MiniRocket", "Chronos",
           "get_embedder", "spectral_scores", "top_eigenpairs", "exact_neighbours", "lof_window_scores", "knn_window_scores", "combine",
           "score_series", "METHODS", "load_series", "SERIES", "range_pr_auc", "vus_pr"]
