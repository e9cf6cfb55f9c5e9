"""GPU benchmark of every fastad CUDA op against its torch anchor, in one run (issue 3 and 5 goals).

Run on a machine with a CUDA GPU, after building fastad with CUDA kernels:

    python benchmarks/bench_gpu.py --out results/gpu.json          # all sections
    python benchmarks/bench_gpu.py --sections knn coreset          # some sections

Sections (each prints a table and adds its rows to the JSON; a failing section prints its error and
the run goes on):
- ceilings: device-to-device copy bandwidth (bytes read + written), float32 matmul (TF32 off) and
  bf16 matmul rates of torch on random 8192^3 operands: the ceilings the ratios below use.
- knn: fastad.ops.knn vs torch cdist + topk (anomalib's path), float32 and bf16 inputs; GFLOP/s
  counted as 2 Q N D; fraction of the measured fp32 (or bf16) matmul rate; an accuracy check on
  256 queries against a float64 reference (max relative distance error, equal index sets).
- knn_sweep: the same knn at Q=12544, N=131072 under each k <= 32 selection kernel and tile shape
  (FASTAD_CUDA_KNN_SELECT / _CHUNK_ROWS / _TILE_ROWS benchmark knobs); results must equal the first.
- group_min: fastad.ops.group_min vs torch cdist -> view(Q, G, gs) -> amin.
- coreset: one greedy step on 1M x 1536 (per-step time from n=201 minus n=1 runs), vs anomalib's
  step written in torch (norm of bank - centre, minimum, argmax) and the one-read floor (bank.sum()).
- musc: lnamd_mutual_scores on N images of 37 x 37 tokens, C = 1024, r = 1, 3, 5 (one layer per
  call; the official scoring stage runs 4 layers), vs the port of the official per-image cdist loop
  (tests/helpers/musc_oracle.py) on one (layer, r); parity of the CUDA result with the CPU kernel on a small
  problem.
Timing: CUDA events around each call, after a warm-up call; the median of --repeats calls.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

import fastad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "helpers"))

ROWS: list[dict] = []


def timeit(fn, repeats=3, warmup=1):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def row(section, **kw):
    kw["section"] = section
    ROWS.append(kw)
    print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items()), flush=True)


CEIL = {}


def sec_ceilings(args):
    x = torch.empty(1 << 30, dtype=torch.float32, device="cuda").uniform_()  # 4 GiB
    t = timeit(lambda: x.clone(), repeats=5)
    CEIL["copy_GBs"] = 2 * x.numel() * 4 / t / 1e9
    t = timeit(lambda: x.sum(), repeats=5)
    CEIL["read_GBs"] = x.numel() * 4 / t / 1e9
    del x
    torch.backends.cuda.matmul.allow_tf32 = False
    n = 8192
    a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
    t = timeit(lambda: a @ b, repeats=5)
    CEIL["fp32_TFs"] = 2 * n**3 / t / 1e12
    a16, b16 = a.bfloat16(), b.bfloat16()
    t = timeit(lambda: a16 @ b16, repeats=10)
    CEIL["bf16_TFs"] = 2 * n**3 / t / 1e12
    del a, b, a16, b16
    row("ceilings", **CEIL, device=torch.cuda.get_device_name())


def knn_check(q, b, d, i, k, nq=256):
    qs = q[:nq].double()
    dd = torch.cdist(qs, b.double())
    ref = dd.topk(k, largest=False)
    rel = ((d[:nq].double() - ref.values).abs() / ref.values.clamp_min(1e-12)).max().item()
    # index sets equal up to ties: our indices' exact distances equal the reference values
    mine = torch.gather(dd, 1, i[:nq])
    tie_ok = torch.allclose(mine, ref.values, rtol=1e-5, atol=1e-6)
    return rel, bool(tie_ok)


def sec_knn(args):
    shapes = [(784, 16384), (12544, 131072)] if not args.quick else [(784, 16384)]
    for D in (384, 1536):
        for Q, N in shapes:
            g = torch.Generator(device="cuda").manual_seed(0)
            b = torch.randn(N, D, device="cuda", generator=g) + 3.0  # non-centred, like real features
            q = b[torch.randint(0, N, (Q,), device="cuda", generator=g)] + 0.5 * torch.randn(Q, D, device="cuda", generator=g)
            flops = 2.0 * Q * N * D
            for k in (1, 9):
                for dt in (torch.float32, torch.bfloat16):
                    qq, bb = q.to(dt), b.to(dt)
                    t = timeit(lambda: fastad.ops.knn(qq, bb, k), repeats=args.repeats)
                    d, i = fastad.ops.knn(qq, bb, k)
                    rel, ok = knn_check(qq.float(), bb.float(), d, i, k)
                    ceil = CEIL.get("fp32_TFs" if dt == torch.float32 else "bf16_TFs", float("nan"))
                    r = dict(D=D, Q=Q, N=N, k=k, dtype=str(dt).split(".")[1], fastad_ms=t * 1e3,
                             TFs=flops / t / 1e12, frac_matmul=flops / t / 1e12 / ceil, max_rel_err=rel, idx_ok=ok)
                    if dt == torch.float32:
                        ta = timeit(lambda: torch.cdist(qq, bb).topk(k, largest=False), repeats=args.repeats)
                        r.update(cdist_topk_ms=ta * 1e3, speedup_vs_cdist=ta / t)
                    row("knn", **r)
            del b, q
            torch.cuda.empty_cache()


SWEEP_SHAPES = [(65536, 1024), (32768, 2048), (16384, 2048), (16384, 4096), (8192, 2048), (8192, 4096), (4096, 4096)]


def sec_knn_sweep(args):
    """Selection kernel (warp list vs per-thread queues) and tile shape (bank rows per chunk x query
    rows per tile, through the FASTAD_CUDA_* benchmark knobs) at Q=12544, N=131072: which tile fits
    the 60 MB L2 well enough that the float32 score tile never goes to HBM."""
    Q, N = (12544, 131072) if not args.quick else (784, 16384)
    knobs = ("FASTAD_CUDA_KNN_SELECT", "FASTAD_CUDA_CHUNK_ROWS", "FASTAD_CUDA_TILE_ROWS", "FASTAD_CUDA_SEL_WARPS")
    try:
        for D in (384, 1536):
            g = torch.Generator(device="cuda").manual_seed(0)
            b = torch.randn(N, D, device="cuda", generator=g) + 3.0
            q = b[torch.randint(0, N, (Q,), device="cuda", generator=g)] + 0.5 * torch.randn(Q, D, device="cuda", generator=g)
            flops = 2.0 * Q * N * D
            for dt in (torch.bfloat16, torch.float32):
                qq, bb = q.to(dt), b.to(dt)
                ceil = CEIL.get("fp32_TFs" if dt == torch.float32 else "bf16_TFs", float("nan"))
                for k in (1, 9):
                    configs = [("queue", None, None, None), ("warp", None, None, 8), ("warp", None, None, 4),
                               ("warp", None, None, 16)] + [("warp", nc, qt, 8) for nc, qt in SWEEP_SHAPES]
                    ref_i = None
                    for sel, nc, qt, w in configs:
                        os.environ["FASTAD_CUDA_KNN_SELECT"] = sel
                        for name, v in (("FASTAD_CUDA_CHUNK_ROWS", nc), ("FASTAD_CUDA_TILE_ROWS", qt),
                                        ("FASTAD_CUDA_SEL_WARPS", w)):
                            if v is None:
                                os.environ.pop(name, None)
                            else:
                                os.environ[name] = str(v)
                        t = timeit(lambda: fastad.ops.knn(qq, bb, k), repeats=args.repeats)
                        d, i = fastad.ops.knn(qq, bb, k)
                        if ref_i is None:
                            ref_d, ref_i = d, i
                        same = bool(torch.equal(i, ref_i)) and bool(torch.equal(d, ref_d))
                        row("knn_sweep", D=D, k=k, dtype=str(dt).split(".")[1], select=sel, warps=w or "-",
                            chunk_rows=nc or "default", tile_rows=qt or "default",
                            tile_MB=(nc * qt * 4 / 2**20) if nc else "default", ms=t * 1e3, TFs=flops / t / 1e12,
                            frac_matmul=flops / t / 1e12 / ceil, same_as_first=same)
                del qq, bb
            del b, q
            torch.cuda.empty_cache()
    finally:
        for name in knobs:
            os.environ.pop(name, None)


def sec_group_min(args):
    for Q, G, gs, D in [(10952, 200, 1369, 1024), (3136, 200, 784, 1536)]:
        g = torch.Generator(device="cuda").manual_seed(1)
        b = torch.randn(G * gs, D, device="cuda", generator=g) + 2.0
        q = b[torch.randint(0, G * gs, (Q,), device="cuda", generator=g)] + 0.3 * torch.randn(Q, D, device="cuda", generator=g)
        t = timeit(lambda: fastad.ops.group_min(q, b, gs), repeats=args.repeats)
        ta = timeit(lambda: torch.cdist(q, b).view(Q, G, gs).amin(-1), repeats=args.repeats)
        out = fastad.ops.group_min(q, b, gs)
        ref = torch.cdist(q[:128].double(), b.double()).view(128, G, gs).amin(-1)
        rel = ((out[:128].double() - ref).abs() / ref.clamp_min(1e-12)).max().item()
        flops = 2.0 * Q * G * gs * D
        row("group_min", Q=Q, G=G, gs=gs, D=D, fastad_ms=t * 1e3, TFs=flops / t / 1e12,
            frac_matmul=flops / t / 1e12 / CEIL.get("fp32_TFs", float("nan")), torch_ms=ta * 1e3, speedup=ta / t,
            max_rel_err=rel)
        del b, q
        torch.cuda.empty_cache()


def sec_coreset(args):
    N, D = (1_000_000, 1536) if not args.quick else (100_000, 1536)
    g = torch.Generator(device="cuda").manual_seed(2)
    bank = torch.randn(N, D, device="cuda", generator=g).abs_()
    floor = timeit(lambda: bank.sum(), repeats=5)
    for storage in (torch.float32, torch.float16):
        bk = bank.to(storage)
        steps = 200
        t1 = timeit(lambda: fastad.ops.coreset(bk, 1), repeats=3)
        tn = timeit(lambda: fastad.ops.coreset(bk, steps + 1), repeats=3)
        per = (tn - t1) / steps
        fl = floor * (0.5 if storage == torch.float16 else 1.0)
        # anomalib's per-step update, in torch, on the float32 bank (its sampler is float32)
        def anomalib_steps(n=10):
            mind = torch.full((N, 1), float("inf"), device="cuda")
            c = 0
            for _ in range(n):
                d = torch.linalg.norm(bank - bank[c : c + 1], dim=1, keepdim=True)
                mind = torch.minimum(mind, d)
                c = int(torch.argmax(mind).item())
        ta = timeit(anomalib_steps, repeats=3) / 10
        idx, _ = fastad.ops.coreset(bk, 6)
        row("coreset", N=N, D=D, storage=str(storage).split(".")[1], step_ms=per * 1e3, floor_ms=fl * 1e3,
            vs_floor=per / fl, anomalib_step_ms=ta * 1e3, speedup=ta / per, first_idx=str(idx.tolist()))
        del bk
    del bank
    torch.cuda.empty_cache()


def sec_musc(args):
    import musc_oracle as oracle

    # parity CUDA vs CPU kernel on a small problem
    g = torch.Generator().manual_seed(3)
    small = torch.randn(12, 24 * 24, 128, generator=g)
    cpu = fastad.ops.lnamd_mutual_scores(small, [1, 3, 5])
    gpu = fastad.ops.lnamd_mutual_scores(small.cuda(), [1, 3, 5]).cpu()
    row("musc_parity", N=12, L=576, C=128, max_abs_diff=(cpu - gpu).abs().max().item())
    H, C = 37, 1024
    for N in args.musc_n:
        gen = torch.Generator(device="cuda").manual_seed(N)
        layers = [torch.randn(N, H * H, C, device="cuda", generator=gen) for _ in range(4)]
        x = layers[0]
        fastad.ops.lnamd_mutual_scores(x[:8], [1, 3, 5])  # warm-up (cuBLAS handle, modules)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        maps = [fastad.ops.lnamd_mutual_scores(z, [1, 3, 5]) for z in layers]  # the 4-layer scoring stage
        torch.cuda.synchronize()
        t4 = time.perf_counter() - t0
        r = dict(N=N, L=H * H, C=C, scoring_4layers_s=t4, finite=bool(all(torch.isfinite(m).all() for m in maps)))
        del maps, layers
        if N <= args.oracle_max_n:
            def official_one():  # one (layer, r = 3) of the official pipeline: LNAMD + per-image cdist MSM
                with torch.device("cuda"):  # its LayerNorm module is created inside
                    z = oracle.lnamd_official([torch.cat([x[:, :1], x], 1)], 3)[0]
                    oracle.msm_official(z)
            to = timeit(official_one, repeats=1)
            ours1 = timeit(lambda: fastad.ops.lnamd_mutual_scores(x, [3]), repeats=1)
            r.update(official_one_r_s=to, fastad_one_r_s=ours1, speedup_one_r=to / ours1)
        row("musc", **r)
        del x
        torch.cuda.empty_cache()


SECTIONS = {"ceilings": sec_ceilings, "knn": sec_knn, "knn_sweep": sec_knn_sweep, "group_min": sec_group_min, "coreset": sec_coreset,
            "musc": sec_musc}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small shapes only")
    ap.add_argument("--musc-n", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--oracle-max-n", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    assert torch.cuda.is_available() and fastad.build_info()["cuda_compiled"], "needs a GPU and a CUDA build of fastad"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print("build:", fastad.build_info(), flush=True)
    print("device:", torch.cuda.get_device_name(), flush=True)
    for name in args.sections:
        print(f"== {name}", flush=True)
        t0 = time.time()
        try:
            SECTIONS[name](args)
        except Exception:  # keep going: one broken section must not lose the others' numbers
            traceback.print_exc()
            row(name, error=traceback.format_exc().splitlines()[-1])
        print(f"   ({time.time() - t0:.1f} s)", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(ROWS, f, indent=1)


if __name__ == "__main__":
    main()
