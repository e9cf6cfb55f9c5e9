"""A/B check of knn / group_min CPU time between two builds (e.g. main's and a branch's), 1 thread.

Prints one JSON line: process-CPU seconds (min of --repeats) of knn k=1 / k=9, group_min (20 groups of
784) and float16 knn k=9 at N=16384, Q=784, D=384 / 1536 (bench_knn --quick shapes). Two builds cannot
share a process (same torch.ops namespace), so run it alternately under each, several rounds:

    .venv/bin/python benchmarks/checks/knn_cpu_seconds.py --tag branch
    .venv/bin/python benchmarks/checks/knn_cpu_seconds.py --tag main --build-python /path/to/main/python

``--build-python DIR`` imports fastad from DIR (a source tree's python/ with its built fastad/_C*.so copied
in) instead of this checkout's editable install.
"""
import argparse
import json
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--tag", default="this")
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--build-python", default=None)
a = ap.parse_args()
if a.build_python:  # drop the editable install's finder and path, import fastad from there
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    sys.path[:] = [p for p in sys.path if not p.endswith("/python")]
    sys.path.insert(0, a.build_python)

import torch  # noqa: E402

import fastad  # noqa: E402

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
res = {}
for D in (384, 1536):
    b = torch.randn(16384, D, generator=g)
    q = torch.randn(784, D, generator=g)
    qh, bh = q.half(), b.half()
    for name, fn in [("knn k=1", lambda: fastad.ops.knn(q, b, 1)), ("knn k=9", lambda: fastad.ops.knn(q, b, 9)),
                     ("group_min gs=784", lambda: fastad.ops.group_min(q, b[: 784 * 20], 784)),
                     ("knn fp16 k=9", lambda: fastad.ops.knn(qh, bh, 9))]:
        fn()
        best = 1e9
        for _ in range(a.repeats):
            c = time.process_time()
            fn()
            best = min(best, time.process_time() - c)
        res[f"{name} D={D}"] = round(best, 4)
print(json.dumps({"tag": a.tag, "fastad": fastad.__file__, "kernels": fastad.build_info()["dist_micro_kernel"], "cpu_s": res}))
