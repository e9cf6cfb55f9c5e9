"""Markdown summary tables from bench_knn.py --jsonl files (for benchmarks/RESULTS.md).

    python benchmarks/summarize_knn.py benchmarks/results/cpuknn_knn_quick_1t.jsonl benchmarks/results/cpuknn_group_min_1t.jsonl
"""
import itertools
import json
import sys


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def main(paths):
    rows = [json.loads(line) for p in paths for line in open(p)]
    key = lambda r: (r["op"], r["threads"], r["D"], r["N"], r["Q"], r["param"])  # noqa: E731
    groups = {k: {r["method"]: r for r in g} for k, g in itertools.groupby(sorted(rows, key=key), key=key)}
    knn = {k: v for k, v in groups.items() if k[0] == "knn"}
    gm = {k: v for k, v in groups.items() if k[0] == "group_min"}
    anchors = ["faiss.knn", "faiss.IndexFlatL2", "torch.cdist+topk", "torch.mm+topk", "sklearn.brute"]
    if knn:
        print("| threads | D | N | Q | k | fastad CPU s (wall s) | GF/core-s | % same-run sgemm | "
              + " | ".join(f"x {a}" for a in anchors) + " | extra MB fastad / faiss.knn / IndexFlatL2 |")
        print("|---" * (9 + len(anchors)) + "|")
        for (op, t, D, N, Q, k), m in knn.items():
            o = m["fastad"]
            rat = [fmt(m[a]["ratio_cpu"]) if a in m else "-" for a in anchors]
            mem = " / ".join(fmt(m[a]["mem_mb"], ".0f") if a in m else "-" for a in ["fastad", "faiss.knn", "faiss.IndexFlatL2"])
            print(f"| {t} | {D} | {N} | {Q} | {k} | {o['cpu_s']:.3f} ({o['wall_s']:.3f}) | {o['gf_core']:.1f} | "
                  f"{100 * o['frac_sgemm']:.0f}% | " + " | ".join(rat) + f" | {mem} |")
    if gm:
        ga = ["torch.cdist+amin", "torch.mm+amin", "faiss.knn per group"]
        print("\n| threads | D | N | Q | group_size | group_min CPU s (wall s) | knn k=1 CPU s | group_min / knn time | "
              "GF/core-s | % sgemm | " + " | ".join(f"x {a}" for a in ga) + " | extra MB |")
        print("|---" * (10 + len(ga)) + "|")
        for (op, t, D, N, Q, gs), m in gm.items():
            o, kk = m["fastad"], m["fastad.knn(k=1)"]
            rat = [fmt(m[a]["ratio_cpu"]) if a in m else "-" for a in ga]
            print(f"| {t} | {D} | {N} | {Q} | {gs} | {o['cpu_s']:.3f} ({o['wall_s']:.3f}) | {kk['cpu_s']:.3f} | "
                  f"{o['cpu_s'] / kk['cpu_s']:.2f} | {o['gf_core']:.1f} | {100 * o['frac_sgemm']:.0f}% | "
                  + " | ".join(rat) + f" | {o['mem_mb']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
