"""Shared fixtures: one `device` fixture (cpu, plus cuda when a GPU is usable) with clean skips."""
import pytest
import torch

import fastad


def _cuda_usable() -> bool:
    return fastad.build_info()["cuda_compiled"] and torch.cuda.is_available()


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not _cuda_usable():
        pytest.skip("no CUDA device (or fastad built without CUDA)")
    return torch.device(request.param)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(params=["avx2", "generic"])
def cpu_path(request, monkeypatch):
    """Runs a CPU test on the AVX2 kernels and on the portable ones (FASTAD_FORCE_GENERIC=1)."""
    if request.param == "avx2":
        if fastad.build_info()["simd"] != "avx2":
            pytest.skip("AVX2/FMA kernels not available on this CPU/build")
        monkeypatch.delenv("FASTAD_FORCE_GENERIC", raising=False)
    else:
        monkeypatch.setenv("FASTAD_FORCE_GENERIC", "1")
    return request.param
