"""Text-ADBench's shallow detectors on sentence embeddings, as presets over fastad's detectors.

Text-ADBench (Xiao et al. 2025) scores text anomaly detection as an embedding model followed by a
shallow detector with PyOD's settings: KNN with ``k=3`` and ``method='largest'``, LOF with
``k=30``, Isolation Forest; it reports AUROC and AUPRC. Here:

- ``"knn"``: :class:`fastad.detectors.KNN` ``(n_neighbors=3, method="largest")``
- ``"lof"``: :class:`fastad.detectors.LOF` ``(n_neighbors=30)``
- ``"mahalanobis"``: :class:`fastad.detectors.Mahalanobis` ``(shrinkage="ledoit_wolf")``
- ``"iforest"``: scikit-learn's ``IsolationForest`` (the non-kernel baseline;
  :class:`IsolationForestBaseline`, needs scikit-learn)

All on the Euclidean distance, as PyOD's defaults (all-MiniLM-L6-v2 embeddings are unit vectors, so
the ranking equals the cosine one).
"""
from __future__ import annotations

import time

import torch

__all__ = ["PRESETS", "make_detector", "IsolationForestBaseline", "evaluate"]

PRESETS = ("knn", "lof", "mahalanobis", "iforest")


class IsolationForestBaseline:
    """scikit-learn's ``IsolationForest`` with fastad's conventions: ``fit(X)`` returns ``self``,
    ``decision_function(X)`` is ``Tensor[N]`` float32, higher = more anomalous (``-score_samples``)."""

    def __init__(self, n_estimators: int = 100, random_state: int = 0):
        self.n_estimators, self.random_state = n_estimators, random_state

    def fit(self, X, y=None):
        from sklearn.ensemble import IsolationForest

        X = torch.as_tensor(X)
        if X.dim() != 2 or X.shape[0] < 2:
            raise ValueError(f"IsolationForestBaseline.fit: X must be [N >= 2, D], got shape {list(X.shape)}")
        self.model_ = IsolationForest(n_estimators=self.n_estimators, random_state=self.random_state).fit(X.double().cpu().numpy())
        self.n_features_in_ = int(X.shape[1])
        return self

    def decision_function(self, X) -> torch.Tensor:
        if getattr(self, "model_", None) is None:
            raise RuntimeError("IsolationForestBaseline.decision_function: not fitted yet; call fit(X) first")
        X = torch.as_tensor(X)
        s = -self.model_.score_samples(X.double().cpu().numpy())
        return torch.as_tensor(s, dtype=torch.float32, device=X.device)


def make_detector(name: str):
    """A fresh detector for the preset ``name`` (one of :data:`PRESETS`)."""
    from fastad.detectors import KNN, LOF, Mahalanobis

    if name == "knn":
        return KNN(n_neighbors=3, method="largest")
    if name == "lof":
        return LOF(n_neighbors=30)
    if name == "mahalanobis":
        return Mahalanobis(shrinkage="ledoit_wolf")
    if name == "iforest":
        return IsolationForestBaseline()
    raise ValueError(f"make_detector: name must be one of {PRESETS}, got {name!r}")


def evaluate(train_emb, test_emb, test_labels, detectors=PRESETS) -> dict:
    """Fit each preset on ``train_emb: Tensor[N, D]`` (normal texts), score ``test_emb: Tensor[M, D]``:
    ``{name: {"auroc", "auprc", "seconds"}}`` (AUPRC = average precision, fastad.metrics)."""
    from fastad.metrics import auroc, average_precision

    y = torch.as_tensor(test_labels)
    if y.dim() != 1 or y.shape[0] != torch.as_tensor(test_emb).shape[0]:
        raise ValueError(f"evaluate: test_labels must be [M={torch.as_tensor(test_emb).shape[0]}], got shape {list(y.shape)}")
    out = {}
    for name in detectors:
        det = make_detector(name)
        t0 = time.perf_counter()
        s = det.fit(train_emb).decision_function(test_emb)
        dt = time.perf_counter() - t0
        out[name] = {"auroc": auroc(s, y), "auprc": average_precision(s, y), "seconds": dt}
    return out
