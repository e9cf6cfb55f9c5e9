"""PatchCore end to end on MTD: fastad vs anomalib 2.7.0's own PatchCore code, same backbone features.

    .venv/bin/python benchmarks/bench_patchcore.py [--train-images 200] [--skip-anomalib]

Data: ``$FASTAD_MTD`` or ``../shared/data/mtd`` (relative to the repo root), MVTec layout. Images are
decoded and squash-resized to 224 px once (shared, timed separately, counted on neither side).
Both sides use EfficientNet-Lite0 (ImageNet weights), taps ``_blocks.4`` + ``_blocks.10``, through
``fastad.features.FeatureExtractor`` (anomalib's ``TimmFeatureExtractor`` is replaced by it: see
``_anomalib_patchcore.py``); fastad's side with its defaults (BN folded, channels_last), anomalib's
with the plain model (BN layers, NCHW) as timm would run it. Coreset ratio 0.1, ``num_neighbors=9``,
sigma-4 blur.
The training set is subsampled (a seeded random subset, ``--train-images``) for BOTH sides equally,
because anomalib's coreset takes minutes. ``torch.set_num_threads(1)`` unless ``--threads``.
Stages run interleaved (fastad fit, anomalib fit, fastad predict, anomalib predict) in one process;
wall and process-CPU seconds are reported per stage.

``--screen compare`` (fastad only): after the fit, fastad's predict runs ``--repeats`` times each with
the detectors' k-NN on the float32 path (``FASTAD_DETECTOR_SCREEN=none``) and through the bf16 screen
(``--compare-with``, default ``auto``), interleaved; it prints the min process-CPU ratio, the screen's
survivor fraction and checks that image scores and maps are identical (exit 1 otherwise).
``--screen none|bf16|auto`` sets FASTAD_DETECTOR_SCREEN for the normal run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


class Clock:
    """Wall + process CPU seconds accumulated per stage."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def add(self, stage, wall, cpu):
        self.wall[stage] = self.wall.get(stage, 0.0) + wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu

    def timed(self, stage, fn):
        def run(*a, **k):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                self.add(stage, time.perf_counter() - w, time.process_time() - c)

        return run


def load_split(ds, idx=None):
    from fastad.data import batches

    imgs, masks, labels, types = [], [], [], []
    sub = ds if idx is None else [ds[i] for i in idx]
    it = batches(ds, 32) if idx is None else [__import__("fastad.data", fromlist=["collate"]).collate(sub[s : s + 32]) for s in range(0, len(sub), 32)]
    for b in it:
        imgs.append(b["image"])
        masks.append(b["mask"])
        labels.append(b["label"])
        types += b["defect_type"]
    return torch.cat(imgs), torch.cat(masks), torch.cat(labels), types


def metrics_for(scores, maps, masks, labels, types):
    import fastad.metrics as M

    scores = scores.float().numpy()
    labels = labels.numpy()
    out = {"all": {
        "image_auroc": M.auroc(scores, labels),
        "pixel_auroc": M.auroc(maps.reshape(-1).numpy(), masks.reshape(-1).numpy()),
        "aupro": M.aupro(maps.numpy(), masks.numpy()),
    }}
    types = np.array(types)
    for t in sorted(set(types) - {"good"}):
        sel = (types == t) | (types == "good")
        out[t] = {
            "image_auroc": M.auroc(scores[sel], labels[sel]),
            "pixel_auroc": M.auroc(maps[sel].reshape(-1).numpy(), masks[sel].reshape(-1).numpy()),
            "aupro": M.aupro(maps[sel].numpy(), masks[sel].numpy()),
        }
    return out


def run_fastad(stage, state, args, train, test):
    from fastad.detectors import PatchCore

    c = Clock()
    w, p = time.perf_counter(), time.process_time()
    if stage == "fit":
        det = PatchCore(backbone=state["backbone"], layers=args.layers, coreset_ratio=args.coreset_ratio,
                        num_neighbors=args.num_neighbors, batch_size=args.batch_size, random_state=0, progress=False)
        det.fit(train)
        state["det"] = det
        t = det.fit_timings_
    else:
        det = state["det"]
        state["scores"], state["maps"] = det.score(test)
        t = det.score_timings_
    total_w, total_c = time.perf_counter() - w, time.process_time() - p
    for k, v in t.items():
        if k != "total":
            c.wall[k] = v
    c.wall["total"], c.cpu["total"] = total_w, total_c
    return c


