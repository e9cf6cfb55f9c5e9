"""k-NN and group-min benchmark: fastad against its anchors, interleaved in one process on the same data.

    python benchmarks/bench_knn.py --quick                 # a few shapes, 1 thread
    python benchmarks/bench_knn.py --threads 1 2           # the full issue-3 grid at 1 and 2 threads
    python benchmarks/bench_knn.py --op group_min --quick  # group_min vs k=1 knn and torch reshape+amin
    python benchmarks/bench_knn.py --N 65536 --Q 3136 --D 384 1536 --k 1 9 --only faiss.knn torch.mm.bf16
                                                           # issue 15: bf16 inputs and the bf16 screen
    python benchmarks/bench_knn.py --features mtd --N 65536 --Q 3136 --k 1 9   # MTD PatchCore features

Anchors (knn): faiss-cpu ``faiss.knn`` and ``IndexFlatL2.search``, torch ``cdist``+``topk`` (anomalib's
path), torch ``addmm``+``topk`` (norm expansion), scikit-learn brute force, and numpy/OpenBLAS sgemm of
the same shape as the roof (written into a reused buffer in <= 1 GiB query blocks); for bf16 inputs
(issue 15) torch bf16 ``mm`` (oneDNN) of the same shape is the roof. Methods "fastad.screen" (float32
knn through the bf16 screen, ``screen="bf16"``; its survivor fraction is printed) and "fastad.bf16"
(knn on the inputs rounded to bfloat16) run where the CPU has AVX512-BF16. Anchors that need
the Q x N matrix run in <= 1 GiB query blocks (as faiss itself does), never on the whole matrix.

Each method runs once for memory (also timed), then ``--repeat`` more times, the methods interleaved round-robin so they share the
machine's contention; the best run is kept. Throughput is reported per process CPU-second
(``time.process_time``: the machine is shared), wall time alongside. Peak extra memory = VmHWM above
the RSS before the call (reset through /proc/self/clear_refs). Ratios are anchor CPU-s / ours CPU-s
(> 1: we are faster). Every shape checks our top-1 against a float64 cdist on 256 queries.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed from the environment before numpy loads (they
mis-tune OpenBLAS on this machine, see shared/docs/PERF.md).
"""
from __future__ import annotations

import os
import sys

_BAD_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(v in os.environ for v in _BAD_ENV):  # re-exec without them, before numpy/OpenBLAS initialise
    env = {k: v for k, v in os.environ.items() if k not in _BAD_ENV}
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastad  # noqa: E402

BLOCK_BYTES = 1 << 30  # anchors' score blocks (the torch paths and the sgemm roof)


# ----------------------------------------------------------------------------------------------- utils
def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_mb(fn) -> tuple[float, float, float]:
    """Runs fn once: (peak RSS above the RSS before the call in MB (nan if unmeasurable), CPU s, wall s)."""
    base = _rss_kb()
    ok = _reset_hwm()
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    c1, w1 = time.process_time(), time.perf_counter()
    peak = _hwm_kb()
    del out
    return ((peak - base) / 1024 if ok else float("nan")), c1 - c0, w1 - w0


def timed(fn) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    c1, w1 = time.process_time(), time.perf_counter()
    del out
    return c1 - c0, w1 - w0


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)  # numpy's / faiss's OpenBLAS, sklearn's BLAS
    except ImportError:
        pass


