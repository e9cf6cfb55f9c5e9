"""Coreset (greedy k-center) benchmark: fastad.ops.coreset vs anomalib's KCenterGreedy, plus the
one-bank-read-per-step memory floor, measured in ONE run, interleaved, on the same data.

    .venv/bin/python benchmarks/bench_coreset.py                 # 50,000 x 1536, 5000 and 500 centres
    .venv/bin/python benchmarks/bench_coreset.py --quick         # small smoke run
    .venv/bin/python benchmarks/bench_coreset.py --features mtd --centres 0.1 --exhaustive-steps 2000
        # real PatchCore features (efficientnet_lite0, 224 px, default taps) of every MTD training image,
        # extracted once and cached in ~/.cache/fastad (--cache-dir); --centres below 1 = a fraction of N

Both methods of ``fastad.ops.coreset`` run on the same selection space: ``exhaustive`` (one fused pass
per step) and ``pruned`` (PCA row filter with block bounds, the default); their indices and distances must be identical (checked;
the exhaustive run may be cut to its first ``--exhaustive-steps`` steps, whose per-step time is then
extrapolated: its steps all cost one read of the bank), and the first steps must equal anomalib's
``KCenterGreedy`` run on the same selection space. The share of rows the pruned method read (not
skipped) is printed.

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
import json
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from _machine import cpu_model  # noqa: E402  (benchmarks/ is the script's folder on sys.path)

import fastad
from fastad.ops.coreset import auto_projection_dim, projected_bank

ROOT = Path(__file__).resolve().parents[1]


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


def mtd_features(root: Path, cache_dir: Path) -> torch.Tensor:
    """PatchCore's training rows (every ``train`` image of the MVTec-layout folder ``root``, fastad's default
    PatchCore: efficientnet_lite0, 224 px, default taps, 3x3 aggregation), cached as a .pt file."""
    cache = cache_dir / f"patchcore_rows_{root.name}_train_efficientnet_lite0_224.pt"
    if cache.exists():
        return torch.load(cache)
    from fastad.data import MVTecDataset, batches
    from fastad.detectors import PatchCore

    ds = MVTecDataset(root, "train", image_size=224)
    with Timer() as t:
        det = PatchCore(coreset_ratio=1.0, progress=False).fit(batches(ds, 16, num_workers=2))
    bank = det.memory_bank_.contiguous()
    print(f"extracted {bank.shape[0]} x {bank.shape[1]} rows of {len(ds)} images in {t.wall:.1f} s; cached in {cache}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(bank, cache)
    return bank


def run_ours(x: torch.Tensor, n: int, start: int, method: str):
    """One coreset call; -> (indices, distances, cpu s, wall s, rows read / rows of full scans)."""
    counter = torch.zeros(3, dtype=torch.int64)
    with Timer() as t:
        idx, dist = torch.ops.fastad.coreset(x, n, start, counter, method)
    read = int(counter[1]) / max(1, int(counter[2]))
    return idx, dist, t.cpu, t.wall, read


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
    ap.add_argument("--features", choices=("synthetic", "mtd"), default="synthetic")
    ap.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "mtd"), help="MTD folder (--features mtd)")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "fastad"), help="where MTD features are cached")
    ap.add_argument("--rows", type=int, default=50_000, help="synthetic rows; with --features mtd: keep the first "
                    "--rows rows (the training images in order, 784 rows each at 224 px) when given below the total")
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--centres", type=float, nargs="+", default=[5000, 500],
                    help="centres to choose; a value below 1 is a fraction of the rows (0.1 = PatchCore's default)")
    ap.add_argument("--projections", nargs="+", default=["none", "128", "auto"])
    ap.add_argument("--repeats", type=int, default=1,
                    help="interleaved rounds of both methods (order alternating), each side's minimum CPU time")
    ap.add_argument("--storage", nargs="+", default=["float32", "float16"],
                    help="storage dtypes of OUR selection bank (fp32 arithmetic either way)")
    ap.add_argument("--exhaustive-steps", type=int, default=0,
                    help="run the exhaustive method only for its first this many steps (0: all), compare that prefix and "
                         "extrapolate its time")
    ap.add_argument("--anomalib-steps", type=int, default=50)
    ap.add_argument("--floor-reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="10,000 x 384, 300 and 50 centres")
    ap.add_argument("--clusters", type=int, default=0,
                    help="0: |N(0,1)| noise (default). K > 0: K Gaussian clusters (centres N(3, 4^2), spread 0.5), "
                         "where the triangle-inequality pruning can skip rows")
    ap.add_argument("--json", type=str, default=None, help="also write every row of the summary to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.dim, args.centres, args.anomalib_steps = 10_000, 384, [300, 50], 20
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    if args.features == "mtd":
        bank = mtd_features(Path(args.data).resolve(), Path(args.cache_dir))
        what = f"MTD PatchCore training rows of all {bank.shape[0] // 784} train images ({Path(args.data).resolve()})"
        if "--rows" in sys.argv and args.rows < bank.shape[0]:
            bank = bank[: args.rows].contiguous()
            what += f", first {args.rows} rows ({args.rows / 784:.0f} images)"
    elif args.clusters:
        cent = torch.randn(args.clusters, args.dim, generator=g) * 4 + 3
        bank = cent[torch.randint(0, args.clusters, (args.rows,), generator=g)] + 0.5 * torch.randn(args.rows, args.dim, generator=g)
        what = f"{args.clusters} Gaussian clusters"
    else:
        bank = torch.randn(args.rows, args.dim, generator=g).abs_()  # non-negative, non-centred like post-ReLU features
        what = "|N(0,1)| noise"
    N, D = bank.shape
    centres = [int(c * N) if c < 1 else int(c) for c in args.centres]
    start = 0
    an = load_anomalib()
    cpu = cpu_model()
    print(f"fastad {fastad.build_info()}")
    print(f"cpu: {cpu}; data: {what}")
    print(f"bank {N} x {D} fp32 ({bank.numel() * 4 / 2**20:.0f} MiB), threads={args.threads}, centres {centres}, "
          f"anomalib: {'KCenterGreedy ' + an[1] + ' (module files loaded unchanged)' if an else 'NOT importable'}")
    rows = []
    for proj in args.projections:
        # --- the selection space, ours and anomalib's ---
        if proj == "none":
            k = None
        elif proj == "auto":
            k = auto_projection_dim(N, D)  # never expands: None when the JL bound is >= D
        else:
            k = int(proj)
        if k is None:
            ours_x, proj_cpu = bank, 0.0
        else:
            with Timer() as tp:
                ours_x = projected_bank(bank, k, seed=0)  # exactly what the wrapper selects on
            proj_cpu = tp.cpu
        dims = D if k is None else k
        an_x, an_proj_cpu = ours_x, proj_cpu
        if an and proj == "auto":  # anomalib's own default: its JL projection (it expands when JL dim > D)
            torch.manual_seed(0)
            sampler = an[0](embedding=bank, sampling_ratio=0.5)
            with Timer() as ta:
                sampler.model.fit(bank)
                an_x = sampler.model.transform(bank)
            an_proj_cpu = ta.cpu
        floor_s, floor_how = floor_per_step(ours_x, args.floor_reps)
        # --- anomalib (interleaved before ours, same data): timed on its default space; indices on ours ---
        an_step = an_idx = None
        if an:
            steps = min(args.anomalib_steps, max(centres) - 1)
            an_t_idx, an_cpu, _ = anomalib_steps(an[0], bank, an_x, steps, start)
            an_step = an_cpu / steps
            an_idx = an_t_idx if an_x is ours_x else anomalib_steps(an[0], bank, ours_x, steps, start)[0]
        for sname in args.storage:
            sx = ours_x if sname == "float32" else ours_x.to(getattr(torch, sname))
            fs, fhow = (floor_s, floor_how) if sname == "float32" else floor_per_step(sx, args.floor_reps)
            for n in centres:
                ne = n if args.exhaustive_steps <= 0 else min(n, args.exhaustive_steps + 1)
                e_runs, p_runs = [], []
                for r in range(max(1, args.repeats)):  # interleaved rounds, order alternating; each side's minimum
                    for method in (("exhaustive", "pruned") if r % 2 == 0 else ("pruned", "exhaustive")):
                        if method == "exhaustive":
                            e_runs.append(run_ours(sx, ne, start, "exhaustive"))
                        else:
                            p_runs.append(run_ours(sx, n, start, "pruned"))
                ie, de, e_cpu, e_wall, e_read = min(e_runs, key=lambda t: t[2])
                ip, dp, p_cpu, p_wall, p_read = min(p_runs, key=lambda t: t[2])
                same = torch.equal(ip[:ne], ie) and torch.equal(dp[:ne], de)
                e_step = e_cpu / max(1, ne - 1)
                row = dict(proj=proj, dims=dims, padded=int(sx.shape[1]), storage=sname, n=n, N=N,
                           exhaustive_step=e_step, exhaustive_total=e_step * (n - 1) + proj_cpu,
                           exhaustive_steps_run=ne - 1, pruned_step=p_cpu / max(1, n - 1), pruned_total=p_cpu + proj_cpu,
                           pruned_wall=p_wall, proj_cpu=proj_cpu, read=p_read, floor=fs, floor_how=fhow,
                           identical_vs_exhaustive=same, cpu=cpu, threads=args.threads)
                if an_idx is not None and sname == "float32":
                    m = min(len(an_idx), n)
                    row["anomalib_first_identical"] = [m, bool(torch.equal(ip[:m], an_idx[:m]))]
                if an_step is not None:
                    row.update(an_step=an_step, an_total=an_step * (n - 1) + an_proj_cpu, an_proj=an_proj_cpu,
                               an_dims=int(an_x.shape[1]))
                rows.append(row)
                print_row(row)
    print("\nsummary (CPU seconds, 1 process; anomalib extrapolated from its timed steps"
          + ("; exhaustive extrapolated from its first steps" if args.exhaustive_steps > 0 else "") + "):")
    print("| projection | dims | storage | centres | exhaustive ms/step | pruned ms/step | rows read | pruned / exhaustive "
          "| floor ms/read | anomalib ms/step (dims) | pruned total s | anomalib total s | speed-up vs anomalib | identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        an_s = f"{r['an_step'] * 1e3:.1f} ({r['an_dims']})" if "an_step" in r else "-"
        an_t = f"{r['an_total']:.1f}" if "an_total" in r else "-"
        sp = f"{r['an_total'] / r['pruned_total']:.1f}x" if "an_total" in r else "-"
        ident = "exh. " + ("yes" if r["identical_vs_exhaustive"] else "NO")
        if "anomalib_first_identical" in r:
            m, ok = r["anomalib_first_identical"]
            ident += f", anomalib first {m}: " + ("yes" if ok else "NO")
        print(f"| {r['proj']} | {r['dims']} | {r['storage']} | {r['n']} | {r['exhaustive_step'] * 1e3:.2f} | "
              f"{r['pruned_step'] * 1e3:.2f} | {100 * r['read']:.1f}% | {r['pruned_step'] / r['exhaustive_step']:.3f} | "
              f"{r['floor'] * 1e3:.2f} | {an_s} | {r['pruned_total']:.1f} | {an_t} | {sp} | {ident} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(argv=sys.argv[1:], build=str(fastad.build_info()), rows=rows), indent=1))
    if not all(r["identical_vs_exhaustive"] and r.get("anomalib_first_identical", [0, True])[1] for r in rows):
        sys.exit("MISMATCH: the pruned indices differ (see the table)")


def print_row(r):
    s = (f"[{r['proj']:>4} -> {r['dims']} dims, {r['storage']}, n={r['n']}] pruned {r['pruned_step'] * 1e3:.3f} ms/step "
         f"(total {r['pruned_total']:.2f} s CPU incl. projection {r['proj_cpu']:.2f} s; wall {r['pruned_wall']:.1f} s; "
         f"rows read {100 * r['read']:.2f}%) | exhaustive {r['exhaustive_step'] * 1e3:.3f} ms/step over "
         f"{r['exhaustive_steps_run']} steps -> pruned/exhaustive {r['pruned_step'] / r['exhaustive_step']:.3f} | "
         f"floor {r['floor'] * 1e3:.2f} ms/read [{r['floor_how']}] | identical to exhaustive: {r['identical_vs_exhaustive']}")
    if "an_step" in r:
        s += (f" | anomalib ({r['an_dims']} dims) {r['an_step'] * 1e3:.1f} ms/step (timed subset), total {r['an_total']:.1f} s "
              f"(extrapolated, incl. projection {r['an_proj']:.2f} s) -> speed-up {r['an_total'] / r['pruned_total']:.1f}x")
    if "anomalib_first_identical" in r:
        s += f" | first {r['anomalib_first_identical'][0]} idx == anomalib on our space: {r['anomalib_first_identical'][1]}"
    print(s, flush=True)


if __name__ == "__main__":
    main()
