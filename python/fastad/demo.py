"""`make demo` / `python -m fastad.demo`: k-NN anomaly scoring end to end on a built-in dataset.

The built-in default is scikit-learn's handwritten digits (shipped inside scikit-learn, offline):
the "normal" class is digit 0; the test set mixes held-out zeros with every other digit
(anomalies). Each test image is scored by its mean distance to the k nearest training images,
computed by ``fastad.ops.knn``. Prints image AUROC and timings: real numbers, computed now.
"""
from __future__ import annotations

import argparse
import time

import torch

import fastad


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (ties counted half), via the rank statistic."""
    s, y = scores.double(), labels.bool()
    pos, neg = s[y], s[~y]
    gt = (pos[:, None] > neg[None, :]).double().sum()
    eq = (pos[:, None] == neg[None, :]).double().sum()
    return float((gt + 0.5 * eq) / (pos.numel() * neg.numel()))


def run_digits(k: int = 5, normal: int = 0, seed: int = 0) -> dict:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(seed)
    idx_normal = (y == normal).nonzero().flatten()
    idx_normal = idx_normal[torch.randperm(idx_normal.numel(), generator=g)]
    n_train = idx_normal.numel() * 2 // 3
    train = X[idx_normal[:n_train]]
    test_idx = torch.cat([idx_normal[n_train:], (y != normal).nonzero().flatten()])
    test, labels = X[test_idx], (y[test_idx] != normal)
    t0 = time.perf_counter()
    d, _ = fastad.ops.knn(test, train, k)
    t1 = time.perf_counter()
    scores = d.mean(1)
    return {
        "train": n_train,
        "test": test.shape[0],
        "anomalies": int(labels.sum()),
        "dim": X.shape[1],
        "k": k,
        "auroc": auroc(scores, labels),
        "knn_ms": (t1 - t0) * 1e3,
        "mean_score_normal": float(scores[~labels].mean()),
        "mean_score_anomalous": float(scores[labels].mean()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="an MVTec-layout folder (needs the detector toolkit)")
    p.add_argument("-k", type=int, default=5)
    a = p.parse_args(argv)
    print("fastad", fastad.__version__, fastad.build_info())
    if a.data:
        raise SystemExit("fastad.demo: --data needs the PatchCore toolkit, which this build does not include yet")
    r = run_digits(k=a.k)
    print(
        f"digits (normal = 0): train {r['train']}, test {r['test']} ({r['anomalies']} anomalous), D={r['dim']}, k={r['k']}\n"
        f"  k-NN scoring: {r['knn_ms']:.2f} ms   mean score normal {r['mean_score_normal']:.2f} "
        f"vs anomalous {r['mean_score_anomalous']:.2f}\n"
        f"  image AUROC = {r['auroc']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
