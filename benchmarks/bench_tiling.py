"""Tiled native-resolution PatchCore and PaDiM vs the 224-px squash defaults on MTD, and the
thresholds' recall / precision per method.

    nice -n 5 .venv/bin/python benchmarks/bench_tiling.py [--train-images 50 --test-images 240] [--tile 224 --overlap 0.25]
    (data: $FASTAD_MTD or ../shared/data/mtd; writes benchmarks/results/tiling_mtd.json)
    nice -n 5 .venv/bin/python benchmarks/bench_tiling.py --rss-check     (results/tiling_rss.json)

Every configuration runs in its own child process (so that each peak RSS is its own), one thread
(``torch.set_num_threads(1)``), the same seeded training images (EfficientNet-Lite0, taps
``_blocks.4`` + ``_blocks.10``), all 644 test images. Maps of every configuration are scored at each
image's native resolution (the 224-squash maps are resized back bilinearly, as a user would overlay
them), so pixel AUROC / AUPRO / pixel AP compare like with like. PatchCore keeps the same share of its
patches on both sides (``--coreset-ratio``, 0.1 as the CLI; fp16 coreset storage, no projection): the
tiled bank grows with the number of tiles.

Settings were chosen on ``--split tune`` (a seeded half of every defect type and of the good test
images) and are reported on ``--split report`` (the other half), never on the images they were tuned
on. ``--small fit --blur-at image`` (no padded tile; one blur of the stitched map, ``--tiled-blur`` in
backbone-tile pixels) and ``--scale`` are the tiling options under test. ``<detector>-fused`` is tiled
with ``fuse="global"`` (the tiled map averaged with a 224-squash model's map, weight ``--fuse-weight``
for the global one; the tiled map's sigma is ``--tiled-blur``, the global model's the default 4);
``--fuse-norm zscore`` standardises both branches on the held-out normal images first
(``calibrate_fusion``, whose fused scores then give the quantile thresholds); ``<detector>-fusedraw``
is the same fusion without normalisation (``fuse_norm="none"``). Times: CPU seconds of the child
process (``time.process_time``; wall seconds in the JSON too).

Thresholds: the ``--held-out`` normal training images (not used to fit)
give ``quantile`` and ``quantile-corrected`` (0.99), PaDiM gives ``chi2`` (0.99), and a seeded,
stratified half of the test set is the labelled validation set of ``f1``; recall / precision /
false-positive rate are measured on the other half.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from _machine import cpu_model  # noqa: E402  (benchmarks/ is the script's folder on sys.path)

HERE = Path(__file__).resolve().parent
ROOT = os.environ.get("FASTAD_MTD", str(HERE.parents[0].parent / "shared" / "data" / "mtd"))


def _subset(ds, idx):
    from fastad.pipeline import Subset

    return Subset(ds, idx)


def run_config(a) -> dict:
    """One configuration in this process: fit, score the test set, metrics at native resolution."""
    import random

    import torch
    import torch.nn.functional as F

    from fastad import metrics as M
    from fastad import thresholds as T
    from fastad.data import MVTecDataset, batches
    from fastad.detectors import PaDiM, PatchCore

    torch.set_num_threads(1)
    tiled = a.config.endswith(("tiled", "fused", "fusedraw"))
    fused = a.config.endswith(("fused", "fusedraw"))
    fuse_norm = "none" if a.config.endswith("fusedraw") else a.fuse_norm
    detector = a.config.split("-")[0]
    kw = dict(image_size=224, resize="squash") if not tiled else dict(resize="none")
    train = MVTecDataset(ROOT, "train", **kw)
    test = MVTecDataset(ROOT, "test", **kw)
    native = MVTecDataset(ROOT, "test", resize="none")  # masks at native resolution
    keep = list(range(len(test)))
    if a.split != "all":  # a seeded half of every defect type (and of the good images): tune on one, report on the other
        by_type: dict[str, list[int]] = {}
        for i, path in enumerate(native.paths):
            by_type.setdefault(Path(path).parent.name, []).append(i)
        r3, tune = random.Random(3), set()
        for t in sorted(by_type):
            ids = by_type[t][:]
            r3.shuffle(ids)
            tune.update(ids[: len(ids) // 2])
        keep = [i for i in keep if (i in tune) == (a.split == "tune")]
    if a.test_images and a.test_images < len(keep):  # a quick run: a seeded subset
        keep = sorted(random.Random(2).sample(keep, a.test_images))
    if len(keep) != len(test):
        test, native = _subset(test, keep), _subset(native, keep)
    rng = random.Random(0)
    idx = sorted(rng.sample(range(len(train)), a.train_images + a.held_out))
    rng.shuffle(idx)
    fit_idx, cal_idx = sorted(idx[: a.train_images]), sorted(idx[a.train_images :])
    if detector == "patchcore":
        det = PatchCore(progress=False, batch_size=16, projection_dim=None, coreset_ratio=a.coreset_ratio,
                        coreset_storage="float16")
    else:
        det = PaDiM(progress=False, batch_size=16)
    if tiled:
        det.set_tiling(a.tile, a.overlap, scale=a.scale, small=a.small, blur=a.blur_at,
                       fuse="global" if fused else None, fuse_weight=a.fuse_weight, fuse_norm=fuse_norm)
        if a.tiled_blur is not None and not fused:  # per native pixel, a 224-squash map's sigma 4 is ~ 4 x 1.3-1.5
            det.blur_sigma = a.tiled_blur
    elif a.squash_blur is not None:
        det.blur_sigma = a.squash_blur
    t0, c0 = time.perf_counter(), time.process_time()
    det.fit(_subset(train, fit_idx))
    n_patches = getattr(det, "n_train_patches_", None)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    if fused and a.tiled_blur is not None:  # the tiled map's sigma; the global model keeps the default 4 of its fit
        det.blur_sigma = a.tiled_blur
    t_cal = time.process_time()
    if fused and fuse_norm != "none":  # the branches' normal statistics from the held-out images; their fused scores
        cal = det.calibrate_fusion(_subset(train, cal_idx))
    else:
        cal = det.decision_function(_subset(train, cal_idx))
    cal_s = time.process_time() - t_cal
    t1, c1 = time.perf_counter(), time.process_time()
    pm = M.PixelMetrics()
    by_type: dict = {}
    scores, labels, types = [], [], []
    it_native = iter(range(len(native)))
    for b in batches(test, 16, ragged=True):
        s, maps = det.score(b["image"])
        for j in range(s.numel()):
            i = next(it_native)
            item = native[i]
            assert item["path"] == b["path"][j]
            mp = maps[j]
            if tuple(mp.shape) != tuple(item["mask"].shape):
                mp = F.interpolate(mp[None, None], size=tuple(item["mask"].shape), mode="bilinear", align_corners=False)[0, 0]
            if item["has_mask"]:
                pm.update(mp[None], item["mask"][None])
                if item["label"]:  # per defect type: its own images only
                    by_type.setdefault(b["defect_type"][j], M.PixelMetrics()).update(mp[None], item["mask"][None])
        scores.append(s)
        labels.append(b["label"])
        types += b["defect_type"]
    score_s, score_cpu_s = time.perf_counter() - t1, time.process_time() - c1
    s, y = torch.cat(scores).double(), torch.cat(labels)
    pix = pm.compute()
    out = {
        "config": a.config, "tile": a.tile if tiled else None, "overlap": a.overlap if tiled else None,
        "scale": a.scale if tiled else None, "small": a.small if tiled else None, "blur_at": a.blur_at if tiled else None,
        "blur_sigma": det.blur_sigma, "split": a.split, "fuse_weight": a.fuse_weight if fused else None,
        "fuse_norm": fuse_norm if fused else None, "held_out_scoring_cpu_s": cal_s,
        "train_images": len(fit_idx), "held_out": len(cal_idx), "test_images": int(s.numel()),
        "n_patches": n_patches, "bank_rows": None if detector != "patchcore" else int(det.memory_bank_.shape[0]),
        "fit_s": fit_s, "score_s": score_s, "fit_cpu_s": fit_cpu_s, "score_cpu_s": score_cpu_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "image_auroc": float(M.auroc(s, y)), "pixel_auroc": pix["pixel_auroc"], "pixel_ap": pix["pixel_ap"],
        "aupro": pix["aupro"],
        "by_type": {t: {k: v[k] for k in ("pixel_ap", "aupro")} for t, v in sorted((t, m.compute()) for t, m in by_type.items())},
    }
    # thresholds: quantile / quantile-corrected from the held-out normal images, chi2 (PaDiM), f1 on a
    # stratified half of the test set; recall / precision on the other half
    g = torch.Generator().manual_seed(1)
    val = torch.zeros(len(y), dtype=torch.bool)
    for t in sorted(set(types)):  # sorted: set order of str varies between runs
        ids = torch.tensor([i for i, tt in enumerate(types) if tt == t])
        val[ids[torch.randperm(len(ids), generator=g)[: len(ids) // 2]]] = True
    ev = ~val
    thr = {}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        thr["quantile"] = T.quantile(cal, 0.99)
        thr["quantile-corrected"] = T.quantile_corrected(cal, 0.99)
        out["quantile_corrected_warning"] = [str(x.message) for x in w]
    if detector == "padim" and not fused:  # chi2: not for a fused score (refused)
        det.set_threshold(method="chi2", quantile=0.99)
        thr["chi2"] = det.threshold_
    thr["f1"], out["f1_on_validation"] = T.f1(s[val], y[val])
    out["thresholds"] = {k: {"threshold": v, **T.recall_precision(s[ev], y[ev], v)} for k, v in thr.items()}
    out["threshold_eval_images"] = int(ev.sum())
    return out


def run_rss(a) -> dict:
    """Peak RSS of scoring one image of ``--rss-scale`` x (512 x 1280) px, tiled (224-px tiles, 8 per
    batch) or whole, in a child process of its own: PatchCore (EfficientNet-Lite0, every patch of 8
    random 224-px training images in the bank; the same bank both ways)."""
    import torch

    from fastad.detectors import PatchCore

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    det = PatchCore(progress=False, batch_size=8, coreset_ratio=1.0)
    det.fit(torch.randn(8, 3, 224, 224, generator=g))
    if a.config == "rss-tiled":
        det.tiling_ = det._tiling_cfg = {"tile_size": [224, 224], "overlap": 0.25, "tile_batch_size": 8, "scale": 1.0,
                                         "small": a.small, "blur": a.blur_at}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    x = torch.randn(1, 3, 512 * a.rss_scale, 1280 * a.rss_scale, generator=g)
    t0 = time.perf_counter()
    s, m = det.score(x)
    return {"config": a.config, "scale": a.rss_scale, "image_hw": list(x.shape[-2:]), "score_s": time.perf_counter() - t0,
            "input_and_map_mb": (x.numel() + m.numel()) * 4 / 2**20, "rss_before_score_mb": base,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--train-images", type=int, default=100)
    p.add_argument("--held-out", type=int, default=70)
    p.add_argument("--coreset-ratio", type=float, default=0.1)
    p.add_argument("--test-images", type=int, default=0, help="0 = all 644")
    p.add_argument("--tile", type=int, default=224)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--scale", type=float, default=1.0, help="tiles resized by this before the backbone")
    p.add_argument("--squash-blur", type=float, default=None, help="blur sigma of the squash runs (default: the detector's 4)")
    p.add_argument("--small", choices=("pad", "fit"), default="pad", help="images smaller than a tile: pad, or shrink the tile (set_tiling small=)")
    p.add_argument("--blur-at", choices=("tile", "image"), default="tile", help="blur each tile's map, or the stitched map (set_tiling blur=)")
    p.add_argument("--split", choices=("all", "tune", "report"), default="all",
                   help="test images: all, or one of two seeded stratified halves (choose settings on tune, report on report)")
    p.add_argument("--tiled-blur", type=float, default=None, help="blur sigma of the tiled runs (default: the detector's 4)")
    p.add_argument("--fuse-weight", type=float, default=0.5, help="the global map's weight of the *-fused configs (set_tiling fuse_weight=)")
    p.add_argument("--fuse-norm", choices=("none", "zscore"), default="none",
                   help="the *-fused configs' branch normalisation (set_tiling fuse_norm=; zscore: calibrate_fusion on the held-out images)")
    p.add_argument("--configs", default="patchcore-squash224,patchcore-tiled,patchcore-fused,padim-squash224,padim-tiled,padim-fused")
    p.add_argument("--rss-check", action="store_true", help="peak RSS of tiled vs whole-image scoring, 1x/2x/4x images")
    p.add_argument("--rss-scale", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="JSON (default results/tiling_mtd.json, --rss-check: results/tiling_rss.json)")
    a = p.parse_args()
    a.out = a.out or str(HERE / "results" / ("tiling_rss.json" if a.rss_check else "tiling_mtd.json"))
    if a.config:
        print(json.dumps(run_rss(a) if a.config.startswith("rss") else run_config(a)))
        return
    if a.rss_check:  # peak RSS of tiled vs whole-image scoring as the image grows
        rows = []
        for c in ("rss-tiled", "rss-whole"):
            for k in (1, 2, 4):
                r = subprocess.run([sys.executable, __file__, "--config", c, "--rss-scale", str(k), "--small", a.small,
                                    "--blur-at", a.blur_at], capture_output=True, text=True)
                if r.returncode:
                    print(r.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{c} x{k} failed")
                x = json.loads(r.stdout.strip().splitlines()[-1])
                rows.append(x)
                print(f"{c:10s} {x['image_hw'][0]:5d} x {x['image_hw'][1]:5d}  peak RSS {x['peak_rss_mb']:7.0f} MB "
                      f"(before scoring {x['rss_before_score_mb']:6.0f}; input + map {x['input_and_map_mb']:6.0f} MB)  "
                      f"score {x['score_s']:6.1f} s", flush=True)
        Path(a.out).write_text(json.dumps({"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "threads": 1,
                                           "small": a.small, "blur_at": a.blur_at, "rows": rows}, indent=1))
        print("cpu:", cpu_model(), "| written", a.out)
        return
    rows = []
    for c in a.configs.split(","):
        cmd = [sys.executable, __file__, "--config", c, "--train-images", str(a.train_images), "--held-out", str(a.held_out),
               "--coreset-ratio", str(a.coreset_ratio), "--test-images", str(a.test_images), "--tile", str(a.tile), "--overlap", str(a.overlap), "--scale", str(a.scale),
               "--small", a.small, "--blur-at", a.blur_at, "--split", a.split, "--fuse-weight", str(a.fuse_weight), "--fuse-norm", a.fuse_norm] + (["--tiled-blur", str(a.tiled_blur)] if a.tiled_blur is not None else []) + (
            ["--squash-blur", str(a.squash_blur)] if a.squash_blur is not None else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{c} failed")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        x = rows[-1]
        print(f"{c:20s} fit {x['fit_cpu_s']:7.1f} CPU s  score {x['score_cpu_s']:7.1f} CPU s  peak RSS {x['peak_rss_mb']:7.0f} MB  "
              f"image AUROC {x['image_auroc']:.4f}  pixel AUROC {x['pixel_auroc']:.4f}  pixel AP {x['pixel_ap']:.4f}  "
              f"AUPRO {x['aupro']:.4f}", flush=True)
        print("    by type (pixel AP / AUPRO): " + ", ".join(f"{t} {v['pixel_ap']:.3f} / {v['aupro']:.3f}" for t, v in x["by_type"].items()), flush=True)
        for k, v in x["thresholds"].items():
            print(f"    threshold {k:19s} {v['threshold']:9.4f}  recall {v['recall']:.3f}  precision {v['precision']:.3f}  "
                  f"FPR {v['fpr']:.3f}", flush=True)
    by = {r["config"]: r for r in rows}
    ratios = {}
    for d in ("patchcore", "padim"):
        for kind in ("tiled", "fused", "fusedraw"):
            a_, b_ = by.get(f"{d}-{kind}"), by.get(f"{d}-squash224")
            if a_ and b_:
                ratios[f"{d}-{kind}"] = {k: a_[k] / b_[k] for k in ("pixel_ap", "aupro", "pixel_auroc", "fit_cpu_s", "score_cpu_s", "peak_rss_mb")}
                print(f"{d}: {kind} / squash224 " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios[f"{d}-{kind}"].items()))
    import torch

    import fastad

    doc = {"cpu": cpu_model(), "torch": torch.__version__, "fastad": getattr(fastad, "__version__", None),
           "threads": 1, "date": time.strftime("%Y-%m-%d"), "data": "MTD (../shared/data/mtd)",
           "backbone": "efficientnet_lite0 (_blocks.4 + _blocks.10)", "rows": rows, "ratios": ratios}
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print("cpu:", doc["cpu"], "| written", a.out)


if __name__ == "__main__":
    main()
