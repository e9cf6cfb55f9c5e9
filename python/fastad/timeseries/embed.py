"""Window embedders: ``Tensor[W, length, C]`` windows -> ``Tensor[W, D]`` embeddings.

- :class:`RawWindows` (the default): the (z-normalised) window values themselves, ``D = length * C``.
  Why the default: it needs no weights and no fitting, it is exactly what PyOD's LOF/KNN see in the
  anchor comparison, and on z-normalised windows Euclidean distance is the classic shape distance of
  discord-style detectors.
- :class:`MiniRocket`: seeded random convolutional features in the MiniRocket style (Dempster et
  al. 2021): the 84 length-9 kernels with weights {-1, 2}, exponentially spaced dilations, biases
  drawn from quantiles of each kernel's response on the windows, and PPV (proportion of positive
  values) pooling; multichannel windows sum each kernel over a seeded random subset of channels.
  Offline, no weights; fitted (biases) on the windows it embeds, i.e. unsupervised.
- :class:`Chronos`: the encoder of a Chronos model (THEMIS' choice) through the
  ``chronos-forecasting`` package, from a **local** model folder only (nothing is downloaded);
  mean-pooled over the window's tokens, channels embedded one by one and concatenated.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["RawWindows", "MiniRocket", "Chronos", "get_embedder"]


def _check_w(w, who: str) -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.shape[0] < 1:
        raise ValueError(f"{who}: windows must be Tensor[W, length, C], got "
                         f"{list(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    return w


class RawWindows:
    """The windows themselves, flattened time-major: ``[W, length, C] -> [W, length * C]``."""

    name = "raw"

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        w = _check_w(w, "RawWindows")
        return w.reshape(w.shape[0], -1).contiguous()


class MiniRocket:
    """MiniRocket-style random convolutional features (seeded; see the module docstring).

    Args:
        num_features: about this many features (rounded to 84 x dilations x quantiles).
        max_dilations: dilations per kernel (exponentially spaced up to ``(length - 1) / 8``).
        seed: fixes the bias quantiles, the window sample for biases and the channel subsets.
        fit_windows: at most this many windows (seeded sample) set the biases.
        batch: windows convolved at once (bounds memory to ~``batch * C * 84 * length`` floats).
    """

    name = "minirocket"

    def __init__(self, num_features: int = 840, max_dilations: int = 5, seed: int = 0, fit_windows: int = 512,
                 batch: int = 256):
        if not (isinstance(num_features, int) and num_features >= 84):
            raise ValueError(f"MiniRocket: num_features must be an int >= 84, got {num_features!r}")
        self.num_features, self.max_dilations, self.seed = num_features, max_dilations, seed
        self.fit_windows, self.batch = fit_windows, batch
        pos = torch.tensor(list(itertools.combinations(range(9), 3)))  # [84, 3]
        k = -torch.ones(84, 9)
        k.scatter_(1, pos, 2.0)
        self.kernels = k[:, None, :]  # [84, 1, 9]

    def _conv(self, w: torch.Tensor, d: int, chan: torch.Tensor) -> torch.Tensor:
        """``[B, 84, L]`` responses: each kernel summed over its channel subset ``chan: [84, C]``."""
        B, L, C = w.shape
        x = w.permute(0, 2, 1).reshape(B * C, 1, L)
        y = F.conv1d(x, self.kernels.to(x.dtype), padding=4 * d, dilation=d)  # [B*C, 84, L]
        y = y.view(B, C, 84, L)
        return torch.einsum("bckl,kc->bkl", y, chan.to(y.dtype))

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        w = _check_w(w, "MiniRocket").float()
        W, L, C = w.shape
        if L < 9:
            raise ValueError(f"MiniRocket: windows must be at least 9 steps long, got length={L}")
        g = torch.Generator().manual_seed(self.seed)
        top = max(0.0, math.log2((L - 1) / 8))
        dil = sorted({int(2 ** x) for x in torch.linspace(0, top, self.max_dilations).tolist()})
        nq = max(1, round(self.num_features / (84 * len(dil))))
        quant = torch.rand(len(dil), 84, nq, generator=g)  # quantile levels of the biases
        chan = torch.zeros(len(dil), 84, C)
        for i in range(len(dil)):
            for j in range(84):
                n = int(torch.randint(1, C + 1, (1,), generator=g)) if C > 1 else 1
                chan[i, j, torch.randperm(C, generator=g)[:n]] = 1.0
        fit = w[torch.randperm(W, generator=g)[: self.fit_windows]]
        biases = []
        for i, d in enumerate(dil):
            r = self._conv(fit, d, chan[i])  # [F, 84, L]
            rs = r.permute(1, 0, 2).reshape(84, -1).sort(1).values
            biases.append(rs.gather(1, (quant[i] * (rs.shape[1] - 1)).round().long()))  # [84, nq] per-kernel quantiles
        out = torch.empty(W, len(dil) * 84 * nq)
        for s in range(0, W, self.batch):
            b = w[s : s + self.batch]
            feats = [(self._conv(b, d, chan[i])[..., None] > biases[i][None, :, None, :]).float().mean(2).reshape(b.shape[0], -1)
                     for i, d in enumerate(dil)]
            out[s : s + b.shape[0]] = torch.cat(feats, 1)
        return out


class Chronos:
    """Chronos encoder embeddings (``chronos-forecasting``) from a local folder ``path``.

    Mean-pooled encoder output per window and channel, channels concatenated: ``D = d_model * C``.
    Nothing is downloaded: ``path`` must be a folder holding the model (config.json and weights).
    """

    name = "chronos"

    def __init__(self, path, device: str = "cpu", batch: int = 64):
        p = Path(path)
        if not (p.is_dir() and (p / "config.json").is_file()):
            raise FileNotFoundError(f"Chronos: path={str(path)!r} must be a local Chronos model folder with config.json "
                                    "(no download is attempted)")
        try:
            import chronos
        except ImportError:
            raise ImportError("Chronos: needs the chronos-forecasting package (pip install chronos-forecasting)") from None
        cls = getattr(chronos, "BaseChronosPipeline", None) or chronos.ChronosPipeline  # picks Chronos / Bolt from config
        self.pipe = cls.from_pretrained(str(p), device_map=device, local_files_only=True)
        if not hasattr(self.pipe, "embed"):
            raise ValueError(f"Chronos: the pipeline for {p} ({type(self.pipe).__name__}) has no embed(); use a Chronos (T5) model")
        self.batch = batch

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        w = _check_w(w, "Chronos")
        W, L, C = w.shape
        per_channel = []
        for c in range(C):
            chunks = []
            for s in range(0, W, self.batch):
                emb, _ = self.pipe.embed(w[s : s + self.batch, :, c].float().cpu())
                chunks.append(emb.float().mean(1))
            per_channel.append(torch.cat(chunks))
        return torch.cat(per_channel, 1)


def get_embedder(embedder):
    """``"raw"`` / ``"minirocket"`` / an embedder object (anything callable on ``[W, length, C]``)."""
    if embedder is None or embedder == "raw":
        return RawWindows()
    if embedder == "minirocket":
        return MiniRocket()
    if isinstance(embedder, str):
        raise ValueError(f"embedder must be 'raw', 'minirocket' or an embedder object (e.g. Chronos(path)), got {embedder!r}")
    if not callable(embedder):
        raise TypeError(f"embedder must be callable on Tensor[W, length, C], got {type(embedder).__name__}")
    return embedder
