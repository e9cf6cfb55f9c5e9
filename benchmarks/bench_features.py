"""Feature-extraction throughput on CPU: EfficientNet-Lite0 (PatchCore taps) and DINOv2-S/14 (MuSc taps),
plus image decoding.

    .venv/bin/python benchmarks/bench_features.py [--images 32] [--repeats 3] [--threads 1 2]

Inputs are real MTD test images at 224 px when ../shared/data/mtd (or $FASTAD_MTD) exists, else
random tensors. For each thread count, the configurations are run interleaved ``--repeats`` times in
this process and the median is printed: wall images/s and process CPU seconds per image
(``time.process_time``; on a shared machine CPU time is the steadier number).

Rows:
- ``effnet taps fastad``: ``get_backbone("efficientnet_lite0").extractor()`` on ``_blocks.4`` +
  ``_blocks.10``: BN folded into the convolutions, channels_last, forward stopped after block 10.
- ``effnet taps plain``: the same taps on the package's model as loaded (``fuse=False``, NCHW).
- ``effnet full plain``: the package model's whole classifier forward, NCHW (what a hook extractor
  without early stop or fusion costs).
- ``dinov2 taps``: ``vit_tokens([2, 5, 8, 11], norm=True)`` (all 12 blocks).
- ``decode``: MVTecDataset + batches (Pillow decode + squash resize + normalise), 0 and 2 threads.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--dinov2-images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args(argv)

    from fastad.data import MVTecDataset, batches
    from fastad.features import get_backbone

    mtd = Path(os.environ.get("FASTAD_MTD", REPO.parent / "shared" / "data" / "mtd"))
    ds = None
    if (mtd / "test").is_dir():
        ds = MVTecDataset(mtd, "test", image_size=224)
        step = max(1, len(ds) // a.images)
        x = torch.stack([ds[i]["image"] for i in range(0, step * a.images, step)][: a.images])
        src = f"MTD test images ({mtd})"
    else:
        x = torch.randn(a.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        src = "random tensors (MTD not found)"
    xd = x[: a.dinov2_images]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, inputs: {src}, 224 px, batch {a.batch_size}")

    eff = get_backbone("efficientnet_lite0")
    plain = get_backbone("efficientnet_lite0", fuse=False).to(memory_format=torch.contiguous_format)
    dino = None
    try:
        dino = get_backbone("dinov2_vits14")
    except ImportError as e:
        print(f"dinov2_vits14 skipped: {e}")
    fx = eff.extractor(batch_size=a.batch_size)
    fx_plain = plain.extractor(batch_size=a.batch_size, channels_last=False)

    def eff_full():
        with torch.no_grad():
            for b in x.split(a.batch_size):
                plain.model(b)

    configs = {
        "effnet taps fastad": (lambda: fx(x), len(x)),
        "effnet taps plain": (lambda: fx_plain(x), len(x)),
        "effnet full plain": (eff_full, len(x)),
    }
    if dino is not None:
        configs["dinov2 taps (2,5,8,11; norm)"] = (lambda: dino.vit_tokens(xd, [2, 5, 8, 11], batch_size=a.batch_size), len(xd))
    if ds is not None:
        sub = torch.utils.data.Subset(ds, list(range(0, len(ds), max(1, len(ds) // 64))))

        def decode(nw):
            return lambda: [None for _ in batches(sub, a.batch_size, num_workers=nw)]

        configs["decode+resize (0 threads)"] = (decode(0), len(sub))
        configs["decode+resize (2 threads)"] = (decode(2), len(sub))

    for t in a.threads:
        torch.set_num_threads(t)
        for fn, _ in configs.values():  # warm-up (allocator, oneDNN primitive caches)
            fn()
        res = {k: [] for k in configs}
        for _ in range(a.repeats):
            for k, (fn, n) in configs.items():
                res[k].append(timed(fn))
        print(f"\n== torch.set_num_threads({t}) (median of {a.repeats}) ==")
        print(f"{'config':32s} {'img/s (wall)':>13s} {'ms/img wall':>12s} {'CPU-ms/img':>11s}")
        for k, (fn, n) in configs.items():
            w = statistics.median(r[0] for r in res[k])
            c = statistics.median(r[1] for r in res[k])
            print(f"{k:32s} {n / w:13.1f} {1e3 * w / n:12.1f} {1e3 * c / n:11.1f}")
        cpu = {k: statistics.median(r[1] for r in v) for k, v in res.items()}
        print(
            f"EfficientNet-Lite0 CPU-time ratios: taps plain / fastad = {cpu['effnet taps plain'] / cpu['effnet taps fastad']:.2f}x, "
            f"full plain / fastad = {cpu['effnet full plain'] / cpu['effnet taps fastad']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