def q_block(Q: int, N: int) -> int:
    return max(1, min(Q, BLOCK_BYTES // (4 * max(N, 1))))


# --------------------------------------------------------------------------------------------- methods
AMX_ROWS = False  # --amx: on a CPU with AMX, also time the bf16 kernel that is not in use (AMX or vdpbf16ps)


def _with_env(var: str, value: str, fn):
    """fn() with the environment variable var = value (read by fastad's kernel dispatch at each call)."""
    old = os.environ.get(var)
    os.environ[var] = value
    try:
        return fn()
    finally:
        if old is None:
            del os.environ[var]
        else:
            os.environ[var] = old


def knn_methods(q: torch.Tensor, b: torch.Tensor, k: int, skip: set[str]):
    qn, bn = q.numpy(), b.numpy()
    Q, N = q.shape[0], b.shape[0]
    qb = q_block(Q, N)
    m = {}
    m["fastad"] = lambda: fastad.ops.knn(q, b, k)
    if fastad.build_info()["bf16_micro_kernel"] == "avx512bf16":
        q16, b16 = q.bfloat16(), b.bfloat16()
        m["fastad.screen"] = lambda: fastad.ops.knn(q, b, k, screen="bf16")
        m["fastad.bf16"] = lambda: fastad.ops.knn(q16, b16, k)
        buf16 = torch.empty(q_block(Q, N), N, dtype=torch.bfloat16)

        def mm_bf16():  # the bf16 roof: torch's bf16 matmul (oneDNN), no selection, into a reused buffer
            for i in range(0, Q, qb):
                n = min(qb, Q - i)
                torch.mm(q16[i : i + n], b16.T, out=buf16[:n])
            return None

        m["torch.mm.bf16(roof)"] = mm_bf16
        amx = fastad.build_info()["bf16_amx"]
        if AMX_ROWS and amx in ("amx", "available"):  # --amx: the other kernel, through FASTAD_AMX for the call
            other, val = ("vdpbf16ps", "0") if amx == "amx" else ("amx", "1")
            m[f"fastad.bf16.{other}"] = lambda: _with_env("FASTAD_AMX", val, lambda: fastad.ops.knn(q16, b16, k))
            m[f"fastad.screen.{other}"] = lambda: _with_env("FASTAD_AMX", val,
                                                            lambda: fastad.ops.knn(q, b, k, screen="bf16"))
    try:
        import faiss

        if "faiss" not in skip:
            m["faiss.knn"] = lambda: faiss.knn(qn, bn, k)
            index = faiss.IndexFlatL2(bn.shape[1])
            index.add(bn)
            m["faiss.IndexFlatL2"] = lambda: index.search(qn, k)
    except ImportError:
        print("faiss-cpu not installed: skipping the faiss anchors (pip install faiss-cpu==1.15.1)")

    def cdist_topk():  # anomalib: torch.cdist(embedding, memory_bank) then topk(largest=False)
        outs = []
        for i in range(0, Q, qb):
            outs.append(torch.cdist(q[i : i + qb], b).topk(k, dim=1, largest=False))
        return outs

    bnorm = (b * b).sum(1)

    def mm_topk():  # |b|^2 - 2 q.b, topk, + |q|^2 on the winners
        outs = []
        for i in range(0, Q, qb):
            qq = q[i : i + qb]
            s = torch.addmm(bnorm, qq, b.T, alpha=-2.0)
            v, ix = s.topk(k, dim=1, largest=False)
            outs.append(((v + (qq * qq).sum(1, keepdim=True)).clamp_min_(0).sqrt_(), ix))
        return outs

    if "torch" not in skip:
        m["torch.cdist+topk"] = cdist_topk
        m["torch.mm+topk"] = mm_topk
    if "sklearn" not in skip:
        try:
            from sklearn.neighbors import NearestNeighbors

            nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(bn)
            m["sklearn.brute"] = lambda: nn.kneighbors(qn, k)
        except ImportError:
            print("scikit-learn not installed: skipping the sklearn anchor")
    buf = np.empty((qb, N), dtype=np.float32)
    bT = bn.T

    def sgemm():  # the roof: the same GEMM, no selection, into a reused buffer
        for i in range(0, Q, qb):
            n = min(qb, Q - i)
            np.matmul(qn[i : i + n], bT, out=buf[:n])
        return None

    m["numpy.sgemm(roof)"] = sgemm
    return m


def group_methods(q: torch.Tensor, b: torch.Tensor, gs: int, skip: set[str]):
    Q, N = q.shape[0], b.shape[0]
    G = N // gs
    qb = q_block(Q, N)
    qn, bn = q.numpy(), b.numpy()
    m = {}
    m["fastad"] = lambda: fastad.ops.group_min(q, b, gs)
    m["fastad.knn(k=1)"] = lambda: fastad.ops.knn(q, b, 1)
    if fastad.build_info()["bf16_micro_kernel"] == "avx512bf16":
        m["fastad.screen"] = lambda: fastad.ops.group_min(q, b, gs, screen="bf16")

    def cdist_amin():
        return [torch.cdist(q[i : i + qb], b).view(-1, G, gs).amin(-1) for i in range(0, Q, qb)]

    bnorm = (b * b).sum(1)

    def mm_amin():
        outs = []
        for i in range(0, Q, qb):
            qq = q[i : i + qb]
            s = torch.addmm(bnorm, qq, b.T, alpha=-2.0).view(-1, G, gs).amin(-1)
            outs.append((s + (qq * qq).sum(1, keepdim=True)).clamp_min_(0).sqrt_())
        return outs

    if "torch" not in skip:
        m["torch.cdist+amin"] = cdist_amin
        m["torch.mm+amin"] = mm_amin
    try:
        import faiss

        if "faiss" not in skip:
            m["faiss.knn per group"] = lambda: [faiss.knn(qn, bn[g * gs : (g + 1) * gs], 1) for g in range(G)]
    except ImportError:
        pass
    buf = np.empty((qb, N), dtype=np.float32)
    bT = bn.T

    def sgemm():
        for i in range(0, Q, qb):
            n = min(qb, Q - i)
            np.matmul(qn[i : i + n], bT, out=buf[:n])

    m["numpy.sgemm(roof)"] = sgemm
    return m


# ------------------------------------------------------------------------------------------------ main
def mtd_rows(N: int, Q: int, data: str, cache_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Bank = N and queries = Q other rows (a fixed random split) of MTD PatchCore features (bench_coreset's
    extraction, cached under cache_dir)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_coreset import mtd_features

    rows = mtd_features(Path(data).resolve(), Path(cache_dir)).float()
    perm = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))
    if N + Q > rows.shape[0]:
        raise SystemExit(f"--features mtd: {rows.shape[0]} rows, need N + Q = {N + Q}")
    return rows[perm[Q : Q + N]].contiguous(), rows[perm[:Q]].contiguous()


def run_shape(op, D, N, Q, k_or_gs, threads, repeat, skip, seed=0, only=(), features=None):
    set_threads(threads)
    g = torch.Generator().manual_seed(seed)
    if features is not None:
        b, q = mtd_rows(N, Q, *features)
        D = b.shape[1]
    else:
        b = torch.randn(N, D, generator=g)
        q = torch.randn(Q, D, generator=g)
    flops = 2.0 * Q * N * D
    methods = knn_methods(q, b, k_or_gs, skip) if op == "knn" else group_methods(q, b, k_or_gs, skip)
    if only:  # keep fastad and the named methods, in their usual order
        methods = {n: f for n, f in methods.items() if n.startswith("fastad") or n in only or n.split("(")[0] in only}
    # accuracy: our top-1 / group minima against float64 on up to 256 queries
    qs = q[:256]
    d64 = torch.cdist(qs.double(), b.double())
    if op == "knn":
        d, i = fastad.ops.knn(qs, b, 1)
        acc = float((d64.gather(1, i) - d64.min(1, keepdim=True).values).abs().le(1e-4 * d64.min(1, keepdim=True).values + 1e-6).double().mean())
    else:
        ref = d64.view(len(qs), -1, k_or_gs).amin(-1)
        out = fastad.ops.group_min(qs, b, k_or_gs).double()
        acc = float(((out - ref).abs() <= 1e-4 * ref + 1e-6).double().mean())
    del d64
    screen_frac, screen_msg, bf16_msg = None, "", ""
    if "fastad.screen" in methods:  # identical answers to the fp32 path, and the survivor fraction
        fastad.knn_screen_stats(reset=True)
        if op == "knn":
            d0, i0 = fastad.ops.knn(q, b, k_or_gs)
            d1, i1 = fastad.ops.knn(q, b, k_or_gs, screen="bf16")
        else:
            d0 = i0 = fastad.ops.group_min(q, b, k_or_gs)
            d1 = i1 = fastad.ops.group_min(q, b, k_or_gs, screen="bf16")
        st = fastad.knn_screen_stats(reset=True)
        screen_frac = st["survivor_fraction"]
        same = torch.equal(i0, i1) and torch.equal(d0, d1)
        screen_msg = (f"screen: identical to fp32 path: {same}; survivors {st['survivors']} of {st['pairs']} pairs "
                      f"({100 * screen_frac:.3f}%), fallbacks {st['fallbacks']}")
        del d0, i0, d1, i1
    res = {name: {"cpu": float("inf"), "wall": float("inf")} for name in methods}
    load0 = os.getloadavg()[0]
    for name, fn in methods.items():  # first run: memory (and a time sample; it includes first-touch costs)
        res[name]["mem_mb"], res[name]["cpu"], res[name]["wall"] = peak_extra_mb(fn)
    for _ in range(repeat):  # interleaved
        for name, fn in methods.items():
            c, w = timed(fn)
            res[name]["cpu"] = min(res[name]["cpu"], c)
            res[name]["wall"] = min(res[name]["wall"], w)
    load1 = os.getloadavg()[0]
    roof = flops / res["numpy.sgemm(roof)"]["cpu"] if "numpy.sgemm(roof)" in res else float("nan")
    if "fastad.screen" in res:
        bf16_msg = f"fastad.screen {res['fastad']['cpu'] / res['fastad.screen']['cpu']:.2f}x fastad fp32"
    if "torch.mm.bf16(roof)" in res:
        bf_roof = res["torch.mm.bf16(roof)"]["cpu"]
        bf16_msg = (f"bf16: fastad.bf16 {flops / res['fastad.bf16']['cpu'] / 1e9:.1f} GF/core-s = "
                    f"{100 * bf_roof / res['fastad.bf16']['cpu']:.0f}% of torch bf16 mm {flops / bf_roof / 1e9:.1f}; "
                    f"fastad.screen {res['fastad']['cpu'] / res['fastad.screen']['cpu']:.2f}x fastad fp32"
                    + (f", {res['faiss.knn']['cpu'] / res['fastad.screen']['cpu']:.2f}x faiss.knn" if "faiss.knn" in res else ""))
        bf16_msg += (f"; fastad.bf16 = {res['fastad']['cpu'] / res['fastad.bf16']['cpu']:.2f}x fastad fp32 (bf16 kernel: "
                     f"{'AMX tiles' if fastad.build_info()['bf16_amx'] == 'amx' else 'vdpbf16ps'})")
    for other in ("amx", "vdpbf16ps"):
        if f"fastad.bf16.{other}" in res:
            o = res[f"fastad.bf16.{other}"]["cpu"]
            bf16_msg += (f"; {other}: fastad.bf16.{other} {flops / o / 1e9:.1f} GF/core-s = {res['fastad']['cpu'] / o:.2f}x "
                         f"fastad fp32, fastad.screen.{other} "
                         f"{res['fastad']['cpu'] / res[f'fastad.screen.{other}']['cpu']:.2f}x fastad fp32")
    ours = res["fastad"]["cpu"]
    param = "k" if op == "knn" else "group_size"
    print(f"\n## {op} D={D} N={N} Q={Q} {param}={k_or_gs} threads={threads}  ({flops/1e9:.1f} GFLOP, "
          f"top-1/min accuracy vs float64 {acc:.4f}, load avg {load0:.1f}->{load1:.1f})")
    for msg in (screen_msg, bf16_msg):
        if msg:
            print(msg)
    print("| method | CPU s | wall s | GF/core-s | GF/s wall | % sgemm | extra MB | anchor/ours (CPU) | (wall) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, r in res.items():
        gf = flops / r["cpu"] / 1e9
        row = dict(op=op, D=D, N=N, Q=Q, param=k_or_gs, threads=threads, method=name, cpu_s=r["cpu"],
                   wall_s=r["wall"], gf_core=gf, gf_wall=flops / r["wall"] / 1e9, frac_sgemm=flops / r["cpu"] / roof,
                   mem_mb=r["mem_mb"], ratio_cpu=r["cpu"] / ours, ratio_wall=r["wall"] / res["fastad"]["wall"],
                   acc=acc, load=(load0, load1), features="mtd" if features else "randn",
                   screen_survivor_fraction=screen_frac)
        rows.append(row)
        print(f"| {name} | {r['cpu']:.3f} | {r['wall']:.3f} | {gf:.1f} | {row['gf_wall']:.1f} | "
              f"{100*row['frac_sgemm']:.0f}% | {r['mem_mb']:.0f} | {row['ratio_cpu']:.2f} | {row['ratio_wall']:.2f} |")
    sys.stdout.flush()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=["knn", "group_min", "both"], default="knn")
    p.add_argument("--quick", action="store_true", help="a small subset (D=384/1536, bank 16384, 784 queries)")
    p.add_argument("--D", type=int, nargs="+", default=[384, 1536])
    p.add_argument("--N", type=int, nargs="+", default=[16384, 131072], help="bank rows (group_min: rounded to groups)")
    p.add_argument("--Q", type=int, nargs="+", default=[784, 12544])
    p.add_argument("--k", type=int, nargs="+", default=[1, 9])
    p.add_argument("--group-size", type=int, default=784, help="group_min: rows per group (28x28 patches)")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--repeat", type=int, default=2, help="timed runs per method after the first (memory) run")
    p.add_argument("--skip", nargs="*", default=[], help="anchors to skip: faiss torch sklearn")
    p.add_argument("--sklearn-max-gflop", type=float, default=100.0, help="skip sklearn above this size (slow)")
    p.add_argument("--torch-max-gflop", type=float, default=1e9, help="skip the torch anchors above this size")
    p.add_argument("--max-gflop", type=float, default=1e9, help="skip shapes above this size")
    p.add_argument("--min-gflop", type=float, default=0.0, help="skip shapes below this size")
    p.add_argument("--only", nargs="*", default=[], help="run only fastad and these methods, by their printed "
                   "names (e.g. faiss.knn torch.cdist+topk); default: all")
    p.add_argument("--amx", action="store_true", help="on a CPU with AMX-BF16: also time bf16 knn and the screen on "
                   "the bf16 kernel not in use (vdpbf16ps through FASTAD_AMX=0 where the AMX tiles run, else AMX)")
    p.add_argument("--jsonl", default=None, help="append every row to this JSON-lines file")
    p.add_argument("--features", choices=["randn", "mtd"], default="randn", help="mtd: MTD PatchCore rows "
                   "(bench_coreset.py's extraction, cached; D is theirs) instead of Gaussian data")
    p.add_argument("--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                   "data", "mtd"), help="MTD folder (--features mtd)")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/fastad"), help="MTD feature cache")
    a = p.parse_args(argv)
    global AMX_ROWS
    AMX_ROWS = a.amx
    if a.quick:
        a.N, a.Q = [16384], [784]
    from _machine import cpu_model

    print(f"fastad {fastad.__version__} build {fastad.build_info()}; torch {torch.__version__}, numpy {np.__version__}; "
          f"CPU {cpu_model()}")
    if a.features == "mtd":
        a.D = a.D[:1]  # D is the features'
    features = (a.data, a.cache_dir) if a.features == "mtd" else None
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            print("  blas:", lib.get("internal_api"), lib.get("version"), lib.get("architecture"), lib.get("filepath", "").split("/")[-1])
    except ImportError:
        pass
    ops = ["knn", "group_min"] if a.op == "both" else [a.op]
    rows = []
    for op in ops:
        if op == "knn":
            grid = itertools.product(a.threads, a.D, a.N, a.Q, a.k)
        else:
            grid = ((t, D, max(1, N // a.group_size) * a.group_size, Q, a.group_size)
                    for t, D, N, Q in itertools.product(a.threads, a.D, a.N, a.Q))
        for t, D, N, Q, kk in grid:
            gflop = 2.0 * Q * N * D / 1e9
            if not a.min_gflop <= gflop <= a.max_gflop:
                continue
            skip = set(a.skip)
            if gflop > a.sklearn_max_gflop:
                skip.add("sklearn")
            if gflop > a.torch_max_gflop:
                skip.add("torch")
            rows += run_shape(op, D, N, Q, kk, t, a.repeat, skip, only=set(a.only), features=features)
    if a.jsonl:
        with open(a.jsonl, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    # summary: our ratios against each anchor (CPU time), per shape
    print("\n## summary (anchor CPU-s / fastad CPU-s; fastad % of same-run sgemm)")
    keyf = lambda r: (r["op"], r["D"], r["N"], r["Q"], r["param"], r["threads"])  # noqa: E731
    for key, grp in itertools.groupby(rows, key=keyf):
        grp = list(grp)
        ours = next(r for r in grp if r["method"] == "fastad")
        parts = [f"{r['method']} {r['ratio_cpu']:.2f}" for r in grp if r["method"] != "fastad"]
        print(f"{key}: fastad {ours['gf_core']:.1f} GF/core-s = {100*ours['frac_sgemm']:.0f}% sgemm; " + ", ".join(parts))


if __name__ == "__main__":
    main()
