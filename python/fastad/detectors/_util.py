"""Small helpers of the detectors: the not-fitted error, a per-stage stopwatch, optional progress bars."""
from __future__ import annotations

import time

__all__ = ["NotFittedError", "StageTimer", "progress_bar"]


class NotFittedError(ValueError, AttributeError):
    """Raised when a detector is used before ``fit`` (same bases as scikit-learn's)."""


class StageTimer:
    """Accumulates wall-clock seconds per stage into a dict (``with timer("stage"): ...``)."""

    def __init__(self, into: dict[str, float]):
        self.into = into

    def __call__(self, stage: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.into[stage] = timer.into.get(stage, 0.0) + time.perf_counter() - self.t0

        return _Ctx()


def progress_bar(iterable, *, enabled: bool, desc: str, total: int | None = None):
    """``iterable`` wrapped in a tqdm bar when ``enabled`` (and tqdm imports), else as it is."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a runtime dependency, but never fail on a progress bar
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False)
