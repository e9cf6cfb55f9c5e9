"""MuSc scoring on CPU: fastad vs the port of the official code (tests/helpers/musc_oracle.py), 1 thread.

Config B (measured end to end): N=32 images, 24x24 patches, C=768, 4 layers x r in {1,3,5}, maps at
336 px, RsCIN k=[1,2,3]. Each side runs in its own subprocess (ours, oracle, ours again, so that a
load change on this shared machine shows up), reporting wall time, process CPU time, process max RSS
and the peak RSS above the baseline taken after the tokens were created (a 2 ms psutil sampler).
The parent checks that both sides give the same maps and image scores.

Config C (the official default size, EXTRAPOLATED from measured parts): N=83, 37x37, C=1024,
4 layers x 3 r. Oracle: LNAMD measured on one batch of 4 images (x N/4), MSM measured for one
query image at one (layer, r) (x N x 12; the official MSM cost does not depend on r). Ours:
lnamd_mutual_scores of one layer measured on 5 and on 10 images, split into a per-image part (LN,
pooled norms) and a per-pair part (GEMM tile, box filters, epilogues), then x N images + N(N-1)/2
pairs, x 4 layers. Ours' peak RSS above the baseline is sampled on the subsets, and with
--full-layers K ours also runs K layers end to end at N=83 (measured CPU time and peak memory).

Pair mode (--pair, a micro-benchmark of the per-pair engine at the default size, L=37x37=1369,
C=1024, 1 thread, process CPU time): the per-pair cost of `lnamd_mutual_scores` (r = 1, 3, 5: one
Gram tile, two box filters, three min epilogues) and of `mutual_scores` (r = 1: Gram tile + one
epilogue), each fitted from runs on n and 2n images (T = a * images + b * pairs, as config C), and,
interleaved in the same loop, the knn op (k=1, l2) on 1369 queries x 8192 bank rows x 1024: its
2QND / CPU-s is the rate of the shared AVX2 micro-kernel on this machine at this moment. Rates are
GFLOP (2 L^2 C per pair) per CPU-second; every round is printed so the spread under load shows.

    .venv/bin/python benchmarks/bench_musc.py            # B and C
    .venv/bin/python benchmarks/bench_musc.py --config B
    .venv/bin/python benchmarks/bench_musc.py --config C --full-layers 1
    .venv/bin/python benchmarks/bench_musc.py --pair --rounds 5
    .venv/bin/python benchmarks/bench_musc.py --screen compare [--features mtd] [--r 3] [--jsonl F]

Screen mode (--screen compare, issue 15): mutual_scores with screen="none" / "auto" / "bf16" interleaved,
1 thread, thread CPU time; the bf16 screen's survivor fraction, same-run ratios, outputs checked identical.
Without AVX512-BF16 the "bf16" mode runs the scalar emulation (survivors are real, its time is not).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from _machine import cpu_model  # noqa: E402  (benchmarks/ is the script's folder on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG_B = dict(N=32, H=24, C=768, layers=4, image_size=336, r_list=(1, 3, 5), k_list=(1, 2, 3))


class PeakRSS:
    """Samples this process's RSS every `period` seconds in a thread."""

    def __init__(self, period=0.002):
        import psutil

        self.proc, self.period, self.peak, self._stop = psutil.Process(), period, 0, False

    def rss(self):
        return self.proc.memory_info().rss

    def __enter__(self):
        self.base = self.rss()
        self.peak = self.base
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self.rss())
            time.sleep(self.period)

    def __exit__(self, *a):
        self._stop = True
        self.t.join()
        self.peak = max(self.peak, self.rss())


