"""The detectors' model-file format: one ``.safetensors`` file whose tensors are the fitted state and
whose header metadata holds one JSON document (format name and version, fastad version, detector
class name, hyper-parameters, per-detector fields and a SHA-256 of every tensor). Never pickle.

:func:`write_model_file` writes one (temporary name in the same folder, then an atomic rename);
:func:`load` reads one, checks format, version and digests, and hands the tensors to the registered
class's ``_from_file``. This module imports only the registry: detectors import it, never the reverse.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from . import _registry

#: Version of the model-file layout. Bump on incompatible change.
FORMAT_VERSION = 1
#: Key of the JSON document in the safetensors metadata.
META_KEY = "fastad"
FORMAT_NAME = "fastad-detector"


class ModelFileError(ValueError):
    """A model file that cannot be used: corrupted, truncated, not a fastad model, or incompatible."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"fastad model file {self.path!r}: {problem}")


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's bytes (moved to CPU, contiguous)."""
    t = t.detach().to("cpu").contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def write_model_file(path: str | os.PathLike, detector: str, tensors: dict[str, torch.Tensor], fields: dict) -> Path:
    """Write ``tensors`` (moved to CPU) and the JSON metadata ``fields`` of a ``detector`` to ``path``:
    one safetensors file, the metadata holding the format name and version, the fastad version and a
    SHA-256 per tensor (checked by :func:`load`); written to a temporary name, then renamed, so a
    crash never leaves half a model file."""
    from safetensors.torch import save_file

    from .. import __version__
    from .._output import atomic_path

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "fastad_version": __version__,
        "detector": detector,
        **fields,
        "sha256": {k: tensor_digest(v) for k, v in tensors.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # a unique temporary file, removed on any failure; the user's normal mode
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return path


def read_meta(path: Path) -> dict:
    """The JSON document of a model file (format name checked; version not yet)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ModelFileError(path, f"not a readable safetensors file (corrupted or truncated?): {e}") from None
    if raw is None:
        raise ModelFileError(path, "is a safetensors file but not a fastad model (no 'fastad' metadata)")
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ModelFileError(path, f"the model metadata is not valid JSON (corrupted file?): {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(path, "the metadata is not a fastad detector description")
    return meta


def load(path, *, backbone=None, device=None):
    """Read any detector written by its ``save(path)``: checks the format version, the detector name
    against the registry and every tensor's digest, then builds the detector through its class's
    ``_from_file(path, meta, tensors, device=..., backbone=...)``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fastad model file {str(path)!r}: no such file")
    meta = read_meta(path)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            path,
            f"format version {version!r} is not supported by this fastad (reads version {FORMAT_VERSION}); "
            f"it was written by fastad {meta.get('fastad_version')!r}",
        )
    name = meta.get("detector")
    cls = _registry.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ModelFileError(path, f"unknown detector {name!r} (known: {_registry.names()})")
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise ModelFileError(path, f"the tensor data cannot be read (corrupted or truncated?): {e}") from None
    digests = meta.get("sha256") or {}
    if set(digests) != set(tensors):
        raise ModelFileError(path, f"tensors {sorted(tensors)} do not match the recorded ones {sorted(digests)}")
    for k, v in tensors.items():
        if tensor_digest(v) != digests[k]:
            raise ModelFileError(path, f"tensor {k!r} does not match its checksum (the file is corrupted)")
    return cls._from_file(path, meta, tensors, device=device, backbone=backbone)
