"""PaDiM on MTD: fastad vs anomalib 2.7.0's own PaDiM code (MultiVariateGaussian, AnomalyMapGenerator)
on the same backbone features.

    .venv/bin/python benchmarks/bench_padim.py [--train-images 630] [--threads 1]
    .venv/bin/python benchmarks/bench_padim.py --synthetic [--out JSON]   # d=550, 28x28, 200/32 images
    .venv/bin/python benchmarks/bench_padim.py --synthetic-maps [--out JSON]   # the fit from 3-layer maps

Data: ``$FASTAD_MTD`` or ``../shared/data/mtd``. Images are squash-resized to 224 px and run once
through EfficientNet-Lite0 (ImageNet weights, fastad's fused extractor), taps ``_blocks.4`` (40 ch,
28 x 28) + ``_blocks.10`` (112 ch, 14 x 14): these features are shared by both sides (their
extraction is timed separately and counted on neither side), so the comparison is PaDiM itself:
- fit: the embedding (nearest resize + concatenation + channel subset) and the per-position Gaussians
  (anomalib: ``torch.vstack`` of the training embeddings, then ``MultiVariateGaussian.fit``: a Python
  loop over the 784 positions, float32 ``torch.linalg.inv``; fastad: ``PaDiM.fit_features``: the
  embedding rows by ``ops.gather_maps``, float32 SYRK chunks into float64 sums (``ops.gaussian_accumulate``),
  one float32 LAPACK Cholesky per position, float64 redo of ill-conditioned ones);
- predict: Mahalanobis maps, bilinear upsampling, sigma-4 blur, max (anomalib:
  ``AnomalyMapGenerator`` per batch of 32; fastad: ``PaDiM.score_features``).
Both use the same channel subset (fastad's ``channel_idx_``; all 152 channels by default). Stages
run interleaved in one process, ``torch.set_num_threads(--threads)``; wall and CPU seconds per stage (fit:
the minimum over ``--fit-repeats`` interleaved rounds of both sides, each from the same shared features).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("FASTAD_MTD", str(ROOT.parent / "shared/data/mtd")))
    ap.add_argument("--train-images", type=int, default=630)
    ap.add_argument("--n-features", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON with the figures")
    ap.add_argument("--synthetic", action="store_true",
                    help="anomalib's wide-ResNet setting on random features instead of MTD (see bench_padim_synth.py)")
    ap.add_argument("--synthetic-maps", action="store_true",
                    help="PaDiM's fit from random three-layer maps (wide-ResNet shapes, 550 channels kept) vs "
                         "anomalib's embedding + fit (see bench_padim_synth.run_synthetic_maps)")
    ap.add_argument("--repeats", type=int, default=3, help="--synthetic: scoring repeats (best of)")
    ap.add_argument("--fit-repeats", type=int, default=3,
                    help="interleaved fit rounds (fastad, anomalib), MTD and --synthetic; each side's minimum is reported")
    ap.add_argument("--fit-dtype", default="auto", choices=["auto", "float64", "float32"],
                    help="PaDiM(fit_dtype=...): dtype of the per-position factorisation (auto: PaDiM's default, "
                         "float32 Cholesky with float64 redo of ill-conditioned positions; anomalib: float32)")
    ap.add_argument("--cache", default=None,
                    help="file of the extracted MTD features (written when missing, read when present; not timed)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.synthetic_maps:
        from bench_padim_synth import run_synthetic_maps

        res = run_synthetic_maps(a.threads, fit_repeats=a.fit_repeats)
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=1))
        return
    if a.synthetic:
        from bench_padim_synth import run_synthetic

        res = run_synthetic(a.threads, a.repeats, fit_dtype="float32" if a.fit_dtype == "auto" else a.fit_dtype,
                            fit_repeats=a.fit_repeats)
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=1))
        return

    import fastad
    from _machine import cpu_model
    from fastad import metrics
    from fastad.data import MVTecDataset
    from fastad.detectors import PaDiM
    from fastad.features import FeatureExtractor, get_backbone

    import _anomalib_patchcore as A

    MVG, AMG, version = A.load_padim()

    layers = ["_blocks.4", "_blocks.10"]
    bb = get_backbone("efficientnet_lite0")
    fx = FeatureExtractor(bb.model, layers, batch_size=32, progress=False)
    train_ds, test_ds = MVTecDataset(a.data, "train"), MVTecDataset(a.data, "test")
    g = torch.Generator().manual_seed(0)
    keep = sorted(torch.randperm(len(train_ds), generator=g)[: a.train_images].tolist())

    def feats_of(ds, idx=None):
        from fastad.data import collate

        items = range(len(ds)) if idx is None else idx
        out, extra = [], []
        items = list(items)
        for s in range(0, len(items), 32):
            b = collate([ds[i] for i in items[s : s + 32]])
            out.append({k: v.contiguous() for k, v in fx(b["image"]).items()})
            extra.append(b)
        return out, extra

    key = {"train": keep, "layers": layers, "test_images": len(test_ds)}
    cached = torch.load(a.cache) if a.cache and Path(a.cache).exists() else None
    if cached is not None and cached["key"] == key:
        train_f, test_f, masks, labels = cached["train"], cached["test"], cached["masks"], cached["labels"]
        w_tr = w_te = 0.0
        print(f"features read from {a.cache}", flush=True)
    else:
        (train_f, _), w_tr, _ = timed(lambda: feats_of(train_ds, keep))
        (test_f, test_b), w_te, _ = timed(lambda: feats_of(test_ds))
        masks = torch.cat([b["mask"] for b in test_b]).bool()
        labels = torch.cat([torch.as_tensor(b["label"]) for b in test_b])
        if a.cache:
            torch.save({"key": key, "train": train_f, "test": test_f, "masks": masks, "labels": labels}, a.cache)
    print(f"anomalib {version}; MTD: {len(keep)} train / {len(test_ds)} test images; features extracted in "
          f"{w_tr + w_te:.1f} s (shared); threads={a.threads}; fit_dtype={a.fit_dtype}; CPU: {cpu_model()}; fastad kernel: "
          f"{fastad.build_info().get('dist_micro_kernel', fastad.build_info().get('simd'))}", flush=True)

    rows = {}

    def anomalib_embedding(feats):  # PadimModel.generate_embedding, same subset
        emb = feats[layers[0]]
        for layer in layers[1:]:
            emb = torch.cat((emb, F.interpolate(feats[layer], size=emb.shape[-2:], mode="nearest")), 1)
        return torch.index_select(emb, 1, idx)

    def anomalib_fit():
        bank = torch.vstack([anomalib_embedding(f) for f in train_f])  # the training "memory bank"
        gauss.fit(bank)

    # warm-up, not timed (both sides): first-call costs (scipy's LAPACK import, torch kernels' set-up)
    PaDiM(backbone=None, layers=layers, n_features=a.n_features, progress=False).fit_features(train_f[:1], image_size=(224, 224))
    MVG().fit(train_f[0][layers[0]][:, :8].contiguous())
    # ---- fit, interleaved: --fit-repeats rounds of (fastad, anomalib), the minimum of each side's wall and
    # CPU seconds (the machine is shared: one-shot times swing by +-30%)
    fit_runs: dict[str, list] = {"fastad fit": [], "anomalib fit": []}
    idx = None
    for _ in range(a.fit_repeats):
        det = PaDiM(backbone=None, layers=layers, n_features=a.n_features, progress=False,
                    fit_dtype=None if a.fit_dtype == "auto" else a.fit_dtype)
        _, w, c = timed(lambda: det.fit_features(train_f, image_size=(224, 224)))
        fit_runs["fastad fit"].append((w, c))
        idx = det.channel_idx_
        gauss = MVG()
        _, w, c = timed(anomalib_fit)
        fit_runs["anomalib fit"].append((w, c))
    for k, v in fit_runs.items():
        rows[k] = (min(x[0] for x in v), min(x[1] for x in v))

    # ---- predict, interleaved
    (out_f), w, c = timed(lambda: det.score_features(test_f))
    rows["fastad predict"] = (w, c)
    s_f, m_f = out_f
    amg = AMG()

    def anomalib_predict():
        maps = [amg(embedding=anomalib_embedding(f), mean=gauss.mean, inv_covariance=gauss.inv_covariance,
                    image_size=(224, 224)) for f in test_f]
        m = torch.cat(maps)[:, 0]
        return m.amax(dim=(-2, -1)), m

    (s_a, m_a), w, c = timed(anomalib_predict)
    rows["anomalib predict"] = (w, c)

    print("fastad stages (wall s): fit " + ", ".join(f"{k} {v:.2f}" for k, v in det.fit_timings_.items())
          + "; predict " + ", ".join(f"{k} {v:.2f}" for k, v in getattr(det, "score_timings_", {}).items()), flush=True)
    st = getattr(det, "fit_stage_cpu_", {})
    if st:
        full = idx.numel() * (idx.numel() + 1) * len(keep) * det.feature_grid_[0] * det.feature_grid_[1]
        fl = getattr(det, "fit_syrk_flops_", 0) or full  # the products formed (shared rows: fewer than full)
        a_ = torch.randn(1024, 1024)
        b_ = torch.randn(1024, 1024)
        torch.mm(a_, b_)
        t_mm = min(timed(lambda: torch.mm(a_, b_))[2] for _ in range(5))
        roof = 2 * 1024**3 / t_mm / 1e9
        syrk = fl / st["accumulate"] / 1e9
        print("fastad fit stages (CPU s, last round): " + ", ".join(f"{k} {v:.3f}" for k, v in st.items())
              + f"; SYRK {syrk:.1f} GFLOP/s = {100 * syrk / roof:.0f}% of torch.mm's {roof:.1f} (1024^3, float32), "
              f"{fl / 1e9:.2f} GFLOP formed = {100 * fl / full:.0f}% of the full SYRK's (shared rows of coarse layers)",
              flush=True)
    res = {"anomalib_version": version, "fit_stage_cpu_s": st, "fit_dtype": a.fit_dtype, "fit_repeats": a.fit_repeats,
           "fit_runs_cpu_s": {k: [x[1] for x in v] for k, v in fit_runs.items()}, "cpu": cpu_model(), "train_images": len(keep), "test_images": len(test_ds),
           "channels": int(idx.numel()), "threads": a.threads, "stages": {}}
    if st:
        res["fit_syrk_gflop"] = {"formed": fl / 1e9, "full": full / 1e9, "gflops": syrk, "torch_mm_gflops": roof}
    print(f"{'stage':18s} {'wall s':>8s} {'CPU s':>8s}")
    for k, (w, c) in rows.items():
        print(f"{k:18s} {w:8.2f} {c:8.2f}")
        res["stages"][k] = {"wall_s": w, "cpu_s": c}
    for what in ("fit", "predict"):
        wf, cf = rows[f"fastad {what}"]
        wa, ca = rows[f"anomalib {what}"]
        res[f"{what}_speedup_wall"], res[f"{what}_speedup_cpu"] = wa / wf, ca / cf
        print(f"{what}: fastad {wa / wf:.2f}x anomalib (wall), {ca / cf:.2f}x (CPU)")
    rounds = sorted(a_[1] / f_[1] for f_, a_ in zip(fit_runs["fastad fit"], fit_runs["anomalib fit"]))
    res["fit_speedup_cpu_rounds"] = rounds
    res["fit_speedup_cpu_first_round"] = fit_runs["anomalib fit"][0][1] / fit_runs["fastad fit"][0][1]
    print(f"fit per round (CPU): {', '.join(f'{r:.2f}x' for r in rounds)}; first round "
          f"{res['fit_speedup_cpu_first_round']:.2f}x (fit_speedup_cpu above: min over rounds of each side)")
    tot_f = rows["fastad fit"][0] + rows["fastad predict"][0]
    tot_a = rows["anomalib fit"][0] + rows["anomalib predict"][0]
    res["total_speedup_wall"] = tot_a / tot_f
    print(f"fit + predict: fastad {tot_a / tot_f:.2f}x anomalib (wall)")
    for name, s, m in (("fastad", s_f, m_f), ("anomalib", s_a, m_a)):
        ia = float(metrics.auroc(s.double(), labels))
        pa = float(metrics.auroc(m.float().flatten(), masks.flatten()))
        res[f"{name}_image_auroc"], res[f"{name}_pixel_auroc"] = ia, pa
        print(f"{name:9s} image AUROC {ia:.4f}  pixel AUROC {pa:.4f}")
    d = (m_f - m_a).abs().max().item()
    rel = ((m_f - m_a).abs() / m_a.abs().clamp_min(1e-6)).max().item()
    res["max_abs_map_diff"], res["max_rel_map_diff"] = d, rel
    print(f"maps: max |fastad - anomalib| = {d:.3g} (max relative {rel:.3g})")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
