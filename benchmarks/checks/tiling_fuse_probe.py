"""Why tiled pixel AP trails the 224 squash on MTD, and whether fusing the two maps fixes it.

Step 1 (``--save DET``): fit the squash (224, PIL squash as the CLI) and the tiled (native,
224-px tiles, overlap 0.25, small=fit, image blur sigma 8) detector on the same seeded 50 training
images (bench_tiling's selection), score the 70 held-out normal images and all 644 test images with
both, and save the maps at native resolution (float16) to ``--dir``.
Step 2 (``--eval DET``): per split half (bench_tiling's seeded tune / report halves), pixel AP /
AUROC / AUPRO of squash, tiled and fusions ``w * g + (1 - w) * t`` of the two maps, raw or each map
z-normalised by the mean / std of its pixels (image scores: of its image scores) on the held-out normal
images (what ``set_tiling(fuse_norm="zscore")`` + ``calibrate_fusion`` do), or the maximum of the two
z-maps, plus diagnostics (map levels on normal pixels). ``--half tune`` scores only the tune half:
the fusion is chosen there (``results/tiling_fuse_tune.txt``), never on the report half.

    nice -n 5 .venv/bin/python benchmarks/checks/tiling_fuse_probe.py --save patchcore --dir /tmp/fuse [--half tune]
    nice -n 5 .venv/bin/python benchmarks/checks/tiling_fuse_probe.py --eval patchcore --dir /tmp/fuse
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = os.environ.get("FASTAD_MTD", str(HERE.parents[1].parent / "shared" / "data" / "mtd"))


def halves(paths):
    by_type: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_type.setdefault(Path(p).parent.name, []).append(i)
    r3, tune = random.Random(3), set()
    for t in sorted(by_type):
        ids = by_type[t][:]
        r3.shuffle(ids)
        tune.update(ids[: len(ids) // 2])
    return tune


def save(det_name: str, out: Path, n_train: int = 50, held_out: int = 70, half: str = "all") -> None:
    from fastad.data import MVTecDataset, batches
    from fastad.detectors import PaDiM, PatchCore
    from fastad.pipeline import Subset

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    sq_tr, sq_te = MVTecDataset(ROOT, "train", image_size=224, resize="squash"), MVTecDataset(ROOT, "test", image_size=224, resize="squash")
    nt_tr, nt_te = MVTecDataset(ROOT, "train", resize="none"), MVTecDataset(ROOT, "test", resize="none")
    rng = random.Random(0)
    idx = sorted(rng.sample(range(len(sq_tr)), n_train + held_out))
    rng.shuffle(idx)
    fit_idx, cal_idx = sorted(idx[:n_train]), sorted(idx[n_train:])

    def make():
        if det_name == "patchcore":
            return PatchCore(progress=False, batch_size=16, projection_dim=None, coreset_ratio=0.1, coreset_storage="float16")
        return PaDiM(progress=False, batch_size=16)

    tune = halves(nt_te.paths)
    test_ids = [i for i in range(len(nt_te)) if half == "all" or (i in tune) == (half == "tune")]
    res = {}
    for kind, tr, te, cal_src in (("squash", sq_tr, sq_te, sq_tr), ("tiled", nt_tr, nt_te, nt_tr)):
        det = make()
        if kind == "tiled":
            det.set_tiling(224, 0.25, small="fit", blur="image")
            det.blur_sigma = 8
        t0 = time.process_time()
        det.fit(Subset(tr, fit_idx))
        fit_s = time.process_time() - t0
        maps, scores = [], []
        t1 = time.process_time()
        for ds, ids in ((cal_src, cal_idx), (te, test_ids)):
            sub = Subset(ds, ids)
            for b in batches(sub, 16, ragged=True):
                s, m = det.score(b["image"])
                for j in range(s.numel()):
                    hw = Image_hw(b["path"][j])
                    mp = m[j]
                    if tuple(mp.shape) != hw:
                        mp = F.interpolate(mp[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0]
                    maps.append(mp.half())
                    scores.append(float(s[j]))
        res[kind] = {"fit_s": fit_s, "score_s": time.process_time() - t1}
        torch.save({"maps": maps, "scores": scores, "n_cal": len(cal_idx)}, out / f"{det_name}_{kind}.pt")
        print(kind, res[kind], flush=True)
    masks = [nt_te[i]["mask"].bool() for i in test_ids]
    torch.save({"masks": masks,
                "paths": [nt_te.paths[i] for i in test_ids], "tune": [i in tune for i in test_ids], "timing": res}, out / f"{det_name}_gt.pt")


_HW: dict = {}


def Image_hw(path):
    from PIL import Image

    if path not in _HW:
        with Image.open(path) as im:
            _HW[path] = (im.size[1], im.size[0])
    return _HW[path]


def evaluate(det_name: str, d: Path) -> None:
    from fastad import metrics as M

    gt = torch.load(d / f"{det_name}_gt.pt")
    sq, ti = torch.load(d / f"{det_name}_squash.pt"), torch.load(d / f"{det_name}_tiled.pt")
    nc = sq["n_cal"]
    masks, paths = gt["masks"], gt["paths"]
    tune = {i for i, f in enumerate(gt["tune"]) if f} if "tune" in gt else halves(paths)
    stats = {}
    for k, v in (("g", sq), ("t", ti)):
        cal = torch.cat([m.float().flatten() for m in v["maps"][:nc]])
        stats[k] = (float(cal.mean()), float(cal.std()), float(torch.quantile(cal[::7], 0.99)))
        print(f"{k}: normal held-out pixels mean {stats[k][0]:.3f} std {stats[k][1]:.3f} q99 {stats[k][2]:.3f}")
    gm, tm = sq["maps"][nc:], ti["maps"][nc:]
    gs, ts = torch.tensor(sq["scores"][nc:]), torch.tensor(ti["scores"][nc:])
    # diagnostics: normal-pixel levels on test images, per type
    lv: dict = {}
    for i, p in enumerate(paths):
        t = Path(p).parent.name
        nrm = ~masks[i]
        for k, m in (("g", gm[i]), ("t", tm[i])):
            z = (m.float() - stats[k][0]) / stats[k][1]
            e = lv.setdefault((t, k), [0.0, 0.0, 0, 0.0])
            e[0] += float(z[nrm].sum()) if nrm.any() else 0.0
            e[2] += int(nrm.sum())
            e[1] += float(z[masks[i]].sum()) if masks[i].any() else 0.0
            e[3] += int(masks[i].sum())
    for (t, k), e in sorted(lv.items()):
        print(f"  {t:9s} {k}: z normal px {e[0] / max(1, e[2]):6.2f}  z defect px {e[1] / max(1, e[3]):6.2f}  defect px {e[3]}")
    # image-score statistics of the held-out normals (z-normalised image scores fuse alike)
    for k, v in (("g", sq), ("t", ti)):
        s = torch.tensor(v["scores"][:nc], dtype=torch.float64)
        stats[k] = stats[k] + (float(s.mean()), float(s.std()))
    configs = [("squash", "raw", "mean", 1.0), ("tiled", "raw", "mean", 0.0)]
    for w in (0.25, 0.5, 0.75):
        configs.append((f"fuse-raw-w{w}", "raw", "mean", w))
    for w in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        configs.append((f"fuse-z-w{w}", "z", "mean", w))
    configs.append(("fuse-z-max", "z", "max", 0.5))
    rows = []
    for half in ("tune", "report"):
        keep = [i for i in range(len(paths)) if (i in tune) == (half == "tune")]
        if not keep:
            continue
        for name, norm, how, w in configs:
            pm = M.PixelMetrics()
            sc = []
            for i in keep:
                g, t = gm[i].float(), tm[i].float()
                gi, tii = float(gs[i]), float(ts[i])
                if norm == "z":
                    g, t = (g - stats["g"][0]) / stats["g"][1], (t - stats["t"][0]) / stats["t"][1]
                    gi, tii = (gi - stats["g"][3]) / stats["g"][4], (tii - stats["t"][3]) / stats["t"][4]
                if how == "max":
                    pm.update(torch.maximum(g, t)[None], masks[i][None])
                    sc.append(max(gi, tii))
                else:
                    pm.update((w * g + (1 - w) * t)[None], masks[i][None])
                    sc.append(w * gi + (1 - w) * tii)
            r = pm.compute()
            y = torch.tensor([0 if Path(paths[i]).parent.name == "good" else 1 for i in keep])
            row = {"half": half, "config": name, "pixel_ap": r["pixel_ap"], "pixel_auroc": r["pixel_auroc"], "aupro": r["aupro"],
                   "image_auroc": float(M.auroc(torch.tensor(sc, dtype=torch.float64), y))}
            rows.append(row)
            base = next(x for x in rows if x["half"] == half and x["config"] == "squash")
            print(f"{half:6s} {name:14s} pixel AP {row['pixel_ap']:.4f} ({row['pixel_ap'] / base['pixel_ap']:.3f}x) "
                  f"AUROC {row['pixel_auroc']:.4f} AUPRO {row['aupro']:.4f} ({row['aupro'] / base['aupro']:.3f}x) "
                  f"image AUROC {row['image_auroc']:.4f}", flush=True)
    (d / f"{det_name}_eval.json").write_text(json.dumps({"stats": stats, "rows": rows}, indent=1))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--save", choices=("patchcore", "padim"))
    p.add_argument("--eval", choices=("patchcore", "padim"))
    p.add_argument("--dir", default="/tmp/fuse")
    p.add_argument("--half", choices=("all", "tune", "report"), default="all", help="--save: score these test images only")
    a = p.parse_args()
    if a.save:
        save(a.save, Path(a.dir), half=a.half)
    if a.eval:
        evaluate(a.eval, Path(a.dir))
    if not (a.save or a.eval):
        sys.exit("--save or --eval")
