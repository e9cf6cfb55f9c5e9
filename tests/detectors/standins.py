"""Test-only stand-ins: a tiny random backbone, and (only while the real modules are not merged yet)
a hook-based feature extractor and a greedy coreset with the documented signatures. Never shipped."""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import torch
from torch import nn


class TinyNet(nn.Module):
    """Random 3-stage conv net: layer1 stride 4 (8 ch), layer2 stride 8 (12 ch), layer3 stride 16 (16 ch)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU())
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.eval()

    def forward(self, x):
        return self.layer3(self.layer2(self.layer1(torch.relu(self.stem(x)))))


@dataclass
class TinyBackbone:
    model: nn.Module
    kind: str = "cnn"
    default_layers: list = field(default_factory=lambda: ["layer1", "layer2"])
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    name: str = "tiny_random"


class HookExtractor:
    """Same call shape as fastad.features.FeatureExtractor: ``ext(images) -> dict[layer, Tensor]``."""

    def __init__(self, model, layers, batch_size=16, device=None, progress=False):
        self.model = model.to(device) if device is not None else model
        self.layers = list(layers)

    @torch.no_grad()
    def __call__(self, images):
        out = {}
        hooks = [
            self.model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o))
            for name in self.layers
        ]
        try:
            self.model(images)
        finally:
            for h in hooks:
                h.remove()
        return {k: out[k] for k in self.layers}


def greedy_coreset(bank, n, *, projection_dim=None, seed=0, start=0):
    """Plain greedy k-center (no projection): ``(indices[n], min_distances[n])``."""
    idx = torch.empty(n, dtype=torch.long)
    mind = torch.full((bank.shape[0],), float("inf"))
    cur = start
    out_d = torch.empty(n)
    for j in range(n):
        idx[j] = cur
        out_d[j] = mind[cur] if j else float("inf")
        mind = torch.minimum(mind, (bank - bank[cur]).norm(dim=1))
        cur = int(mind.argmax())
    return idx, out_d


def install(monkeypatch) -> None:
    """Install the stand-ins for whatever is still missing from the package."""
    import fastad.ops

    if not hasattr(fastad.ops, "coreset"):
        monkeypatch.setattr(fastad.ops, "coreset", greedy_coreset, raising=False)
    try:
        import fastad.features as feats  # noqa: F401

        if not hasattr(feats, "FeatureExtractor"):
            raise ImportError
    except ImportError:
        mod = types.ModuleType("fastad.features")
        mod.FeatureExtractor = HookExtractor

        def get_backbone(name, weights="default"):
            if name == "tiny_random":
                return TinyBackbone(TinyNet())
            raise ValueError(f"stand-in get_backbone: unknown backbone {name!r}")

        mod.get_backbone = get_backbone
        monkeypatch.setitem(sys.modules, "fastad.features", mod)
