"""fastad kernels: thin, documented wrappers over ``torch.ops.fastad.*``.

Every op has a pure-torch reference in :mod:`fastad.ops._reference` (the test oracle).
"""
from .coreset import coreset
from .group_min import group_min
from .knn import knn

__all__ = ["coreset", "group_min", "knn"]
