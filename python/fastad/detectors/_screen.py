"""The bf16 screen setting of the detectors' k-NN and group-min calls.

PatchCore, SPADE, KNN and LOF (and the SPADE-style group minimum) call :func:`fastad.ops.knn` /
:func:`fastad.ops.group_min` with ``screen=detector_screen()``. The screen returns indices and distances
identical to the float32 path (a proven bound plus a float32 re-score: see ``fastad.ops.knn``), so the
setting changes speed, never scores. ``FASTAD_DETECTOR_SCREEN`` in the environment chooses it, read at
every call: ``"auto"`` (default: screen only where it measured faster on the running CPU), ``"bf16"``
(whenever the bf16 GEMM can run) or ``"none"`` (always the float32 path).
"""
from __future__ import annotations

import os

ENV = "FASTAD_DETECTOR_SCREEN"
CHOICES = ("none", "bf16", "auto")


def detector_screen() -> str:
    """The ``screen=`` argument the detectors pass to ``ops.knn`` / ``ops.group_min`` now."""
    v = os.environ.get(ENV, "").strip().lower() or "auto"
    if v not in CHOICES:
        raise ValueError(f"{ENV} must be one of {CHOICES}, got {os.environ.get(ENV)!r}")
    return v
