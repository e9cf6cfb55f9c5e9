"""anomalib 2.x's PatchCore and PaDiM on fastad's kernels, inside anomalib's own Engine.

>>> from anomalib.engine import Engine                               # doctest: +SKIP
>>> from anomalib.models import Patchcore                            # doctest: +SKIP
>>> from fastad.integrations.anomalib import use_fastad              # doctest: +SKIP
>>> model = use_fastad(Patchcore(coreset_sampling_ratio=0.1))        # doctest: +SKIP
>>> Engine().fit(model, datamodule=dm); Engine().predict(model, datamodule=dm)   # doctest: +SKIP

``use_fastad(model)`` routes one anomalib model (a ``Patchcore`` / ``Padim`` Lightning module or
its ``PatchcoreModel`` / ``PadimModel``); ``patch()`` routes every instance in the process
(``unpatch()`` undoes it; ``with patched(): ...`` for a block). What is routed:

- ``PatchcoreModel.nearest_neighbors`` -> :func:`fastad.ops.knn` (exact, blocked: no ``[n, N]``
  distance matrix; the memory bank's squared norms are cached between calls). Its output shapes and
  dtypes are anomalib's (``k == 1`` gives ``[n]``, else ``[n, k]``).
- ``PatchcoreModel.subsample_embedding`` (``KCenterGreedy``): anomalib's own
  ``SparseRandomProjection`` and its random start row (the same global-generator draws, so a seed
  selects the same rows), then the greedy selection by :func:`fastad.ops.coreset` (one fused pass per
  step instead of a ``[N, 1]`` temporary and a Python loop step; ties go to the smaller row index).
- ``MultiVariateGaussian.forward`` (PaDiM's fit: a Python loop over positions with a float32
  inverse in anomalib) -> :class:`fastad.detectors.PaDiM`'s Gaussian fit (all positions at once,
  float64 sums and Cholesky, float32 precision matrices stored in anomalib's ``mean`` /
  ``inv_covariance`` buffers).
- PaDiM's ``AnomalyMapGenerator.compute_distance`` -> the same quadratic form evaluated position by
  position in blocks (bounded temporaries instead of anomalib's ``[HW, B, C]`` product).

Everything else stays anomalib's: Engine, datamodules, pre/post-processing, callbacks, checkpoints.

Export is untouched: the routed methods fall back to anomalib's own code while the model is traced,
exported (``torch.export``, ``torch.onnx``, OpenVINO through ONNX) or scripted, so
``Engine.export`` writes anomalib's pure-torch graph, and the fitted buffers (``memory_bank``,
``mean``, ``inv_covariance``) are plain tensors in anomalib's layout. The patch is applied to the
classes' methods (anomalib's class names), so checkpoints and pickled models load without fastad.

Results: the same memory bank and scores as anomalib up to float32 rounding (the k-NN re-ranks with
exact differences; PaDiM's inverse is computed in float64); see ``tests/integrations``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import torch

try:
    from anomalib.models.components.sampling.k_center_greedy import KCenterGreedy
    from anomalib.models.components.stats.multi_variate_gaussian import MultiVariateGaussian
    from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator as PadimMapGenerator
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "fastad.integrations.anomalib needs anomalib 2.x with its dependencies (lightning, torchvision built "
        f"for your torch, timm, ...), which could not be imported ({e}): pip install 'fastad[anomalib]' "
        "after installing torch and the matching torchvision (see `make integration`)"
    ) from e

import fastad.ops as ops
from fastad import detectors

__all__ = ["patch", "unpatch", "patched", "use_fastad", "is_patched", "ROUTED"]

#: The methods routed to fastad: ``(class, attribute name)``.
ROUTED = (
    (PatchcoreModel, "nearest_neighbors"),
    (PatchcoreModel, "subsample_embedding"),
    (MultiVariateGaussian, "forward"),
    (PadimMapGenerator, "compute_anomaly_map"),
    (PadimMapGenerator, "compute_distance"),
)

#: Positions per block when PaDiM distances are computed (bounds the ``[block, B, C]`` temporaries).
DISTANCE_BLOCK = 256

_ORIGINAL: dict = {}  # (class, name) -> the class's own attribute (function / staticmethod)
_GLOBAL = False  # patch() was called: every instance routes
_FLAG = "_fastad_route"  # set (a plain bool) on modules that use_fastad() routed
_IN_ROUTED_MAP = contextvars.ContextVar("fastad_padim_map", default=False)


def _exporting() -> bool:
    """True while torch traces, scripts or exports: the exported graph must be anomalib's own."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    onnx = getattr(torch, "onnx", None)
    if onnx is not None and getattr(onnx, "is_in_onnx_export", lambda: False)():
        return True
    comp = getattr(torch, "compiler", None)
    return bool(comp is not None and getattr(comp, "is_exporting", lambda: False)())


