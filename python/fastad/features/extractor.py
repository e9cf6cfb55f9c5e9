"""Generic feature extraction from named sub-modules of any ``torch.nn.Module`` via forward hooks."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator

import torch

__all__ = ["FeatureExtractor"]


class _StopForward(Exception):
    """Raised from the hook of the last needed layer to cut the forward short (private)."""


def _first_tensor(out):
    """A hooked module's output: the tensor itself, or the first tensor of a tuple/list/dict
    (HF-style blocks return tuples)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    raise TypeError(f"FeatureExtractor: hooked module returned {type(out).__name__}, expected a Tensor")


def _batch_images(b) -> torch.Tensor:
    if isinstance(b, torch.Tensor):
        return b
    if isinstance(b, dict) and "image" in b:
        return b["image"]
    if isinstance(b, (tuple, list)) and b and isinstance(b[0], torch.Tensor):
        return b[0]
    raise TypeError(
        "FeatureExtractor: each batch must be a Tensor[B, 3, H, W], a dict with an 'image' tensor "
        f"(fastad.data.batches) or a (images, ...) tuple, got {type(b).__name__}"
    )


class FeatureExtractor:
    """Capture the outputs of named sub-modules of ``model`` while it runs on image batches.

    Args:
        model: any ``nn.Module``; it is put in eval mode and moved to ``device``/``dtype``
            (in place, as ``Module.to`` does).
        layers: sub-module names as ``model.get_submodule`` takes them (e.g. ``"_blocks.4"``,
            ``"blocks.11"``, ``"layer2"``). A module called several times in one forward is
            captured on its first call.
        batch_size: images per forward when a single tensor is given.
        device: where to run (default: the model's current device).
        dtype: model and input dtype (float32 default; float16/bfloat16 on GPUs).
        progress: show a tqdm bar over batches: True, False, or ``"auto"`` (only for more than 8
            batches).
        channels_last: run the model and inputs in ``torch.channels_last`` memory format (about 2x
            faster for CNNs on CPU with oneDNN); outputs are returned in the usual contiguous
            layout either way. Default False here; :meth:`Backbone.extractor` turns it on for CNNs.

    The forward stops (a private exception from the hook) as soon as every requested layer has
    produced its output, so later layers and heads are never computed.

    Outputs: ``dict[layer, Tensor]``: CNN feature maps ``Tensor[B, C, h, w]``; ViT blocks
    ``Tensor[B, 1 + L, C]`` tokens (CLS first). If a module returns a tuple/list, its first tensor
    is kept. Captured outputs are copies (contiguous), safe from later in-place ops of the forward.

    Example:
        >>> bb = get_backbone("random_cnn")                    # doctest: +SKIP
        >>> fx = FeatureExtractor(bb.model, bb.default_layers)  # doctest: +SKIP
        >>> feats = fx(torch.randn(4, 3, 64, 64))               # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        layers: list[str],
        *,
        batch_size: int = 16,
        device=None,
        dtype: torch.dtype = torch.float32,
        progress=False,
        channels_last: bool = False,
    ):
        if isinstance(layers, str):
            layers = [layers]
        layers = [str(l) for l in layers]
        if not layers:
            raise ValueError("FeatureExtractor: layers must name at least one sub-module")
        if len(set(layers)) != len(layers):
            raise ValueError(f"FeatureExtractor: duplicate layer names in {layers}")
        if batch_size <= 0:
            raise ValueError(f"FeatureExtractor: batch_size must be positive, got {batch_size}")
        if not (dtype.is_floating_point):
            raise ValueError(f"FeatureExtractor: dtype must be a floating dtype, got {dtype}")
        names = [n for n, _ in model.named_modules()]
        self._modules = {}
        for name in layers:
            try:
                self._modules[name] = model.get_submodule(name)
            except AttributeError:
                close = difflib.get_close_matches(name, names, n=5)
                raise ValueError(
                    f"FeatureExtractor: the model ({type(model).__name__}) has no sub-module {name!r}"
                    + (f"; close names: {close}" if close else f"; some names: {names[1:8]}")
                ) from None
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels_last = bool(channels_last)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.layers = layers
        self.batch_size = int(batch_size)
        self.progress = progress

    # -- core -------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        need = len(self.layers)

        def make_hook(name):
            def hook(_module, _inp, out):
                if name in captured:
                    return
                # A copy in the standard layout: later in-place ops of the forward (ReLU(inplace=True)
                # after a tapped conv) must not change what was captured. Cheap next to the model.
                captured[name] = _first_tensor(out).clone(memory_format=torch.contiguous_format)
                if len(captured) == need:
                    raise _StopForward

            return hook

        handles = [m.register_forward_hook(make_hook(n)) for n, m in self._modules.items()]
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.layers if n not in captured]
        if missing:
            raise RuntimeError(f"FeatureExtractor: layers {missing} were not called during the model's forward")
        return {n: captured[n] for n in self.layers}

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"FeatureExtractor: images must be 4-D [B, C, H, W], got shape {tuple(x.shape)}")
        x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _batches_of(self, x) -> tuple[Iterable, int | None]:
        if isinstance(x, torch.Tensor):
            if x.dim() == 3:
                x = x.unsqueeze(0)
            if x.dim() != 4:
                raise ValueError(f"FeatureExtractor: images must be [B, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
            return x.split(self.batch_size), -(-x.shape[0] // self.batch_size)
        n = len(x) if hasattr(x, "__len__") else None
        return x, n

    def iter_batches(self, x) -> Iterator[dict[str, torch.Tensor]]:
        """Yield one ``dict[layer, Tensor]`` per batch (streaming; nothing is kept)."""
        chunks, n = self._batches_of(x)
        show = self.progress is True or (self.progress == "auto" and n is not None and n > 8)
        if show:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, total=n, desc="features", unit="batch")
        with torch.no_grad():
            for b in chunks:
                yield self._forward(self._prepare(_batch_images(b)))

    def extract(self, x, *, out_device=None) -> dict[str, torch.Tensor]:
        """Run the model on ``x`` and return every layer's outputs concatenated over batches.

        Args:
            x: Tensor[B, 3, H, W] (split into ``batch_size`` chunks), or an iterable of batches
                (tensors, or dicts with an ``"image"`` key as :func:`fastad.data.batches` yields).
            out_device: where results are gathered; default: the input tensor's device, or the
                extraction device for an iterable.

        Returns:
            dict[layer, Tensor[N, ...]] in ``self.dtype``.
        """
        if out_device is None:
            out_device = x.device if isinstance(x, torch.Tensor) else self.device
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        for feats in self.iter_batches(x):
            for n, t in feats.items():
                parts[n].append(t.to(out_device))
        if not parts[self.layers[0]]:
            raise ValueError("FeatureExtractor: no images were given")
        return {n: torch.cat(v) if len(v) > 1 else v[0] for n, v in parts.items()}

    __call__ = extract

    def __repr__(self) -> str:
        return (
            f"FeatureExtractor({type(self.model).__name__}, layers={self.layers}, batch_size={self.batch_size}, "
            f"device={self.device}, dtype={self.dtype}, channels_last={self.channels_last})"
        )
