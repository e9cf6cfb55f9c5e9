"""Small shared checks of degenerate detector inputs (issue 11)."""
from __future__ import annotations

import contextlib
import math
import warnings


def warn_if_few_scores(owner: str, n: int, quantile: float, stacklevel: int = 3) -> None:
    """Warn (documented, not an error: the threshold is still the exact sample quantile) when ``n``
    scores are too few to estimate their ``quantile``: fewer than ``1 / (1 - quantile)`` (e.g. 100 for
    0.99) puts the quantile next to their maximum. The message names a quantile the scores support."""
    if not 0.0 < quantile < 1.0 or n < 1:
        return
    need = math.ceil(1.0 / min(quantile, 1.0 - quantile) - 1e-9)
    if n >= need:
        return
    if quantile > 0.5:
        ok = max(0.5, math.floor((1.0 - 1.0 / n) * 100) / 100)
    else:
        ok = min(0.5, math.ceil(100 / n) / 100)
    warnings.warn(
        f"{owner}: the {quantile:g} quantile of {n} normal scores is close to their "
        f"{'maximum' if quantile > 0.5 else 'minimum'} (at least {need} are needed to estimate it); "
        f"give more normal images or use quantile={ok:g}",
        stacklevel=stacklevel + 1,
    )


@contextlib.contextmanager
def nonfinite_as_value_error(message: str):
    """The kernels' non-finite-input ``RuntimeError`` (NaN / Inf, or values whose squares overflow
    float32) re-raised as ``ValueError(f"{message} [{first line of the kernel's error}]")``; any other
    error passes through unchanged."""
    try:
        yield
    except RuntimeError as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        if "finite" not in msg and "NaN or Inf" not in msg:
            raise
        raise ValueError(f"{message} [{msg}]") from None
