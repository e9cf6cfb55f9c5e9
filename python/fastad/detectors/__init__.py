"""Image anomaly detectors with scikit-learn / PyOD conventions (see :mod:`fastad.detectors.base`):
PatchCore, PaDiM, SPADE, GaussianAD and LeeMahalanobis (image-level), the zero-shot MuSc (:mod:`fastad.detectors.musc`),
and KNN / LOF / Mahalanobis / ClassConditionalMahalanobis / MSVDD on any embeddings (:mod:`fastad.detectors.lee`,
:mod:`fastad.detectors.msvdd`).

>>> det = PatchCore(coreset_ratio=0.1).fit(train_images)          # doctest: +SKIP
>>> scores, maps = det.score(test_images)                          # doctest: +SKIP
>>> det.save("model.safetensors"); det = load("model.safetensors")  # doctest: +SKIP
"""
from __future__ import annotations

from ._io import FORMAT_VERSION, ModelFileError
from ._registry import cli_class as cli_detector_class
from ._registry import cli_names as cli_detector_names
from ._registry import register
from .base import BaseDetector, NotFittedError
from ._maps import BORDER_MODES, gaussian_blur
from .embedding import KNN, LOF, Mahalanobis
from .gaussian import GaussianAD
from .lee import ClassConditionalMahalanobis, LeeMahalanobis
from .msvdd import MSVDD
from .musc import MuSc
from .padim import PaDiM
from .patchcore import PatchCore
from .spade import SPADE


def load(path, *, backbone=None, device=None) -> BaseDetector:
    """Read any detector written by ``save(path)``.

    Args:
        path: the ``.safetensors`` model file.
        backbone: optional backbone name or ``Backbone`` object to use instead of the recorded name
            (needed for a model fitted with a custom backbone object); a different backbone *name*
            than the recorded one is refused.
        device: where to put the fitted tensors (default CPU).

    Raises:
        FileNotFoundError: no such file.
        ModelFileError: corrupted or truncated file, not a fastad model, unsupported format version,
            unknown detector, or tensors that do not fit the recorded layers (the message names the file
            and the problem).
    """
    from ._io import load as _load_file

    return _load_file(path, backbone=backbone, device=device)


__all__ = [
    "BaseDetector",
    "ClassConditionalMahalanobis",
    "GaussianAD",
    "KNN",
    "LeeMahalanobis",
    "MSVDD",
    "LOF",
    "Mahalanobis",
    "MuSc",
    "PaDiM",
    "PatchCore",
    "SPADE",
    "NotFittedError",
    "ModelFileError",
    "FORMAT_VERSION",
    "BORDER_MODES",
    "gaussian_blur",
    "load",
    "register",
    "cli_detector_class",
    "cli_detector_names",
]
