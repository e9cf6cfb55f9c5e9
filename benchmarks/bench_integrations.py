"""fastad inside other frameworks, against the frameworks' own code, interleaved in one process.

    .venv/bin/python benchmarks/bench_integrations.py --part pyod [--n-train 10000 --dim 64]
    .venv-anomalib/bin/python benchmarks/bench_integrations.py --part anomalib [--n-train 8 --n-test 8]
    .venv/bin/python benchmarks/bench_integrations.py --part pyod-image [--n-train 100 --n-test 50]

``pyod``: PyOD's ``KNN`` / ``LOF`` (their defaults: scikit-learn trees, float64) against
``fastad.integrations.pyod.KNN`` / ``LOF`` (the same PyOD API on fastad's k-NN kernel): fit (training
scores, leave-one-out) + ``decision_function`` of the test set, wall seconds, the ratio, the largest
relative score difference. Data: seeded Gaussian clusters + 5% off-cluster test outliers.

``anomalib``: anomalib 2.7's ``Engine.fit`` + ``Engine.predict`` of ``Patchcore`` (resnet18
layer2+layer3, coreset ``--coreset-ratio`` 0.1, 9 neighbours) and ``Padim`` (resnet18, 100 features) on an MTD slice
(``--n-train`` train/good images; ``--n-test`` good + ``--n-test`` defective test images), without and
with ``fastad.integrations.anomalib.use_fastad``; the scores and maps must agree (relative 1e-4). The
backbone has random weights (``pre_trained=False``: nothing is downloaded; both runs see the same
features). Needs the real anomalib (``make integration`` builds ``.venv-anomalib``). Keep the slice
small: anomalib's own coreset inside ``Engine.fit`` grows by one ``[N, d]`` temporary per step
(tests/integrations/anomalib_engine.py).

``pyod-image``: ``fastad.integrations.pyod``'s ``PatchCore`` / ``PaDiM`` / ``SPADE`` on MTD patch embeddings
(EfficientNet-Lite0's default taps, PatchCore's 3 x 3 aggregation, 224 px: a 28 x 28 grid; ``--n-train``
seeded train/good images, ``--n-test`` good + ``--n-test`` defective test images): fit (with the
leave-one-out training scores) and ``decision_function`` wall seconds, image AUROC, and PyOD's
``average`` / ``maximization`` of the standardized scores. PatchCore is also fitted as fastad's own
``PatchCore.fit_features`` on the same backbone features (no training scores): the time the
leave-one-image-out scores add, and the largest relative difference of the test scores (the same bank).

Single thread by default (``--threads``); prints the CPU model and the kernel in use; writes
``benchmarks/results/integrations_<part>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from _machine import cpu_model  # noqa: E402  (benchmarks/ is the script's folder on sys.path)

ROOT = Path(__file__).resolve().parents[1]


def bench_pyod(a) -> dict:
    import numpy as np
    import torch
    from pyod.models.knn import KNN as PKNN
    from pyod.models.lof import LOF as PLOF
    from sklearn.metrics import roc_auc_score

    from fastad.integrations.pyod import KNN, LOF

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, a.dim, generator=g) * 3
    X = (centres[torch.randint(0, 20, (a.n_train,), generator=g)] + torch.randn(a.n_train, a.dim, generator=g)).double().numpy()
    n_out = a.n_test // 20
    Yin = centres[torch.randint(0, 20, (a.n_test - n_out,), generator=g)] + torch.randn(a.n_test - n_out, a.dim, generator=g)
    Y = torch.cat([Yin, torch.randn(n_out, a.dim, generator=g) * 3]).double().numpy()
    y = np.r_[np.zeros(a.n_test - n_out), np.ones(n_out)]
    print(f"pyod: train {a.n_train} x {a.dim}, test {a.n_test} ({n_out} outliers)", flush=True)
    rows = []
    for name, theirs, ours in (
        ("KNN k=5", lambda: PKNN(n_neighbors=5), lambda: KNN(n_neighbors=5)),
        ("LOF k=20", lambda: PLOF(n_neighbors=20), lambda: LOF(n_neighbors=20)),
    ):
        times = {"pyod": [], "fastad": []}
        out = {}
        for _ in range(a.repeats):  # interleaved
            for side, make in (("pyod", theirs), ("fastad", ours)):
                t = time.perf_counter()
                det = make().fit(X)
                s = det.decision_function(Y)
                times[side].append(time.perf_counter() - t)
                out[side] = (det.decision_scores_, s)
        rel = max(float(np.max(np.abs(out["fastad"][i] - out["pyod"][i]) / np.maximum(np.abs(out["pyod"][i]), 1e-12)))
                  for i in (0, 1))
        row = {"detector": name, "pyod_s": min(times["pyod"]), "fastad_s": min(times["fastad"]),
               "speedup": min(times["pyod"]) / min(times["fastad"]), "max_rel_diff": rel,
               "auroc_pyod": float(roc_auc_score(y, out["pyod"][1])), "auroc_fastad": float(roc_auc_score(y, out["fastad"][1]))}
        rows.append(row)
        print(f"  {name:9s} PyOD {row['pyod_s']:8.3f} s | fastad {row['fastad_s']:7.3f} s | x{row['speedup']:6.1f} | "
              f"max rel diff {rel:.1e} | AUROC {row['auroc_pyod']:.4f} / {row['auroc_fastad']:.4f}", flush=True)
    return {"n_train": a.n_train, "n_test": a.n_test, "dim": a.dim, "rows": rows}


def bench_pyod_image(a) -> dict:
    import numpy as np
    import torch
    from pyod.models.combination import average, maximization
    from pyod.utils.utility import standardizer
    from sklearn.metrics import roc_auc_score

    from fastad.data import MVTecDataset, batches
    from fastad.detectors import PatchCore as FastadPatchCore
    from fastad.features import get_backbone
    from fastad.integrations.pyod import SPADE, PaDiM, PatchCore

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _mtd import mtd_root

    tr, te = MVTecDataset(mtd_root(), "train", image_size=224), MVTecDataset(mtd_root(), "test", image_size=224)
    g = torch.Generator().manual_seed(0)
    y_all = torch.as_tensor(te.labels)
    good, bad = (y_all == 0).nonzero()[:, 0], (y_all == 1).nonzero()[:, 0]
    test_idx = torch.cat([good[torch.randperm(len(good), generator=g)[: a.n_test]],
                          bad[torch.randperm(len(bad), generator=g)[: a.n_test]]])
    train_idx = torch.randperm(len(tr), generator=g)[: a.n_train]
    bb = get_backbone("efficientnet_lite0")
    fx = bb.extractor(batch_size=16)
    pc = FastadPatchCore(backbone=None, coreset_ratio=a.coreset_ratio, progress=False)

    def features(ds, idx):
        out = {k: [] for k in bb.default_layers}
        for b in batches(torch.utils.data.Subset(ds, idx.tolist()), 16):
            for k, f in fx(b["image"] if isinstance(b, dict) else b).items():
                out[k].append(f.float())
        return {k: torch.cat(v) for k, v in out.items()}

    t0 = time.perf_counter()
    ftr, fte = features(tr, train_idx), features(te, test_idx)
    Etr = pc.embed(ftr, bb.default_layers).permute(0, 2, 3, 1).contiguous()
    Ete = pc.embed(fte, bb.default_layers).permute(0, 2, 3, 1).contiguous()
    y = y_all[test_idx].numpy()
    print(f"pyod-image: MTD {len(train_idx)} train, {int((y == 0).sum())} good + {int(y.sum())} defective test; "
          f"embeddings {list(Etr.shape[1:])} ({time.perf_counter() - t0:.1f} s)", flush=True)
    rows, train_s, test_s = [], [], []
    for name, make in (("PatchCore", lambda: PatchCore(coreset_ratio=a.coreset_ratio)),
                       ("PaDiM", lambda: PaDiM(image_size=(224, 224))), ("SPADE", lambda: SPADE(k_images=50))):
        t = time.perf_counter()
        det = make().fit(Etr)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        s = det.decision_function(Ete)
        row = {"detector": name, "fit_s": fit_s, "decision_function_s": time.perf_counter() - t,
               "auroc": float(roc_auc_score(y, s)), "train_score_range": [float(det.decision_scores_.min()),
                                                                          float(det.decision_scores_.max())]}
        if name == "PatchCore":
            t = time.perf_counter()
            pc.fit_features(ftr)
            row["fastad_fit_features_s"] = time.perf_counter() - t
            ref = pc.score_features(fte, image_size=(224, 224))[0].double().numpy()
            row["max_rel_diff_vs_fastad"] = float(np.max(np.abs(s - ref)) / np.max(np.abs(ref)))
            row["bank_rows"] = int(det.detector_.memory_bank_.shape[0])
            row["fit_timings"] = det.fit_timings_
            row["fastad_fit_timings"] = {k: v for k, v in pc.fit_timings_.items() if k in ("coreset", "total")}
        rows.append(row)
        train_s.append(det.decision_scores_)
        test_s.append(s)
        extra = (f" (coreset {det.fit_timings_['coreset']:.2f} s, leave-one-out scores {det.fit_timings_['leave_one_out']:.2f} s)"
                 f" | fastad fit_features {row['fastad_fit_features_s']:.2f} s (coreset {pc.fit_timings_['coreset']:.2f} s), "
                 f"max rel diff {row['max_rel_diff_vs_fastad']:.1e}" if name == "PatchCore" else "")
        print(f"  {name:9s} fit {fit_s:7.2f} s | decision_function {row['decision_function_s']:6.2f} s | "
              f"AUROC {row['auroc']:.4f}{extra}", flush=True)
    _, test_n = standardizer(np.stack(train_s, 1), np.stack(test_s, 1))
    comb = {"average": float(roc_auc_score(y, average(test_n))), "maximization": float(roc_auc_score(y, maximization(test_n)))}
    print(f"  PyOD combination of the standardized scores: AUROC average {comb['average']:.4f}, "
          f"maximization {comb['maximization']:.4f}", flush=True)
    return {"n_train": len(train_idx), "n_test": len(test_idx), "grid": list(Etr.shape[1:]), "coreset_ratio": a.coreset_ratio,
            "rows": rows, "combination_auroc": comb}


def bench_anomalib(a) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "integrations"))
    import anomalib
    import anomalib_engine as ae

    if not ae.mtd_available():
        raise SystemExit(f"MTD not found at {ae.MTD} (set FASTAD_MTD)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = ae.mtd_slice(Path(tmp) / "mtd", a.n_train, a.n_test)
        print(f"anomalib {anomalib.__version__}: MTD slice {a.n_train} train, {a.n_test} good + {a.n_test} defective test",
              flush=True)
        for kind in ("patchcore", "padim"):
            res = {}
            for routed in (False, True):  # anomalib first, then fastad (same seed, same data)
                res[routed] = ae.run(kind, routed, data, Path(tmp) / f"{kind}_{routed}", batch_size=a.batch_size,
                                     coreset_ratio=a.coreset_ratio)
            ref, got = res[False], res[True]
            rel = float((got["scores"] - ref["scores"]).abs().max() / ref["scores"].abs().max())
            rel_map = float((got["maps"] - ref["maps"]).abs().max() / ref["maps"].abs().max())
            row = {"model": kind, "anomalib_fit_s": ref["fit_s"], "anomalib_predict_s": ref["predict_s"],
                   "fastad_fit_s": got["fit_s"], "fastad_predict_s": got["predict_s"],
                   "fit_speedup": ref["fit_s"] / got["fit_s"], "predict_speedup": ref["predict_s"] / got["predict_s"],
                   "max_rel_diff_scores": rel, "max_rel_diff_maps": rel_map, "same_scores": rel <= 1e-4 and rel_map <= 1e-4}
            if kind == "patchcore":
                row["memory_bank"] = list(ref["model"].model.memory_bank.shape)
                row["same_memory_bank"] = bool(torch.equal(ref["model"].model.memory_bank, got["model"].model.memory_bank))
            rows.append(row)
            print(f"  {kind:9s} fit: anomalib {row['anomalib_fit_s']:7.2f} s, with fastad {row['fastad_fit_s']:7.2f} s "
                  f"(x{row['fit_speedup']:.2f}) | predict: {row['anomalib_predict_s']:6.2f} s vs {row['fastad_predict_s']:6.2f} s "
                  f"(x{row['predict_speedup']:.2f}) | max rel diff scores {rel:.1e} maps {rel_map:.1e}", flush=True)
    return {"anomalib": anomalib.__version__, "n_train": a.n_train, "n_test": a.n_test, "coreset_ratio": a.coreset_ratio,
            "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["pyod", "anomalib", "pyod-image"], required=True)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--coreset-ratio", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    import fastad

    torch.set_num_threads(a.threads)
    if a.part == "pyod":
        a.n_train, a.n_test = a.n_train or 10000, a.n_test or 2000
    elif a.part == "pyod-image":
        a.n_train, a.n_test = a.n_train or 100, a.n_test or 50
    else:
        a.n_train, a.n_test = a.n_train or 8, a.n_test or 8
    info = fastad.build_info()
    print(f"CPU: {cpu_model()} | threads {a.threads} | torch {torch.__version__} | fastad kernel "
          f"{info['dist_micro_kernel']} (simd {info['simd']})", flush=True)
    res = {"pyod": bench_pyod, "anomalib": bench_anomalib, "pyod-image": bench_pyod_image}[a.part](a)
    res.update({"cpu": cpu_model(), "threads": a.threads, "torch": torch.__version__, "kernel": info["dist_micro_kernel"],
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "command": " ".join(["benchmarks/bench_integrations.py"] + sys.argv[1:])})
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"integrations_{a.part.replace('-', '_')}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