def run_anomalib(stage, state, args, train, test):
    import _anomalib_patchcore as A

    c = Clock()
    if stage == "fit":
        PatchcoreModel, *_rest, version = A.load()
        kcg = sys.modules["anomalib.models.components.sampling.k_center_greedy"]
        kcg.tqdm = lambda it, **kw: it  # silence its per-step progress bar (no effect on the computation)
        state["anomalib_version"] = version
        fx = state["extractor"]
        state["extract"] = lambda x: fx(x)
        A.FeatureSource.extract = c.timed("extraction", state["extract"])
        model = PatchcoreModel(layers=list(args.layers), backbone="efficientnet_lite0 (fastad extractor)", pre_trained=True,
                               num_neighbors=args.num_neighbors)
        state["model"] = model
        torch.manual_seed(0)
        np.random.seed(0)  # KCenterGreedy / SparseRandomProjection draw from the global generators
        model.train()
        w, p = time.perf_counter(), time.process_time()
        for s in range(0, len(train), args.batch_size):
            model(train[s : s + args.batch_size])
        c.add("extraction+aggregation", time.perf_counter() - w, time.process_time() - p)
        w2, p2 = time.perf_counter(), time.process_time()
        model.subsample_embedding(args.coreset_ratio)
        c.add("coreset", time.perf_counter() - w2, time.process_time() - p2)
        c.add("total", time.perf_counter() - w, time.process_time() - p)
    else:
        model = state["model"]
        A.FeatureSource.extract = c.timed("extraction", state["extract"])  # this stage's clock
        model.eval()
        gen = model.anomaly_map_generator
        gen.forward = c.timed("maps", gen.forward)  # instance attribute: nn.Module.__call__ finds it
        model.nearest_neighbors = c.timed("scoring", model.nearest_neighbors)
        scores, maps = [], []
        w, p = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for s in range(0, len(test), args.batch_size):
                out = model(test[s : s + args.batch_size])
                scores.append(out.pred_score)
                maps.append(out.anomaly_map[:, 0])
        c.add("total", time.perf_counter() - w, time.process_time() - p)
        del gen.forward
        state["scores"], state["maps"] = torch.cat(scores), torch.cat(maps)
    return c


