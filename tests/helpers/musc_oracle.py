"""A faithful pure-torch port of the official MuSc scoring pipeline: the test oracle of fastad's MuSc.

Written by us from /work/shared/docs/SPEC-musc.md and from reading the official code at
xrli-U/MuSc @ b76b93d (models/modules/_LNAMD.py, _MSM.py, _RsCIN.py, models/musc.py). It reproduces
the official *formulation* step by step, including its costs, so that it can serve both as the
parity oracle and as the speed/memory anchor of benchmarks/bench_musc.py:

* LNAMD: per-image ``LayerNorm([C, H, W])`` (fresh module: no affine, eps 1e-5), then for r > 1
  ``Unfold(r, stride 1, padding (r-1)//2)`` -> ``(B*L, C, r, r)`` -> flatten -> ``adaptive_avg_pool1d``
  to C (the r^2 copy included), then per-token L2 normalisation;
* MSM: per query image i, ``torch.cdist`` of its L patches against the (N-1)*L patches of the other
  images (cdist's default mm path), min over each other image's patches, then the mean of the
  ``int(0.3 * (N-1))`` smallest of those N-1 minima (two ``topk`` calls like the official code); rows
  cast to float64;
* fusion: mean over layers then over r (float64), bilinear ``align_corners=True`` upsample (float64),
  image score = max of the upsampled map;
* RsCIN: min-max normalised scores, W = F F^T, per k keep each row's k largest (``topk`` of the N-k
  smallest set to 0), row-normalise, average over k.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

REFERENCE = "xrli-U/MuSc@b76b93d"


def lnamd_official(layer_tokens: list[torch.Tensor], r: int) -> list[torch.Tensor]:
    """``layer_tokens``: list over layers of ``Tensor[B, 1+L, C]`` (token 0 = CLS, dropped).

    Returns a list over layers of ``Tensor[B, L, C]`` float32: LN(C,H,W) + r x r mean (unfold +
    adaptive_avg_pool1d) + per-token L2 normalisation, in the official order.
    """
    B = layer_tokens[0].shape[0]
    normed = []
    for t in layer_tokens:
        t = t[:, 1:, :]
        side = int(math.sqrt(t.shape[1]))
        x = t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)
        ln = torch.nn.LayerNorm([x.shape[1], x.shape[2], x.shape[3]])
        with torch.no_grad():
            normed.append(ln(x))
    out_layers = []
    for x in normed:
        C = x.shape[1]
        if r != 1:
            pad = int((r - 1) / 2)
            unf = torch.nn.Unfold(kernel_size=r, stride=1, padding=pad, dilation=1)(x)  # (B, C*r*r, L)
            unf = unf.reshape(x.shape[0], C, r, r, -1).permute(0, 4, 1, 2, 3)  # (B, L, C, r, r)
        else:
            unf = x.reshape(x.shape[0], C, -1, 1, 1).permute(0, 2, 1, 3, 4)  # (B, L, C, 1, 1)
        flat = unf.reshape(-1, *unf.shape[-3:])  # (B*L, C, r, r)
        pooled = F.adaptive_avg_pool1d(flat.reshape(len(flat), 1, -1), C).squeeze(1)  # (B*L, C)
        out_layers.append(pooled)
    feats = torch.stack(out_layers, dim=1).reshape(B, -1, len(out_layers), out_layers[0].shape[-1])  # (B, L, layers, C)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    return [feats[:, :, l, :].contiguous() for l in range(feats.shape[2])]


def msm_official(Z: torch.Tensor, topmin_max: float = 0.3, query_index: list[int] | None = None) -> torch.Tensor:
    """``Z``: ``Tensor[N, L, C]`` float32. Returns ``Tensor[N, L]`` float64 (rows for ``query_index``
    only when given, in that order). The official per-query-image cdist loop."""
    N, L, C = Z.shape
    rows = []
    for i in query_index if query_index is not None else range(N):
        Z_ref = torch.cat((Z[:i], Z[i + 1 :]), dim=0)
        d = torch.cdist(Z[i : i + 1], Z_ref.reshape(-1, C)).reshape(L, N - 1, L)
        m = torch.min(d, -1)[0]  # (L, N-1)
        k_max = int(m.shape[1] * topmin_max)
        k_min = int(m.shape[1] * 0)
        vals, _ = torch.topk(m.float(), k_max, largest=False, sorted=True)
        vals, _ = torch.topk(vals.float(), k_max - k_min, largest=True, sorted=True)
        rows.append(torch.mean(vals, dim=1).unsqueeze(0).double())
        del d
    return torch.cat(rows, dim=0)


def rscin_official(scores_old, cls_tokens, k_list=(1, 2, 3)) -> np.ndarray:
    """``scores_old``: array [N] (float64); ``cls_tokens``: array/list [N, D]. Returns float32 numpy [N]."""
    if cls_tokens is None or 0 in k_list:
        return scores_old
    scores_old = np.asarray(scores_old)
    cls = np.array(cls_tokens)
    scores = (scores_old - scores_old.min()) / (scores_old.max() - scores_old.min())
    W = torch.tensor(cls @ cls.T).clone().float()
    s = torch.tensor(scores).clone().float()
    S_list = []
    for k in k_list:
        _, small = torch.topk(W.float(), W.shape[0] - k, largest=False, sorted=True)
        W_mask = W.clone()
        for i in range(W.shape[0]):
            W_mask[i, small[i]] = 0
        n = W.shape[-1]
        D_ = torch.zeros_like(W).float()
        for i in range(n):
            D_[i, i] = 1 / (W_mask[i, :].sum())
        P = D_ @ W_mask
        S_list.append(P @ s.clone().unsqueeze(-1))
    return torch.concat(S_list, -1).mean(-1).numpy()


def musc_official(
    layer_tokens: list[torch.Tensor],
    r_list=(1, 3, 5),
    image_size: int = 224,
    cls_features=None,
    k_list=(1, 2, 3),
    batch_size: int = 4,
    topmin_max: float = 0.3,
):
    """The whole official scoring path on precomputed tokens (one subset, ``divide_num=1``).

    ``layer_tokens``: list over layers of ``Tensor[N, 1+L, C]``. Returns ``(maps Tensor[N, S, S]
    float64, image_scores ndarray[N] float64 (max of the upsampled map), rscin ndarray[N] or None)``.
    """
    N = layer_tokens[0].shape[0]
    maps_r = []
    for r in r_list:
        Z_layers: dict[int, list[torch.Tensor]] = {}
        for b0 in range(0, N, batch_size):
            feats = lnamd_official([t[b0 : b0 + batch_size] for t in layer_tokens], r)
            for l, f in enumerate(feats):
                Z_layers.setdefault(l, []).append(f)
        maps_l = torch.stack([msm_official(torch.cat(Z_layers[l], 0), topmin_max) for l in Z_layers])
        maps_r.append(torch.mean(maps_l, 0))
    maps = torch.mean(torch.stack(maps_r), 0)  # (N, L) float64
    L = maps.shape[1]
    H = int(np.sqrt(L))
    up = F.interpolate(maps.view(N, 1, H, H), size=image_size, mode="bilinear", align_corners=True)[:, 0]
    ac = up.numpy().reshape(N, -1).max(-1)
    rs = None if cls_features is None else rscin_official(ac, cls_features, list(k_list))
    return up, ac, rs
