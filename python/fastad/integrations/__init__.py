"""Drop-in backends for other frameworks (optional; each submodule needs its framework installed).

- :mod:`fastad.integrations.pyod`: fastad's embedding detectors (KNN / LOF / Mahalanobis), and
  PatchCore / PaDiM / SPADE on precomputed patch embeddings, as ``pyod.models.base.BaseDetector``
  subclasses (``pip install 'fastad[pyod]'``).
- :mod:`fastad.integrations.anomalib`: ``use_fastad(model)`` / ``patch()`` route anomalib 2.x's
  PatchCore nearest-neighbour search and coreset, and PaDiM's Gaussian fit and distance, to fastad's
  kernels (``pip install 'fastad[anomalib]'``).

Importing this package imports neither framework; importing a submodule without its framework
raises an ``ImportError`` that says what to install.
"""

__all__ = ["anomalib", "pyod"]
