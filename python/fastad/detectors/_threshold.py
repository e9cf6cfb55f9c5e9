"""``set_threshold`` of every image detector (a mixin of :class:`~fastad.detectors.base.BaseDetector`):
a given number, or one of :data:`fastad.thresholds.METHODS` (see :mod:`fastad.thresholds`)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ._checks import warn_if_few_scores

if TYPE_CHECKING:
    from .base import BaseDetector

__all__ = ["ThresholdMixin"]


class ThresholdMixin:
    """``set_threshold`` with a method; detectors with a Gaussian model override ``_chi2_threshold``."""

    def set_threshold(
        self,
        threshold: float | None = None,
        *,
        normal=None,
        normal_scores: torch.Tensor | None = None,
        quantile: float = 0.99,
        method: str = "quantile",
        validation=None,
        validation_scores: torch.Tensor | None = None,
        labels=None,
    ) -> "BaseDetector":
        """Set ``threshold_`` used by :meth:`predict` (``score > threshold_`` is anomalous).

        Give ``threshold`` (a number), or choose a ``method`` (see :mod:`fastad.thresholds` for when
        to use which):

        - ``"quantile"`` (default) / ``"quantile-corrected"``: from held-out normal images ``normal``
          (any accepted X: they are scored) or their scores ``normal_scores`` (``Tensor[N]``): their
          ``quantile``, plain or finite-sample corrected (warns when N is too small for it).
        - ``"chi2"``: Gaussian detectors only (PaDiM, GaussianAD), no data: the ``quantile`` of the
          score under the fitted Gaussian model.
        - ``"f1"``: labelled validation images ``validation`` (or their scores ``validation_scores``)
          with ``labels`` (1 = defective): the F1-maximising threshold.

        Sets ``threshold_`` and ``threshold_info_`` (method, quantile, number of images used).
        Returns ``self``.
        """
        from fastad import thresholds as T

        self._check_fitted("set_threshold")
        name = f"{type(self).__name__}.set_threshold"
        if method not in T.METHODS:
            raise ValueError(f"{name}: method must be one of {T.METHODS}, got {method!r}")
        given = {k: v is not None for k, v in (("threshold", threshold), ("normal", normal), ("normal_scores", normal_scores),
                                                ("validation", validation), ("validation_scores", validation_scores))}
        allowed = {"quantile": ("normal", "normal_scores"), "quantile-corrected": ("normal", "normal_scores"),
                   "chi2": (), "f1": ("validation", "validation_scores")}[method]
        used = [k for k, g in given.items() if g]
        if threshold is not None:
            if len(used) != 1:
                raise ValueError(f"{name}: give exactly one of threshold or data (got {used})")
            t, info = float(threshold), {"method": "given", "n_images": None}
        else:
            if len(used) != (0 if method == "chi2" else 1) or any(k not in allowed for k in used):
                want = ", ".join(allowed) if allowed else "no data (nothing)"
                raise ValueError(f"{name}: method {method!r} takes exactly one of {want}, got {used or 'nothing'}")
            if not 0.0 <= quantile <= 1.0:
                raise ValueError(f"{name}: quantile must be in [0, 1], got {quantile}")
            info = {"method": method, "quantile": float(quantile)}
            if method == "chi2":
                if self._fused_with_global():
                    raise ValueError(f"{name}: method 'chi2' does not apply to a model fused with a global one (tiling "
                                     "fuse='global': its scores are no Mahalanobis distance); use quantile or f1")
                t, info["n_images"] = float(self._chi2_threshold(float(quantile))), 0
            elif method == "f1":
                if labels is None:
                    raise ValueError(f"{name}: method 'f1' needs labels (1 = defective) of the validation images")
                s = self.decision_function(validation) if validation is not None else torch.as_tensor(validation_scores)
                t, info["f1"] = T.f1(s, torch.as_tensor(labels))
                info.pop("quantile")
                info["n_images"] = int(s.numel())
            else:
                s = self.decision_function(normal) if normal is not None else torch.as_tensor(normal_scores)
                s = s.detach().reshape(-1).double().cpu()
                if s.numel() == 0:
                    raise ValueError(f"{name}: no normal scores given")
                if method == "quantile":
                    warn_if_few_scores(name, s.numel(), quantile)
                    t = T.quantile(s, quantile)
                else:
                    t = T.quantile_corrected(s, quantile)
                info["n_images"] = int(s.numel())
        if not math.isfinite(t):
            raise ValueError(f"{name}: threshold must be finite, got {t}")
        self.threshold_ = t
        self.threshold_info_ = info
        return self

    def _fused_with_global(self) -> bool:
        """Whether the tiling (the fitted one, else the next fit's) fuses with a global model."""
        return bool((getattr(self, "_tiling_now", lambda: {})() or {}).get("fuse"))

    def supports_threshold(self, method: str) -> bool:
        """Whether :meth:`set_threshold` can use ``method`` with this detector (``"chi2"``: Gaussian ones,
        not fused with a global model: a fused score is no Mahalanobis distance)."""
        if method == "chi2":
            return type(self)._chi2_threshold is not ThresholdMixin._chi2_threshold and not self._fused_with_global()
        from fastad import thresholds

        return method in thresholds.METHODS

    def _chi2_threshold(self, q: float) -> float:
        """The ``q`` quantile of the image score under the fitted Gaussian model (Gaussian detectors)."""
        raise ValueError(f"{type(self).__name__}: the 'chi2' threshold needs a Gaussian detector (PaDiM, GaussianAD)")
