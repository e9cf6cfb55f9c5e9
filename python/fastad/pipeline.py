"""The run pipeline behind the ``fastad`` command and the demo: open a dataset (MVTec layout or a plain
folder), subsample it, resolve the device, build or load a detector, fit it (with a held-out calibration
split for the threshold), score a split into a report (heatmaps, ``scores.csv``, ``metrics.json``,
``index.html``) and time each stage.

Front ends (:mod:`fastad.cli`, :mod:`fastad.demo`) parse arguments and call these functions; user
errors are raised as :class:`UsageError` (the CLI prints them as one line with exit status 2).
"""
from __future__ import annotations

import inspect
import random
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from fastad._output import UsageError

#: the CLI's name for :class:`UsageError`
CLIError = UsageError


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


class Subset:
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
        return Subset(ds, sorted(keep))
    return Subset(ds, sorted(rng.sample(range(len(ds)), n)))


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


def has_labels(ds) -> bool:
    return hasattr(ds, "labels") and hasattr(ds, "defect_types")


# --------------------------------------------------------------------------------------- detectors


def weights_arg(w: str | None):
    if w is None or w == "default":
        return "default"
    if w in ("random", "none"):
        return None
    if not Path(w).is_file():
        raise CLIError(f"--weights {w!r}: no such file (use 'default', 'random' or a weights file)")
    return w


def detector_choices() -> tuple[str, ...]:
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
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise CLIError(f"--device {device!r}: not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {device!r}: fastad runs on cpu or cuda; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: no CUDA device is available (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s) "
                           f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def iter_batches(ds, batch_size: int, num_workers: int, progress):
    from fastad.data import batches

    return batches(ds, batch_size, num_workers=num_workers, progress=progress, ragged=True)  # one size per batch


def then_say(iterable, message: str):
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
    threshold: str = "quantile",
    val_ds=None,
):
    """Fit ``det`` on ``train_ds``; hold out ``calibration`` of the images (at least 2, or none when
    fewer than 10 images) to set ``threshold_`` at their ``quantile`` score (``threshold``:
    ``"quantile"`` or ``"quantile-corrected"``); ``"chi2"`` needs no held-out images, ``"f1"`` uses the
    labelled ``val_ds`` (see :mod:`fastad.thresholds`). Returns ``det``."""
    if not det.supports_threshold(threshold):  # before the fit, not after it
        raise CLIError(f"--threshold {threshold}: not available for {type(det).__name__} (chi2 needs a Gaussian detector, padim or gaussian, without --tile-fuse)")
    if threshold == "f1" and (val_ds is None or not has_labels(val_ds)):
        raise CLIError("--threshold f1 needs labelled validation images: --val DIR (an MVTec-layout folder)")
    n_scored = 0
    n = len(train_ds)
    fuse_cal = bool(getattr(det, "needs_fusion_calibration", lambda: False)())  # tiling fused with fuse_norm
    if fuse_cal and not (n >= 10 and calibration > 0):
        raise CLIError(f"--tile-fuse-norm: calibrating the fusion needs held-out normal images (--calibration > 0 and at "
                       f"least 10 training images; got --calibration {calibration:g}, {n} images)")
    if fuse_cal and getattr(det, "distributed", False):
        raise CLIError("--tile-fuse-norm zscore is not available with --distributed (use --tile-fuse-norm none)")
    n_cal = int(round(n * calibration)) if n >= 10 and calibration > 0 and (threshold.startswith("quantile") or fuse_cal) else 0
    if n_cal:
        n_cal = max(2, n_cal)
        rng = random.Random(seed + 1)
        cal_idx = sorted(rng.sample(range(n), n_cal))
        cal_set = set(cal_idx)
        fit_ds = Subset(train_ds, [i for i in range(n) if i not in cal_set])
        cal_ds = Subset(train_ds, cal_idx)
    else:
        fit_ds, cal_ds = train_ds, None
    n_fit = len(fit_ds)
    if getattr(det, "distributed", False):  # each rank fits on its contiguous share (rank order)
        import fastad.distributed as fd

        fit_ds = Subset(fit_ds, range(*fd.shard_range(n_fit)))
    was = getattr(det, "progress", None)
    if was is not None:  # our bars (over images) replace the detector's (over batches); PatchCore keeps
        det.progress = "coreset" if progress and hasattr(det, "coreset_ratio") else False  # its coreset bar
    try:
        with sw("fit"):
            feed = iter_batches(fit_ds, batch_size, num_workers, "fit: images" if progress else False)
            if progress:
                step = ("building the memory bank (coreset selection)" if hasattr(det, "coreset_ratio")
                        else "building the model")
                feed = then_say(feed, f"fit: features of {len(fit_ds)} images extracted; {step}...")
            det.fit(feed)
        for k, v in (getattr(det, "fit_timings_", None) or {}).items():
            if k != "total":
                sw.add(f"  fit/{k}", v)
        if cal_ds is not None and fuse_cal:  # the fusion's normal statistics first; its fused scores give the threshold
            with sw("calibrate fusion"):
                images = (b["image"] for b in iter_batches(cal_ds, batch_size, num_workers,
                                                           "fusion calibration: images" if progress else False))
                try:
                    scores = [det.calibrate_fusion(images)]
                except ValueError as e:
                    raise CLIError(f"--tile-fuse-norm: {e}") from None
            n_scored = int(scores[0].numel())
            if threshold.startswith("quantile"):
                det.set_threshold(normal_scores=scores[0], quantile=quantile, method=threshold)
        if cal_ds is not None and threshold.startswith("quantile") and not fuse_cal:
            with sw("threshold"):
                scores = []
                for b in iter_batches(cal_ds, batch_size, num_workers, "threshold: images" if progress else False):
                    scores.append(det.decision_function(b["image"]))
                import torch

                n_scored = sum(int(s.numel()) for s in scores)
                if n_scored:  # images that failed to decode are neither scored nor counted
                    det.set_threshold(normal_scores=torch.cat(scores), quantile=quantile, method=threshold)
                else:
                    warnings.warn("no held-out image could be read: the threshold is not set", stacklevel=2)
        if threshold == "chi2":
            det.set_threshold(method="chi2", quantile=quantile)
        if threshold == "f1":
            import torch

            with sw("threshold"):
                vs, vl = [], []
                for b in iter_batches(val_ds, batch_size, num_workers, "threshold: images" if progress else False):
                    vs.append(det.decision_function(b["image"]))
                    vl.append(b["label"])
                det.set_threshold(method="f1", validation_scores=torch.cat(vs), labels=torch.cat(vl))
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


