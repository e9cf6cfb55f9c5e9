"""fastad.distributed: 1 vs 2 gloo processes (1 thread each, loopback) for knn, coreset and MuSc.

For every op and world size P in (1, 2) a fresh set of P processes runs the op (so each peak-memory
figure is that op's); each rank generates only its own shard (rows seeded per 4096-row chunk, so the
concatenated data is the same for every P). Printed per op and P: wall time (max over ranks), process
CPU time per rank, the speed-up (P=1 wall / P=2 wall, and the same for CPU time, which is what a rank
does and is less sensitive to a shared machine), peak RSS per rank over the op (VmHWM reset before it: the resident shard plus the op's temporaries) and
the bank bytes per rank, and the
communication: bytes this rank wrote to its sockets (measured: /proc/self/io wchar over the op, the
transport's framing included), the payload fastad.distributed counts, and the written cost model's
prediction of both for P = 2, 8 and 64. The results of P=1 and P=2 are checked equal (indices/distances
bit for bit, MuSc scores bit for bit). The P=1 run also times the single-process op (the anchor).

    .venv/bin/python benchmarks/bench_distributed.py [--quick] [--out benchmarks/results/distributed.json]

Cost model (per rank; D' = selection dims, k neighbours, Q queries, n_max = largest shard's images):
  knn (default mode), per query block: 2 all_gathers of Q*k*(4 + 8) bytes: (P-1)*Q*k*12 bytes sent,
      2 round trips (+ 2 roll calls of (P-1) * 609 bytes: argument check and failure report).
  knn (scatter_queries), per ring step: one shard, N/P * D * 4 bytes; P-1 steps.
  coreset, per greedy step: broadcast of the chosen row, 4*D' bytes (sent by its owner; relayed by the
      broadcast tree), + all_reduce(MAX) of one int64 key (8 bytes out, 8 in): 2 round trips whatever P;
      time per step = N*D'*elt/(P * stream bandwidth) + 2 * latency(P), latency growing ~log2(P).
  MuSc, per ring step: one image block, n_max*L*C*4 bytes; floor(P/2) steps; then one all_to_all of
      (P-1)/P * P*n_max^2*L*R*4 bytes (the other direction's minima returned to their owners).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from _machine import cpu_model  # noqa: E402  (benchmarks/ is the script's folder on sys.path)

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 4096


def wchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar"):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """VmHWM: this process's peak RSS (not inherited across exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rows(lo: int, hi: int, D: int, seed: int, clustered: bool = True) -> torch.Tensor:
    """Rows [lo, hi) of a synthetic bank that is the same whatever the sharding (per-chunk seeds)."""
    out = torch.empty(hi - lo, D)
    for c in range(lo // CHUNK, (hi + CHUNK - 1) // CHUNK):
        a, b = max(lo, c * CHUNK), min(hi, (c + 1) * CHUNK)
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        blk = torch.randn(CHUNK, D, generator=g)
        off = torch.randn(1, D, generator=g) * 2
        if clustered:
            blk += off  # chunk-level clusters (real features are clustered); else plain N(0, 1) noise
        out[a - lo : b - lo] = blk[a - c * CHUNK : b - c * CHUNK]
    return out


def _worker(rank, world, port, cfg, outdir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    import fastad
    import fastad.distributed as fd

    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600))
    op = cfg["op"]
    res = {"rank": rank}
    if op == "knn":
        N, D, Q, k = cfg["N"], cfg["D"], cfg["Q"], cfg["k"]
        lo, hi = N * rank // world, N * (rank + 1) // world
        shard = rows(lo, hi, D, 1)
        q = rows(0, Q, D, 2)
        res["bank_bytes"] = shard.numel() * 4
        fd.knn(q[:8], shard, k)  # warm-up (packing buffers, connections)
        work = lambda: fd.knn(q, shard, k)  # noqa: E731
        anchor = (lambda: fastad.ops.knn(q, shard, k)) if world == 1 else None
        steps = 1
    elif op == "coreset":
        N, D, n, proj = cfg["N"], cfg["D"], cfg["n"], cfg["proj"]
        lo, hi = N * rank // world, N * (rank + 1) // world
        shard = rows(lo, hi, D, 3, cfg.get("clustered", True))
        res["bank_bytes"] = shard.numel() * 4
        fd.coreset(shard, 3, projection_dim=proj)
        work = lambda: fd.coreset(shard, n, projection_dim=proj)  # noqa: E731
        anchor = (lambda: fastad.ops.coreset(shard, n, projection_dim=proj)) if world == 1 else None
        steps = n - 1
        c0 = time.process_time()
        res["composable"] = fd.coreset(shard, n, projection_dim=proj, method="composable")[0]
        res["composable_cpu_s"] = time.process_time() - c0
    else:  # musc
        N, L, C = cfg["N"], cfg["L"], cfg["C"]
        lo, hi = N * rank // world, N * (rank + 1) // world
        z = torch.nn.functional.normalize(rows(lo * L, hi * L, C, 4), dim=-1).view(hi - lo, L, C)
        res["bank_bytes"] = z.numel() * 4
        fd.mutual_scores(z[:, :16].contiguous() if z.shape[0] else z[:, :16], k=1)
        work = lambda: fd.mutual_scores(z)  # noqa: E731
        anchor = (lambda: fastad.ops.mutual_scores(z)) if world == 1 else None
        steps = world // 2 if world > 1 else 0
    dist.barrier()
    reset_peak()  # peak over the op: the resident shard + the op's temporaries
    fd.comm_stats(reset=True)
    w0, c0, t0 = wchar(), time.process_time(), time.perf_counter()
    out = work()
    res["wall_s"], res["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    res["socket_bytes"] = wchar() - w0
    res["stats"] = fd.comm_stats()
    res["steps"] = steps
    res["peak_rss_mb"] = peak_rss_mb()
    if anchor is not None:
        c0, t0 = time.process_time(), time.perf_counter()
        ref = anchor()
        res["anchor_wall_s"], res["anchor_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        res["equal_anchor"] = all(torch.equal(a, b) for a, b in zip(out if isinstance(out, tuple) else (out,),
                                                                   ref if isinstance(ref, tuple) else (ref,)))
    torch.save({"res": res, "out": out}, os.path.join(outdir, f"{op}-{world}-{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def run(cfg, world):
    with tempfile.TemporaryDirectory() as d:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_worker, args=(world, port, cfg, d), nprocs=world, start_method="spawn")
        got = [torch.load(os.path.join(d, f"{cfg['op']}-{world}-{r}.pt"), weights_only=False) for r in range(world)]
    return [g["res"] for g in got], [g["out"] for g in got]


def radius(bank: torch.Tensor, idx: torch.Tensor) -> float:
    """Covering radius of the centres ``bank[idx]``: max over rows of the distance to the nearest centre."""
    import fastad

    return float(fastad.ops.knn(bank, bank[idx], 1)[0].max())


def composable_sim(bank: torch.Tensor, n: int, P: int, proj) -> torch.Tensor:
    """fastad.distributed.coreset(method="composable")'s steps for P equal shards, in one process."""
    import fastad
    from fastad.distributed.coreset import projected_shard
    from fastad.ops.coreset import jl_min_dim

    N = bank.shape[0]
    k = jl_min_dim(N) if proj == "auto" else proj
    x = projected_shard(bank, 0, N, k, 0) if proj else bank
    union, gidx = [], []
    for r in range(P):
        lo, hi = N * r // P, N * (r + 1) // P
        sel, _ = fastad.ops.coreset(x[lo:hi], min(n, hi - lo), start=0)
        union.append(x[lo:hi][sel])
        gidx.append(sel + lo)
    u, g = torch.cat(union), torch.cat(gidx)
    sel, _ = fastad.ops.coreset(u, n, start=0)
    return g[sel]


def model(cfg, P):
    """Predicted payload bytes per rank and round trips, per step (see the module docstring)."""
    op = cfg["op"]
    if op == "knn":
        return {"bytes_per_block": (P - 1) * cfg["Q"] * cfg["k"] * 12, "round_trips_per_block": 2}
    if op == "coreset":
        from fastad.ops.coreset import PROJECTION_PAD, jl_min_dim

        k = jl_min_dim(cfg["N"]) if cfg["proj"] == "auto" else (cfg["proj"] or cfg["D"])
        dprime = k + (-k % PROJECTION_PAD) if cfg["proj"] else cfg["D"]
        return {"bytes_per_step_owner": 4 * dprime, "bytes_per_step_allreduce": 16, "round_trips_per_step": 2}
    nmax = -(-cfg["N"] // P)
    return {"bytes_per_ring_step": nmax * cfg["L"] * cfg["C"] * 4, "ring_steps": P // 2,
            "all_to_all_bytes": (P - 1) * nmax * nmax * cfg["L"] * 4}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    ap.add_argument("--ops", default="knn,coreset,coreset-noise,musc", help="comma-separated subset to run")
    args = ap.parse_args()
    import fastad

    if args.quick:
        cfgs = [dict(op="knn", N=8192, D=256, Q=196, k=1), dict(op="coreset", N=8192, D=256, n=100, proj="auto"),
                dict(op="musc", N=8, L=64, C=64)]
    else:
        cfgs = [dict(op="knn", N=65536, D=1536, Q=784, k=1), dict(op="coreset", N=65536, D=1536, n=500, proj="auto"),
                dict(op="coreset", N=65536, D=1536, n=500, proj="auto", clustered=False),
                dict(op="musc", N=32, L=576, C=256)]
    want = set(args.ops.split(","))
    cfgs = [c for c in cfgs if (c["op"] + ("-noise" if c.get("clustered") is False else "")) in want]
    info = fastad.build_info()
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; fastad simd={info['simd']} "
          f"knn micro-kernel={info['dist_micro_kernel']}; gloo over loopback; 1 thread per rank")
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "simd": info["simd"],
              "micro_kernel": info["dist_micro_kernel"], "results": []}
    for cfg in cfgs:
        r1, o1 = run(cfg, 1)
        r2, o2 = run(cfg, 2)
        if cfg["op"] == "musc":
            equal = torch.equal(torch.cat([o2[0], o2[1]]), o1[0])
        else:
            equal = all(torch.equal(a, b) for a, b in zip(o1[0], o2[0])) and all(
                torch.equal(a, b) for a, b in zip(o2[0], o2[1]))
        w1, w2 = max(r["wall_s"] for r in r1), max(r["wall_s"] for r in r2)
        c1, c2 = max(r["cpu_s"] for r in r1), max(r["cpu_s"] for r in r2)
        row = dict(cfg=cfg, P1=r1, P2=r2, speedup_wall=w1 / w2, speedup_cpu=c1 / c2, equal_1_vs_2=bool(equal),
                   model={P: model(cfg, P) for P in (2, 8, 64)})
        if cfg["op"] == "coreset":  # covering radius (raw feature space) of exact vs composable
            torch.set_num_threads(1)
            bank = rows(0, cfg["N"], cfg["D"], 3, cfg.get("clustered", True))
            rad = {"exact": radius(bank, o1[0][0]), "composable_P2": radius(bank, r2[0]["composable"])}
            for P in (8, 64):
                rad[f"composable_P{P}_sim"] = radius(bank, composable_sim(bank, cfg["n"], P, cfg["proj"]))
            row["radius"] = rad
            for r in r1 + r2:
                r.pop("composable")
            print(f"\n  covering radius: {rad}")
        report["results"].append(row)
        steps = max(r2[0]["steps"], 1)
        print(f"\n{cfg}")
        print(f"  P=1: wall {w1:.2f} s, cpu {c1:.2f} s, peak RSS {r1[0]['peak_rss_mb']:.0f} MB, data/rank "
              f"{r1[0]['bank_bytes'] / 2**20:.0f} MiB; single-process op (anchor) wall {r1[0]['anchor_wall_s']:.2f} s "
              f"(equal: {r1[0]['equal_anchor']})")
        print(f"  P=2: wall {w2:.2f} s, cpu/rank {c2:.2f} s, peak RSS/rank "
              f"{max(r['peak_rss_mb'] for r in r2):.0f} MB, data/rank {max(r['bank_bytes'] for r in r2) / 2**20:.0f} MiB")
        print(f"  speed-up P=2 vs P=1: wall {w1 / w2:.2f}x, cpu per rank {c1 / c2:.2f}x; P=1 == P=2 results: {equal}")
        for r in r2:
            print(f"  rank {r['rank']}: socket bytes {r['socket_bytes']:,} ({r['socket_bytes'] / steps:,.0f} per step over "
                  f"{steps} steps), counted payload {r['stats']['bytes_sent']:,}, round trips {r['stats']['round_trips']}")
        print(f"  model: {row['model']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
