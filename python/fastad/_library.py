"""Loads the compiled extension and reports how it was built."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

__version__ = "0.1.0"

_REBUILD = (
    "Rebuild fastad against the installed torch: `make build` in a source checkout, or "
    "`pip install --no-build-isolation --no-deps -e .` in the environment that has the torch you want."
)


def _sidecar() -> dict:
    spec = importlib.util.find_spec("fastad._C")
    if spec is None or not spec.origin:
        return {}
    cfg = Path(spec.origin).parent / "_build_config.json"
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError):
        return {}


def _load():
    built = _sidecar().get("torch")
    if built and built != torch.__version__:
        raise ImportError(
            f"fastad was compiled against torch {built} but torch {torch.__version__} is installed. {_REBUILD}"
        )
    try:
        from . import _C  # noqa: F401  (registers torch.ops.fastad.*)
    except ImportError as e:
        raise ImportError(
            f"fastad: the compiled extension fastad._C could not be loaded ({e}). torch is {torch.__version__}"
            + (f", fastad was compiled against {built}" if built else "")
            + f". {_REBUILD}"
        ) from e
    if _C.compiled_torch_version() != torch.__version__:
        raise ImportError(
            f"fastad was compiled against torch {_C.compiled_torch_version()} but torch {torch.__version__} "
            f"is installed. {_REBUILD}"
        )
    return _C


_C = _load()


def build_info() -> dict:
    """How this fastad was built and what it runs with.

    Returns a dict with: ``version``, ``torch_compiled`` (torch it was compiled against),
    ``torch_runtime``, ``cuda_compiled`` (bool), ``cuda_archs`` (TORCH_CUDA_ARCH_LIST or ""),
    ``cuda_available`` (a GPU is usable now), ``openmp_threads`` (threads of ``at::parallel_for``),
    ``simd`` (CPU SIMD level of the kernels in use: "avx2" or "generic"), ``dist_micro_kernel``
    (micro-kernel of the knn/group_min distance GEMM now: "avx512" where the CPU has AVX-512F,
    "avx2", or "generic"; ``FASTAD_FORCE_AVX2=1`` / ``FASTAD_FORCE_GENERIC=1`` in the environment
    select the others), ``bf16_micro_kernel`` (kernel of knn on bfloat16 inputs and of its bf16
    screen: "avx512bf16" where the CPU has AVX512-BF16, "emulated" with ``FASTAD_BF16_EMULATE=1``
    (bit-identical scalar emulation, slow), else "none": bf16 inputs are upcast), ``bf16_amx`` (that
    GEMM's AMX tile kernel: "amx" in use, "available" (the CPU has AMX-BF16 but the kernel is off:
    ``FASTAD_AMX=0``, or its self-check failed), "emulated" (``FASTAD_AMX_EMULATE=1``, tests), else "none"),
    ``bf16_amx_check`` (the AMX kernel's self-check, run once per process on a CPU with AMX before the
    kernel is used: "identical" (every dot equals the emulation of the instruction bit for bit),
    "within-bound" (some dots differ in rounding, all within the fp32 accumulation bound: used),
    "failed" (not used), "not-run" (no AMX); ``FASTAD_AMX=1`` forces the kernel on without it).

    Example:
        >>> import fastad; fastad.build_info()["simd"] in ("avx2", "generic")
        True
    """
    return {
        "version": __version__,
        "torch_compiled": _C.compiled_torch_version(),
        "torch_runtime": torch.__version__,
        "cuda_compiled": bool(_C.cuda_compiled()),
        "cuda_archs": _C.cuda_archs(),
        "cuda_available": bool(_C.cuda_compiled()) and torch.cuda.is_available(),
        "openmp_threads": int(_C.openmp_threads()),
        "simd": _C.simd_level(),
        "dist_micro_kernel": _C.dist_micro_kernel(),
        "bf16_micro_kernel": _C.bf16_micro_kernel(),
        "bf16_amx": _C.bf16_amx_kernel(),
        "bf16_amx_check": _C.amx_self_check("hardware")[0],
    }


def op_kernels() -> dict:
    """Which kernel each CPU op runs on this CPU now (``{"knn float32": "AVX2/FMA 6x16 fp32 GEMM + fused
    top-k", ...}``), decided by the same cpuid checks and environment overrides (``FASTAD_FORCE_GENERIC``,
    ``FASTAD_FORCE_AVX2``, ``FASTAD_BF16_EMULATE``, ``FASTAD_AMX``, ``FASTAD_AMX_EMULATE``) as the ops themselves; ``fastad info`` prints it."""
    return dict(_C.op_kernels())


def knn_screen_stats(reset: bool = False) -> dict:
    """Counters of the bf16 screen of ``ops.knn(..., screen=...)`` since the last reset (process-wide):
    ``calls``, ``pairs`` (query-bank pairs screened), ``survivors`` (pairs re-scored in float32),
    ``fallbacks`` (calls the screen handed to the float32 path) and ``survivor_fraction``.
    ``reset=True`` zeroes them after reading."""
    calls, pairs, surv, fb = _C.knn_screen_stats(bool(reset))
    return {"calls": calls, "pairs": pairs, "survivors": surv, "fallbacks": fb,
            "survivor_fraction": surv / pairs if pairs else 0.0}
