"""KNN, LOF and Mahalanobis on embeddings: fastad vs scikit-learn (the engine under PyOD's KNN and LOF;
``LedoitWolf`` for the Gaussian), same data.

    .venv/bin/python benchmarks/bench_embedding.py [--n-train 20000] [--n-test 5000] [--dim 384] [--threads 1]

Data: seeded Gaussian clusters in ``--dim`` dimensions (text-embedding-like: 20 topics), test = held-out
cluster points + 5% off-cluster outliers. Anchors: ``sklearn.neighbors.NearestNeighbors(algorithm="brute")``
(what PyOD's ``KNN`` calls; PyOD's own ``decision_function`` loops over test points on top of it, so
this anchor is the faster one) and ``LocalOutlierFactor(novelty=True, algorithm="brute")``, float64 as
scikit-learn runs them on float64 input, and float32 input too. Each side: fit (training scores
included) + scoring of the test set; process CPU seconds (``torch.set_num_threads`` and
``threadpoolctl``-free single thread by default), the AUROC of each, and the largest score difference.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

    from fastad.detectors import KNN, LOF

    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, a.dim, generator=g) * 3
    X = centres[torch.randint(0, 20, (a.n_train,), generator=g)] + torch.randn(a.n_train, a.dim, generator=g)
    n_out = a.n_test // 20
    Yin = centres[torch.randint(0, 20, (a.n_test - n_out,), generator=g)] + torch.randn(a.n_test - n_out, a.dim, generator=g)
    Yout = torch.randn(n_out, a.dim, generator=g) * 3
    Y = torch.cat([Yin, Yout])
    labels = np.r_[np.zeros(a.n_test - n_out), np.ones(n_out)]
    print(f"train {a.n_train} x {a.dim}, test {a.n_test} ({n_out} outliers), threads={a.threads}", flush=True)

    def cpu(fn):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - w, time.process_time() - c

    res = {"n_train": a.n_train, "n_test": a.n_test, "dim": a.dim, "threads": a.threads, "rows": []}
    from sklearn.covariance import LedoitWolf

    from fastad.detectors import Mahalanobis

    for name, k in (("KNN k=5 largest", 5), ("LOF k=20", 20), ("Mahalanobis LW", 0)):
        if name.startswith("Mahalanobis"):
            ours = lambda: (lambda d: (d.decision_scores_, d.decision_function(Y)))(Mahalanobis().fit(X))

            def theirs(dtype):
                lw = LedoitWolf().fit(X.numpy().astype(dtype))
                return np.sqrt(lw.mahalanobis(X.numpy().astype(dtype))), np.sqrt(lw.mahalanobis(Y.numpy().astype(dtype)))
        elif name.startswith("KNN"):
            ours = lambda: (lambda d: (d.decision_scores_, d.decision_function(Y)))(KNN(n_neighbors=k).fit(X))

            def theirs(dtype):
                nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X.numpy().astype(dtype))
                return nn.kneighbors()[0][:, -1], nn.kneighbors(Y.numpy().astype(dtype))[0][:, -1]
        else:
            ours = lambda: (lambda d: (d.decision_scores_, d.decision_function(Y)))(LOF(n_neighbors=k).fit(X))

            def theirs(dtype):
                lof = LocalOutlierFactor(n_neighbors=k, novelty=True, algorithm="brute").fit(X.numpy().astype(dtype))
                return -lof.negative_outlier_factor_, -lof.score_samples(Y.numpy().astype(dtype))
        (f_tr, f_te), fw, fc = cpu(ours)
        f_te = f_te.numpy()
        for dtype in ("float64", "float32"):
            (s_tr, s_te), sw, sc = cpu(lambda: theirs(dtype))
            r = {"detector": name, "sklearn_dtype": dtype, "fastad_cpu_s": fc, "fastad_wall_s": fw, "sklearn_cpu_s": sc,
                 "sklearn_wall_s": sw, "speedup_cpu": sc / fc, "speedup_wall": sw / fw,
                 "fastad_auroc": roc_auc_score(labels, f_te), "sklearn_auroc": roc_auc_score(labels, s_te),
                 "max_rel_diff": float(np.max(np.abs(f_te - s_te) / np.maximum(np.abs(s_te), 1e-6)))}
            res["rows"].append(r)
            print(f"{name:16s} vs sklearn {dtype}: fastad {fc:7.2f} CPU-s ({fw:6.2f} wall), sklearn {sc:7.2f} CPU-s "
                  f"({sw:6.2f} wall): {sc / fc:5.2f}x CPU, {sw / fw:5.2f}x wall; AUROC {r['fastad_auroc']:.4f} vs "
                  f"{r['sklearn_auroc']:.4f}; max rel. score diff {r['max_rel_diff']:.2e}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