def compare_screen(det, test, args):
    """PatchCore predict with FASTAD_DETECTOR_SCREEN=none and =args.compare_with, interleaved; min CPU s."""
    import fastad
    from _machine import cpu_model

    sides = {"none": [], args.compare_with: []}
    out = {}
    fastad.knn_screen_stats(reset=True)
    for _ in range(args.repeats):
        for s in sides:
            os.environ["FASTAD_DETECTOR_SCREEN"] = s
            c = time.process_time()
            out[s] = det.score(test)
            sides[s].append(time.process_time() - c)
    os.environ.pop("FASTAD_DETECTOR_SCREEN", None)
    stats = fastad.knn_screen_stats(reset=True)
    (sa, ma), (sb, mb) = out["none"], out[args.compare_with]
    identical = bool(torch.equal(sa, sb)) and bool(torch.equal(ma, mb))
    tn, ts = min(sides["none"]), min(sides[args.compare_with])
    info = fastad.build_info()
    print(f"CPU {cpu_model()}; dist kernel {info['dist_micro_kernel']}, bf16 kernel {info['bf16_micro_kernel']}; "
          f"{len(test)} test images, bank {det.memory_bank_.shape[0]} x {det.memory_bank_.shape[1]}")
    print(f"predict process-CPU s (min of {args.repeats}): screen=none {tn:.2f}, screen={args.compare_with} {ts:.2f} "
          f"-> {tn / ts:.3f}x; screen calls {stats['calls']}, survivors {100 * stats['survivor_fraction']:.4f}% "
          f"of pairs, fallbacks {stats['fallbacks']}; scores and maps identical: {identical}")
    return {"cpu_s": sides, "ratio": tn / ts, "identical": identical, "screen_stats": stats}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASTAD_MTD", str(ROOT / ".." / "shared" / "data" / "mtd")))
    ap.add_argument("--train-images", type=int, default=200)
    ap.add_argument("--test-images", type=int, default=0, help="0 = the whole test split")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--coreset-ratio", type=float, default=0.1)
    ap.add_argument("--num-neighbors", type=int, default=9)
    ap.add_argument("--layers", nargs="+", default=["_blocks.4", "_blocks.10"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-anomalib", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--screen", choices=["none", "bf16", "auto", "compare"], default=None,
                    help="FASTAD_DETECTOR_SCREEN for the run, or 'compare': predict with and without the screen")
    ap.add_argument("--compare-with", choices=["bf16", "auto"], default="auto", help="the screened side of --screen compare")
    ap.add_argument("--repeats", type=int, default=3, help="--screen compare: predict runs per side")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.screen == "compare":
        args.skip_anomalib = True
    elif args.screen:
        os.environ["FASTAD_DETECTOR_SCREEN"] = args.screen

    import fastad
    from fastad.data import MVTecDataset
    from fastad.features import FeatureExtractor, get_backbone

    data = Path(args.data)
    t0 = time.perf_counter()
    tr_ds = MVTecDataset(data, "train", image_size=args.image_size)
    te_ds = MVTecDataset(data, "test", image_size=args.image_size)
    rng = np.random.default_rng(0)
    tr_idx = sorted(rng.choice(len(tr_ds), size=min(args.train_images, len(tr_ds)), replace=False).tolist())
    train = load_split(tr_ds, tr_idx)[0]
    te_idx = None
    if args.test_images:
        te_idx = sorted(rng.choice(len(te_ds), size=min(args.test_images, len(te_ds)), replace=False).tolist())
    test, masks, labels, types = load_split(te_ds, te_idx)
    t_load = time.perf_counter() - t0
    print(f"data: {data} train {len(train)}/{len(tr_ds)} images, test {len(test)} images at {args.image_size} px "
          f"(decode+resize {t_load:.1f} s, shared, not counted); threads {torch.get_num_threads()}", flush=True)

    # One backbone instance per side, same ImageNet weights. fastad runs its pipeline's default: batch
    # norms folded into the convolutions and channels_last (fastad.features). anomalib's side runs the
    # model as timm / the efficientnet-lite package define it (separate BN layers, NCHW), which is what
    # anomalib's TimmFeatureExtractor would run: features equal to ~1e-5 relative.
    bb = get_backbone("efficientnet_lite0")
    bb_a = get_backbone("efficientnet_lite0", fuse=False)
    fx_a = FeatureExtractor(bb_a.model, args.layers, batch_size=args.batch_size, progress=False, channels_last=False)
    with torch.no_grad():  # warm-up (first-call allocations), so neither side pays it
        fx_a(train[: args.batch_size])
        PatchCore_warm = __import__("fastad.detectors", fromlist=["PatchCore"]).PatchCore
        PatchCore_warm(backbone=bb, layers=args.layers, coreset_ratio=1.0, progress=False).fit(train[:2])
    state_f = {"backbone": bb}
    state_a = {"extractor": fx_a}
    res = {"fastad": {}, "anomalib": {}}
    sides = [("fastad", run_fastad, state_f)] + ([] if args.skip_anomalib else [("anomalib", run_anomalib, state_a)])
    if args.screen == "compare":
        print("[fastad] fit ...", flush=True)
        run_fastad("fit", state_f, args, train, test)
        res = compare_screen(state_f["det"], test, args)
        res["config"] = {**vars(args), "train_used": len(train), "test_used": len(test), "build": fastad.build_info()}
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        sys.exit(0 if res["identical"] else 1)
    for stage in ("fit", "predict"):
        for name, fn, st in sides:
            print(f"[{name}] {stage} ...", flush=True)
            clk = fn(stage, st, args, train, test)
            res[name][stage] = {"wall": clk.wall, "cpu": clk.cpu}
            print(f"[{name}] {stage}: " + ", ".join(f"{k} {v:.2f}s" for k, v in clk.wall.items()), flush=True)
    for name, _, st in sides:
        res[name]["metrics"] = metrics_for(st["scores"], st["maps"], masks, labels, types)
    if not args.skip_anomalib:
        res["diff"] = {
            "max_abs_image_score": float((state_f["scores"] - state_a["scores"]).abs().max()),
            "max_abs_map": float((state_f["maps"] - state_a["maps"]).abs().max()),
            "bank_sizes": [int(state_f["det"].memory_bank_.shape[0]), int(state_a["model"].memory_bank.shape[0])],
        }
        res["anomalib_version"] = state_a.get("anomalib_version")
    res["config"] = {**vars(args), "train_used": len(train), "test_used": len(test), "fastad": fastad.__version__,
                     "torch": torch.__version__, "build": fastad.build_info()}

    print("\n== timings (wall s; process CPU s in brackets)")
    for stage in ("fit", "predict"):
        for name, *_ in sides:
            r = res[name][stage]
            print(f"{name:9s} {stage:8s} total {r['wall']['total']:8.2f} [{r['cpu']['total']:8.2f}]  " +
                  "  ".join(f"{k} {v:.2f}" for k, v in r["wall"].items() if k != "total"))
    if not args.skip_anomalib:
        tf = sum(res["fastad"][s]["wall"]["total"] for s in ("fit", "predict"))
        ta = sum(res["anomalib"][s]["wall"]["total"] for s in ("fit", "predict"))
        cf = sum(res["fastad"][s]["cpu"]["total"] for s in ("fit", "predict"))
        ca = sum(res["anomalib"][s]["cpu"]["total"] for s in ("fit", "predict"))
        res["speedup_end_to_end_wall"] = ta / tf
        res["speedup_end_to_end_cpu"] = ca / cf
        for s in ("fit", "predict"):
            res[f"speedup_{s}_wall"] = res["anomalib"][s]["wall"]["total"] / res["fastad"][s]["wall"]["total"]
        print(f"end to end: fastad {tf:.1f} s, anomalib {ta:.1f} s -> {ta / tf:.2f}x wall ({ca / cf:.2f}x CPU); "
              f"fit {res['speedup_fit_wall']:.2f}x, predict {res['speedup_predict_wall']:.2f}x")
        print(f"max |score diff| {res['diff']['max_abs_image_score']:.3g}, max |map diff| {res['diff']['max_abs_map']:.3g} "
              f"(the coresets differ: fastad seeded, anomalib its own random start/projection)")
    print("\n== metrics (image AUROC / pixel AUROC / AUPRO)")
    names = [n for n, *_ in sides]
    for cls in res["fastad"]["metrics"]:
        row = "  ".join(
            f"{n}: {res[n]['metrics'][cls]['image_auroc']:.4f} / {res[n]['metrics'][cls]['pixel_auroc']:.4f} / "
            f"{res[n]['metrics'][cls]['aupro']:.4f}" for n in names
        )
        print(f"{cls:10s} {row}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
