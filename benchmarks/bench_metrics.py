"""fastad.metrics vs anomalib 2.7's metrics on 100 anomaly maps of 256x256 (one process, interleaved).

    .venv/bin/python benchmarks/bench_metrics.py [--n 100] [--size 256] [--repeats 5] [--threads 1]

Data: synthetic but shaped like MVTec results: half of the images anomalous with 1-4 elliptical
defects of 3-30 px radius (touching/overlapping allowed), maps = smooth noise + a partial response on
the defects, Gaussian-blurred, min-max normalised to [0, 1] (anomalib normalises maps before its
metrics; its AUROC would apply a sigmoid to values outside [0, 1]).

Timed, each as a whole (update in batches of 10 + compute, process CPU time and wall time, medians):
anomalib `_AUPRO` vs `fastad.metrics.aupro`; anomalib `_AUROC` vs `fastad.metrics.auroc`; anomalib
`_F1Max` vs `fastad.metrics.f1_max`; and anomalib's three together vs one streaming
`fastad.metrics.PixelMetrics` (which also gives AP and PRO-MuSc). Values are printed side by side.
When anomalib does not import (see benchmarks/_anomalib.py), AUPRO is compared with the float32
port of anomalib's algorithm in tests/test_metrics.py instead, and the table says so.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastad.metrics as M  # noqa: E402


def make_data(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((n, size, size), np.uint8)
    maps = np.empty((n, size, size), np.float32)
    for i in range(n):
        if i % 2 == 0:
            for _ in range(rng.integers(1, 5)):
                cy, cx = rng.uniform(20, size - 20, 2)
                ry, rx = rng.uniform(3, 30, 2)
                th = rng.uniform(0, np.pi)
                dy, dx = yy - cy, xx - cx
                u = (dy * np.cos(th) + dx * np.sin(th)) / ry
                v = (-dy * np.sin(th) + dx * np.cos(th)) / rx
                masks[i][u * u + v * v <= 1] = 1
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), 4) * 3
        response = masks[i] * rng.uniform(0.2, 1.2) * (rng.random((size, size)) < 0.8)
        maps[i] = ndimage.gaussian_filter(noise + 0.6 * response + 0.3 * rng.random((size, size)), 2)
    maps = (maps - maps.min()) / (maps.max() - maps.min())
    return maps.astype(np.float32), masks


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    maps, masks = make_data(args.n, args.size)
    tmaps, tmasks = torch.from_numpy(maps), torch.from_numpy(masks)
    B = args.batch
    batches = [(tmaps[i: i + B], tmasks[i: i + B]) for i in range(0, args.n, B)]

    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _anomalib import load_anomalib_metrics

        am = load_anomalib_metrics()
        anchor = f"anomalib {am.version}"
    except ImportError as e:
        am = None
        anchor = "port of anomalib 2.7 AUPRO (tests/test_metrics.py, float32)"
        print(f"anomalib not importable ({e}); AUPRO anchor = {anchor}")

    def run_anomalib(cls, int_target=False):
        def f():
            m = cls()
            for p, t in batches:
                m.update(p, t.int() if int_target else t)
            return float(m.compute())
        return f

    if am is not None:
        anchors = {
            "AUPRO": run_anomalib(am.AUPRO),
            "pixel AUROC": run_anomalib(am.AUROC, int_target=True),
            "pixel F1-max": lambda: (lambda m: (m.update(tmaps.flatten(), tmasks.flatten().int()),
                                               float(m.compute()))[1])(am.F1Max()),
        }
    else:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from tests.test_metrics import anomalib_aupro_port

        anchors = {"AUPRO": lambda: anomalib_aupro_port(maps, masks, 0.3, torch.float32)}

    ours = {
        "AUPRO": lambda: M.aupro(tmaps, tmasks),
        "pixel AUROC": lambda: M.auroc(tmaps, tmasks),
        "pixel F1-max": lambda: M.f1_max(tmaps, tmasks),
    }

    def streaming():
        pm = M.PixelMetrics()
        for p, t in batches:
            pm.update(p, t)
        return pm.compute()

    rows = {k: {"a": [], "o": [], "aw": [], "ow": []} for k in anchors}
    rows["all (streaming)"] = {"a": [], "o": [], "aw": [], "ow": []}
    vals = {}
    for rep in range(args.repeats):
        tot_a, tot_aw = 0.0, 0.0
        for k in anchors:
            va, wa, ca = timed(anchors[k])
            vo, wo, co = timed(ours[k])
            rows[k]["a"].append(ca), rows[k]["aw"].append(wa), rows[k]["o"].append(co), rows[k]["ow"].append(wo)
            tot_a += ca
            tot_aw += wa
            vals[k] = (va, vo)
        vs, ws, cs = timed(streaming)
        r = rows["all (streaming)"]
        r["a"].append(tot_a), r["aw"].append(tot_aw), r["o"].append(cs), r["ow"].append(ws)
        print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr)

    med = statistics.median
    print(f"\n{args.n} maps {args.size}x{args.size}, {masks.sum()} anomalous px in "
          f"{int((masks.reshape(args.n, -1).any(1)).sum())} images, torch threads {args.threads}, "
          f"medians of {args.repeats}; anchor: {anchor}\n")
    print("| metric | anchor value | fastad value | abs diff | anchor CPU s | fastad CPU s | CPU ratio | anchor wall s | fastad wall s | wall ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, r in rows.items():
        if k in vals:
            va, vo = vals[k]
            vcols = f"{va:.6f} | {vo:.6f} | {abs(va - vo):.1e}"
        else:
            keys = [x for x in vals]
            vcols = ("(" + ", ".join(keys) + ") | " + ", ".join(f"{k2}={v:.6f}" for k2, v in vs.items())
                     + " | -")
        print(f"| {k} | {vcols} | {med(r['a']):.3f} | {med(r['o']):.4f} | {med(r['a']) / med(r['o']):.1f}x | "
              f"{med(r['aw']):.3f} | {med(r['ow']):.4f} | {med(r['aw']) / med(r['ow']):.1f}x |")
    for k, (va, vo) in vals.items():
        key = {"AUPRO": "aupro", "pixel AUROC": "pixel_auroc", "pixel F1-max": "pixel_f1_max"}[k]
        assert abs(vs[key] - vo) < 1e-12, (k, vs[key], vo)


if __name__ == "__main__":
    main()
