"""fastad kernels: thin, documented wrappers over ``torch.ops.fastad.*``.

Every op has a pure-torch reference in :mod:`fastad.ops._reference` (the test oracle).
"""
from .knn import knn
from .musc import bilinear_max, interval_k, lnamd, lnamd_mutual_scores, mutual_scores, rscin, snamd

__all__ = ["knn", "lnamd", "snamd", "mutual_scores", "lnamd_mutual_scores", "rscin", "interval_k", "bilinear_max"]
