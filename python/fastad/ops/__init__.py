"""fastad kernels: thin, documented wrappers over ``torch.ops.fastad.*``.

Every op has a pure-torch reference in :mod:`fastad.ops._reference` (the test oracle).
"""
from .group_min import group_min
from .knn import knn

__all__ = ["group_min", "knn"]
