"""Streaming a scored run into a report folder: :class:`ReportWriter`."""
from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .._output import ReportDir, check_report_dir
from .html import render_page
from .render import COLORMAPS, colorbar, overlay, resize_mask, to_uint8_image

__all__ = ["ReportWriter"]


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
        final_timings=None,
    ) -> Path:
        """Write ``heatmaps/``, ``images/``, ``scores.csv``, ``index.html`` and, last, ``metrics.json``
        (once; the document is kept as :attr:`document`).

        Args:
            metrics: name -> number (e.g. ``image_auroc``); shown in the metrics table.
            timings: stage -> seconds (or -> dict with ``wall_s`` / ``cpu_s``).
            final_timings: optional callable returning the timings saved in ``metrics.json``, called
                after everything else is written (so they can include writing the report itself);
                default ``timings``.
            info: settings of the run (detector, backbone, data, ...), shown and saved.
            per_type: defect type -> dict of numbers (e.g. count, mean score, AUROC against good).

        Returns:
            The path of ``index.html``.
        """
        if self._finished:
            raise RuntimeError("ReportWriter.finish: called twice")
        self._finished = True
        try:
            return self._write(metrics or {}, timings or {}, info or {}, per_type or {}, final_timings)
        finally:
            self._spool.close()

    def _write(self, metrics, timings, info, per_type, final_timings) -> Path:
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
                    mimg = resize_mask(mask, (img.shape[1], img.shape[0]))
                    r["mask_png"] = f"images/{stem}_mask.png"
                    self._save_png(r["mask_png"], mimg.astype(np.uint8) * 255)

        if any_map:
            self._save_png("colorbar.png", colorbar(self.cmap))

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

        page = render_page(self.title, self._rows, self.threshold, self.display_size, metrics, timings, info, per_type,
                           summary, shown, any_map, any_mask, (vmin, vmax))
        with self._dir.open("index.html", "w") as f:
            f.write(page)
        if final_timings is not None:
            doc["timings"] = final_timings()
        self.document = _jsonable(doc)
        with self._dir.open("metrics.json", "w") as f:
            json.dump(self.document, f, indent=2, allow_nan=False)
        self._dir.finish()  # the earlier report's files not rewritten now are removed; final manifest
        return self.out_dir / "index.html"

    def _save_png(self, rel: str, arr: np.ndarray, **kw) -> None:
        with self._dir.path_for(rel) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG", **kw)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.float()  # float16 / bfloat16 have no (or a lossy) numpy equivalent
        return x.numpy()
    return np.asarray(x)
