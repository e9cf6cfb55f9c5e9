"""THEMIS-style time-series scoring on the labelled series of the aeon wheel, with PyOD's LOF / KNN
on the same windows as the anchor (same process, interleaved), and aeon's VUS-PR as the reference
for ours.

    .venv/bin/python benchmarks/bench_timeseries.py [--series InternalBleeding16 ecg-diff-count-3]
        [--length 100] [--stride 1] [--threads 1] [--out benchmarks/results/timeseries.json]

Per series (the test part, unsupervised as THEMIS: every window is scored among all windows):
z-normalised sliding windows; ours = fastad LOF (k=20) / KNN (k=5, largest) through ``fastad.ops.knn``,
the spectral residual (k=10 eigenvectors of |cos| self-similarity), THEMIS (min-max mean of LOF and
spectral), and THEMIS on MiniRocket-style features; anchors = PyOD 3.6.7 ``LOF(20)`` /
``KNN(5)`` ``.fit(windows).decision_scores_`` (scikit-learn, float64). Window scores -> point scores
by the max over covering windows. Metrics: AUROC, AUPRC (average precision), VUS-PR (ours, and
aeon 1.6.0's ``range_pr_vus_score`` on the same scores), time per 10k points (process CPU seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    """``model name (family F model M, avx512|avx2)`` from /proc/cpuinfo."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        return platform.processor() or "unknown"
    isa = "avx512" if "avx512f" in info.get("flags", "").split() else ("avx2" if "avx2" in info.get("flags", "") else "no avx2")
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, {isa})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", nargs="+", default=["InternalBleeding16", "ecg-diff-count-3"])
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-aeon-vus", action="store_true", help="skip aeon's (slow) VUS-PR reference")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "timeseries.json"))
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import numpy as np
    import torch
    from pyod.models.knn import KNN as PKNN
    from pyod.models.lof import LOF as PLOF
    from scipy.stats import spearmanr

    import fastad
    from fastad.metrics import auroc, average_precision
    from fastad.timeseries import (combine, knn_window_scores, load_series, lof_window_scores, spectral_scores, vus_pr,
                                   window_to_point, windows)
    from fastad.timeseries.embed import MiniRocket

    torch.set_num_threads(a.threads)
    try:
        from aeon.benchmarking.metrics.anomaly_detection import range_pr_vus_score
    except ImportError:
        range_pr_vus_score = None
    print(f"CPU: {cpu_model()}; fastad kernel: {fastad.build_info().get('simd')} (micro-kernel {fastad.build_info().get('dist_micro_kernel')}); torch {torch.__version__}; "
          f"threads {a.threads}; load {os.getloadavg()[0]:.1f}", flush=True)

    def cpu(fn):
        c = time.process_time()
        out = fn()
        return out, time.process_time() - c

    res = {"cpu": cpu_model(), "kernel": fastad.build_info().get("simd"), "threads": a.threads, "length": a.length,
           "stride": a.stride, "date": time.strftime("%Y-%m-%d"), "series": {}}
    for name in a.series:
        d = load_series(name)
        if d["note"]:
            print("SKIP:", d["note"])
            res["series"][name] = {"note": d["note"]}
            continue
        x, y = d["test"], d["labels"].numpy()
        T, C = x.shape
        print(f"\n{name}: T={T}, C={C}, anomalies {int(y.sum())} points, window {a.length}, stride {a.stride}", flush=True)
        w, t_win = cpu(lambda: windows(x, a.length, a.stride).float())
        Wn = w.double().numpy()
        rows = {}
        # interleaved: ours then PyOD's, per detector
        lof, t_lof = cpu(lambda: lof_window_scores(w, 20))
        plof, t_plof = cpu(lambda: PLOF(n_neighbors=20).fit(Wn).decision_scores_)
        knn, t_knn = cpu(lambda: knn_window_scores(w, 5))
        pknn, t_pknn = cpu(lambda: PKNN(n_neighbors=5, method="largest").fit(Wn).decision_scores_)
        spec, t_spec = cpu(lambda: spectral_scores(w, 10))
        mr, t_mr = cpu(lambda: MiniRocket()(w.view(-1, a.length, C)))
        mlof, t_mlof = cpu(lambda: lof_window_scores(mr, 20))
        mspec, t_mspec = cpu(lambda: spectral_scores(mr, 10))
        eq = {}
        for nm, ours, theirs in (("lof", lof, plof), ("knn", knn, pknn)):
            o = ours.double().numpy()
            rel = np.abs(o - theirs) / np.maximum(np.abs(theirs), 1e-12)
            eq[nm] = {"max_rel_diff": float(rel.max()), "spearman": float(spearmanr(o, theirs).statistic)}
        ws = {"fastad LOF": (lof, t_lof), "PyOD LOF": (torch.from_numpy(plof), t_plof),
              "fastad KNN": (knn, t_knn), "PyOD KNN": (torch.from_numpy(pknn), t_pknn),
              "spectral": (spec, t_spec), "THEMIS (LOF+spectral)": (combine(lof, spec), t_lof + t_spec),
              "THEMIS MiniRocket": (combine(mlof, mspec), t_mr + t_mlof + t_mspec)}
        for m, (s, t) in ws.items():
            p = window_to_point(s, T, a.length, a.stride, "max").double().numpy()
            r = {"auroc": auroc(p, y), "auprc": average_precision(p, y), "vus_pr": vus_pr(y, p),
                 "cpu_s_per_10k_points": (t + t_win) * 1e4 / T}
            if range_pr_vus_score is not None and not a.no_aeon_vus:
                r["vus_pr_aeon"] = float(range_pr_vus_score(y, p))
            rows[m] = r
            ref = f" aeon {r['vus_pr_aeon']:.4f}" if "vus_pr_aeon" in r else ""
            print(f"  {m:24s} AUROC {r['auroc']:.4f}  AUPRC {r['auprc']:.4f}  VUS-PR {r['vus_pr']:.4f}{ref}  "
                  f"{r['cpu_s_per_10k_points']:.2f} s/10k pts", flush=True)
        ratios = {"lof": t_plof / t_lof, "knn": t_pknn / t_knn}
        print(f"  equality vs PyOD: {eq}; time ratio PyOD/fastad: LOF {ratios['lof']:.2f}x, KNN {ratios['knn']:.2f}x")
        res["series"][name] = {"T": T, "C": C, "windows": int(w.shape[0]), "methods": rows, "equality_vs_pyod": eq,
                               "time_ratio_pyod_over_fastad": ratios}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
