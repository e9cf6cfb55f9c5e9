import pytest
import torch


@pytest.fixture
def tiny_backbone():
    """fastad's seeded random test CNN (layer1: 16 ch, stride 4; layer2: 32 ch, stride 8)."""
    from fastad.features import get_backbone

    return get_backbone("random_cnn")


@pytest.fixture
def images():
    """Train / test image batches, 64x64 (layer1 grid 16x16, layer2 8x8); test images 6-7 get a bright blob."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 3, 64, 64, generator=g) * 0.5
    train = base + 0.1 * torch.randn(12, 3, 64, 64, generator=g)
    test = base + 0.1 * torch.randn(8, 3, 64, 64, generator=g)
    test[6:, :, 20:36, 24:40] += 3.0
    return train, test
