"""Reports of an anomaly-detection run: heatmap overlays (PNG), ``scores.csv``, ``metrics.json`` and a
self-contained ``index.html``.

Nothing here needs matplotlib: colour maps are 256-entry lookup tables built with numpy, images are
written with Pillow.

Layout of a report folder::

    index.html          metrics, timings, the most anomalous images (input | heatmap | mask)
    metrics.json        every number of the run (metrics, timings, counts, settings)
    scores.csv          path, defect_type, label, score, predicted, heatmap
    colorbar.png        the colour scale of every heatmap, with its score range in index.html
    heatmaps/<i>_<name>.png   one overlay per image (the heatmap blended over the image; the ground
                              truth outline drawn in white where a mask is known)
    images/<i>_<name>_input.png, images/<i>_<name>_mask.png   inputs and masks of the images shown

Heatmaps of one report share ONE colour scale (so a pale heatmap means a normal-looking image, not
an image whose own maximum was stretched to red): the scale runs from the median to the 99.9th
percentile of the pixel scores of the whole run, estimated on a fixed-size random sample.

Use :class:`ReportWriter` to stream images in (``add`` per batch, ``finish`` once); maps are spooled
to a temporary file in the report folder as float16 so memory stays bounded.
"""
from __future__ import annotations

import csv
import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ._output import ReportDir, check_report_dir

__all__ = ["COLORMAPS", "colormap", "overlay", "to_uint8_image", "mask_outline", "ReportWriter", "METRIC_NAMES"]

# --------------------------------------------------------------------------------------- colour maps


def _jet_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return np.round(np.stack([r, g, b], axis=1) * 255).astype(np.uint8)


