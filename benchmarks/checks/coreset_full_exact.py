"""Whole-run exactness of ``ops.coreset(method="pruned")`` on real features: every index and distance of
the pruned greedy equal to the exhaustive greedy's over the FULL run (the benchmark compares a prefix of
the exhaustive run), on the PatchCore rows of MTD training images, 10% coreset, PatchCore's defaults
(projection "auto" = none at 152 dims, its seeded start), float32
(and ``--storage float16``), 1 thread. ``--cli-fit-set``: the 630 images ``fastad fit --seed 0`` fits on
(700 minus its 70 held-out ones, pipeline.py's draw) from the cached features. The CLI extracts its own
features (other batches: 6% of its rows differ from the cached ones by up to 1e-3 relative), so to check
a CLI model give its own bank: ``--bank-model F`` = a model fitted with ``--coreset-ratio 1.0`` (the
whole pre-coreset bank) and ``--model M`` = the same fit with the default coreset; M's memory bank must
be the exhaustive selection's rows bit for bit:

    .venv/bin/python benchmarks/checks/coreset_full_exact.py [--images 630 | --cli-fit-set]
    fastad fit --data ../shared/data/mtd --coreset-ratio 1.0 --out full.safetensors --device cpu --seed 0
    .venv/bin/python benchmarks/checks/coreset_full_exact.py --bank-model full.safetensors --model model.safetensors

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
ap.add_argument("--bank-model", default=None)
a = ap.parse_args()
torch.set_num_threads(1)
if a.bank_model:
    from safetensors.torch import load_file

    bank = load_file(a.bank_model)["memory_bank"].contiguous()
elif a.cli_fit_set:  # pipeline.fit_with_threshold: calibration 0.1 of the 700 images, random.Random(seed + 1)
    rows = mtd_features(Path(a.data).resolve(), Path(a.cache_dir))
    n_img = rows.shape[0] // 784
    cal = set(random.Random(0 + 1).sample(range(n_img), int(round(n_img * 0.1))))
    keep = [i for i in range(n_img) if i not in cal]
    bank = rows.view(n_img, 784, -1)[keep].reshape(-1, rows.shape[1]).contiguous()
else:
    bank = mtd_features(Path(a.data).resolve(), Path(a.cache_dir))[: a.images * 784].contiguous()
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