def _routes(module) -> bool:
    return (_GLOBAL or bool(getattr(module, _FLAG, False))) and not _exporting()


def _orig(cls, name):
    return _ORIGINAL[(cls, name)].__get__(None, cls) if isinstance(_ORIGINAL[(cls, name)], staticmethod) else _ORIGINAL[(cls, name)]


# ---- PatchCore ----------------------------------------------------------------------------------------
def _bank_norms(model, bank: torch.Tensor) -> torch.Tensor:
    key = (bank.data_ptr(), bank._version, tuple(bank.shape), bank.dtype, bank.device)
    cached = model.__dict__.get("_fastad_norms")
    if cached is None or cached[0] != key:
        cached = (key, bank.float().square().sum(1))
        model.__dict__["_fastad_norms"] = cached  # not a buffer / attribute nn.Module tracks
    return cached[1]


def fast_nearest_neighbors(model, embedding: torch.Tensor, n_neighbors: int):
    """``PatchcoreModel.nearest_neighbors`` on :func:`fastad.ops.knn` (same shapes as anomalib's)."""
    bank = model.memory_bank
    if embedding.dtype != bank.dtype:
        embedding = embedding.to(bank.dtype)
    d, i = ops.knn(embedding.contiguous(), bank.contiguous(), int(n_neighbors), "l2",
                   bank_norms=_bank_norms(model, bank))
    if d.dtype != embedding.dtype:
        d = d.to(embedding.dtype)
    if n_neighbors == 1:
        return d[:, 0], i[:, 0]
    return d, i


def fast_subsample_embedding(model, sampling_ratio: float) -> None:
    """``PatchcoreModel.subsample_embedding`` with the greedy selection on :func:`fastad.ops.coreset`.

    The projection and the random start are anomalib's (``KCenterGreedy``'s ``SparseRandomProjection``
    and ``torch.randint`` on the global generators), so with the same seed the same rows are chosen."""
    if len(model.embedding_store) == 0:
        raise ValueError("Embedding store is empty. Cannot perform coreset selection.")
    bank = torch.vstack(model.embedding_store)
    model.embedding_store.clear()
    sampler = KCenterGreedy(embedding=bank, sampling_ratio=sampling_ratio)  # anomalib's checks
    sampler.model.fit(bank)
    features = sampler.model.transform(bank)
    start = torch.randint(high=sampler.n_observations, size=(1,), device=features.device).squeeze()
    # the selection needs no gradient (fastad.ops.coreset refuses inputs that require one; anomalib's
    # loop would keep every step's graph alive): select on detached features, gather from the bank
    idx, _ = ops.coreset(features.detach().float().contiguous(), sampler.coreset_size, start=int(start))
    model.memory_bank = bank[idx.to(bank.device)]


def _nearest_neighbors(self, embedding, n_neighbors):
    if _routes(self):
        return fast_nearest_neighbors(self, embedding, n_neighbors)
    return _orig(PatchcoreModel, "nearest_neighbors")(self, embedding, n_neighbors)


def _subsample_embedding(self, sampling_ratio, embeddings=None):
    if _routes(self):
        return fast_subsample_embedding(self, sampling_ratio)
    return _orig(PatchcoreModel, "subsample_embedding")(self, sampling_ratio, embeddings)


# ---- PaDiM --------------------------------------------------------------------------------------------
def fast_gaussian_fit(gaussian, embedding: torch.Tensor) -> list[torch.Tensor]:
    """``MultiVariateGaussian.forward``: per position of ``embedding: Tensor[B, C, H, W]`` the mean and
    the inverse of ``cov (ddof 1) + 0.01 I + 1e-5 I``, by :class:`fastad.detectors.PaDiM`'s fit
    (float64 sums and Cholesky). Sets ``gaussian.mean`` ``[C, HW]`` and ``gaussian.inv_covariance``
    ``[HW, C, C]`` as anomalib does."""
    if embedding.dim() != 4:
        raise ValueError(f"MultiVariateGaussian: embedding must be [B, C, H, W], got {list(embedding.shape)}")
    det = detectors.PaDiM(backbone=None, layers=["embedding"], n_features=None, progress=False,
                          device=embedding.device)
    det.fit_features({"embedding": embedding.detach()}, image_size=tuple(embedding.shape[-2:]))
    gaussian.mean = det.mean_.t().contiguous().to(embedding.dtype)
    gaussian.inv_covariance = det.precision_.to(embedding.dtype)
    return [gaussian.mean, gaussian.inv_covariance]