def _anchors_lut(anchors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    a = np.asarray(anchors, dtype=np.float64)
    xp = np.linspace(0.0, 1.0, len(a))
    x = np.linspace(0.0, 1.0, 256)
    return np.round(np.stack([np.interp(x, xp, a[:, c]) for c in range(3)], axis=1)).astype(np.uint8)


# A perceptually ordered black -> purple -> red -> orange -> pale yellow ramp (inferno-like).
_INFERNO_ANCHORS = [
    (0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
    (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164),
]

#: Available colour maps: name -> ``uint8 [256, 3]`` lookup table (index 0 = lowest score).
COLORMAPS: dict[str, np.ndarray] = {"jet": _jet_lut(), "inferno": _anchors_lut(_INFERNO_ANCHORS)}


def colormap(values: np.ndarray, name: str = "jet", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map scores to colours.

    Args:
        values: float array of any shape ``[...]``; NaN is drawn as the lowest colour.
        name: a key of :data:`COLORMAPS`.
        vmin, vmax: score range mapped to the ends of the colour map (default: min and max of ``values``).

    Returns:
        ``uint8 [..., 3]`` RGB.

    Example:
        >>> colormap(np.array([0.0, 1.0]), "jet").tolist()
        [[0, 0, 128], [128, 0, 0]]
    """
    if name not in COLORMAPS:
        raise ValueError(f"colormap: unknown colour map {name!r}; available: {sorted(COLORMAPS)}")
    v = np.asarray(values, dtype=np.float64)
    return COLORMAPS[name][_to_index(v, vmin, vmax)]


def _to_index(v: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    finite = v[np.isfinite(v)]
    lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else float(vmin))
    hi = float(finite.max()) if vmax is None and finite.size else (1.0 if vmax is None else float(vmax))
    span = hi - lo if hi > lo else 1.0
    t = np.nan_to_num((v - lo) / span, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.round(t * 255.0), 0, 255).astype(np.intp)


def to_uint8_image(image, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """A displayable ``uint8 [H, W, 3]`` array from a ``Tensor/ndarray [3, H, W]`` normalised image
    (``x * std + mean``, values in [0, 1] after that), an ``[H, W]`` grey or an ``[H, W, 3]`` array."""
    a = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    a = a.astype(np.float32)
    if std is not None:
        a = a * np.asarray(std, dtype=np.float32)
    if mean is not None:
        a = a + np.asarray(mean, dtype=np.float32)
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """``bool [H, W]``: pixels of ``mask`` that touch a pixel outside it (4-neighbourhood), grown to
    ``width`` pixels."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros_like(m)
    p = np.pad(m, 1, mode="edge")
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    edge = m & ~interior
    for _ in range(max(0, width - 1)):
        q = np.pad(edge, 1)
        edge = edge | q[:-2, 1:-1] | q[2:, 1:-1] | q[1:-1, :-2] | q[1:-1, 2:]
    return edge


def _resize_map(m: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    if (m.shape[1], m.shape[0]) == tuple(size_wh):
        return m.astype(np.float32, copy=False)
    im = Image.fromarray(np.ascontiguousarray(m, dtype=np.float32), mode="F")
    return np.asarray(im.resize(size_wh, Image.Resampling.BILINEAR), dtype=np.float32)


def _resize_mask(m: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    if (m.shape[1], m.shape[0]) == tuple(size_wh):
        return m.astype(bool, copy=False)
    im = Image.fromarray(np.asarray(m, dtype=np.uint8) * 255, mode="L")
    return np.asarray(im.resize(size_wh, Image.Resampling.NEAREST)) > 127


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    cmap: str = "jet",
    alpha: tuple[float, float] = (0.15, 0.7),
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a heatmap over an image.

    Args:
        image: ``uint8 [H, W, 3]``.
        heat: float ``[h, w]`` scores; resized (bilinear) to ``[H, W]`` when the sizes differ.
        vmin, vmax: score range of the colour map (scores outside are clipped).
        cmap: colour map name.
        alpha: opacity of the colour at the lowest and the highest score (linear in between), so
            that normal regions keep the image visible and anomalous ones are clearly coloured.
        mask: optional ``bool [h', w']`` ground truth; its outline is drawn in white.

    Returns:
        ``uint8 [H, W, 3]``.
    """
    img = np.asarray(image, dtype=np.uint8)
    H, W = img.shape[:2]
    h = _resize_map(np.asarray(heat, dtype=np.float32), (W, H))
    idx = _to_index(h, vmin, vmax)
    col = COLORMAPS[cmap][idx].astype(np.float32)
    a = (alpha[0] + (alpha[1] - alpha[0]) * (idx.astype(np.float32) / 255.0))[:, :, None]
    out = img.astype(np.float32) * (1.0 - a) + col * a
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if mask is not None:
        edge = mask_outline(_resize_mask(np.asarray(mask), (W, H)), width=max(1, round(max(H, W) / 200)))
        out[edge] = 255
    return out


def _colorbar(cmap: str, width: int = 256, height: int = 14) -> np.ndarray:
    row = COLORMAPS[cmap][np.linspace(0, 255, width).round().astype(np.intp)]
    return np.repeat(row[None], height, axis=0)


# --------------------------------------------------------------------------------------- the writer


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return html.escape(str(v))
        return f"{v:.{digits}f}" if abs(v) < 1e5 else f"{v:.4g}"
    return html.escape(str(v))


def _slug(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return (s or "image")[-limit:]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if hasattr(x, "item") and hasattr(x, "numel") and x.numel() == 1:
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class ReportWriter:
    """Streams scored images into a report folder (see the module docstring for its layout).

    Args:
        out_dir: the report folder, or a :class:`fastad._output.ReportDir` already checked by
            :func:`fastad._output.check_report_dir` (the CLI checks it before any work). A missing or
            empty folder, or an earlier fastad report (its ``.fastad-report.json`` manifest), is
            fine: only the files of the earlier report are replaced or removed. A non-empty folder
            that is not a fastad report is refused (``UsageError``) unless ``overwrite=True``, which
            adds the report next to the files there; fastad never overwrites or deletes a file it
            did not write.
        title: heading of ``index.html``.
        cmap: colour map of the heatmaps (``"jet"`` or ``"inferno"``).
        top_k: how many of the most anomalous images ``index.html`` shows (plus, when labels are
            known, the lowest-scoring defective images and the highest-scoring normal ones).
        heatmaps: ``"all"`` writes an overlay PNG for every image; an int writes them only for the
            ``heatmaps`` highest-scoring images (plus those shown in ``index.html``).
        display_size: longest side, in pixels, of the PNGs written.
        resize: how the model saw the image (``"squash"``, ``"shorter_crop"`` or ``"none"``), so
            that the map is laid over the right part of the original image.
        mean, std: normalisation of the image tensors, used only for images given as tensors
            without a readable file.
        threshold: image-score threshold of the detector (``predicted = score > threshold``), or None.
        sample_pixels: size of the random sample of pixel scores that sets the colour scale.
        seed: seed of that sample.
        progress: show a progress bar while the images are written.

    Example:
        >>> w = ReportWriter("reports/run")                                         # doctest: +SKIP
        >>> w.add(paths=b["path"], scores=s, maps=m, labels=b["label"], masks=b["mask"])  # doctest: +SKIP
        >>> w.finish(metrics={"image_auroc": 0.97}, timings={"predict": 3.2})     # doctest: +SKIP
    """

    def __init__(
        self,
        out_dir,
        *,
        title: str = "fastad report",
        cmap: str = "jet",
        top_k: int = 24,
        heatmaps="all",
        display_size: int = 256,
        resize: str = "squash",
        mean: Sequence[float] | None = (0.485, 0.456, 0.406),
        std: Sequence[float] | None = (0.229, 0.224, 0.225),
        threshold: float | None = None,
        sample_pixels: int = 1 << 20,
        seed: int = 0,
        progress: bool = True,
        overwrite: bool = False,
    ):
        if cmap not in COLORMAPS:
            raise ValueError(f"ReportWriter: unknown colour map {cmap!r}; available: {sorted(COLORMAPS)}")
        if not (heatmaps == "all" or (isinstance(heatmaps, int) and heatmaps >= 0)):
            raise ValueError(f"ReportWriter: heatmaps must be 'all' or an int >= 0, got {heatmaps!r}")
        self._dir = out_dir if isinstance(out_dir, ReportDir) else check_report_dir(out_dir, overwrite)
        self.out_dir = self._dir.path
        self.title = title
        self.cmap = cmap
        self.top_k = int(top_k)
        self.heatmaps = heatmaps
        self.display_size = int(display_size)
        self.resize = resize
        self.mean, self.std = mean, std
        self.threshold = threshold
        self.progress = progress
        self._rng = np.random.default_rng(seed)
        self._sample_cap = int(sample_pixels)
        self._samples: list[np.ndarray] = []
        self._n_sampled = 0
        self._max = -math.inf
        self._rows: list[dict] = []
        self._spool = self._dir.spool()  # an unnamed temporary file: nothing is left behind
        self._finished = False
        self.document: dict | None = None

    # ---------------------------------------------------------------- input
    def add(
        self,
        *,
        paths: Sequence[str],
        scores,
        maps=None,
        labels=None,
        defect_types: Sequence[str] | None = None,
        masks=None,
        has_mask=None,
        images=None,
    ) -> None:
        """Add one batch of ``B`` scored images.

        Args:
            paths: B image paths (the original file is shown when it can be read).
            scores: ``Tensor/array [B]`` image scores (higher = more anomalous).
            maps: optional ``[B, H, W]`` pixel scores (at the model's input size).
            labels: optional ``[B]`` ints (0 normal, 1 anomalous).
            defect_types: optional B strings.
            masks: optional ``bool [B, H, W]`` ground truth; ``has_mask`` ``[B]`` says which are known
                (default: every mask given is known).
            images: optional ``[B, 3, H, W]`` normalised inputs, used when a file cannot be read.
        """
        if self._finished:
            raise RuntimeError("ReportWriter.add: the report is already finished")
        s = _np(scores).astype(np.float64).reshape(-1)
        B = len(paths)
        if s.shape[0] != B:
            raise ValueError(f"ReportWriter.add: {B} paths but {s.shape[0]} scores")
        mp = None if maps is None else _np(maps).astype(np.float32)
        if mp is not None and (mp.ndim != 3 or mp.shape[0] != B):
            raise ValueError(f"ReportWriter.add: maps must be [B={B}, H, W], got {tuple(mp.shape)}")
        lb = None if labels is None else _np(labels).astype(np.int64).reshape(-1)
        mk = None if masks is None else _np(masks).astype(bool)
        hm = None if has_mask is None else _np(has_mask).astype(bool).reshape(-1)
        imgs = None if images is None else images
        for i in range(B):
            row = {
                "index": len(self._rows),
                "path": str(paths[i]),
                "defect_type": None if defect_types is None else str(defect_types[i]),
                "label": None if lb is None else int(lb[i]),
                "score": float(s[i]),
                "map": None,
                "mask": None,
                "image": None,
            }
            if mp is not None:
                m = np.ascontiguousarray(mp[i], dtype=np.float16)
                row["map"] = (self._spool.tell(), m.shape)
                self._spool.write(m.tobytes())
                self._sample(mp[i])
            if mk is not None and (hm is None or hm[i]):
                row["mask"] = np.packbits(mk[i], axis=None), mk[i].shape
            if imgs is not None:
                row["image"] = imgs[i]
            self._rows.append(row)

    def _sample(self, m: np.ndarray) -> None:
        flat = m.reshape(-1)
        fin = flat[np.isfinite(flat)]
        if fin.size:
            self._max = max(self._max, float(fin.max()))
        per = max(1, min(fin.size, 4096))
        if fin.size:
            self._samples.append(fin[self._rng.integers(0, fin.size, per)].astype(np.float32))
            self._n_sampled += per
        while self._n_sampled > self._sample_cap and len(self._samples) > 1:
            # keep the sample bounded: halve every stored chunk
            self._samples = [c[::2] for c in self._samples]
            self._n_sampled = sum(c.size for c in self._samples)

    def _read_map(self, row) -> np.ndarray | None:
        if row["map"] is None:
            return None
        off, shape = row["map"]
        self._spool.seek(off)
        n = int(np.prod(shape))
        return np.frombuffer(self._spool.read(2 * n), dtype=np.float16).reshape(shape).astype(np.float32)

    @staticmethod
    def _mask_of(row) -> np.ndarray | None:
        if row["mask"] is None:
            return None
        bits, shape = row["mask"]
        return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)

    # ---------------------------------------------------------------- output
    def color_range(self) -> tuple[float, float]:
        """(vmin, vmax) of the heatmaps: median and 99.9th percentile of the sampled pixel scores."""
        if not self._samples:
            return 0.0, 1.0
        allv = np.concatenate(self._samples)
        lo, hi = (float(x) for x in np.quantile(allv, [0.5, 0.999]))
        if not hi > lo:
            hi = max(self._max, lo + 1e-6)
        return lo, hi

    def _display_image(self, row, model_hw) -> np.ndarray:
        """The original image (cropped like the model saw it), longest side = display_size."""
        arr = None
        try:
            with Image.open(row["path"]) as im:
                im = im.convert("RGB")
                if self.resize == "shorter_crop" and model_hw is not None:
                    th, tw = model_hw
                    W, H = im.size
                    s = min(W / tw, H / th)
                    cw, ch = tw * s, th * s
                    left, top = (W - cw) / 2, (H - ch) / 2
                    im = im.crop((round(left), round(top), round(left + cw), round(top + ch)))
                # "squash": the model saw the whole image squashed; show it with its own aspect ratio
                W, H = im.size
                scale = self.display_size / max(W, H)
                im = im.resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError):
            arr = None
        if arr is None and row["image"] is not None:
            arr = to_uint8_image(row["image"], self.mean, self.std)
            im = Image.fromarray(arr)
            W, H = im.size
            scale = self.display_size / max(W, H)
            arr = np.asarray(im.resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.Resampling.BILINEAR))
        if arr is None:
            h, w = model_hw if model_hw is not None else (self.display_size, self.display_size)
            scale = self.display_size / max(h, w)
            arr = np.full((max(1, round(h * scale)), max(1, round(w * scale)), 3), 128, np.uint8)
        return arr

    def finish(
        self,
        metrics: dict | None = None,
        timings: dict | None = None,
        info: dict | None = None,
        per_type: dict | None = None,
    ) -> Path:
        """Write ``heatmaps/``, ``images/``, ``scores.csv``, ``metrics.json``, ``index.html``.

        Args:
            metrics: name -> number (e.g. ``image_auroc``); shown in the metrics table.
            timings: stage -> seconds (or -> dict with ``wall_s`` / ``cpu_s``).
            info: settings of the run (detector, backbone, data, ...), shown and saved.
            per_type: defect type -> dict of numbers (e.g. count, mean score, AUROC against good).

        Returns:
            The path of ``index.html``.
        """
        if self._finished:
            raise RuntimeError("ReportWriter.finish: called twice")
        self._finished = True
        try:
            return self._write(metrics or {}, timings or {}, info or {}, per_type or {})
        finally:
            self._spool.close()

    def write_metrics(self, doc: dict) -> Path:
        """Rewrite ``metrics.json`` of a finished report with ``doc`` (e.g. final timings)."""
        if not self._finished:
            raise RuntimeError("ReportWriter.write_metrics: call finish() first")
        with self._dir.open("metrics.json", "w") as f:
            json.dump(_jsonable(doc), f, indent=2, allow_nan=False)
        self._dir.finish()
        return self.out_dir / "metrics.json"

    def _write(self, metrics, timings, info, per_type) -> Path:
        from tqdm.auto import tqdm

        rows = self._rows
        has_labels = any(r["label"] is not None for r in rows)
        order = sorted(range(len(rows)), key=lambda i: -rows[i]["score"] if math.isfinite(rows[i]["score"]) else math.inf)
        shown: dict[str, list[int]] = {"Most anomalous images": order[: self.top_k]}
        if has_labels:
            k2 = max(1, self.top_k // 3)
            defect = [i for i in reversed(order) if rows[i]["label"] == 1][:k2]
            good = [i for i in order if rows[i]["label"] == 0][:k2]
            if defect:
                shown["Defective images with the lowest scores (misses)"] = defect
            if good:
                shown["Normal images with the highest scores (false alarms)"] = good
        shown_set = {i for v in shown.values() for i in v}
        if self.heatmaps == "all":
            want_heat = set(range(len(rows)))
        else:
            want_heat = set(order[: self.heatmaps]) | shown_set
        vmin, vmax = self.color_range()
        any_map = any(r["map"] is not None for r in rows)
        any_mask = any(r["mask"] is not None and r["label"] != 0 for r in rows)

        todo = sorted(want_heat | shown_set)
        stems = {i: f"{i:05d}_{_slug(Path(rows[i]['path']).stem)}" for i in todo}
        planned = ["scores.csv", "metrics.json", "index.html"] + (["colorbar.png"] if any_map else [])
        for i in todo:
            if rows[i]["map"] is not None:
                planned.append(f"heatmaps/{stems[i]}.png")
            if i in shown_set:
                planned.append(f"images/{stems[i]}_input.png")
                if rows[i]["mask"] is not None:
                    planned.append(f"images/{stems[i]}_mask.png")
        self._dir.plan(planned)  # checked and recorded in the manifest before the first byte is written

        for i in tqdm(todo, desc="report", unit="img", leave=False, disable=not (self.progress and todo)):
            r = rows[i]
            m = self._read_map(r)
            mask = self._mask_of(r)
            if m is None and i not in shown_set:
                continue
            model_hw = m.shape if m is not None else (mask.shape if mask is not None else None)
            img = self._display_image(r, model_hw)
            stem = stems[i]
            if m is not None:
                ov = overlay(img, m, vmin=vmin, vmax=vmax, cmap=self.cmap, mask=mask)
                r["heatmap"] = f"heatmaps/{stem}.png"
                self._save_png(r["heatmap"], ov, optimize=False, compress_level=3)
            if i in shown_set:
                r["display_wh"] = (int(img.shape[1]), int(img.shape[0]))
                r["input_png"] = f"images/{stem}_input.png"
                self._save_png(r["input_png"], img, compress_level=3)
                if mask is not None:
                    mimg = _resize_mask(mask, (img.shape[1], img.shape[0]))
                    r["mask_png"] = f"images/{stem}_mask.png"
                    self._save_png(r["mask_png"], mimg.astype(np.uint8) * 255)

        if any_map:
            self._save_png("colorbar.png", _colorbar(self.cmap))

        # scores.csv
        with self._dir.open("scores.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "defect_type", "label", "score", "predicted", "heatmap"])
            for r in rows:
                pred = "" if self.threshold is None else int(r["score"] > self.threshold)
                w.writerow([
                    r["path"],
                    "" if r["defect_type"] is None else r["defect_type"],
                    "" if r["label"] is None else r["label"],
                    repr(r["score"]),
                    pred,
                    r.get("heatmap", ""),
                ])

        scores = np.array([r["score"] for r in rows], dtype=np.float64)
        summary = {
            "n_images": len(rows),
            "n_anomalous": sum(1 for r in rows if r["label"] == 1) if has_labels else None,
            "n_anomalous_with_mask": sum(1 for r in rows if r["mask"] is not None and r["label"] == 1)
            if has_labels else None,
            "score_min": float(scores.min()) if rows else None,
            "score_median": float(np.median(scores)) if rows else None,
            "score_max": float(scores.max()) if rows else None,
            "threshold": self.threshold,
            "n_predicted_anomalous": int((scores > self.threshold).sum()) if self.threshold is not None else None,
            "heatmap_range": [vmin, vmax] if any_map else None,
        }
        doc = {
            "metrics": metrics,
            "per_type": per_type,
            "timings": timings,
            "summary": summary,
            "info": info,
        }
        self.document = _jsonable(doc)
        with self._dir.open("metrics.json", "w") as f:
            json.dump(self.document, f, indent=2, allow_nan=False)

        page = self._html(metrics, timings, info, per_type, summary, shown, any_map, any_mask, (vmin, vmax))
        with self._dir.open("index.html", "w") as f:
            f.write(page)
        self._dir.finish()  # the earlier report's files not rewritten now are removed; final manifest
        return self.out_dir / "index.html"

    def _save_png(self, rel: str, arr: np.ndarray, **kw) -> None:
        with self._dir.path_for(rel) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG", **kw)

    # ---------------------------------------------------------------- HTML
    def _html(self, metrics, timings, info, per_type, summary, shown, any_map, any_mask, vrange) -> str:
        e = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(self.title)}</title>",
            "<style>",
            "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}",
            "h1{font-size:1.5em;margin:0 0 4px}h2{font-size:1.15em;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}",
            "table{border-collapse:collapse;margin:4px 0;font-size:.92em;background:#fff}",
            "td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}th{background:#f0f0f0}",
            "td.n{text-align:right;font-variant-numeric:tabular-nums}",
            ".tables{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}",
            ".cards{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}",
            ".card{padding:8px;background:#fff;border:1px solid #ddd;border-radius:4px;display:flex;flex-direction:column}",
            ".card img{display:block;max-width:256px;height:auto;image-rendering:auto}",
            ".row{display:flex;gap:6px}.row figure{margin:0}.row figcaption{font-size:.75em;color:#666;text-align:center}",
            ".cap{font-size:.82em;margin-top:4px;overflow-wrap:anywhere}",
            ".bad{color:#b00020;font-weight:600}.ok{color:#1b6e20;font-weight:600}.muted{color:#777}",
            ".legend{display:flex;align-items:center;gap:8px;font-size:.85em}",
            "</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        if info:
            parts.append('<p class="muted">' + " &middot; ".join(f"{e(str(k))}: {_fmt(v)}" for k, v in info.items()) + "</p>")

        parts.append('<div class="tables">')
        # metrics table
        parts.append("<div><h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>")
        if metrics:
            for k, v in metrics.items():
                parts.append(f"<tr><td>{e(_METRIC_NAMES.get(k, k))}</td><td class='n'>{_fmt(v)}</td></tr>")
        else:
            parts.append("<tr><td colspan=2 class='muted'>no ground truth: scores only</td></tr>")
        parts.append("</table>")
        s = summary
        parts.append("<table><tr><th>images</th><th>value</th></tr>")
        for k, label in (
            ("n_images", "images scored"),
            ("n_anomalous", "anomalous (ground truth)"),
            ("n_anomalous_with_mask", "anomalous with a mask"),
            ("score_min", "score min"),
            ("score_median", "score median"),
            ("score_max", "score max"),
            ("threshold", "threshold"),
            ("n_predicted_anomalous", "predicted anomalous"),
        ):
            if s.get(k) is not None:
                parts.append(f"<tr><td>{e(label)}</td><td class='n'>{_fmt(s[k])}</td></tr>")
        parts.append("</table></div>")
        # timings
        if timings:
            parts.append("<div><h2>Timings</h2><table><tr><th>stage</th><th>wall s</th><th>CPU s</th></tr>")
            for k, v in timings.items():
                if isinstance(v, dict):
                    w, c = v.get("wall_s"), v.get("cpu_s")
                else:
                    w, c = v, None
                parts.append(f"<tr><td>{e(str(k))}</td><td class='n'>{_fmt(w, 2)}</td><td class='n'>{_fmt(c, 2)}</td></tr>")
            parts.append("</table></div>")
        # per type
        if per_type:
            cols: list[str] = []
            for d in per_type.values():
                for c in d:
                    if c not in cols:
                        cols.append(c)
            parts.append("<div><h2>By defect type</h2><table><tr><th>type</th>")
            parts.extend(f"<th>{e(_METRIC_NAMES.get(c, c))}</th>" for c in cols)
            parts.append("</tr>")
            for t, d in per_type.items():
                parts.append(f"<tr><td>{e(str(t))}</td>" + "".join(f"<td class='n'>{_fmt(d.get(c))}</td>" for c in cols) + "</tr>")
            parts.append("</table></div>")
        parts.append("</div>")

        if any_map:
            lo, hi = vrange
            parts.append(
                '<p class="legend">heatmap scale: <span>' + _fmt(lo, 3) + '</span><img src="colorbar.png" alt="colour scale" '
                'width="256" height="14"><span>' + _fmt(hi, 3) + "</span> (one scale for every image; "
                + ("white outline: ground-truth defect" if any_mask else "no defect masks") + ")</p>"
            )
        for section, idxs in shown.items():
            parts.append(f"<h2>{e(section)}</h2>")
            if not idxs:
                parts.append('<p class="muted">none</p>')
            parts.append('<div class="cards">')
            for i in idxs:
                r = self._rows[i]
                lab = r["label"]
                cls = "" if lab is None else (" class='bad'" if lab == 1 else " class='ok'")
                truth = "" if lab is None else f" &middot; <span{cls}>{'anomalous' if lab == 1 else 'normal'}</span>"
                dt = "" if not r["defect_type"] else f" ({e(r['defect_type'])})"
                pred = ""
                if self.threshold is not None:
                    pred = " &middot; predicted " + ("anomalous" if r["score"] > self.threshold else "normal")
                figs = []
                w, h = r.get("display_wh", (self.display_size, self.display_size))
                n_figs = sum(1 for k in ("input_png", "heatmap", "mask_png") if r.get(k))
                cap_w = max(n_figs, 1) * (w + 6)  # the caption wraps under the images, never widens the card
                if r.get("input_png"):
                    figs.append(_fig(r["input_png"], "input", (w, h)))
                if r.get("heatmap"):
                    figs.append(_fig(r["heatmap"], "heatmap", (w, h)))
                if r.get("mask_png"):
                    figs.append(_fig(r["mask_png"], "ground truth", (w, h)))
                parts.append(
                    '<div class="card"><div class="row">' + "".join(figs) + "</div>"
                    f'<div class="cap" style="max-width:{cap_w}px"><b>#{i}</b> score <b>{_fmt(r["score"])}</b>{truth}{dt}{pred}<br>'
                    f'<span class="muted">{e(r["path"])}</span></div></div>'
                )
            parts.append("</div>")
        parts.append(
            '<p class="muted">Files: <a href="scores.csv">scores.csv</a> &middot; <a href="metrics.json">metrics.json</a>'
            + (" &middot; every heatmap in <a href='heatmaps/'>heatmaps/</a>" if any_map else "")
            + "</p></body></html>"
        )
        return "\n".join(parts)


def _fig(src: str, caption: str, wh=None) -> str:
    size = "" if wh is None else f' width="{wh[0]}" height="{wh[1]}"'
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}"{size} loading="lazy">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


METRIC_NAMES = _METRIC_NAMES = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1_max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1_max": "pixel F1-max",
    "aupro": "AUPRO (FPR<0.3, anomalib)",
    "pro_musc": "PRO (MuSc, FPR<0.3)",
    "auroc": "AUROC",
    "n": "images",
    "mean_score": "mean score",
}


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.float()  # float16 / bfloat16 have no (or a lossy) numpy equivalent
        return x.numpy()
    return np.asarray(x)
