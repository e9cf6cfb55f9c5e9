"""GaussianAD (Rippel et al.) on MTD: EfficientNet-Lite0 stage levels, Ledoit-Wolf per level; image AUROC
and the recall / precision / false-positive rate of each threshold rule, for no reduction, PCA and NPCA.

    .venv/bin/python benchmarks/gaussian_mtd.py [--fpr 0.01] [--variance-threshold 0.99] [--out JSON]
    (data: $FASTAD_MTD or ../shared/data/mtd)

The backbone runs once: each level's feature maps are pooled (GAP) and the detectors are fitted on
``[B, C, 1, 1]`` maps (GAP of a 1x1 map is the identity). The training set (700 good images) is split
80 / 20 (seeded): the Gaussians are fitted on the 80%, and the ``heldout`` threshold is the
``1 - fpr`` quantile of the held-out 20%'s scores. ``quantile`` is the ``1 - fpr`` quantile of the
training images' own (in-sample) scores; ``chi2/<rule>`` are from the chi-square law (no data).
Recall = share of defective test images flagged; precision = share of flagged images that are
defective; FPR = share of good test images flagged (the target is ``fpr``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from _machine import cpu_model  # noqa: E402  (benchmarks/ is the script's folder on sys.path)
from _mtd import mtd_parser, mtd_splits  # noqa: E402


def main():
    ap = mtd_parser(__doc__, image_size=224)
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--variance-threshold", type=float, default=0.99)
    a = ap.parse_args()
    tr, te = mtd_splits(a)
    from fastad import metrics
    from fastad.data import batches
    from fastad.detectors import GaussianAD
    from fastad.detectors.gaussian import CHI2_RULES, EFFICIENTNET_LITE0_LEVELS
    from fastad.features import FeatureExtractor, get_backbone

    bb = get_backbone("efficientnet_lite0")
    fx = FeatureExtractor(bb.model, EFFICIENTNET_LITE0_LEVELS, batch_size=16, channels_last=True)

    def pooled(ds):
        out = {k: [] for k in EFFICIENTNET_LITE0_LEVELS}
        for b in batches(ds, 16):
            for k, f in fx(b["image"] if isinstance(b, dict) else b).items():
                out[k].append(f.float().mean(dim=(2, 3), keepdim=True))
        return {k: torch.cat(v) for k, v in out.items()}

    t0 = time.perf_counter()
    ftr, fte = pooled(tr), pooled(te)
    t_feat = time.perf_counter() - t0
    y = torch.as_tensor(te.labels).bool()
    n = len(tr)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    fit_idx, held_idx = perm[: int(0.8 * n)], perm[int(0.8 * n) :]
    print(f"CPU: {cpu_model()}; torch threads {a.threads}; MTD {n} train / {len(te)} test ({int(y.sum())} defective); "
          f"features {t_feat:.1f} s; levels {EFFICIENTNET_LITE0_LEVELS}")
    print(f"fit on {len(fit_idx)} train images, held-out {len(held_idx)}; target FPR {a.fpr}")
    res = {"cpu": cpu_model(), "fpr_target": a.fpr, "variance_threshold": a.variance_threshold, "n_fit": len(fit_idx),
           "n_heldout": len(held_idx), "n_test_good": int((~y).sum()), "n_test_defective": int(y.sum()), "rows": []}
    print(f"{'reduction':9s} {'dims':>22s} {'AUROC':>6s} | {'threshold':18s} {'value':>8s} {'recall':>6s} {'prec':>6s} {'FPR':>6s}")
    for red in (None, "pca", "npca"):
        det = GaussianAD(backbone=None, layers=EFFICIENTNET_LITE0_LEVELS, reduction=red,
                         variance_threshold=a.variance_threshold, threshold="quantile", fpr=a.fpr, progress=False)
        det.fit_features({k: v[fit_idx] for k, v in ftr.items()})
        s, _ = det.score_features(fte)
        held, _ = det.score_features({k: v[held_idx] for k, v in ftr.items()})
        auc = float(metrics.auroc(s.double(), y.long()))
        dims = [det.level_dims_[k] for k in det.layers_]
        thresholds = {"quantile (in-sample)": det.threshold_,
                      "heldout": float(torch.quantile(held.double(), 1 - a.fpr))}
        for rule in CHI2_RULES:
            thresholds[f"chi2/{rule}"] = det.chi2_threshold(rule=rule)
        for name, t in thresholds.items():
            flag = s > t
            tp, fp = int((flag & y).sum()), int((flag & ~y).sum())
            recall, fprate = tp / int(y.sum()), fp / int((~y).sum())
            prec = tp / max(tp + fp, 1)
            print(f"{str(red):9s} {str(dims):>22s} {auc:6.4f} | {name:18s} {t:8.3f} {recall:6.3f} {prec:6.3f} {fprate:6.3f}")
            res["rows"].append({"reduction": red, "level_dims": dims, "auroc": auc, "threshold_rule": name,
                                "threshold": t, "recall": recall, "precision": prec, "fpr": fprate})
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
        print("wrote", a.out)


if __name__ == "__main__":
    main()
