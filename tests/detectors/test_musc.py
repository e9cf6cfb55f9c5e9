"""MuSc detector: whole-pipeline parity with the port of the official code, subsets, pool, API."""
import random
from types import SimpleNamespace

import pytest
import torch

from fastad.detectors import MuSc
from fastad.detectors.musc import stratified_subsets
from tests import musc_oracle as O


def _layers(N, H, C, n_layers, gen, clustered=True):
    base = torch.randn(1, 1 + H * H, C, generator=gen)
    out = []
    for _ in range(n_layers):
        t = torch.randn(N, 1 + H * H, C, generator=gen)
        out.append(base * 2 + t if clustered else t)
    return out


def test_pipeline_matches_official(device, gen):
    N, H, C, S = 9, 6, 48, 50
    toks = _layers(N, H, C, 3, gen)
    cls = torch.nn.functional.normalize(torch.randn(N, 16, generator=gen), dim=-1)
    det = MuSc(backbone=None, image_size=S, progress=False)
    scores, maps = det.score_tokens([t.to(device) for t in toks], cls.to(device))
    assert scores.device.type == device.type and maps.device.type == device.type and maps.shape == (N, S, S)
    want_maps, want_ac, want_rs = O.musc_official(toks, (1, 3, 5), S, cls.numpy(), (1, 2, 3))
    assert (maps.cpu() - want_maps).abs().max().item() <= 1e-5
    assert (scores.cpu().double() - torch.from_numpy(want_rs).double()).abs().max().item() <= 1e-5
    raw, _ = MuSc(backbone=None, image_size=S, k_list=None, progress=False).score_tokens(toks, cls, return_maps=False)
    assert (raw.double() - torch.from_numpy(want_ac)).abs().max().item() <= 1e-5
    # the image score is the max of the upsampled map, not of the grid
    assert torch.allclose(raw.double(), want_maps.reshape(N, -1).max(-1).values, atol=1e-5)


def _official_sub_datasets(labels, divide_num, divide_iter, seed=42):
    # the official partition, literally with the global random module (datasets/mvtec.py)
    random.seed(seed)
    id_dict = {}
    for i, a in enumerate(labels):
        id_dict.setdefault(a, []).append(i)
    sub = []
    for k in id_dict:
        ids = id_dict[k]
        random.shuffle(ids)
        chunks = [ids[i : i + divide_num] for i in range(0, len(ids), divide_num)]
        sub.extend(chunks[i][divide_iter] for i in range(len(chunks)) if len(chunks[i]) > divide_iter)
    return sub


def test_stratified_subsets_match_official():
    labels = ["crack"] * 7 + ["good"] * 12 + ["hole"] * 5
    for d in (2, 3, 5):
        got = stratified_subsets(len(labels), d, labels)
        assert [_official_sub_datasets(labels, d, it) for it in range(d)] == got
        assert sorted(sum(got, [])) == list(range(len(labels)))


def test_divide_num_scores_each_subset_alone(gen):
    N, H, C = 12, 4, 16
    toks = _layers(N, H, C, 2, gen)
    det = MuSc(backbone=None, image_size=20, divide_num=2, k_list=None, progress=False)
    scores, maps = det.score_tokens(toks)
    for idx in stratified_subsets(N, 2):
        sub = [t[idx] for t in toks]
        s2, m2 = MuSc(backbone=None, image_size=20, k_list=None, progress=False).score_tokens(sub)
        assert torch.allclose(maps[idx], m2) and torch.allclose(scores[idx], s2)


def test_pool_scores_new_images_without_rescoring(gen):
    N, H, C = 10, 4, 16
    toks = _layers(N, H, C, 2, gen)
    pool = [t[:8] for t in toks]
    new = [t[8:] for t in toks]
    det = MuSc(backbone=None, image_size=16, progress=False, contamination=0.25).fit(tokens=pool)
    assert det.n_pool_ == 8 and det.pool_scores_.shape == (8,)
    assert det.threshold_ == pytest.approx(float(torch.quantile(det.pool_scores_.double(), 0.75)))
    s, m = det.score_tokens(new)
    assert s.shape == (2,) and m.shape == (2, 16, 16)
    # query 0 against the pool = the official per-query MSM with the pool as the "other" images
    rows = []
    for r in (1, 3, 5):
        per_l = []
        for t in toks:
            z = O.lnamd_official([torch.cat([t[8:9], t[:8]])], r)[0]
            per_l.append(O.msm_official(z, query_index=[0])[0])
        rows.append(torch.stack(per_l).mean(0))
    grid = torch.stack(rows).mean(0).view(1, 1, H, H)
    up = torch.nn.functional.interpolate(grid, size=16, mode="bilinear", align_corners=True)[0, 0]
    assert (m[0] - up).abs().max().item() <= 1e-5


def test_small_batches(gen):
    toks = _layers(4, 3, 8, 1, gen)
    with pytest.raises(ValueError, match="k = int"):
        MuSc(backbone=None, image_size=9, progress=False).score_tokens(toks)
    s, _ = MuSc(backbone=None, image_size=9, ceil_small=True, k_list=None, progress=False).score_tokens(toks)
    assert torch.isfinite(s).all()


def test_predict_and_errors(gen):
    det = MuSc(backbone=None, image_size=9, progress=False)
    with pytest.raises(RuntimeError, match="no threshold_"):
        det.predict(torch.rand(2, 3, 9, 9))
    with pytest.raises(ValueError, match="square grid"):
        det.score_tokens([torch.randn(6, 1 + 10, 8)])
    with pytest.raises(ValueError, match="backbone=None"):
        det.score(torch.rand(6, 3, 9, 9))


class _FakeViT(torch.nn.Module):
    """A tiny duck-typed ViT backbone (fastad.features.Backbone protocol): 4 blocks of linear maps."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Linear(3 * 4 * 4, 16)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(16, 48, generator=g) * 0.3)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(4))
        self.norm = torch.nn.LayerNorm(16)


def _fake_backbone():
    # Seeded whole (Linear's default init draws from the global RNG): the result must not depend on
    # which tests ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _FakeViT().eval()

    def vit_tokens(x, layers, norm=True, batch_size=8, progress=False, device=None):
        p = torch.nn.functional.unfold(x, 4, stride=4).transpose(1, 2)  # [B, L, 48]
        h = model.embed(p)
        h = torch.cat([h.mean(1, keepdim=True), h], 1)
        outs = {}
        for i, b in enumerate(model.blocks):
            h = h + torch.tanh(b(h))
            outs[f"blocks.{i}"] = model.norm(h) if norm else h
        return [outs[n].detach() for n in layers]

    return SimpleNamespace(model=model, kind="vit", default_layers=["blocks.1", "blocks.3"], mean=(0.5,) * 3,
                           std=(0.25,) * 3, image_size=32, patch_size=4, vit_tokens=vit_tokens)


def test_images_end_to_end_with_a_backbone(gen):
    X = 0.5 + 0.02 * torch.randn(8, 3, 32, 32, generator=gen)  # near-identical normal images
    X[3, :, 8:16, 8:16] = 1.0  # a bright defect
    det = MuSc(backbone=_fake_backbone(), progress=False)
    s, m = det.score(X)
    assert s.shape == (8,) and m.shape == (8, 32, 32)
    tokens, cls = det.extract(X)
    s2, m2 = det.score_tokens(tokens, cls)
    assert torch.equal(s, s2) and torch.equal(m, m2)
    assert int(m.flatten(1).max(1).values.argmax()) == 3
    det.fit(X[:6])
    assert det.predict(X[6:]).shape == (2,)