def data_root(ds):
    """The folder the images of ``ds`` were read from (through :class:`Subset`), or None: the report
    shows every path relative to it."""
    while ds is not None:
        root = getattr(ds, "root", None)
        if root is not None:
            return root
        ds = getattr(ds, "ds", None)
    return None


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

    labelled = has_labels(ds)
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
        threshold_info=getattr(det, "threshold_info_", None), data_root=data_root(ds),
        resize=resize, mean=mean, std=std, cmap=cmap, progress=progress,
    )
    try:
        return _score_into(det, ds, writer, sw=sw, evaluate=evaluate, labelled=labelled, batch_size=batch_size,
                           num_workers=num_workers, progress=progress, info=info)
    except BaseException:
        writer.abort()  # a failed or interrupted run leaves no partial report (an earlier one stays whole)
        raise


def _score_into(det, ds, writer, *, sw, evaluate, labelled, batch_size, num_workers, progress, info) -> dict:
    ev = Evaluator(pixel=evaluate) if labelled else None
    was = getattr(det, "progress", None)
    if was is not None:
        det.progress = False  # one bar over the images instead of one per batch
    n_scored = 0
    try:
        it = iter(iter_batches(ds, batch_size, num_workers, "predict: images" if progress else False))
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
            from fastad.data import unpad_batch

            for b, scores, maps in unpad_batch(b, scores, maps):  # --resize pad: one image at a time, unpadded
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


def print_report(doc: dict, sw: Stopwatch) -> None:
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


def size_text(size) -> str:
    return "x".join(str(int(v)) for v in (size if isinstance(size, (tuple, list)) else (size, size)))


def threshold_text(det) -> str:
    i = getattr(det, "threshold_info_", None) or {}
    m, n = i.get("method", "given"), i.get("n_images")
    if m == "chi2":
        return f"{det.threshold_:.4f} (chi2: the {i['quantile']:g} quantile under the fitted Gaussian model)"
    if m == "f1":
        return f"{det.threshold_:.4f} (f1: best F1 {i.get('f1', float('nan')):.3f} on {n} labelled validation images)"
    if m.startswith("quantile"):
        return f"{det.threshold_:.4f} ({m}: the {i['quantile']:g} quantile of {n} held-out normal images)"
    return f"{det.threshold_:.4f}"


def geometry_info(det) -> dict:
    """Report lines: the threshold method and the tiling of a fitted model."""
    out = {}
    if getattr(det, "threshold_", None) is not None:
        out["threshold"] = threshold_text(det)
    t = getattr(det, "tiling_", None)
    if t:
        out["tiling"] = (f"{size_text(t['tile_size'])} px tiles, overlap {t['overlap']:g}, scale {t.get('scale', 1.0):g}, "
                         f"small images {t.get('small', 'pad')}, blur per {t.get('blur', 'tile')} "
                         "(maps stitched, overlaps averaged)")
        fz = t.get("fuse")
        if fz:
            norm = fz.get("norm", "none")
            how = "" if norm == "none" else (f", each z-normalised on {fz.get('stats', {}).get('n_images', '?')} "
                                             "held-out normal images")
            out["tiling"] += (f"; fused with a global {size_text(fz['size'])} model's map "
                              f"(weight {fz['weight']:g} global, {1 - fz['weight']:g} tiled{how})")
    return out


class PrecomputedScores:
    """What :func:`score_to_report` needs of a detector, for images already scored (MuSc, or
    ``--distributed``): hands out the scores and maps in dataset order; ``mean`` / ``std``: the images'
    normalisation (default: images in [0, 1])."""

    def __init__(self, scores, maps, threshold=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), threshold_info=None):
        import types

        self._scores, self._maps, self._i = scores.detach().cpu(), maps.detach().cpu(), 0
        self.threshold_ = threshold
        self.threshold_info_ = threshold_info  # how the threshold was set (the report states it)
        self._backbone_obj = types.SimpleNamespace(mean=mean, std=std)  # the images' normalisation (report)

    def score(self, images):
        i, n = self._i, images.shape[0]
        if i + n > self._scores.numel():
            raise RuntimeError("zeroshot: more images than were scored")
        self._i += n
        maps = self._maps[i : i + n]
        if tuple(maps.shape[-2:]) != tuple(images.shape[-2:]):  # non-square input: MuSc scored a square
            import torch.nn.functional as F

            maps = F.interpolate(maps[:, None], size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        return self._scores[i : i + n], maps
