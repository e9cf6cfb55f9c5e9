"""Anomaly detectors with a scikit-learn / PyOD-style API (tensors in, tensors out)."""
from .musc import MuSc

__all__ = ["MuSc"]
