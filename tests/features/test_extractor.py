"""FeatureExtractor and the random test backbones (fast, no weights needed)."""
import pytest
import torch
from torch import nn

from fastad.features import FeatureExtractor, VisionTransformer, get_backbone, list_backbones


@pytest.fixture
def images(gen):
    return torch.randn(5, 3, 64, 64, generator=gen)


def test_cnn_taps_match_manual_forward(images):
    bb = get_backbone("random_cnn")
    feats = bb.features(images, ["layer1", "layer3"], batch_size=2)
    m = bb.model
    with torch.no_grad():
        l1 = m.layer1(m.stem(images))
        l3 = m.layer3(m.layer2(l1))
    assert list(feats) == ["layer1", "layer3"]
    torch.testing.assert_close(feats["layer1"], l1)
    torch.testing.assert_close(feats["layer3"], l3)
    assert feats["layer3"].shape == (5, bb.channels["layer3"], *bb.grid_size(64, 64, "layer3"))
    assert not feats["layer1"].requires_grad


def test_batch_size_does_not_change_results(images):
    bb = get_backbone("random_cnn")
    a = bb.features(images, batch_size=1)
    b = bb.features(images, batch_size=16)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_iterable_inputs_and_streaming(images):
    bb = get_backbone("random_cnn")
    fx = bb.extractor(["layer2"])
    ref = fx(images)["layer2"]
    from_list = fx([images[:3], {"image": images[3:], "path": ["x", "y"]}])["layer2"]
    torch.testing.assert_close(from_list, ref)
    parts = list(fx.iter_batches((images[i : i + 2] for i in range(0, 5, 2))))
    assert [p["layer2"].shape[0] for p in parts] == [2, 2, 1]
    single = fx(images[0])  # [C, H, W] is one image
    torch.testing.assert_close(single["layer2"], ref[:1])


def test_early_stop_skips_later_layers(images):
    bb = get_backbone("random_cnn")
    calls = []
    h = bb.model.head.register_forward_hook(lambda *a: calls.append("head"))
    h2 = bb.model.layer3.register_forward_hook(lambda *a: calls.append("layer3"))
    try:
        bb.features(images, ["layer1", "layer2"])
        assert calls == [], "layers after the last tap must not run"
        bb.features(images, ["layer3"], batch_size=5)
        assert calls == ["layer3"]
    finally:
        h.remove()
        h2.remove()
    assert not bb.model.layer1._forward_hooks, "hooks are removed after extraction"


class _Pair(nn.Module):
    def forward(self, y):
        return (y * 2, y + 1)  # HF-style blocks return tuples


class _TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.pair = _Pair()

    def forward(self, x):
        return self.pair(self.a(x.mean((2, 3))))[1]


def test_tuple_outputs_and_errors():
    net = _TupleNet()
    fx = FeatureExtractor(net, ["a", "pair"], dtype=torch.float64)
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    out = fx(x)
    assert out["pair"].shape == (3, 4) and out["pair"].dtype == torch.float64
    torch.testing.assert_close(out["pair"], 2 * out["a"])  # first element of the tuple
    with pytest.raises(ValueError, match="no sub-module 'layer9'"):
        FeatureExtractor(get_backbone("random_cnn").model, ["layer9"])
    with pytest.raises(ValueError, match="close names"):
        FeatureExtractor(get_backbone("random_cnn").model, ["layer_1"])
    with pytest.raises(ValueError, match="duplicate"):
        FeatureExtractor(net, ["a", "a"])
    with pytest.raises(ValueError, match="at least one"):
        FeatureExtractor(net, [])
    with pytest.raises(ValueError, match="images must be"):
        FeatureExtractor(net, ["a"])(torch.randn(2, 2))
    with pytest.raises(TypeError, match="batch"):
        FeatureExtractor(net, ["a"])([[1, 2]])


def test_taps_are_safe_from_later_inplace_ops():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 8, 8)
    got = FeatureExtractor(net, ["0", "2"])(x)["0"]
    with torch.no_grad():
        torch.testing.assert_close(got, net[0](x))
    assert (got < 0).any(), "the in-place ReLU after the tapped conv must not clip the captured map"


def test_unused_layer_is_reported():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 2, 1)
            self.unused = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(RuntimeError, match="not called"):
        FeatureExtractor(Skip(), ["used", "unused"])(torch.randn(1, 3, 4, 4))


def test_progress_bar(images, capsys):
    bb = get_backbone("random_cnn")
    bb.features(images, batch_size=1, progress=True)
    assert "features" in capsys.readouterr().err


