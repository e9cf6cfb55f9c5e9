"""Argument types of the ``fastad`` command line and the translation of library messages into its
option names (``coreset_ratio=0.1`` -> ``--coreset-ratio 0.1``). Shared by :mod:`fastad.cli` and
:mod:`fastad.demo`; argparse itself stays in :mod:`fastad.cli`."""
from __future__ import annotations

import argparse
import math
from contextlib import contextmanager

from fastad._output import UsageError


_CLI_NAMES = ("coreset_ratio", "num_neighbors", "image_size", "projection_dim", "coreset_storage", "k_images",
              "n_features", "threshold_quantile", "batch_size", "max_train", "divide_num", "same_position", "r_list",
              "k_list")


#: options of the running command (set by :func:`main`); None: every option name is used
_ACTIVE_OPTIONS: set[str] | None = None


def set_active_options(options: set[str] | None) -> None:
    """The options of the running command (:func:`to_cli_names` names only those); None: all."""
    global _ACTIVE_OPTIONS
    _ACTIVE_OPTIONS = options


def to_cli_names(msg: str) -> str:
    """A detector's message with its parameter names as the CLI's options (``coreset_ratio=0.1`` ->
    ``--coreset-ratio 0.1``), so that it names options that exist: only options of the running
    command are used (a parameter it has no option for keeps its library name)."""
    import re

    msg = " ".join(str(msg).split())
    pairs = [("quantile", "--threshold-quantile", True), ("layers", "--layers", True)]
    pairs += [(name, "--" + name.replace("_", "-"), False) for name in _CLI_NAMES]
    for name, opt, eq_only in pairs:
        if _ACTIVE_OPTIONS is not None and opt not in _ACTIVE_OPTIONS:
            continue
        msg = re.sub(rf"\b{name}=", opt + " ", msg)
        if not eq_only:
            msg = re.sub(rf"\b{name}\b(?!_)", opt, msg)
    return msg


@contextmanager
def cli_names():
    """Re-raise a detector's ValueError as a UsageError in the CLI's option names (:func:`to_cli_names`)."""
    try:
        yield
    except ValueError as e:
        raise UsageError(to_cli_names(str(e))) from None


def number(s: str, kind=float):
    """``kind(s)``, or an ArgumentTypeError (argparse would otherwise print the parser's function name)."""
    try:
        v = kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {s!r}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s!r}")
    return v


def positive_int(s: str) -> int:
    v = number(s, int)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def ratio_arg(s: str) -> float:
    v = number(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def projection_arg(s: str):
    if s in ("auto", "none"):
        return None if s == "none" else "auto"
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto', 'none' or an int >= 1, got {s}")
    return v


def fraction_arg(s: str) -> float:
    v = number(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


class ImageSizeAction(argparse.Action):
    """``--image-size S`` or ``--image-size H W`` -> ``(H, W)``."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2:
            parser.error(f"{option_string}: give one int or H W, got {len(values)} values")
        setattr(namespace, self.dest, (values[0], values[-1]))


def heatmaps_arg(s: str):
    if s == "all":
        return "all"
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number of images, got {s}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number >= 0, got {s}")
    return v


def quantile_arg(s: str) -> float:
    v = number(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def int_arg(s: str) -> int:
    return number(s, int)


def nonneg_int(s: str) -> int:
    v = number(s, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {s}")
    return v


def int_list(s: str) -> list[int]:
    try:
        v = [int(t) for t in s.split(",") if t.strip()]
    except ValueError:
        v = []
    if not v or min(v) < 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated non-negative ints, got {s!r}")
    return v


def odd_list(s: str) -> list[int]:
    v = int_list(s)
    if any(r < 1 or r % 2 == 0 for r in v):
        raise argparse.ArgumentTypeError(f"must be comma-separated odd window sizes >= 1 (e.g. 1,3,5), got {s!r}")
    return v


def odd_int(s: str) -> int:
    v = number(s, int)
    if v < 1 or v % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd window size >= 1 (e.g. 3), got {s}")
    return v
