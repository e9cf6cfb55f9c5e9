"""Eager-mode argument types of the ``fastad.ops`` wrappers: a ``TypeError`` naming the op, the argument,
what it must be and what was given, before anything reaches a kernel (a numpy array would otherwise fail
deep inside with an ``AttributeError``, and ``k=2.5`` would be truncated to 2 without a word).

Call it inside ``if not torch.jit.is_scripting():`` (TorchScript types the arguments itself); under
``torch.compile`` / ``torch.export`` it does nothing (the graph's arguments are already typed there).
"""
from __future__ import annotations

import operator

import torch


def check_args(op: str, tensors: dict | None = None, ints: dict | None = None) -> None:
    """``tensors``: name -> value that must be a ``torch.Tensor`` (``None`` allowed); ``ints``: name ->
    value that must be an integer (a Python or numpy integer, not a bool or a float; ``None`` allowed)."""
    if torch.compiler.is_compiling():
        return
    for name, t in (tensors or {}).items():
        if t is not None and not isinstance(t, torch.Tensor):
            hint = " (torch.from_numpy(a) converts a numpy array)" if type(t).__module__ == "numpy" else ""
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__module__}.{type(t).__qualname__}{hint}")
    for name, v in (ints or {}).items():
        if v is None:
            continue
        ok = not isinstance(v, bool)
        if ok:
            try:
                operator.index(v)
            except TypeError:
                ok = False
        if not ok:
            raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__} {v!r}")