def test_vit_tokens_match_reference(gen):
    bb = get_backbone("random_vit")
    x = torch.randn(3, 3, 48, 64, generator=gen)
    raw = bb.vit_tokens(x, [1, "blocks.3", -1], norm=False)
    normed = bb.vit_tokens(x, [1, 3], norm=True, batch_size=2)
    L = (48 // 8) * (64 // 8)
    assert [t.shape for t in raw] == [(3, 1 + L, 32)] * 3
    ref_raw = bb.model.get_intermediate_layers(x, [1, 3], norm=False)
    ref_norm = bb.model.get_intermediate_layers(x, [1, 3], norm=True)
    torch.testing.assert_close(raw[0], ref_raw[0])
    torch.testing.assert_close(raw[1], ref_raw[1])
    torch.testing.assert_close(raw[2], raw[1])
    torch.testing.assert_close(normed[0], ref_norm[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normed[1], ref_norm[1], rtol=1e-5, atol=1e-5)
    # the final LayerNorm changes the values; the CLS token is row 0 of each output
    assert not torch.allclose(normed[1], raw[1])
    torch.testing.assert_close(bb.model(x), bb.model.norm(raw[1])[:, 0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a ViT"):
        get_backbone("random_cnn").vit_tokens(x)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        bb.vit_tokens(torch.randn(1, 3, 50, 64))
    with pytest.raises(ValueError, match="out of range"):
        bb.vit_tokens(x, [4])
    with pytest.raises(ValueError, match="block indices"):
        bb.vit_tokens(x, ["norm"])
    # streaming input, gathered on the requested device
    streamed = bb.vit_tokens([x[:2], x[2:]], [3], norm=True, out_device="cpu")[0]
    torch.testing.assert_close(streamed, normed[1], rtol=1e-5, atol=1e-5)


def test_vit_position_interpolation(gen):
    vit_off = VisionTransformer(patch_size=8, embed_dim=16, depth=1, num_heads=2, pos_grid=6, pos_interp="offset")
    vit_size = VisionTransformer(patch_size=8, embed_dim=16, depth=1, num_heads=2, pos_grid=6, pos_interp="size")
    vit_size.load_state_dict(vit_off.state_dict())
    # on the table's own grid there is no interpolation at all
    torch.testing.assert_close(vit_off.interpolate_pos_encoding(6, 6, torch.float32), vit_off.pos_embed)
    a = vit_off.interpolate_pos_encoding(4, 5, torch.float32)
    b = vit_size.interpolate_pos_encoding(4, 5, torch.float32)
    assert a.shape == b.shape == (1, 1 + 20, 16)
    torch.testing.assert_close(a[:, 0], vit_off.pos_embed[:, 0])
    grid = vit_off.pos_embed[:, 1:].reshape(1, 6, 6, 16).permute(0, 3, 1, 2)
    exp = torch.nn.functional.interpolate(grid, size=(4, 5), mode="bicubic", align_corners=False)
    torch.testing.assert_close(b[:, 1:], exp.permute(0, 2, 3, 1).reshape(1, 20, 16))
    assert not torch.allclose(a, b)  # DINOv2's +0.1 offset gives a slightly different table


def test_weights_files(tmp_path, images):
    from safetensors.torch import save_file

    bb = get_backbone("random_cnn")
    sd = {k: v.clone() + 0.5 for k, v in bb.model.state_dict().items() if v.is_floating_point()}
    sd.update({k: v for k, v in bb.model.state_dict().items() if not v.is_floating_point()})
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "w.pt")
    a = get_backbone("random_cnn", weights=tmp_path / "w.safetensors")
    b = get_backbone("random_cnn", weights=str(tmp_path / "w.pt"))
    torch.testing.assert_close(a.model.layer1[0].weight, bb.model.layer1[0].weight + 0.5)
    torch.testing.assert_close(a.features(images)["layer2"], b.features(images)["layer2"])
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        get_backbone("random_cnn", weights=tmp_path / "bad.pt")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        get_backbone("random_cnn", weights=tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        get_backbone("random_cnn", weights=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown backbone"):
        get_backbone("resnet9000")
    assert "efficientnet_lite0" in list_backbones()


def test_random_backbones_are_deterministic(images):
    a = get_backbone("random_cnn").features(images)
    b = get_backbone("random_cnn").features(images)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_timm_backbone_optional(images):
    pytest.importorskip("timm")  # timm needs a working torchvision: absent on our CPU-torch venv
    bb = get_backbone("timm:resnet18", weights=None)
    feats = bb.features(images)
    assert len(feats) == len(bb.default_layers)


def test_timm_wrapper_with_a_fake_timm(monkeypatch, images, tmp_path):
    """The timm adapter's logic (feature_info -> taps/strides, ViT detection, weights file) on a
    stand-in module, since timm itself cannot be imported here."""
    import sys
    import types

    from fastad.features.backbones import TinyCNN
    from fastad.features.vit import VisionTransformer

    def create_model(name, pretrained=False):
        assert not pretrained
        if name == "tiny_vit":
            m = VisionTransformer(patch_size=8, embed_dim=16, depth=4, num_heads=2, pos_grid=8)
            m.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 64, 64)}
            return m
        m = TinyCNN()
        m.feature_info = [
            {"module": "layer1", "reduction": 4, "num_chs": 16},
            {"module": "layer2", "reduction": 8, "num_chs": 32},
            {"module": "layer3", "reduction": 16, "num_chs": 64},
        ]
        return m

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    cnn = get_backbone("timm:tiny_cnn", weights=None)
    assert cnn.kind == "cnn" and cnn.default_layers == ["layer2", "layer3"] and cnn.strides["layer3"] == 16
    assert cnn.features(images)["layer3"].shape == (5, 64, 4, 4)
    vit = get_backbone("timm:tiny_vit", weights=None)
    assert vit.kind == "vit" and vit.patch_size == 8 and vit.mean == (0.5, 0.5, 0.5)
    assert vit.default_layers == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert vit.vit_tokens(images, [-1])[0].shape == (5, 1 + 64, 16)
    torch.save(vit.model.state_dict(), tmp_path / "v.pt")
    again = get_backbone("timm:tiny_vit", weights=tmp_path / "v.pt")
    torch.testing.assert_close(again.vit_tokens(images, [1])[0], vit.vit_tokens(images, [1])[0])
