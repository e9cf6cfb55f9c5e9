"""PaDiM at anomalib's wide-ResNet setting on synthetic features (``bench_padim.py --synthetic``):
d = 550 channels, 28 x 28 = 784 positions, 200 training and 32 test images, 1 thread by default.

- fit, ``fit_repeats`` interleaved rounds of (fastad, anomalib), each side's minimum reported next to its
  first round (a VM's first touch of fresh memory is slow: measured 2.4 s for the first fill of a fresh
  0.95 GB buffer, 0.12 s for the next; whichever side allocates first pays it):
  ``fastad.gaussian.gaussian_fit(x, ddof=1, reg=0.01 + 1e-5, compute_dtype=..., factor_kind="cholesky")``
  (what ``PaDiM.fit_features`` runs for a float32 model: ``gaussian_accumulate`` (SYRK) + one float32
  Cholesky per position (``--fit-dtype float64``: float64), no inverse; per-stage CPU seconds printed), the
  other factorisation dtype and the precision-factor route (Cholesky + triangular inverse, float64: what
  half-precision models fit) timed too, with their distances' difference; vs anomalib 2.7.0
  ``MultiVariateGaussian.fit`` (per-position covariance loop + batched float32 inverse); peak extra
  memory (RSS sampled every 2 ms above the level before the call) vs the fitted model's bytes;
- scoring: ``fastad.ops.mahalanobis(..., cholesky=True)`` (PaDiM's float32 route: the fused triangular
  solve) and with a float32 / bfloat16 precision factor vs anomalib's
  ``AnomalyMapGenerator.compute_distance`` (its float32 ``matmul(delta, inv) * delta``), and vs
  ``torch.linalg.solve_triangular`` with the same Cholesky factor; GFLOP/s and % of the machine's GEMM roof (MKL/oneDNN
  ``torch.mm`` 2048^3 in the same run; bf16 against the bf16 ``torch.mm``); the AVX2 kernel forced by
  ``FASTAD_FORCE_AVX2=1`` (what CPUs without AVX-512 run; AMD CPUs use its 6 x 16 kernel for float32 factors
  too) and the 6 x 32 AVX-512 one by ``FASTAD_MAHA_AVX512=1``.
All interleaved in one process.
"""
from __future__ import annotations

import os
import threading
import time

import torch
from _machine import cpu_model  # noqa: E402  (benchmarks/ is the script's folder on sys.path)


class PeakRSS:
    """Peak resident memory above the level at entry (bytes), sampled every 2 ms from /proc."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self._rss()
        self.peak = self.base
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.extra = self.peak - self.base


def best_of(fn, repeats):
    """(output, best process CPU seconds): on a shared machine CPU time is the robust measure (1 thread)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return out, best


def timed(fn):
    """(output, wall seconds, process CPU seconds)"""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def gemm_roof(dtype, n=2048, repeats=3):
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    _, t = best_of(lambda: torch.mm(a, b), repeats)
    return 2 * n**3 / t / 1e9


def interleaved_fit_rounds(fit_fastad, new_anomalib, fit_anomalib, repeats, stages):
    """Interleaved fit rounds, fastad then anomalib, each timed (process CPU and wall seconds) under PeakRSS;
    the previous round's models are freed first (their pages are reused). ``new_anomalib()`` builds the
    anomalib estimator (not timed), ``fit_anomalib(est)`` fits it; ``stages(result)`` gives fastad's stage
    CPU seconds. Prints each round; returns (rounds, last fastad result, last anomalib estimator)."""
    rounds, res, est = [], None, None
    for r in range(max(1, repeats)):
        res = est = None
        with PeakRSS() as m_f:
            res, w_f, t_f = timed(fit_fastad)
        est = new_anomalib()
        with PeakRSS() as m_a:
            _, w_a, t_a = timed(lambda: fit_anomalib(est))
        rounds.append(dict(fastad_cpu_s=t_f, anomalib_cpu_s=t_a, fastad_wall_s=w_f, anomalib_wall_s=w_a,
                           fastad_peak_extra=m_f.extra, anomalib_peak_extra=m_a.extra,
                           fit_stages_cpu_s=dict(stages(res))))
        print(f"fit round {r + 1}: fastad {t_f:.2f} CPU-s (" + ", ".join(
            f"{k} {v:.2f}" for k, v in rounds[-1]["fit_stages_cpu_s"].items()) + f"), anomalib {t_a:.2f} CPU-s -> "
            f"{t_a / t_f:.2f}x", flush=True)
    return rounds, res, est


