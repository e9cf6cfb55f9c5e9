"""fastad.integrations.anomalib against anomalib 2.7.0's own code.

- With the real anomalib and its dependencies (``make integration``: its own venv with torch 2.14.1
  and torchvision 0.29.1): the routed methods against anomalib's, and ``Engine.fit`` +
  ``Engine.predict`` of Patchcore and Padim on an MTD slice with and without ``use_fastad`` (same
  scores within 1e-4 relative; wall times printed).
- With only anomalib's files (``pip install --no-deps anomalib==2.7.0 kornia``, as ``make bench``): the
  routed methods, through benchmarks/_anomalib_patchcore.py's loader.
- Neither: skipped.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _anomalib_modules() -> dict:
    return {k: v for k, v in sys.modules.items() if k == "anomalib" or k.startswith("anomalib.")}


def _swap_anomalib(mods: dict) -> None:
    for k in list(_anomalib_modules()):
        del sys.modules[k]
    sys.modules.update(mods)


def _real_anomalib() -> bool:
    try:
        import anomalib.engine  # noqa: F401
        import anomalib.models  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure (missing deps, torchvision mismatch) = not usable
        _swap_anomalib({})
        return False
    return True


REAL = _real_anomalib()
_BEFORE = _anomalib_modules()
if not REAL:
    if importlib.util.find_spec("anomalib") is None or importlib.util.find_spec("kornia") is None:
        pytest.skip("anomalib is not installed (make integration, or make bench for its files)", allow_module_level=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _anomalib_patchcore import load_padim  # noqa: E402

    load_padim()

from anomalib.models.components.stats.multi_variate_gaussian import MultiVariateGaussian  # noqa: E402
from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator as PadimMaps  # noqa: E402
from anomalib.models.image.patchcore.torch_model import PatchcoreModel  # noqa: E402

import fastad.integrations.anomalib as fa  # noqa: E402

# without anomalib's dependencies the loader replaced `anomalib` by bare stub packages: they serve this module's
# tests only (collection runs every module first: other tests must see the installed package, not the stubs)
_STUBS = _anomalib_modules()
if not REAL:
    _swap_anomalib(_BEFORE)


@pytest.fixture(scope="module", autouse=True)
def _stubbed_anomalib():
    if REAL:
        yield
        return
    _swap_anomalib(_STUBS)
    try:
        yield
    finally:
        _swap_anomalib(_BEFORE)


needs_real = pytest.mark.skipif(not REAL, reason="needs anomalib with its dependencies (make integration)")


@pytest.fixture(autouse=True)
def _restore():
    yield
    fa.unpatch()


def _bare_patchcore(bank: torch.Tensor, num_neighbors: int = 9) -> PatchcoreModel:
    m = PatchcoreModel.__new__(PatchcoreModel)  # no backbone needed for the routed methods
    torch.nn.Module.__init__(m)
    m.register_buffer("memory_bank", bank)
    m.embedding_store = []
    m.num_neighbors = num_neighbors
    return m


@pytest.mark.parametrize("k", [1, 9])
@pytest.mark.parametrize("n", [300, 2500])  # 2500 > anomalib's 1024-query chunk
def test_nearest_neighbors_as_anomalib(k, n):
    g = torch.Generator().manual_seed(k + n)
    m = _bare_patchcore(torch.randn(3000, 48, generator=g) + 5)
    q = torch.randn(n, 48, generator=g) + 5
    d0, i0 = m.nearest_neighbors(q, k)
    fa.use_fastad(m)
    d1, i1 = m.nearest_neighbors(q, k)
    assert d1.shape == d0.shape and i1.shape == i0.shape and d1.dtype == d0.dtype and i1.dtype == i0.dtype
    torch.testing.assert_close(d1, d0, rtol=1e-5, atol=1e-4)
    # indices agree except where two bank rows are at (numerically) the same distance
    diff = i1 != i0
    if diff.any():
        b = m.memory_bank
        qq = q[:, None, :].expand(-1, k, -1) if k > 1 else q
        alt = (qq[diff] - b[i1[diff]]).norm(dim=-1)
        torch.testing.assert_close(alt, d0[diff], rtol=1e-5, atol=1e-4)
    assert diff.float().mean() < 0.01


def test_nearest_neighbors_norm_cache_follows_the_bank():
    m = fa.use_fastad(_bare_patchcore(torch.randn(100, 8)))
    q = torch.randn(10, 8)
    m.nearest_neighbors(q, 1)
    m.memory_bank = torch.randn(100, 8) * 3  # a new bank (same shape): the cached norms must not be reused
    d, _ = m.nearest_neighbors(q, 1)
    torch.testing.assert_close(d, torch.cdist(q, m.memory_bank).min(1).values, rtol=1e-5, atol=1e-5)
    m.memory_bank.mul_(2)  # in place
    d, _ = m.nearest_neighbors(q, 1)
    torch.testing.assert_close(d, torch.cdist(q, m.memory_bank).min(1).values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.01, 0.1])
def test_coreset_selects_anomalibs_rows(ratio):
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(20, 32, generator=g) * 4
    emb = centres[torch.randint(0, 20, (1500,), generator=g)] + torch.randn(1500, 32, generator=g)
    banks = []
    for routed in (False, True):
        m = fa.use_fastad(_bare_patchcore(torch.empty(0)), enable=routed)
        m.embedding_store = [emb[:700].clone(), emb[700:].clone()]
        torch.manual_seed(0)
        np.random.seed(0)
        m.subsample_embedding(ratio)
        banks.append(m.memory_bank)
        assert m.embedding_store == []
    assert banks[1].shape == (int(1500 * ratio), 32)
    assert torch.equal(banks[0], banks[1])


def test_coreset_errors_as_anomalib():
    m = fa.use_fastad(_bare_patchcore(torch.empty(0)))
    with pytest.raises(ValueError, match="Embedding store is empty"):
        m.subsample_embedding(0.1)
    m.embedding_store = [torch.randn(5, 4)]
    with pytest.raises(ValueError, match="coreset_size must be a positive integer"):
        m.subsample_embedding(0.1)


def test_padim_gaussian_and_distance_as_anomalib():
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(40, 24, 6, 7, generator=g) * 2 + 1
    mu0, inv0 = MultiVariateGaussian()(emb)
    G = fa.use_fastad(MultiVariateGaussian())
    mu1, inv1 = G(emb)
    assert mu1.shape == mu0.shape == (24, 42) and inv1.shape == inv0.shape == (42, 24, 24)
    assert G.mean is mu1 and G.inv_covariance is inv1  # anomalib's buffers are set
    torch.testing.assert_close(mu1, mu0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inv1, inv0, rtol=1e-4, atol=1e-4 * float(inv0.abs().max()))
    x = torch.randn(5, 24, 6, 7, generator=g)
    ref = PadimMaps().compute_anomaly_map(x, mu0, inv0, image_size=(24, 28))
    got = fa.use_fastad(PadimMaps()).compute_anomaly_map(x, mu0, inv0, image_size=(24, 28))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert PadimMaps.compute_distance is not None  # still callable as a staticmethod
    torch.testing.assert_close(PadimMaps.compute_distance(x, [mu0, inv0]),
                               fa.fast_compute_distance(x, [mu0, inv0]), rtol=1e-5, atol=1e-5)


def test_patch_unpatch_and_scope():
    m = _bare_patchcore(torch.randn(50, 4))
    orig = PatchcoreModel.__dict__["nearest_neighbors"]
    fa.patch()
    assert fa.is_patched() and PatchcoreModel.__dict__["nearest_neighbors"] is not orig
    assert fa._routes(m)
    fa.unpatch()
    assert not fa.is_patched() and PatchcoreModel.__dict__["nearest_neighbors"] is orig
    with fa.patched():
        assert fa.is_patched()
    assert not fa.is_patched() and PatchcoreModel.__dict__["nearest_neighbors"] is orig
    other = _bare_patchcore(torch.randn(50, 4))
    fa.use_fastad(m)
    assert fa._routes(m) and not fa._routes(other)  # use_fastad routes that model only
    with pytest.raises(TypeError, match="holds no anomalib PatchcoreModel"):
        fa.use_fastad(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fa.use_fastad("model")


def test_export_sees_anomalibs_graph():
    m = fa.use_fastad(_bare_patchcore(torch.randn(64, 8)))

    class NN(torch.nn.Module):
        def __init__(self, pc):
            super().__init__()
            self.pc = pc

        def forward(self, q):
            return self.pc.nearest_neighbors(q, 1)[0]

    q = torch.randn(16, 8)
    ep = torch.export.export(NN(m), (q,))
    targets = [str(n.target) for n in ep.graph.nodes]
    assert not any("fastad" in t for t in targets), targets  # the exported graph is anomalib's pure torch
    torch.testing.assert_close(ep.module()(q), m.nearest_neighbors(q, 1)[0], rtol=1e-5, atol=1e-5)
    traced = torch.jit.trace(NN(m), (q,))
    assert "fastad" not in str(traced.graph)


def test_import_without_anomalib_says_how_to_install():
    code = (
        "import sys; sys.modules['anomalib'] = None\n"
        "try:\n    import fastad.integrations.anomalib\nexcept ImportError as e:\n    print('MSG', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MSG" in out and "pip install" in out and "anomalib" in out


# ---- anomalib's own pipeline: Engine.fit + Engine.predict on MTD ---------------------------------------
@needs_real
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["patchcore", "padim"])
def test_engine_same_scores_with_and_without_fastad(kind, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import anomalib_engine as ae

    if not ae.mtd_available():
        pytest.skip(f"MTD not found at {ae.MTD}")
    data = ae.mtd_slice(tmp_path / "mtd", n_train=8, n_test=8)
    # ratio 0.02: anomalib's own coreset (the reference) grows by one [N, d] temporary per step
    ref = ae.run(kind, False, data, tmp_path / "ref", coreset_ratio=0.02)
    got = ae.run(kind, True, data, tmp_path / "fastad", coreset_ratio=0.02)
    assert got["paths"] == ref["paths"] and len(ref["paths"]) >= 8  # the test half (the other half validates)
    rel = float((got["scores"] - ref["scores"]).abs().max() / ref["scores"].abs().max())
    rel_map = float((got["maps"] - ref["maps"]).abs().max() / ref["maps"].abs().max())
    print(f"\n{kind}: anomalib fit {ref['fit_s']:.2f} s predict {ref['predict_s']:.2f} s | with fastad fit "
          f"{got['fit_s']:.2f} s predict {got['predict_s']:.2f} s | max rel. diff scores {rel:.2e} maps {rel_map:.2e}")
    assert rel <= 1e-4 and rel_map <= 1e-4
    if kind == "patchcore":
        assert torch.equal(got["model"].model.memory_bank, ref["model"].model.memory_bank)


def test_routed_fit_accepts_embeddings_that_require_grad():
    """Inside Lightning's training loop grad mode is on; the routed coreset / Gaussian fit must work."""
    g = torch.Generator().manual_seed(9)
    emb = torch.randn(600, 16, generator=g).requires_grad_()
    m = fa.use_fastad(_bare_patchcore(torch.empty(0)))
    m.embedding_store = [emb * 1.0]
    m.subsample_embedding(0.05)
    assert m.memory_bank.shape == (30, 16)
    G = fa.use_fastad(MultiVariateGaussian())
    mu, inv = G(torch.randn(12, 4, 3, 3, generator=g).requires_grad_() * 1.0)
    assert mu.shape == (4, 9) and inv.shape == (9, 4, 4)