def fast_compute_distance(embedding: torch.Tensor, stats: list[torch.Tensor]) -> torch.Tensor:
    """PaDiM's ``compute_distance``: ``sqrt(max(d^T P d, 0))`` per position, in blocks of
    :data:`DISTANCE_BLOCK` positions; ``[B, C, H, W]`` -> ``[B, 1, H, W]``."""
    B, C, H, W = embedding.shape
    mean, inv_cov = stats
    x = embedding.reshape(B, C, H * W)
    out = torch.empty(H * W, B, dtype=embedding.dtype, device=embedding.device)
    for p0 in range(0, H * W, DISTANCE_BLOCK):
        p1 = min(H * W, p0 + DISTANCE_BLOCK)
        delta = (x[:, :, p0:p1] - mean[:, p0:p1]).permute(2, 0, 1)  # [P, B, C]
        out[p0:p1] = (torch.bmm(delta, inv_cov[p0:p1]) * delta).sum(2)
    return out.t().reshape(B, 1, H, W).clamp(0).sqrt()


def _gaussian_forward(self, embedding):
    if _routes(self):
        return fast_gaussian_fit(self, embedding)
    return _orig(MultiVariateGaussian, "forward")(self, embedding)


def _compute_anomaly_map(self, *args, **kwargs):
    token = _IN_ROUTED_MAP.set(_routes(self))
    try:
        return _orig(PadimMapGenerator, "compute_anomaly_map")(self, *args, **kwargs)
    finally:
        _IN_ROUTED_MAP.reset(token)


def _compute_distance(embedding, stats):
    if (_GLOBAL or _IN_ROUTED_MAP.get()) and not _exporting():
        return fast_compute_distance(embedding, stats)
    return _orig(PadimMapGenerator, "compute_distance")(embedding, stats)


_REPLACEMENTS = {
    (PatchcoreModel, "nearest_neighbors"): _nearest_neighbors,
    (PatchcoreModel, "subsample_embedding"): _subsample_embedding,
    (MultiVariateGaussian, "forward"): _gaussian_forward,
    (PadimMapGenerator, "compute_anomaly_map"): _compute_anomaly_map,
    (PadimMapGenerator, "compute_distance"): staticmethod(_compute_distance),
}


def _install() -> None:
    """Puts the dispatching methods on anomalib's classes (once); they route only where enabled."""
    for (cls, name), repl in _REPLACEMENTS.items():
        if (cls, name) in _ORIGINAL:
            continue
        _ORIGINAL[(cls, name)] = cls.__dict__[name]
        fn = repl.__func__ if isinstance(repl, staticmethod) else repl
        orig = _ORIGINAL[(cls, name)]
        functools.update_wrapper(fn, orig.__func__ if isinstance(orig, staticmethod) else orig)
        setattr(cls, name, repl)


def patch() -> None:
    """Route every anomalib PatchCore / PaDiM instance of this process to fastad (see the module doc)."""
    global _GLOBAL
    _install()
    _GLOBAL = True


def unpatch() -> None:
    """Restore anomalib's own methods (models marked by :func:`use_fastad` stop routing too)."""
    global _GLOBAL
    for (cls, name), orig in list(_ORIGINAL.items()):
        setattr(cls, name, orig)
        del _ORIGINAL[(cls, name)]
    _GLOBAL = False


def is_patched() -> bool:
    """True when :func:`patch` is in force."""
    return _GLOBAL


@contextlib.contextmanager
def patched():
    """``with patched(): ...`` routes every instance inside the block, then restores the previous state."""
    was, installed = _GLOBAL, bool(_ORIGINAL)
    patch()
    try:
        yield
    finally:
        if installed:
            globals()["_GLOBAL"] = was
        else:
            unpatch()


def use_fastad(model, enable: bool = True):
    """Route one anomalib model to fastad (``enable=False`` routes it back); returns ``model``.

    ``model``: a ``Patchcore`` / ``Padim`` Lightning module, a ``PatchcoreModel`` / ``PadimModel``, or
    any ``nn.Module`` holding them. Raises ``TypeError`` if it holds no PatchCore / PaDiM part."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"use_fastad: model must be an anomalib model (torch.nn.Module), got {type(model).__name__}")
    kinds = (PatchcoreModel, MultiVariateGaussian, PadimMapGenerator)
    found = [m for m in model.modules() if isinstance(m, kinds)]
    if not found:
        raise TypeError(
            f"use_fastad: {type(model).__name__} holds no anomalib PatchcoreModel or PaDiM Gaussian / "
            "AnomalyMapGenerator; only Patchcore and Padim are routed"
        )
    _install()
    for m in found:
        setattr(m, _FLAG, bool(enable))
    return model