def run_synthetic(threads: int = 1, repeats: int = 3, d: int = 550, h: int = 28, n_train: int = 200, n_test: int = 32,
                  fit_dtype: str = "float32", fit_repeats: int = 3):
    import fastad
    from fastad import ops
    from fastad.gaussian import gaussian_fit

    import _anomalib_patchcore as A

    MVG, AMG, version = A.load_padim()
    torch.set_num_threads(threads)
    P = h * h
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(P, d, generator=g)
    train = (torch.randn(n_train, P, d, generator=g) + mu).contiguous()  # [N, P, d] (fastad layout)
    test = (torch.randn(n_test, P, d, generator=g) * 1.2 + mu).contiguous()
    emb_train = train.permute(0, 2, 1).reshape(n_train, d, h, h)  # anomalib layout [B, C, H, W] (views)
    emb_test = test.permute(0, 2, 1).reshape(n_test, d, h, h).contiguous()
    info = fastad.build_info()
    print(f"PaDiM synthetic: d={d}, {h}x{h} positions, {n_train} train / {n_test} test images, threads={threads}; "
          f"CPU: {cpu_model()}; fastad kernel: {info.get('dist_micro_kernel', info.get('simd'))}; anomalib {version}",
          flush=True)
    res = {"anomalib_version": version, "cpu": cpu_model(), "threads": threads, "d": d, "positions": P,
           "train_images": n_train, "test_images": n_test}

    # ---- fit, interleaved: fastad, anomalib
    gaussian_fit(train[:, :2], ddof=1, reg=0.01)  # warm-up: scipy's LAPACK import (not timed)
    cdt = {"float64": torch.float64, "float32": torch.float32}[fit_dtype]
    other = torch.float32 if cdt == torch.float64 else torch.float64

    def fit(dt, kind="cholesky"):
        return gaussian_fit(train, ddof=1, reg=0.01 + 1e-5, factor_dtype=torch.float32, keep_covariance=False,
                            compute_dtype=dt, factor_kind=kind)

    emb_train_c = emb_train.contiguous()  # anomalib gets its own [B, C, H, W] tensor (not timed)
    # interleaved rounds; each side's minimum (and its first round)
    rounds, model, gauss = interleaved_fit_rounds(lambda: fit(cdt), MVG, lambda g: g.fit(emb_train_c), fit_repeats,  # noqa: F821
                                                  lambda m: getattr(m, "fit_timings_", {}))
    ex_f = max(x["fastad_peak_extra"] for x in rounds)
    ex_a = max(x["anomalib_peak_extra"] for x in rounds)
    del emb_train_c
    t_fit_f, t_fit_a = min(x["fastad_cpu_s"] for x in rounds), min(x["anomalib_cpu_s"] for x in rounds)
    w_fit_f, w_fit_a = min(x["fastad_wall_s"] for x in rounds), min(x["anomalib_wall_s"] for x in rounds)
    model_bytes = model.factor.numel() * model.factor.element_size() + model.mean.numel() * 4
    model_o, _, t_fit_o = timed(lambda: fit(other))  # the other factorisation dtype (after anomalib: interleaved)
    # distances of the two factorisations on the test images (relative), a measure of float32's error
    d_c = ops.mahalanobis(test, model.mean.float(), model.factor, cholesky=True).double()
    d_o = ops.mahalanobis(test, model_o.mean.float(), model_o.factor, cholesky=True).double()
    rel_fit = ((d_c - d_o).abs() / d_o.abs().clamp_min(1e-12)).max().item()
    del model_o
    model_p, _, t_fit_p = timed(lambda: fit(torch.float64, "precision"))  # the precision-factor route
    d_p = ops.mahalanobis(test, model_p.mean.float(), model_p.factor).double()
    rel_route = ((d_c - d_p).abs() / d_p.abs().clamp_min(1e-12)).max().item()
    best = min(rounds, key=lambda x: x["fastad_cpu_s"])
    stages = best["fit_stages_cpu_s"]
    res.update(fit_repeats=len(rounds), fit_rounds=rounds,
               fit_speedup_cpu_first_round=rounds[0]["anomalib_cpu_s"] / rounds[0]["fastad_cpu_s"])
    res.update(fit_stages_cpu_s=stages, fit_cpu_s_precision_route_f64=t_fit_p,
               fit_speedup_cpu_precision_route_f64=t_fit_a / t_fit_p, max_rel_d2_diff_cholesky_vs_precision_route=rel_route,
               n_refactored_f64=getattr(model, "n_refactored_", None))
    a_bytes = gauss.inv_covariance.numel() * 4 + gauss.mean.numel() * 4
    res.update(fit_dtype=fit_dtype, fit_cpu_s_other_dtype=t_fit_o, fit_speedup_cpu_other_dtype=t_fit_a / t_fit_o,
               max_rel_d2_diff_f32_vs_f64_factorisation=rel_fit)
    res.update(fit_cpu_s_fastad=t_fit_f, fit_cpu_s_anomalib=t_fit_a, fit_speedup_cpu=t_fit_a / t_fit_f,
               fit_wall_s_fastad=w_fit_f, fit_wall_s_anomalib=w_fit_a, fit_speedup_wall=w_fit_a / w_fit_f,
               model_bytes=model_bytes, peak_extra_bytes_fastad=ex_f, peak_extra_ratio_fastad=ex_f / model_bytes,
               anomalib_model_bytes=a_bytes, peak_extra_bytes_anomalib=ex_a,
               peak_extra_ratio_anomalib=ex_a / a_bytes)
    print(f"fit (CPU s, min of {len(rounds)} interleaved rounds; first round "
          f"{res['fit_speedup_cpu_first_round']:.2f}x): fastad {t_fit_f:.2f} s, anomalib MultiVariateGaussian.fit "
          f"{t_fit_a:.2f} s -> {t_fit_a / t_fit_f:.2f}x "
          f"(wall {w_fit_f:.2f} / {w_fit_a:.2f} s -> {w_fit_a / w_fit_f:.2f}x); "
          f"peak extra memory fastad {ex_f / 2**30:.2f} GiB = {ex_f / model_bytes:.2f}x its model "
          f"({model_bytes / 2**30:.2f} GiB); anomalib {ex_a / 2**30:.2f} GiB = {ex_a / a_bytes:.2f}x", flush=True)
    print(f"fit with fit_dtype={fit_dtype}; with {str(other).split('.')[-1]} factorisation instead: {t_fit_o:.2f} s -> "
          f"{t_fit_a / t_fit_o:.2f}x; max relative d2 difference float32 vs float64 factorisation: {rel_fit:.2e}", flush=True)
    print("fit stages (CPU s, fastad's fastest round): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
          + f"; positions refactorised in float64: {getattr(model, 'n_refactored_', None)}", flush=True)
    print(f"precision-factor route (float64 Cholesky + triangular inverse, what half-precision models fit): {t_fit_p:.2f} s "
          f"-> {t_fit_a / t_fit_p:.2f}x; max relative d2 difference to the Cholesky route: {rel_route:.2e}", flush=True)

    # ---- scoring, interleaved
    mean, C32, L32 = model.mean.float(), model.factor, model_p.factor
    del model_p
    Lbf = L32.to(torch.bfloat16)
    inv, amean = gauss.inv_covariance, gauss.mean
    compute_distance = AMG.compute_distance

    def anomalib_score():
        return compute_distance(emb_test, (amean, inv))

    def ours(L):
        return lambda: ops.mahalanobis(test, mean, L)

    def ours_solve():
        return ops.mahalanobis(test, mean, C32, cholesky=True)

    def tri_solve():  # torch's triangular solve with the same Cholesky factor
        delta = (test - mean).permute(1, 2, 0)  # [P, d, N]
        return torch.linalg.solve_triangular(C32, delta, upper=False).square().sum(1)

    rows = {}
    for name, fn in (("anomalib compute_distance", anomalib_score), ("fastad Cholesky solve (PaDiM)", ours_solve),
                     ("fastad float32 factor", ours(L32)),
                     ("fastad bfloat16 factor", ours(Lbf)), ("torch solve_triangular", tri_solve),
                     ("anomalib compute_distance ", anomalib_score)):
        out, t = best_of(fn, repeats)
        key = name.strip()
        rows[key] = min(t, rows.get(key, float("inf")))
        if key == "fastad Cholesky solve (PaDiM)":
            d_ours = out
        if key == "anomalib compute_distance":
            d_ref = out
    # agreement: anomalib returns sqrt distances [B, 1, H, W]
    ref2 = d_ref.reshape(n_test, P).double().square()
    rel32 = ((d_ours.double() - ref2).abs() / ref2.clamp_min(1e-6)).max().item()
    os.environ["FASTAD_FORCE_NO_BF16"] = "1"
    _, t_bf_nodot = best_of(ours(Lbf), repeats)
    del os.environ["FASTAD_FORCE_NO_BF16"]
    os.environ["FASTAD_MAHA_AVX512"] = "1"  # the 6 x 32 AVX-512 kernel (AMD CPUs default to 6 x 16 for fp32)
    _, t_512 = best_of(ours(L32), repeats)
    del os.environ["FASTAD_MAHA_AVX512"]
    os.environ["FASTAD_FORCE_AVX2"] = "1"  # the 6 x 16 AVX2/FMA kernel (CPUs without AVX-512)
    d_avx2, t_avx2 = best_of(ours(L32), repeats)
    _, t_avx2_bf = best_of(ours(Lbf), repeats)
    del os.environ["FASTAD_FORCE_AVX2"]
    rel_avx2 = ((d_avx2.double() - d_ours.double()).abs() / d_ours.double().clamp_min(1e-6)).max().item()
    roof32, roof16 = gemm_roof(torch.float32), gemm_roof(torch.bfloat16)
    useful = n_test * P * d * (d + 1)  # triangular multiply-adds x 2 flops
    dense = 2 * n_test * P * d * d
    t_a = rows["anomalib compute_distance"]
    print(f"{'scoring (32 images, CPU s)':32s} {'s':>8s} {'vs anomalib':>12s} {'GFLOP/s':>9s} {'% roof':>7s}")
    for key, t in rows.items():
        fl = dense if key.startswith("anomalib") else useful
        roof = roof16 if "bfloat16" in key else roof32
        print(f"{key:32s} {t:8.4f} {t_a / t:11.2f}x {fl / t / 1e9:9.1f} {100 * fl / t / 1e9 / roof:6.1f}%")
    print(f"bfloat16 factor widened to float32 (FASTAD_FORCE_NO_BF16=1): {t_bf_nodot:.4f} s, {t_a / t_bf_nodot:.2f}x")
    print(f"6 x 32 AVX-512 kernel with the float32 factor (FASTAD_MAHA_AVX512=1): {t_512:.4f} s, {t_a / t_512:.2f}x "
          f"({useful / t_512 / 1e9:.1f} GFLOP/s)")
    print(f"AVX2 kernel (FASTAD_FORCE_AVX2=1): float32 factor {t_avx2:.4f} s, {t_a / t_avx2:.2f}x "
          f"({useful / t_avx2 / 1e9:.1f} GFLOP/s); bfloat16 factor {t_avx2_bf:.4f} s, {t_a / t_avx2_bf:.2f}x; "
          f"max relative difference to the default path {rel_avx2:.1e}")
    print(f"GEMM roof (torch.mm 2048^3, 1 thread): float32 {roof32:.1f} GFLOP/s, bfloat16 {roof16:.1f} GFLOP/s; "
          f"max relative difference of fastad's float32 d2 vs anomalib's: {rel32:.2e}", flush=True)
    t_s = rows["fastad Cholesky solve (PaDiM)"]
    res.update(score_s=rows, scoring_speedup_f32=t_a / t_s, scoring_speedup_f32_precision=t_a / rows["fastad float32 factor"],
               roof_pct_f32_solve=100 * useful / t_s / 1e9 / roof32,
               scoring_speedup_bf16=t_a / rows["fastad bfloat16 factor"],
               scoring_speedup_bf16_no_dot=t_a / t_bf_nodot,
               scoring_speedup_f32_avx2=t_a / t_avx2, scoring_speedup_f32_avx512_6x32=t_a / t_512, scoring_speedup_bf16_avx2=t_a / t_avx2_bf,
               torch_trisolve_vs_ours=rows["torch solve_triangular"] / t_s,
               gemm_roof_f32_gflops=roof32, gemm_roof_bf16_gflops=roof16,
               roof_pct_f32=100 * useful / rows["fastad float32 factor"] / 1e9 / roof32,
               roof_pct_bf16=100 * useful / rows["fastad bfloat16 factor"] / 1e9 / roof16,
               max_rel_d2_diff_f32=rel32)
    return res


