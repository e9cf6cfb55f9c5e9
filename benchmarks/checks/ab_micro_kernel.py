"""In-process A/B of the knn/group_min distance micro-kernels: AVX-512 24x16 against AVX2 6x16.

    python benchmarks/checks/ab_micro_kernel.py [--repeat 5] [--threads 1]

Both kernels run in the same process on the same data, interleaved call by call (FASTAD_FORCE_AVX2 is
read at every call), so the ratio is fair on a shared machine; best process CPU time of --repeat calls.
Needs a CPU with AVX-512F (fastad.build_info()["dist_micro_kernel"] == "avx512").
"""
import argparse
import os
import time

import torch

import fastad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if fastad.build_info()["dist_micro_kernel"] != "avx512":
        raise SystemExit("this CPU/build has no AVX-512 micro-kernel: nothing to compare")
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    print("| D | N | Q | op | AVX-512 GF/core-s | AVX2 GF/core-s | AVX2 time / AVX-512 time |")
    print("|---|---|---|---|---|---|---|")
    for D, N, Q in [(1536, 15680, 784), (384, 15680, 784)]:
        b = torch.randn(N, D, generator=g)
        q = torch.randn(Q, D, generator=g)
        ops = {"group_min(784)": lambda: fastad.ops.group_min(q, b, 784), "knn(k=1)": lambda: fastad.ops.knn(q, b, 1),
               "knn(k=9)": lambda: fastad.ops.knn(q, b, 9)}
        for name, fn in ops.items():
            best = {"avx512": float("inf"), "avx2": float("inf")}
            fn()
            for _ in range(a.repeat):
                for mode in best:
                    if mode == "avx2":
                        os.environ["FASTAD_FORCE_AVX2"] = "1"
                    else:
                        os.environ.pop("FASTAD_FORCE_AVX2", None)
                    c0 = time.process_time()
                    fn()
                    best[mode] = min(best[mode], time.process_time() - c0)
            os.environ.pop("FASTAD_FORCE_AVX2", None)
            gf = 2.0 * Q * N * D / 1e9
            print(f"| {D} | {N} | {Q} | {name} | {gf / best['avx512']:.1f} | {gf / best['avx2']:.1f} | "
                  f"{best['avx2'] / best['avx512']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
