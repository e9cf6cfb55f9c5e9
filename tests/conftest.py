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


# The CLI tests' toy MVTec tree and the model `fastad fit` makes of it (one each per test module, as
# before; tests/helpers/cli_tree.py). A module may define its own `tree` (test_degenerate, test_fuzz).
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from tests.helpers.cli_tree import make_tree

    return make_tree(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture(scope="module")
def model(tree, tmp_path_factory):
    from fastad.cli import main
    from tests.helpers.cli_tree import FIT

    path = tmp_path_factory.mktemp("model") / "toy.safetensors"
    assert main(["fit", "--data", str(tree), "--out", str(path)] + FIT) == 0
    return path
