"""fastad kernels: thin, documented wrappers over ``torch.ops.fastad.*``.

Every op has a pure-torch reference in :mod:`fastad.ops._reference` (the test oracle).
"""
from .coreset import coreset
from .knn import knn

__all__ = ["coreset", "knn"]