def make_tokens(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, L, C = cfg["N"], cfg["H"] ** 2, cfg["C"]
    toks = [torch.randn(N, 1 + L, C, generator=g) for _ in range(cfg["layers"])]
    cls = torch.nn.functional.normalize(torch.randn(N, 768, generator=g), dim=-1)
    return toks, cls


def child(side: str, out: str):
    torch.set_num_threads(1)
    cfg = CONFIG_B
    toks, cls = make_tokens(cfg)
    import fastad  # noqa: F401  (import cost outside the measurement)
    from fastad.detectors import MuSc
    from tests.helpers import musc_oracle as O

    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        if side == "ours":
            det = MuSc(backbone=None, image_size=cfg["image_size"], r_list=cfg["r_list"], k_list=cfg["k_list"], progress=False)
            scores, maps = det.score_tokens(toks, cls)
            scores = scores.double()
        else:
            maps, ac, rs = O.musc_official(toks, cfg["r_list"], cfg["image_size"], cls.numpy(), cfg["k_list"])
            scores = torch.from_numpy(rs).double()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    raw = maps.flatten(1).max(1).values.double()  # image score before RsCIN (max of the upsampled map)
    torch.save({"scores": scores, "raw": raw, "maps": maps.float()}, out + ".pt")
    res = dict(side=side, wall_s=wall, cpu_s=cpu, base_rss_mib=mem.base / 2**20, peak_above_base_mib=(mem.peak - mem.base) / 2**20,
               max_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    Path(out).write_text(json.dumps(res))


def run_child(side):
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run([sys.executable, __file__, "--child", side, "--out", out], check=True, env=env)
    res = json.loads(Path(out).read_text())
    res["data"] = torch.load(out + ".pt")
    os.remove(out)
    os.remove(out + ".pt")
    return res


def config_b():
    print(f"== config B: N={CONFIG_B['N']}, {CONFIG_B['H']}x{CONFIG_B['H']} patches, C={CONFIG_B['C']}, "
          f"{CONFIG_B['layers']} layers x r {list(CONFIG_B['r_list'])}, maps {CONFIG_B['image_size']} px, 1 thread", flush=True)
    runs = [run_child("ours"), run_child("oracle"), run_child("ours")]
    hdr = f"{'side':8s} {'wall s':>9s} {'CPU s':>9s} {'max RSS MiB':>12s} {'base MiB':>9s} {'peak-base MiB':>14s}"
    print(hdr)
    for r in runs:
        print(f"{r['side']:8s} {r['wall_s']:9.2f} {r['cpu_s']:9.2f} {r['max_rss_mib']:12.0f} {r['base_rss_mib']:9.0f} {r['peak_above_base_mib']:14.0f}")
    ours = min((r for r in runs if r["side"] == "ours"), key=lambda r: r["cpu_s"])
    orc = runs[1]
    dm = (ours["data"]["maps"] - orc["data"]["maps"]).abs().max().item()
    ds = (ours["data"]["scores"] - orc["data"]["scores"]).abs().max().item()
    dr = (ours["data"]["raw"] - orc["data"]["raw"]).abs().max().item()
    rng = (orc["data"]["raw"].max() - orc["data"]["raw"].min()).item()
    print(f"parity: max |maps diff| = {dm:.2e}; image scores before RsCIN (max of map): max diff {dr:.2e}; "
          f"after RsCIN: max diff {ds:.2e} (RsCIN min-max normalises by the score range {rng:.2e}, which "
          f"amplifies float32 noise by 1/range on these random tokens)")
    print(f"speed-up (CPU time) {orc['cpu_s'] / ours['cpu_s']:.1f}x, (wall) {orc['wall_s'] / ours['wall_s']:.1f}x; "
          f"peak memory above baseline: ours/oracle = {ours['peak_above_base_mib'] / max(orc['peak_above_base_mib'], 1e-9):.3f}; "
          f"process max RSS: ours/oracle = {ours['max_rss_mib'] / orc['max_rss_mib']:.3f}", flush=True)


C_N, C_H, C_C, C_LAYERS, C_R = 83, 37, 1024, 4, 3


def c_memory_model(n):
    """MiB that ours allocates for one lnamd_mutual_scores call on n images at config C, 1 thread:
    LN-ed tokens + [R, n, n-1, L] minima + per-thread Gram tile, packed A/B, L2 tile, epilogue scratch."""
    L, C = C_H * C_H, C_C
    scratch = (L * L + (L + 5) // 6 * 6 * C + 512 * C + 96 * 512) * 4 + 1.4 * 2**20
    return (n * L * C * 4 + C_R * n * (n - 1) * L * 4 + scratch) / 2**20


def ours_subsets(g, n_sub):
    """ours on n_sub/2 and n_sub images (one layer): per-image cost a, per-pair cost b, peak RSS."""
    import fastad

    L = C_H * C_H
    times, peaks = {}, {}
    for n in (n_sub // 2, n_sub):
        x = torch.randn(n, L, C_C, generator=g)
        with PeakRSS() as mem:
            c0 = time.process_time()
            fastad.ops.lnamd_mutual_scores(x, (1, 3, 5))
            times[n] = time.process_time() - c0
        peaks[n] = (mem.peak - mem.base) / 2**20
        del x
    n1, n2 = n_sub // 2, n_sub
    p1, p2 = n1 * (n1 - 1) // 2, n2 * (n2 - 1) // 2
    b = (times[n2] - times[n1] * n2 / n1) / (p2 - p1 * n2 / n1)
    a = (times[n1] - b * p1) / n1
    return a, b, times, peaks


def config_c(n_sub=10, full_layers=0):
    torch.set_num_threads(1)
    import fastad  # noqa: F401
    from tests.helpers import musc_oracle as O

    N, H, C, layers, R = C_N, C_H, C_C, C_LAYERS, C_R
    L = H * H
    pairs = N * (N - 1) // 2
    n1, n2 = n_sub // 2, n_sub
    print(f"== config C (EXTRAPOLATED from measured parts): N={N}, {H}x{H}, C={C}, {layers} layers x {R} r, 1 thread; "
          f"order: ours, oracle, ours (same process)", flush=True)
    g = torch.Generator().manual_seed(1)
    ours = [ours_subsets(g, n_sub)]  # first, in a fresh process: its peak RSS is not hidden by freed oracle memory
    # oracle LNAMD: one batch of 4 images, all 4 layers, each r
    batch = [torch.randn(4, 1 + L, C, generator=g) for _ in range(layers)]
    c0 = time.process_time()
    for r in (1, 3, 5):
        O.lnamd_official(batch, r)
    lnamd_cpu = (time.process_time() - c0) * N / 4
    del batch
    # oracle MSM: one query image against N-1 others, one (layer, r)
    Z = torch.nn.functional.normalize(torch.randn(N, L, C, generator=g), dim=-1)
    c0 = time.process_time()
    O.msm_official(Z, query_index=[0])
    per_query = time.process_time() - c0
    del Z
    msm_cpu = per_query * N * layers * R
    ours.append(ours_subsets(g, n_sub))
    oracle = lnamd_cpu + msm_cpu
    print(f"oracle: LNAMD {lnamd_cpu:.0f} CPU-s (from one batch of 4), MSM {per_query:.1f} CPU-s per query per (layer, r) "
          f"-> {msm_cpu:.0f} CPU-s; total ~{oracle / 3600:.2f} CPU-h")
    for k, (a, b, times, _) in enumerate(ours):
        ours_cpu = (a * N + b * pairs) * layers
        print(f"ours run {k + 1} (one layer, r = 1, 3, 5): {times[n1]:.2f} CPU-s for {n1} images, {times[n2]:.2f} CPU-s for "
              f"{n2} images -> {1e3 * b:.1f} ms per pair ({2 * L * L * C / 1e9 / b:.0f} GF/CPU-s) + {1e3 * a:.1f} ms per "
              f"image -> {ours_cpu:.0f} CPU-s for {N} images, {pairs} pairs x {layers} layers; extrapolated speed-up "
              f"{oracle / ours_cpu:.1f}x", flush=True)
    peaks = ours[0][3]
    print(f"ours peak RSS above baseline (input tokens excluded): {peaks[n1]:.0f} MiB at {n1} images, {peaks[n2]:.0f} MiB "
          f"at {n2} (model {c_memory_model(n1):.0f} / {c_memory_model(n2):.0f} MiB); model at N={N}: "
          f"{c_memory_model(N):.0f} MiB", flush=True)
    for _ in range(full_layers):  # one layer measured end to end at the default size, in a fresh subprocess
        res = run_child("full")
        cpu = res["cpu_s"]
        print(f"ours, one layer MEASURED at N={N} (own subprocess): {cpu:.1f} CPU-s ({res['wall_s']:.1f} s wall), peak "
              f"RSS above baseline {res['peak_above_base_mib']:.0f} MiB (model {c_memory_model(N):.0f}); x {layers} layers "
              f"= {cpu * layers:.0f} CPU-s -> speed-up vs the extrapolated oracle {oracle / (cpu * layers):.1f}x", flush=True)


def child_full(out: str):
    """One layer of config C end to end (ours), for --full-layers."""
    torch.set_num_threads(1)
    import fastad

    g = torch.Generator().manual_seed(2)
    x = torch.randn(C_N, C_H * C_H, C_C, generator=g)
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        fastad.ops.lnamd_mutual_scores(x, (1, 3, 5))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    Path(out).write_text(json.dumps(dict(wall_s=wall, cpu_s=cpu, peak_above_base_mib=(mem.peak - mem.base) / 2**20)))
    torch.save({}, out + ".pt")


def pair_bench(rounds=3, n1=4):
    torch.set_num_threads(1)
    import fastad  # noqa: F401

    H, C = 37, 1024
    L = H * H
    n2 = 2 * n1
    p1, p2 = n1 * (n1 - 1) // 2, n2 * (n2 - 1) // 2
    gf_pair = 2 * L * L * C / 1e9
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n2, L, C, generator=g)
    z = torch.nn.functional.normalize(x, dim=-1)
    q = torch.randn(L, C, generator=g)
    bank = torch.randn(8192, C, generator=g)
    gf_knn = 2 * L * bank.shape[0] * C / 1e9
    ops = torch.ops.fastad

    def cpu(fn):
        c0 = time.process_time()
        fn()
        return time.process_time() - c0

    def per_pair(fn):
        t1, t2 = cpu(lambda: fn(n1)), cpu(lambda: fn(n2))
        return (t2 - t1 * n2 / n1) / (p2 - p1 * n2 / n1)

    lms = lambda n: ops.lnamd_mutual_scores(x[:n], [1, 3, 5], 1, None, 0)  # noqa: E731
    ms = lambda n: ops.mutual_scores(z[:n], 1, None, 0)  # noqa: E731
    knn = lambda: ops.knn(q, bank, 1, "l2", None, False)  # noqa: E731
    lms(2), ms(2), knn()  # warm-up (thread-local buffers, page faults)
    print(f"== pair mode: L={H}x{H}={L}, C={C}, {gf_pair:.2f} GFLOP per pair tile, fitted from {n1} and {n2} images; "
          f"knn k=1 {L} x {bank.shape[0]} x {C}; 1 thread, GFLOP per CPU-second (GF/CPU-s)", flush=True)
    print(f"{'round':>5s} {'knn GF/CPU-s':>13s} {'mutual r=1 ms/pair':>19s} {'GF/CPU-s':>9s} "
          f"{'lnamd_mutual r=1,3,5 ms/pair':>29s} {'GF/CPU-s':>9s}")
    rows = []
    for rd in range(rounds):
        tk = cpu(knn)
        b1 = per_pair(ms)
        b3 = per_pair(lms)
        tk2 = cpu(knn)
        rk = gf_knn / min(tk, tk2)
        rows.append((rk, b1, b3))
        print(f"{rd:5d} {rk:13.1f} {1e3 * b1:19.1f} {gf_pair / b1:9.1f} {1e3 * b3:29.1f} {gf_pair / b3:9.1f}", flush=True)
    rk = max(r[0] for r in rows)
    b1 = min(r[1] for r in rows)
    b3 = min(r[2] for r in rows)
    print(f"best: knn {rk:.1f} GF/CPU-s; mutual_scores {1e3 * b1:.1f} ms/pair = {gf_pair / b1:.1f} GF/CPU-s "
          f"({gf_pair / b1 / rk:.2f} of knn); lnamd_mutual_scores (r 1,3,5) {1e3 * b3:.1f} ms/pair = "
          f"{gf_pair / b3:.1f} GF/CPU-s ({gf_pair / b3 / rk:.2f} of knn)", flush=True)


def screen_features(kind: str, n: int, side: int, channels: int, r: int, data: str):
    """[layers x Tensor[n, L, C]] unit-norm LNAMD features: of Gaussian tokens ("randn": one layer, L = side^2,
    C = channels) or of DINOv2-S/14 tokens of the first n MTD test images (every 4th of the sorted list,
    224 px: 16 x 16, C = 384, the backbone's default layers)."""
    import fastad

    if kind == "randn":
        g = torch.Generator().manual_seed(4)
        return [fastad.ops.lnamd(torch.randn(n, side * side, channels, generator=g), r)]
    from fastad.data import MVTecDataset
    from fastad.detectors import MuSc

    ds = MVTecDataset(data, "test", image_size=224, mean=None, std=None)
    X = torch.stack([ds[i]["image"] for i in range(0, len(ds), 4)[:n]])
    tokens, _ = MuSc("dinov2_vits14", image_size=224, progress=False).extract(X)
    return [fastad.ops.lnamd(t[:, 1:].contiguous(), r) for t in tokens]


def screen_compare(features="randn", n=8, side=16, channels=384, r=1, rounds=3, data="/work/shared/data/mtd",
                   jsonl=None):
    """mutual_scores with screen none / auto / bf16, interleaved, 1 thread, thread CPU time (min of rounds):
    survivor fraction of the screen, same-run ratios, outputs checked identical."""
    import fastad

    torch.set_num_threads(1)
    bi = fastad.build_info()
    emulated = bi["bf16_micro_kernel"] != "avx512bf16"
    if emulated:
        os.environ["FASTAD_BF16_EMULATE"] = "1"  # the screen runs through its emulation: survivors, not speed
    kern = fastad.op_kernels()
    layers = screen_features(features, n, side, channels, r, data)
    N, L, C = layers[0].shape
    print(f"== mutual_scores screen compare: {cpu_model()}; bf16 micro-kernel: {fastad.build_info()['bf16_micro_kernel']}")
    for m in ("bf16", "auto"):
        print(f"   '{m}': " + kern[f"mutual_scores screen='{m}'"])
    print(f"   features {features}: {len(layers)} layer(s) of N={N} images, L={L}, C={C}, LNAMD r={r}; k=1; "
          f"1 thread, thread CPU s per call (min of {rounds} rounds, modes interleaved, order rotating)")
    print(f"{'layer':>5s} {'fp32 s':>8s} {'auto s':>8s} {'bf16 s':>8s} {'fp32/auto':>9s} {'fp32/bf16':>9s} "
          f"{'survivors':>10s} {'identical':>9s}")
    out = []
    for li, z in enumerate(layers):
        best = {m: float("inf") for m in ("none", "auto", "bf16")}
        res, frac = {}, 0.0
        t0 = time.thread_time()
        fastad.ops.mutual_scores(z, k=1)  # warm-up; short calls are repeated to >= 0.3 s per timing
        reps = max(1, int(0.3 / max(time.thread_time() - t0, 1e-4)))
        for rd in range(rounds):
            modes = ("none", "auto", "bf16")
            for m in modes[rd % 3:] + modes[: rd % 3]:  # the order rotates each round
                n = 1 if (m == "bf16" and emulated) else reps
                fastad.knn_screen_stats(reset=True)
                t0 = time.thread_time()
                for _ in range(n):
                    res[m] = fastad.ops.mutual_scores(z, k=1, screen=m)
                best[m] = min(best[m], (time.thread_time() - t0) / n)
                if m == "bf16":
                    frac = fastad.knn_screen_stats(reset=True)["survivor_fraction"]  # the same for every call
        same = all(torch.equal(res["none"].view(torch.int32), res[m].view(torch.int32)) for m in ("auto", "bf16"))
        ra, rb = best["none"] / best["auto"], best["none"] / best["bf16"]
        print(f"{li:5d} {best['none']:8.3f} {best['auto']:8.3f} {best['bf16']:8.3f} {ra:9.3f} {rb:9.3f} "
              f"{100 * frac:9.3f}% {str(same):>9s}", flush=True)
        out.append(dict(bench="mutual_scores_screen", cpu=cpu_model(), bf16_kernel=fastad.build_info()["bf16_micro_kernel"],
                        features=features, layer=li, N=N, L=L, C=C, r=r, fp32_s=best["none"], auto_s=best["auto"],
                        bf16_s=best["bf16"], fp32_over_auto=ra, fp32_over_bf16=rb, survivor_fraction=frac,
                        identical=same))
        if not same:
            raise SystemExit("mutual_scores: the screened output differs from the fp32 path")
    print("ratios fp32/X = fp32 time / X time (> 1: X faster); on a CPU without AVX512-BF16 "
          "'bf16' is the scalar emulation (its time is not a speed) and 'auto' is the fp32 path")
    if jsonl:
        with open(jsonl, "a") as f:
            for row in out:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="all", choices=["all", "B", "C"])
    ap.add_argument("--pair", action="store_true", help="per-pair micro-benchmark only (see the docstring)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--full-layers", type=int, default=0,
                    help="config C: also run ours on this many layers end to end at N=83 (~2-3 CPU-min each)")
    ap.add_argument("--screen", choices=["compare"], help="mutual_scores with screen none / auto / bf16 (issue 15)")
    ap.add_argument("--features", choices=["randn", "mtd"], default="randn",
                    help="--screen: Gaussian tokens or DINOv2-S tokens of MTD test images (224 px)")
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--side", type=int, default=16, help="--screen randn: grid side (L = side^2)")
    ap.add_argument("--channels", type=int, default=384, help="--screen randn: C")
    ap.add_argument("--r", type=int, default=1, help="--screen: LNAMD window of the features")
    ap.add_argument("--data", default="/work/shared/data/mtd")
    ap.add_argument("--jsonl", help="--screen: append one JSON line per layer")
    ap.add_argument("--child", choices=["ours", "oracle", "full"])
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child == "full":
        child_full(a.out)
    elif a.child:
        child(a.child, a.out)
    elif a.screen:
        screen_compare(a.features, a.n_images, a.side, a.channels, a.r, a.rounds, a.data, a.jsonl)
    elif a.pair:
        pair_bench(a.rounds)
    else:
        if a.config in ("all", "B"):
            config_b()
        if a.config in ("all", "C"):
            config_c(full_layers=a.full_layers)
