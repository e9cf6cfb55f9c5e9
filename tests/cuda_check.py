"""`make cuda-check`: the CUDA build of fastad imports and registers a CUDA kernel for every op.

Run from tests/ (not the repo root) so that `import fastad` finds the installed package rather than
the source tree. It runs no kernel, so it needs no GPU.
"""
import sys

import torch

import fastad

info = fastad.build_info()
print("build_info:", info)
assert info["cuda_compiled"], "fastad was built without CUDA kernels"
ops = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastad::"))
assert ops, "no fastad ops registered"
# CPU-only helper ops, with the path CUDA tensors take instead
CPU_ONLY = {
    "coreset_step": "one greedy step of fastad.distributed.coreset on a CPU shard; CUDA shards use torch arithmetic",
    "knn_screen": "the bf16 screen of CPU float32 knn (AVX512-BF16); ops.knn sends CUDA tensors to knn",
    "group_min_screen": "the bf16 screen of CPU float32 group_min; ops.group_min sends CUDA tensors to group_min",
    "mutual_scores_screen": "the bf16 screen of CPU mutual_scores; ops.mutual_scores sends CUDA tensors to mutual_scores",
}
missing = [op for op in ops if op not in CPU_ONLY
           and not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastad::{op}", "CUDA")]
cpu_missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastad::{op}", "CPU")]
print("ops:", ops)
if missing or cpu_missing:
    print("missing CUDA kernels:", missing, "missing CPU kernels:", cpu_missing)
    sys.exit(1)
# The CPU kernels of the CUDA build work too.
q, b = torch.randn(5, 7), torch.randn(11, 7)
d, i = fastad.ops.knn(q, b, 3)
ref = torch.cdist(q.double(), b.double()).topk(3, largest=False)
assert torch.equal(i, ref.indices) and torch.allclose(d.double(), ref.values, atol=1e-5)
print("cuda-check: OK, CUDA kernels registered for", len(ops) - len(CPU_ONLY.keys() & set(ops)), "ops; CPU-only:",
      ", ".join(f"{k} ({v})" for k, v in CPU_ONLY.items() if k in ops) or "none")
