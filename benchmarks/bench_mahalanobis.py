"""The embedding ``Mahalanobis`` detector vs scikit-learn, and the op vs plain torch, 1 thread by default.

    .venv/bin/python benchmarks/bench_mahalanobis.py [--n 20000] [--d 384] [--threads 1] [--out JSON]

- detector: ``fastad.detectors.Mahalanobis(shrinkage="none")`` fitted on N x d float32 embeddings,
  ``decision_function`` on N query embeddings, vs ``sklearn.covariance.EmpiricalCovariance`` fitted on
  the same data and its ``mahalanobis()`` (float64 path: the data as float64, scikit-learn's usual
  setting; and float32 path: the float32 array as given, which scikit-learn keeps in float32);
  agreement of the squared distances with the float64 scikit-learn result;
- op: ``fastad.ops.mahalanobis`` (float32 and bfloat16 factor) vs ``((x - m) @ L).square().sum(1)``
  in torch (MKL sgemm on the full factor), GFLOP/s and % of the machine's GEMM roof (``torch.mm``
  2048^3 in the same run).
Interleaved in one process; best of --repeats, process CPU seconds (robust on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from threadpoolctl import threadpool_limits

    from sklearn.covariance import EmpiricalCovariance

    import fastad
    from fastad import ops
    from fastad.detectors import Mahalanobis

    from bench_padim_synth import best_of, cpu_model, gemm_roof  # best_of: process CPU seconds

    threadpool_limits(a.threads)
    g = torch.Generator().manual_seed(0)
    n, d = a.n, a.d
    A = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    X = (torch.randn(n, d, generator=g) @ A + 1.0).contiguous()
    Y = (torch.randn(n, d, generator=g) @ A * 1.3 + 1.0).contiguous()
    info = fastad.build_info()
    print(f"Mahalanobis {n} x {d}; threads={a.threads}; CPU: {cpu_model()}; fastad kernel: "
          f"{info.get('dist_micro_kernel', info.get('simd'))}", flush=True)
    res = {"cpu": cpu_model(), "n": n, "d": d, "threads": a.threads}

    det, t_fit_f = best_of(lambda: Mahalanobis(shrinkage="none").fit(X), 1)
    Xn64, Yn64, Yn32 = X.double().numpy(), Y.double().numpy(), Y.numpy()
    est64, t_fit_s64 = best_of(lambda: EmpiricalCovariance().fit(Xn64), 1)
    est32, t_fit_s32 = best_of(lambda: EmpiricalCovariance().fit(X.numpy()), 1)
    rows = {}
    for name, fn in (("sklearn mahalanobis float64", lambda: est64.mahalanobis(Yn64)),
                     ("fastad decision_function", lambda: det.decision_function(Y)),
                     ("sklearn mahalanobis float32", lambda: est32.mahalanobis(Yn32)),
                     ("sklearn mahalanobis float64 ", lambda: est64.mahalanobis(Yn64))):
        out, t = best_of(fn, a.repeats)
        key = name.strip()
        rows[key] = min(t, rows.get(key, float("inf")))
        if key == "fastad decision_function":
            ours = out.double().numpy() ** 2
        if key == "sklearn mahalanobis float64":
            ref = out
    rel = float(np.max(np.abs(ours - ref) / ref))
    print(f"{'stage':32s} {'s':>8s} {'fastad speedup':>15s}")
    print(f"{'fit fastad (float64 sums)':32s} {t_fit_f:8.3f}")
    print(f"{'fit sklearn float64':32s} {t_fit_s64:8.3f}")
    for k, t in rows.items():
        sp = t / rows["fastad decision_function"]
        print(f"{k:32s} {t:8.4f} {sp:14.2f}x")
    print(f"max relative difference of fastad's d2 vs sklearn float64: {rel:.2e}")
    res.update(score_s=rows, fit_s_fastad=t_fit_f, fit_s_sklearn64=t_fit_s64, fit_s_sklearn32=t_fit_s32,
               speedup_vs_sklearn64=rows["sklearn mahalanobis float64"] / rows["fastad decision_function"],
               speedup_vs_sklearn32=rows["sklearn mahalanobis float32"] / rows["fastad decision_function"],
               max_rel_d2_diff=rel)

    # ---- the op alone vs torch on the full factor
    mean = det._mean32
    L = det._factor32
    Lbf = L.to(torch.bfloat16)
    ops_rows = {}
    for name, fn in (("torch (x - m) @ L, sum of squares", lambda: ((Y - mean) @ L).square().sum(1)),
                     ("fastad.ops.mahalanobis float32", lambda: ops.mahalanobis(Y, mean, L)),
                     ("fastad.ops.mahalanobis bfloat16", lambda: ops.mahalanobis(Y, mean, Lbf))):
        _, t = best_of(fn, a.repeats)
        ops_rows[name] = t
    roof32, roof16 = gemm_roof(torch.float32), gemm_roof(torch.bfloat16)
    useful, dense = n * d * (d + 1), 2 * n * d * d
    t0 = ops_rows["torch (x - m) @ L, sum of squares"]
    for k, t in ops_rows.items():
        fl = dense if k.startswith("torch") else useful
        roof = roof16 if "bfloat16" in k else roof32
        print(f"{k:36s} {t:8.4f} s {t0 / t:6.2f}x {fl / t / 1e9:7.1f} GFLOP/s {100 * fl / t / 1e9 / roof:5.1f}% of roof")
    print(f"GEMM roof (torch.mm 2048^3): float32 {roof32:.1f} GFLOP/s, bfloat16 {roof16:.1f} GFLOP/s")
    res.update(op_s=ops_rows, gemm_roof_f32_gflops=roof32, gemm_roof_bf16_gflops=roof16,
               op_roof_pct_f32=100 * useful / ops_rows["fastad.ops.mahalanobis float32"] / 1e9 / roof32)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