def run_synthetic_maps(threads: int = 1, fit_repeats: int = 3, n_train: int = 200, n_features: int = 550,
                       layers=((28, 256), (14, 512), (7, 1024)), batch: int = 32):
    """PaDiM's fit from multi-layer maps (``bench_padim.py --synthetic-maps``): random maps of three layers
    (anomalib's wide-ResNet shape at a 28 x 28 model grid: 256 / 512 / 1024 channels on 28 x 28 / 14 x 14 /
    7 x 7), ``n_features`` channels kept; fastad ``PaDiM.fit_features`` (row gather, shared rows of the
    nearest-upsampled layers, float32 Cholesky) vs anomalib's ``generate_embedding`` (nearest resize,
    concatenation, channel subset) + ``MultiVariateGaussian.fit`` on the same channels; interleaved rounds,
    each side's minimum CPU seconds, peak extra memory; the distances of both models on 8 test images."""
    import torch.nn.functional as F

    import fastad
    from fastad import ops
    from fastad.detectors import PaDiM

    import _anomalib_patchcore as A

    MVG, AMG, version = A.load_padim()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    names = [f"layer{i + 1}" for i in range(len(layers))]

    def maps(n):
        out = []
        for b0 in range(0, n, batch):
            nb = min(batch, n - b0)
            out.append({k: torch.randn(nb, c, h, h, generator=g) + 0.5 for k, (h, c) in zip(names, layers)})
        return out

    train, test = maps(n_train), maps(8)
    h0 = layers[0][0]
    info = fastad.build_info()
    print(f"PaDiM fit from maps: layers {[(h, c) for h, c in layers]} (grid, channels), {n_features} kept, "
          f"{h0}x{h0} positions, {n_train} train images, threads={threads}; CPU: {cpu_model()}; fastad kernel: "
          f"{info.get('dist_micro_kernel', info.get('simd'))}; anomalib {version}", flush=True)

    def new_det():
        return PaDiM(backbone=None, layers=names, n_features=n_features, progress=False, random_state=0)

    PaDiM(backbone=None, layers=names, n_features=8, progress=False).fit_features(train[:1])  # warm-up
    idx = new_det().fit_features(train[:1]).channel_idx_  # (the kept channels; fit order, coarsest first)

    def anomalib_embedding(f):  # PadimModel.generate_embedding, the same channels
        emb = f[names[0]]
        for k in names[1:]:
            emb = torch.cat((emb, F.interpolate(f[k], size=emb.shape[-2:], mode="nearest")), 1)
        return torch.index_select(emb, 1, idx)

    rounds, det, gauss = interleaved_fit_rounds(
        lambda: new_det().fit_features(train), MVG,
        lambda g: g.fit(torch.vstack([anomalib_embedding(f) for f in train])), fit_repeats, lambda m: m.fit_stage_cpu_)
    assert torch.equal(det.channel_idx_, idx)
    t_f, t_a = min(x["fastad_cpu_s"] for x in rounds), min(x["anomalib_cpu_s"] for x in rounds)
    d = idx.numel()
    P = h0 * h0
    full = n_train * P * d * (d + 1)
    model_bytes = det.factor_.numel() * 4 + det.mean_.numel() * 4
    ex_f = max(x["fastad_peak_extra"] for x in rounds)
    # distances of both models on test images (anomalib: its float32 inverse)
    x = torch.cat([det._positions(f, torch.device("cpu")) for f in test])
    d_f = ops.mahalanobis(x, det.mean_, det.factor_, cholesky=True).double()
    emb = torch.cat([anomalib_embedding(f) for f in test])
    d_a = AMG.compute_distance(emb, (gauss.mean, gauss.inv_covariance)).reshape(x.shape[0], P).double().square()
    rel = ((d_f - d_a).abs() / d_a.clamp_min(1e-6)).max().item()
    print(f"fit from maps (CPU s, min of {len(rounds)} interleaved rounds; first round "
          f"{rounds[0]['anomalib_cpu_s'] / rounds[0]['fastad_cpu_s']:.2f}x): fastad {t_f:.2f} s, anomalib "
          f"generate_embedding + MultiVariateGaussian.fit {t_a:.2f} s -> {t_a / t_f:.2f}x; SYRK products formed: "
          f"{det.fit_syrk_flops_ / 1e9:.1f} of {full / 1e9:.1f} GFLOP ({100 * det.fit_syrk_flops_ / full:.0f}%, shared rows);"
          f" peak extra memory {ex_f / 2**30:.2f} GiB = {ex_f / model_bytes:.2f}x the model; max relative d2 "
          f"difference vs anomalib {rel:.2e}", flush=True)
    return {"anomalib_version": version, "cpu": cpu_model(), "threads": threads, "layers": [list(x) for x in layers],
            "n_features": d, "positions": P, "train_images": n_train, "fit_rounds": rounds,
            "fit_cpu_s_fastad": t_f, "fit_cpu_s_anomalib": t_a, "fit_speedup_cpu": t_a / t_f,
            "syrk_gflop_formed": det.fit_syrk_flops_ / 1e9, "syrk_gflop_full": full / 1e9,
            "model_bytes": model_bytes, "peak_extra_ratio_fastad": ex_f / model_bytes, "max_rel_d2_diff": rel}
