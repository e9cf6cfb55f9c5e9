"""scikit-build-core dynamic-metadata provider: pins the torch that fastad is compiled against.

fastad's binary extension works only with the torch it was built against (the C++ ABI of libtorch
changes between releases), so the wheel's ``Requires-Dist`` says ``torch==<that version>`` instead
of a range: pip then refuses to install the wheel next to another torch, and ``import fastad``
(``fastad/_library.py``) names both versions if the two ever differ anyway.

Used from ``pyproject.toml``::

    [[tool.dynamic-metadata]]
    provider = { path = "tools/build", module = "fastad_torch_pin" }
    base = ["numpy", ...]          # the other runtime dependencies

fastad is built with ``--no-build-isolation`` (see the Makefile / README), so the torch installed in
the build environment is the one CMake compiles against; its version is read from its metadata
(without importing torch). A local label (``2.13.0+cpu``) is dropped: ``torch==2.13.0`` matches it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def torch_requirement() -> str:
    """``torch==X.Y.Z`` for the torch installed in the build environment."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("torch")
    except PackageNotFoundError:
        raise RuntimeError(
            "fastad must be built against an installed torch: install torch first, then build with "
            "`pip install --no-build-isolation --no-deps .` (or `make build`)"
        ) from None
    return f"torch=={v.split('+', 1)[0]}"


def dynamic_metadata(settings: Mapping[str, Any], project: Mapping[str, Any] | None = None) -> dict[str, Any]:
    base = settings.get("base", [])
    if not isinstance(base, list) or not all(isinstance(b, str) for b in base):
        raise RuntimeError("fastad_torch_pin: 'base' must be a list of requirement strings")
    if any(b.split(";")[0].strip().lower().startswith("torch") for b in base):
        raise RuntimeError("fastad_torch_pin: leave torch out of 'base' (the provider pins it)")
    return {"dependencies": [torch_requirement(), *base]}
