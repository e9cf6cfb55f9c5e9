"""Test helpers: a second random backbone with other channel counts (to test refusals)."""
from __future__ import annotations

import torch
from torch import nn


class OtherNet(nn.Module):
    """Random 2-stage conv net with the same tap names as ``random_cnn`` but other channel counts."""

    def __init__(self, seed: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layer1 = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.eval()

    def forward(self, x):
        return self.layer2(self.layer1(x))
