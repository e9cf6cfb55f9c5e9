"""Lee et al.'s Mahalanobis detector on MTD (one class: the good tiles), plain vs input pre-processing +
logistic-regression layer ensemble calibrated on a small labelled validation set.

    .venv/bin/python benchmarks/lee_mtd.py [--image-size 160] [--n-train 200] [--n-val 20] [--n-test 100] [--out JSON]
    (data: $FASTAD_MTD or ../shared/data/mtd)

EfficientNet-Lite0 taps ``_blocks.4, _blocks.10, _blocks.15`` (40 / 112 / 320 channels), Ledoit-Wolf tied
covariance (``n-train`` good images, seeded), validation = ``n-val`` good + ``n-val`` defective test images,
test = a disjoint seeded ``n-test`` good + ``n-test`` defective; eps grid (0, 0.0005, 0.002, 0.005). The
pre-processing costs one forward + backward + forward per layer and image, so the sets are kept small.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from _mtd import mtd_parser, mtd_splits  # noqa: E402  (benchmarks/ is the script's folder on sys.path)


def main():
    ap = mtd_parser(__doc__, image_size=160)
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=20)
    ap.add_argument("--n-test", type=int, default=100)
    a = ap.parse_args()
    tr, te = mtd_splits(a)
    from fastad import metrics
    from fastad.detectors import LeeMahalanobis

    g = torch.Generator().manual_seed(0)

    def stack(ds, idx):
        return torch.stack([ds[int(i)]["image"] for i in idx])

    Xtr = stack(tr, torch.randperm(len(tr), generator=g)[: a.n_train])
    y = torch.as_tensor(te.labels)
    good, bad = (y == 0).nonzero()[:, 0], (y == 1).nonzero()[:, 0]
    good, bad = good[torch.randperm(len(good), generator=g)], bad[torch.randperm(len(bad), generator=g)]
    val_idx = torch.cat([good[: a.n_val], bad[: a.n_val]])
    test_idx = torch.cat([good[a.n_val : a.n_val + a.n_test], bad[a.n_val : a.n_val + a.n_test]])
    Xval, yval, Xte, yte = stack(te, val_idx), y[val_idx], stack(te, test_idx), y[test_idx]
    layers = ["_blocks.4", "_blocks.10", "_blocks.15"]
    res = {"image_size": a.image_size, "n_train": a.n_train, "n_val": 2 * a.n_val, "n_test": 2 * a.n_test, "layers": layers, "rows": []}
    t0 = time.perf_counter()
    det = LeeMahalanobis(layers=layers, shrinkage="ledoit_wolf", noise_magnitudes=(0.0, 0.0005, 0.002, 0.005),
                         ensemble=True, batch_size=8, progress=False).fit(Xtr)
    print(f"fit {time.perf_counter() - t0:.1f} s ({a.n_train} images, {a.image_size} px)", flush=True)
    plain = det.layer_scores(Xte, 0.0)
    auc_plain = float(metrics.auroc(plain.mean(1).double(), yte))
    per_layer = [float(metrics.auroc(plain[:, j].double(), yte)) for j in range(len(layers))]
    print(f"plain (eps 0, mean of layers): test AUROC {auc_plain:.4f}; per layer {[round(v, 4) for v in per_layer]}", flush=True)
    t0 = time.perf_counter()
    det.calibrate(Xval, yval)
    print(f"calibrate {time.perf_counter() - t0:.1f} s: validation AUROC per eps {det.calibration_auroc_}; "
          f"eps_ = {det.eps_}; ensemble coef {det.ensemble_coef_.tolist()}", flush=True)
    t0 = time.perf_counter()
    s = det.decision_function(Xte)
    auc_cal = float(metrics.auroc(s.double(), yte))
    print(f"calibrated (eps {det.eps_} + LR ensemble): test AUROC {auc_cal:.4f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    ens0 = (plain.double() @ det.ensemble_coef_ + det.ensemble_intercept_) if det.eps_ != 0 else s.double()
    res.update(auroc_plain=auc_plain, auroc_per_layer=per_layer, auroc_calibrated=auc_cal, eps=det.eps_,
               validation_auroc=det.calibration_auroc_, ensemble_coef=det.ensemble_coef_.tolist(),
               auroc_ensemble_eps0=float(metrics.auroc(ens0, yte)))
    print(f"ensemble weights at eps 0 on the test set: AUROC {res['auroc_ensemble_eps0']:.4f}")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1, default=str))
        print("wrote", a.out)


if __name__ == "__main__":
    main()
