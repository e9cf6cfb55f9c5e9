"""Load anomalib 2.7.0's own PatchCore code without torchvision / timm / lightning.

``import anomalib.models`` pulls torchvision (broken next to the CPU torch here), timm and lightning.
The PatchCore computation itself needs none of them, so this loader registers *empty* package modules
for ``anomalib``, ``anomalib.models``, ... (their ``__init__`` files are skipped) and then imports
anomalib's real source files for everything that computes:

- ``models/image/patchcore/torch_model.py`` (``PatchcoreModel``: forward, embedding, nearest neighbours,
  ``compute_anomaly_score``, ``subsample_embedding``),
- ``models/image/patchcore/anomaly_map.py`` (``AnomalyMapGenerator``),
- ``models/components/filters/blur.py`` (``GaussianBlur2d``, needs ``kornia``),
- ``models/components/sampling/k_center_greedy.py`` and
  ``models/components/dimensionality_reduction/random_projection.py`` (``KCenterGreedy``,
  ``SparseRandomProjection``, needs scikit-learn),
- ``models/components/base/dynamic_buffer.py``, ``utils/deprecation.py``.

Two names are substituted: ``TimmFeatureExtractor`` by a module that runs the *same* fastad backbone
extractor the fastad side uses (so both sides see identical features), and ``InferenceBatch``
(a NamedTuple in ``anomalib/data/dataclasses/torch/base.py``, whose module imports torchvision) by a
NamedTuple with the same fields.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn


class InferenceBatch(NamedTuple):  # same fields as anomalib.data.InferenceBatch (2.7.0)
    pred_score: torch.Tensor | None = None
    pred_label: torch.Tensor | None = None
    anomaly_map: torch.Tensor | None = None
    pred_mask: torch.Tensor | None = None


class FeatureSource(nn.Module):
    """Stands in for ``TimmFeatureExtractor``: returns ``extract(images) -> dict[layer, Tensor]``."""

    extract = None  # set by the benchmark: a callable images -> dict[layer, Tensor[B, C, h, w]]

    def __init__(self, backbone=None, pre_trained=True, layers=(), **kwargs):
        super().__init__()
        self.layers = list(layers)

    def forward(self, x):
        return FeatureSource.extract(x)


def _pkg(name: str, path: Path) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    sys.modules[name] = mod
    return mod


def load():
    """Returns anomalib's ``(PatchcoreModel, KCenterGreedy, AnomalyMapGenerator, GaussianBlur2d, version)``."""
    spec = importlib.util.find_spec("anomalib")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("anomalib is not installed (pip install --no-deps anomalib==2.7.0 kornia kornia-rs)")
    root = Path(list(spec.submodule_search_locations)[0])
    for k in [k for k in sys.modules if k == "anomalib" or k.startswith("anomalib.")]:
        del sys.modules[k]
    top = _pkg("anomalib", root)
    _pkg("anomalib.models", root / "models")
    comps = _pkg("anomalib.models.components", root / "models/components")
    base = _pkg("anomalib.models.components.base", root / "models/components/base")
    _pkg("anomalib.models.image", root / "models/image")
    _pkg("anomalib.models.image.patchcore", root / "models/image/patchcore")
    utils = _pkg("anomalib.utils", root / "utils")
    data = _pkg("anomalib.data", root / "data")
    data.InferenceBatch = InferenceBatch
    utils.deprecate = importlib.import_module("anomalib.utils.deprecation").deprecate
    base.DynamicBufferMixin = importlib.import_module("anomalib.models.components.base.dynamic_buffer").DynamicBufferMixin
    comps.DynamicBufferMixin = base.DynamicBufferMixin
    comps.KCenterGreedy = importlib.import_module("anomalib.models.components.sampling.k_center_greedy").KCenterGreedy
    comps.GaussianBlur2d = importlib.import_module("anomalib.models.components.filters.blur").GaussianBlur2d
    comps.TimmFeatureExtractor = FeatureSource
    tm = importlib.import_module("anomalib.models.image.patchcore.torch_model")
    am = importlib.import_module("anomalib.models.image.patchcore.anomaly_map")
    version = "unknown"
    try:
        from importlib.metadata import version as _v

        version = _v("anomalib")
    except Exception:
        pass
    top.__version__ = version
    return tm.PatchcoreModel, comps.KCenterGreedy, am.AnomalyMapGenerator, comps.GaussianBlur2d, version


def load_padim():
    """After :func:`load`'s set-up, anomalib's PaDiM pieces: ``(MultiVariateGaussian,
    AnomalyMapGenerator, version)`` (``anomalib/models/components/stats/multi_variate_gaussian.py``,
    ``anomalib/models/image/padim/anomaly_map.py``)."""
    *_, version = load()
    root = Path(sys.modules["anomalib"].__path__[0])
    _pkg("anomalib.models.components.stats", root / "models/components/stats")
    _pkg("anomalib.models.image.padim", root / "models/image/padim")
    mvg = importlib.import_module("anomalib.models.components.stats.multi_variate_gaussian").MultiVariateGaussian
    amg = importlib.import_module("anomalib.models.image.padim.anomaly_map").AnomalyMapGenerator
    return mvg, amg, version
