"""fastad: fast kernels and detectors for feature-based anomaly detection.

``import fastad`` loads the compiled operators (``torch.ops.fastad.*``); the public API lives in
``fastad.ops`` (kernels), ``fastad.detectors``, ``fastad.metrics``, ``fastad.features`` and ``fastad.data``.
"""
import torch  # noqa: F401  (must be imported before the extension: it preloads libtorch / libcudart)

from ._library import __version__, build_info, knn_screen_stats, op_kernels
from . import _meta  # noqa: F401  (fake kernels for torch.compile / opcheck)
from . import ops

__all__ = ["__version__", "build_info", "knn_screen_stats", "op_kernels", "ops"]
