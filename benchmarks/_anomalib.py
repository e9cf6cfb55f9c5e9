"""Load anomalib 2.7's metric classes (`_AUPRO`, `_AUROC`, `_F1Max`) from its installed source.

`import anomalib.metrics` runs the package `__init__`, which imports `anomalib.data` and with it
torchvision (not installable next to the CPU torch here). The metric modules themselves only need
torch, torchmetrics, kornia, cv2 and matplotlib, so this registers a bare `anomalib.metrics` package
(its real directory, no `__init__` executed) and a stub `anomalib.metrics.base.AnomalibMetric`
(the batch-field wrapper, unused here), then imports the real `aupro`, `auroc` and `f1_score`
modules unmodified. Install: `pip install --no-deps anomalib==2.7.0 torchmetrics lightning-utilities
kornia kornia-rs` plus `opencv-python-headless matplotlib` (see BENCH_DEPS in the Makefile).
"""
from __future__ import annotations

import importlib
import pathlib
import sys
import types


def load_anomalib_metrics() -> types.SimpleNamespace:
    """-> namespace(AUPRO, AUROC, F1Max, version); raises ImportError when anomalib is unusable."""
    import anomalib  # noqa: F401  (ImportError if not installed)

    if "anomalib.metrics" not in sys.modules or not hasattr(sys.modules["anomalib.metrics"], "_fastad_stub"):
        pkg = types.ModuleType("anomalib.metrics")
        pkg.__path__ = [str(pathlib.Path(anomalib.__file__).parent / "metrics")]
        pkg._fastad_stub = True
        sys.modules["anomalib.metrics"] = pkg
        base = types.ModuleType("anomalib.metrics.base")

        class AnomalibMetric:  # the real one maps Batch fields to update(); unused here
            pass

        base.AnomalibMetric = AnomalibMetric
        sys.modules["anomalib.metrics.base"] = base
    try:
        aupro = importlib.import_module("anomalib.metrics.aupro")
        auroc = importlib.import_module("anomalib.metrics.auroc")
        f1 = importlib.import_module("anomalib.metrics.f1_score")
    except Exception as e:  # missing torchmetrics / kornia / cv2 / matplotlib
        raise ImportError(f"anomalib metrics not importable: {e!r}") from e
    from importlib.metadata import version

    return types.SimpleNamespace(AUPRO=aupro._AUPRO, AUROC=auroc._AUROC, F1Max=f1._F1Max,
                                 version=version("anomalib"))
