"""Coreset (greedy k-center) benchmark: fastad.ops.coreset vs anomalib's KCenterGreedy, plus the
one-bank-read-per-step memory floor, measured in ONE run, interleaved, on the same data.

    .venv/bin/python benchmarks/bench_coreset.py                 # 50,000 x 1536, 5000 and 500 centres
    .venv/bin/python benchmarks/bench_coreset.py --quick         # small smoke run

anomalib (2.7.0, installed with ``pip install --no-deps anomalib==2.7.0``) cannot be imported as a
package without its heavy dependencies (lightning, jsonargparse, ...), so this script loads its two
module files unchanged (``models/components/sampling/k_center_greedy.py`` and
``models/components/dimensionality_reduction/random_projection.py``) with importlib, bypassing the
package ``__init__``s, and drives the sampler's own ``update_distances`` / ``get_new_idx`` / ``scatter_``
step exactly as its ``select_coreset_idxs`` loop does. Its ``KCenterGreedy`` always projects a 2-D
bank; the "no projection" anchor sets ``sampler.features`` to the raw bank (its 3-D input path).
anomalib's loop is slow (~0.37 s per step), so it is timed on ``--anomalib-steps`` steps and its
per-step cost is extrapolated to the full count (printed as such); ours runs the full count.

Times are process CPU time (the machine is shared; wall time is printed too) with
``torch.set_num_threads(--threads)`` (default 1).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch

import fastad
from fastad.ops.coreset import jl_min_dim, projected_bank


def load_anomalib():
    """anomalib's KCenterGreedy and SparseRandomProjection from the installed wheel's files, or None."""
    spec = importlib.util.find_spec("anomalib")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    files = {
        "anomalib.models.components.dimensionality_reduction": root
        / "models/components/dimensionality_reduction/random_projection.py",
        "anomalib.models.components.sampling.k_center_greedy": root / "models/components/sampling/k_center_greedy.py",
    }
    for pkg in ("anomalib", "anomalib.models", "anomalib.models.components", "anomalib.models.components.sampling"):
        if pkg not in sys.modules:
            m = types.ModuleType(pkg)
            m.__path__ = []
            sys.modules[pkg] = m
    mods = {}
    for name, path in files.items():
        s = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(s)
        sys.modules[name] = mod
        s.loader.exec_module(mod)
        mods[name] = mod
    import anomalib.models.components.sampling.k_center_greedy as kcg  # noqa: E402

    ver = "?"
    try:
        from importlib.metadata import version

        ver = version("anomalib")
    except Exception:
        pass
    return kcg.KCenterGreedy, ver


class Timer:
    def __enter__(self):
        self.c0, self.w0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu = time.process_time() - self.c0
        self.wall = time.perf_counter() - self.w0


def floor_per_step(x: torch.Tensor, reps: int) -> tuple[float, str]:
    """Fastest one-pass streaming read of x's bytes (median of `reps` each): for fp32 torch.mv into a
    reused output and torch.sum; for fp16/bf16 the float32 sum of the same bytes (the flat buffer viewed as
    float32: the values are meaningless, the bytes read are the same; int32 sums are not vectorised).
    Returns (seconds CPU per read, description)."""
    cands = []
    if x.dtype == torch.float32:
        out = torch.empty(x.shape[0], dtype=torch.float32)
        v = torch.randn(x.shape[1])
        cands += [("mv", lambda: torch.mv(x, v, out=out)), ("sum", lambda: x.sum())]
    elif x.numel() * x.element_size() % 4 == 0:
        xf = x.reshape(-1).view(torch.float32)
        cands.append(("sum of bytes as fp32", lambda: xf.sum()))
    res = {}
    for name, fn in cands:
        fn()
        ts = []
        for _ in range(reps):
            with Timer() as t:
                fn()
            ts.append(t.cpu)
        res[name] = statistics.median(ts)
    best = min(res, key=res.get)
    return res[best], f"{best} ({', '.join(f'{k} {v * 1e3:.2f} ms' for k, v in res.items())})"


def anomalib_steps(KCG, bank: torch.Tensor, features: torch.Tensor, steps: int, start: int):
    """Run anomalib's select_coreset_idxs loop body for `steps` steps; returns (indices, cpu s, wall s)."""
    sampler = KCG(embedding=bank, sampling_ratio=0.5)
    sampler.features = features
    sampler.reset_distances()
    idx = torch.tensor(start)
    sel = [idx]
    with Timer() as t:
        for _ in range(steps):
            sampler.update_distances(cluster_center=idx)
            idx = sampler.get_new_idx()
            sampler.min_distances.scatter_(0, idx.unsqueeze(0).unsqueeze(1), 0.0)
            sel.append(idx)
    return torch.stack(sel), t.cpu, t.wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--centres", type=int, nargs="+", default=[5000, 500])
    ap.add_argument("--projections", nargs="+", default=["none", "128", "auto"])
    ap.add_argument("--storage", nargs="+", default=["float32", "float16"],
                    help="storage dtypes of OUR selection bank (fp32 arithmetic either way)")
    ap.add_argument("--anomalib-steps", type=int, default=50)
    ap.add_argument("--floor-reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="10,000 x 384, 300 and 50 centres")
    ap.add_argument("--out", type=str, default=None, help="also write the summary table to this file")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.dim, args.centres, args.anomalib_steps = 10_000, 384, [300, 50], 20
    torch.set_num_threads(args.threads)
    N, D = args.rows, args.dim
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(N, D, generator=g).abs_()  # non-negative, non-centred like post-ReLU features
    start = 0
    an = load_anomalib()
    print(f"fastad {fastad.build_info()}")
    print(f"bank {N} x {D} fp32 ({bank.numel() * 4 / 2**20:.0f} MiB), threads={args.threads}, "
          f"anomalib: {'KCenterGreedy ' + an[1] + ' (module files loaded unchanged)' if an else 'NOT importable'}")
    rows = []
    for proj in args.projections:
        # --- the selection space, ours and anomalib's ---
        if proj == "none":
            k, ours_x, proj_cpu = D, bank, 0.0
            an_x, an_proj_cpu = bank, 0.0
        else:
            k = jl_min_dim(N) if proj == "auto" else int(proj)
            with Timer() as tp:
                ours_x = projected_bank(bank, k, seed=0)  # exactly what the wrapper selects on
            proj_cpu = tp.cpu
            an_x = None
            if an and proj == "auto":  # anomalib's own projection (JL dim for eps=0.9)
                torch.manual_seed(0)
                sampler = an[0](embedding=bank, sampling_ratio=0.5)
                with Timer() as ta:
                    sampler.model.fit(bank)
                    an_x = sampler.model.transform(bank)
                an_proj_cpu = ta.cpu
                assert an_x.shape[1] == k, (an_x.shape, k)
            elif an:  # anomalib has no fixed-dim option: same loop on our projected bank
                an_x, an_proj_cpu = ours_x, proj_cpu
        floor_s, floor_how = floor_per_step(ours_x, args.floor_reps)
        # --- anomalib subset (interleaved before ours, same data) ---
        an_step = None
        if an:
            steps = min(args.anomalib_steps, max(args.centres) - 1)
            an_idx, an_cpu, an_wall = anomalib_steps(an[0], bank, an_x, steps, start)
            an_step = an_cpu / steps
        for sname in args.storage:
            sx = ours_x if sname == "float32" else ours_x.to(getattr(torch, sname))
            fs, fhow = (floor_s, floor_how) if sname == "float32" else floor_per_step(sx, args.floor_reps)
            for n in args.centres:
                with Timer() as t:
                    idx, dist = fastad.ops.coreset(sx, n, start=start)
                step = t.cpu / (n - 1)
                agree = ""
                if an and proj == "none" and sname == "float32":
                    m = min(len(an_idx), n)
                    agree = f"first {m} idx == anomalib: {torch.equal(idx[:m], an_idx[:m])}"
                row = dict(proj=proj, storage=sname, k=k if sx.shape[1] == k else f"{k} (+{sx.shape[1] - k} zero)", n=n, ours_step=step, ours_total=t.cpu + proj_cpu,
                           ours_wall=t.wall, proj_cpu=proj_cpu, floor=fs, floor_how=fhow, agree=agree)
                if an_step is not None:
                    row.update(an_step=an_step, an_total=an_step * (n - 1) + an_proj_cpu, an_proj=an_proj_cpu)
                rows.append(row)
                print_row(row)
    print("\nsummary (CPU seconds, 1 process; anomalib extrapolated from its timed steps):")
    print("| projection | dims | our storage | centres | ours ms/step | floor ms/step | ours/floor | anomalib ms/step | "
          "ours total s | anomalib total s (extrap.) | speed-up vs anomalib (total) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        an_s = f"{r['an_step'] * 1e3:.1f}" if "an_step" in r else "-"
        an_t = f"{r['an_total']:.1f}" if "an_total" in r else "-"
        sp = f"{r['an_total'] / r['ours_total']:.1f}x" if "an_total" in r else "-"
        print(f"| {r['proj']} | {r['k']} | {r['storage']} | {r['n']} | {r['ours_step'] * 1e3:.2f} | {r['floor'] * 1e3:.2f} | "
              f"{r['ours_step'] / r['floor']:.2f} | {an_s} | {r['ours_total']:.1f} | {an_t} | {sp} |")


def print_row(r):
    s = (f"[{r['proj']:>4} -> {r['k']} dims, {r['storage']}, n={r['n']:5d}] ours {r['ours_step'] * 1e3:7.2f} ms/step "
         f"(total {r['ours_total']:.2f} s CPU incl. projection {r['proj_cpu']:.2f} s; wall {r['ours_wall']:.1f} s) | "
         f"floor {r['floor'] * 1e3:.2f} ms/read [{r['floor_how']}] -> ours/floor {r['ours_step'] / r['floor']:.2f}")
    if "an_step" in r:
        s += (f" | anomalib {r['an_step'] * 1e3:.1f} ms/step (timed subset), total {r['an_total']:.1f} s "
              f"(extrapolated, incl. projection {r['an_proj']:.2f} s) -> speed-up {r['an_total'] / r['ours_total']:.1f}x "
              f"(per step {r['an_step'] / r['ours_step']:.1f}x)")
    if r["agree"]:
        s += " | " + r["agree"]
    print(s, flush=True)


if __name__ == "__main__":
    main()
