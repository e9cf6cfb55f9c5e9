"""fastad kernels: thin, documented wrappers over ``torch.ops.fastad.*``.

Every op has a pure-torch reference in :mod:`fastad.ops._reference` (the test oracle).
"""
from . import _autograd  # noqa: F401  (backward of knn; clear errors for the other ops)
from .coreset import coreset
from .group_min import group_min
from .knn import knn
from .musc import bilinear_max, interval_k, lnamd, lnamd_mutual_scores, mutual_scores, rscin, snamd

__all__ = ["coreset", "group_min", "knn", "lnamd", "snamd", "mutual_scores", "lnamd_mutual_scores", "rscin",
           "interval_k", "bilinear_max"]

# Gaussian models (issue 13)
from .gaussian import cholesky_lower, gather_maps, gaussian_accumulate, gaussian_covariance  # noqa: E402
from .mahalanobis import mahalanobis  # noqa: E402

__all__ += ["mahalanobis", "gaussian_accumulate", "gaussian_covariance", "cholesky_lower", "gather_maps"]
