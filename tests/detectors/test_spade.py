"""SPADE against a brute-force reference (full cdist, no chunking, nothing dropped)."""
import torch
import torch.nn.functional as F

from fastad.detectors import SPADE, gaussian_blur


def _reference(train, test, layers, glayer, K, image_size, sigma=4.0):
    gtr = train[glayer].mean(dim=(2, 3))
    gte = test[glayer].mean(dim=(2, 3))
    d = torch.cdist(gte.double(), gtr.double())
    gd, gi = d.topk(K, largest=False, dim=1)
    scores = gd.mean(1)
    B = gte.shape[0]
    total = 0
    for layer in layers:
        C, h, w = test[layer].shape[1:]
        maps = torch.empty(B, h * w, dtype=torch.float64)
        for b in range(B):
            gallery = train[layer][gi[b]].permute(0, 2, 3, 1).reshape(-1, C).double()
            q = test[layer][b].permute(1, 2, 0).reshape(-1, C).double()
            maps[b] = torch.cdist(q, gallery).min(1).values
        total = total + F.interpolate(maps.view(B, 1, h, w), size=image_size, mode="bilinear", align_corners=False)
    return scores, gaussian_blur(total / len(layers), sigma, "symmetric")[:, 0]


def test_spade_matches_bruteforce():
    gen = torch.Generator().manual_seed(5)
    mk = lambda B: {  # noqa: E731
        "l1": torch.randn(B, 6, 8, 8, generator=gen),
        "l2": torch.randn(B, 10, 4, 4, generator=gen),
        "g": torch.randn(B, 12, 2, 2, generator=gen),
    }
    train, test = mk(30), mk(4)
    for K in (1, 7, 50):
        det = SPADE(backbone=None, k_images=K, layers=["l1", "l2"], global_layer="g", progress=False)
        det.fit_features(train, image_size=(32, 40))
        s, m = det.score_features(test)
        rs, rm = _reference(train, test, ["l1", "l2"], "g", min(K, 30), (32, 40))
        torch.testing.assert_close(s.double(), rs, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(m.double(), rm, rtol=1e-4, atol=1e-4)


def test_spade_default_layers_from_features():
    gen = torch.Generator().manual_seed(0)
    train = {"a": torch.randn(5, 4, 6, 6, generator=gen), "b": torch.randn(5, 8, 3, 3, generator=gen)}
    det = SPADE(backbone=None, k_images=3, progress=False).fit_features(train, image_size=(24, 24))
    assert det.layers_ == ["a", "b"] and det.global_layer_ == "b"
    s, m = det.score_features(train)
    assert s.shape == (5,) and m.shape == (5, 24, 24)
    assert float(s.min()) >= 0
