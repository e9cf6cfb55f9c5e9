"""Whole-run exactness of ``ops.coreset(method="pruned")`` on real features: every index and distance of
the pruned greedy equal to the exhaustive greedy's over the FULL run (the benchmark compares a prefix of
the exhaustive run), on the PatchCore rows of MTD training images, 10% coreset, PatchCore's defaults
(projection "auto" = none at 152 dims, its seeded start), float32
(and ``--storage float16``), 1 thread. ``--cli-fit-set``: the 630 images ``fastad fit --seed 0`` fits on
(700 minus its 70 held-out ones, pipeline.py's draw), and ``--model``: that fit's model file, whose memory
bank must then be the exhaustive selection's rows bit for bit (the CLI's features = the cached ones).

    .venv/bin/python benchmarks/checks/coreset_full_exact.py [--images 630 | --cli-fit-set [--model M]]

The exhaustive run reads the whole bank every step (~30 ms/step at 493,920 x 152: ~25 CPU-min).
Prints the times, the share of rows the pruned run read and the first difference, if any (exit 1).
"""
import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _machine import cpu_model  # noqa: E402
from bench_coreset import mtd_features  # noqa: E402

import fastad  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ap = argparse.ArgumentParser()
ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "mtd"))
ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "fastad"))
ap.add_argument("--images", type=int, default=630)
ap.add_argument("--ratio", type=float, default=0.1)
ap.add_argument("--storage", default="float32", choices=["float32", "float16"])
ap.add_argument("--cli-fit-set", action="store_true")
ap.add_argument("--model", default=None)
a = ap.parse_args()
torch.set_num_threads(1)
rows = mtd_features(Path(a.data).resolve(), Path(a.cache_dir))
if a.cli_fit_set:  # pipeline.fit_with_threshold: calibration 0.1 of 700 images, random.Random(seed + 1)
    n_img = rows.shape[0] // 784
    cal = set(random.Random(0 + 1).sample(range(n_img), int(round(n_img * 0.1))))
    keep = [i for i in range(n_img) if i not in cal]
    bank = rows.view(n_img, 784, -1)[keep].reshape(-1, rows.shape[1]).contiguous()
else:
    bank = rows[: a.images * 784].contiguous()
n = int(a.ratio * bank.shape[0])
# PatchCore's start (random_state 0) and projection ("auto": never more dims than the input, so none here)
start = int(torch.randint(bank.shape[0], (1,), generator=torch.Generator().manual_seed(0)))
sd = getattr(torch, a.storage)
print(f"CPU {cpu_model()}; {fastad.build_info().get('simd')}; bank {tuple(bank.shape)} -> {n} centres, storage {a.storage}, start {start}",
      flush=True)
out = {}
for method in ("pruned", "exhaustive"):
    t = time.process_time()
    out[method] = fastad.ops.coreset(bank, n, projection_dim="auto", start=start, storage_dtype=sd, method=method)
    print(f"{method}: {time.process_time() - t:.1f} CPU-s", flush=True)
(ip, dp), (ie, de) = out["pruned"], out["exhaustive"]
same_i, same_d = torch.equal(ip, ie), torch.equal(dp, de)
print(f"indices identical: {same_i}; distances identical: {same_d}; last distance {float(de[-1]):.6g}")
if not (same_i and same_d):
    k = int((ip != ie).nonzero()[0]) if not same_i else int((dp != de).nonzero()[0])
    print(f"first difference at step {k}: pruned ({int(ip[k])}, {float(dp[k])!r}) vs exhaustive ({int(ie[k])}, {float(de[k])!r})")
    sys.exit(1)
if a.model:
    from safetensors.torch import load_file

    mb = load_file(a.model)["memory_bank"]
    same = mb.shape == (n, bank.shape[1]) and torch.equal(mb, bank[ie])
    print(f"{a.model}: memory bank == the exhaustive selection's rows: {same}")
    if not same:
        sys.exit(1)
