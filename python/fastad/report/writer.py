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
from .html import OUTCOMES, is_wide, outcome, render_heatmap_index, render_page, threshold_sentence
from .paths import PathScrubber, common_root
from .render import COLORMAPS, colorbar, ground_truth_image, overlay, to_uint8_image

__all__ = ["ReportWriter"]


def _slug(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return (s or "image")[-limit:]


def _cap(im: Image.Image, full_size: int | None) -> Image.Image:
    W, H = im.size
    if full_size is None or max(W, H) <= full_size:
        return im
    s = full_size / max(W, H)
    return im.resize((max(1, round(W * s)), max(1, round(H * s))), Image.Resampling.LANCZOS)


def _rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``im`` scaled like the model saw it (:func:`fastad.data.load_image`): Pillow's
    own ``convert("RGB")`` clips 16-bit and 32-bit grey to 255 (a white panel)."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        from ..data import _to_rgb_array

        a = _to_rgb_array(im)
        return Image.fromarray(np.round(a * 255.0).clip(0, 255).astype(np.uint8), mode="RGB")
    return im.convert("RGB")


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
        display_size: width, in pixels, of the thumbnails of the cards (twice that for wide images);
            clicking a panel shows it at full resolution.
        full_size: longest side of the full-resolution PNGs (heatmaps and enlarged panels); images
            up to that size are kept at their own resolution (None: always).
        resize: how the model saw the image (``"squash"``, ``"keep-aspect"``, ``"pad"``,
            ``"shorter_crop"`` or ``"none"``), so that the map is laid over the right part of the
            original image.
        mean, std: normalisation of the image tensors, used only for images given as tensors
            without a readable file.
        threshold: image-score threshold of the detector (``predicted = score > threshold``), or None.
            With labels, every card is tagged TP / FP / FN / TN.
        threshold_info: how the threshold was set: ``{"method", "n_images", "quantile"}`` (a detector's
            ``threshold_info_``); the report states it.
        data_root: the folder the images were read from: every path in the report is relative to it
            (default: the common folder of the images); no absolute local path is written anywhere.
        color_scale: the colour scale shown first, ``"shared"`` (one scale for every heatmap: the
            median to the 99.9th percentile of the run's pixel scores) or ``"per-image"`` (each
            heatmap from its own minimum to its maximum); the page switches between them.
        sample_pixels: size of the random sample of pixel scores that sets the shared colour scale.
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
        full_size: int | None = 2048,
        resize: str = "squash",
        mean: Sequence[float] | None = (0.485, 0.456, 0.406),
        std: Sequence[float] | None = (0.229, 0.224, 0.225),
        threshold: float | None = None,
        threshold_info: dict | None = None,
        data_root=None,
        color_scale: str = "shared",
        sample_pixels: int = 1 << 20,
        seed: int = 0,
        progress: bool = True,
        overwrite: bool = False,
    ):
        if cmap not in COLORMAPS:
            raise ValueError(f"ReportWriter: unknown colour map {cmap!r}; available: {sorted(COLORMAPS)}")
        if not (heatmaps == "all" or (isinstance(heatmaps, int) and heatmaps >= 0)):
            raise ValueError(f"ReportWriter: heatmaps must be 'all' or an int >= 0, got {heatmaps!r}")
        if color_scale not in ("shared", "per-image"):
            raise ValueError(f"ReportWriter: color_scale must be 'shared' or 'per-image', got {color_scale!r}")
        if full_size is not None and int(full_size) < 1:
            raise ValueError(f"ReportWriter: full_size must be a positive int or None, got {full_size!r}")
        self._dir = out_dir if isinstance(out_dir, ReportDir) else check_report_dir(out_dir, overwrite)
        self.out_dir = self._dir.path
        self.title = title
        self.cmap = cmap
        self.top_k = int(top_k)
        self.heatmaps = heatmaps
        self.display_size = int(display_size)
        self.full_size = None if full_size is None else int(full_size)
        self.threshold_info = threshold_info
        self.data_root = data_root
        self.color_scale = color_scale
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

    def _full_image(self, row, model_hw) -> np.ndarray:
        """The original image at its own resolution (cropped like the model saw it), longest side at
        most ``full_size``; the given tensor when the file cannot be read; grey when neither."""
        arr = None
        try:
            with Image.open(row["path"]) as im:
                im = _rgb(im)
                if self.resize == "shorter_crop" and model_hw is not None:
                    th, tw = model_hw
                    W, H = im.size
                    s = min(W / tw, H / th)
                    cw, ch = tw * s, th * s
                    left, top = (W - cw) / 2, (H - ch) / 2
                    im = im.crop((round(left), round(top), round(left + cw), round(top + ch)))
                # "squash" / "keep-aspect" / "pad" (maps unpadded): the map covers the whole image
                arr = np.asarray(_cap(im, self.full_size), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError):
            arr = None
        if arr is None and row["image"] is not None:
            arr = np.asarray(_cap(Image.fromarray(to_uint8_image(row["image"], self.mean, self.std)), self.full_size))
        if arr is None:
            h, w = model_hw if model_hw is not None else (self.display_size, self.display_size)
            arr = np.full((max(1, h), max(1, w), 3), 128, np.uint8)
        return arr

    def _thumb_wh(self, full_wh: tuple[int, int]) -> tuple[int, int]:
        """Size of a card's thumbnail: ``display_size`` wide (twice that for wide images, whose card
        spans two grid columns), never larger than the full image."""
        W, H = full_wh
        tw = min(W, self.display_size * (2 if is_wide(W, H) else 1))
        return max(1, tw), max(1, round(H * tw / W))

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
        except BaseException:
            self._dir.abort()  # nothing half-written: the staged files go, an earlier report stays whole
            raise
        finally:
            self._spool.close()

    def abort(self) -> None:
        """Give up the report (the run failed or was interrupted): nothing of it is left in the folder,
        an earlier report there stays as it was (see :meth:`fastad._output.ReportDir.abort`)."""
        self._finished = True
        self._spool.close()
        self._dir.abort()

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def _write(self, metrics, timings, info, per_type, final_timings) -> Path:
        from tqdm.auto import tqdm

        rows = self._rows
        has_labels = any(r["label"] is not None for r in rows)
        root = self.data_root if self.data_root is not None else common_root(r["path"] for r in rows)
        scrub = PathScrubber(root)
        for r in rows:
            r["rel"] = scrub.path(r["path"])
            r["outcome"] = outcome(r["label"], r["score"], self.threshold)
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
        planned = ["scores.csv", "metrics.json", "index.html"] + (["colorbar.png", "heatmaps/index.html"] if any_map else [])
        for i in todo:
            st, has_map = stems[i], rows[i]["map"] is not None
            if has_map:
                planned.append(f"heatmaps/{st}.png")
            if i in shown_set:
                planned += [f"images/{st}_input.png", f"images/{st}_input_full.png"]
                if has_map:
                    planned += [f"images/{st}_heat.png", f"images/{st}_own.png", f"images/{st}_own_full.png"]
                mk = self._mask_of(rows[i])
                if mk is not None and mk.any():
                    planned += [f"images/{st}_mask.png", f"images/{st}_mask_full.png"]
        self._dir.plan(planned)  # checked and recorded in the manifest before the first byte is written

        for i in tqdm(todo, desc="report", unit="img", leave=False, disable=not (self.progress and todo)):
            r = rows[i]
            m = self._read_map(r)
            mask = self._mask_of(r)
            if m is None and i not in shown_set:
                continue
            model_hw = m.shape if m is not None else (mask.shape if mask is not None else None)
            full = self._full_image(r, model_hw)
            st = stems[i]
            fwh = (int(full.shape[1]), int(full.shape[0]))
            twh = self._thumb_wh(fwh)
            heat = None
            if m is not None:
                heat = overlay(full, m, vmin=vmin, vmax=vmax, cmap=self.cmap, mask=mask)
                r["heatmap"] = f"heatmaps/{st}.png"  # full resolution, the shared scale
                self._save_png(r["heatmap"], heat, optimize=False, compress_level=2)
            if i not in shown_set:
                continue
            r["full_wh"], r["thumb_wh"] = fwh, twh
            r["panels"] = panels = {}
            panels["input"] = (self._save_pair(f"images/{st}_input", full, twh),)
            if heat is not None:
                fin = m[np.isfinite(m)]
                lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
                own = overlay(full, m, vmin=lo, vmax=hi if hi > lo else lo + 1e-6, cmap=self.cmap, mask=mask)
                r["own_range"] = (lo, hi)
                panels["heatmap"] = (self._save_pair(f"images/{st}_heat", heat, twh, full=r["heatmap"]),
                                     self._save_pair(f"images/{st}_own", own, twh))
            if mask is not None and mask.any():
                gt = ground_truth_image(full, mask)
                panels["mask"] = (self._save_pair(f"images/{st}_mask", gt, twh),)
            else:
                # a normal image (or a defective one without a mask): a label, not an all-black panel
                r["mask_text"] = "no mask given" if r["label"] == 1 else (
                    "no defect" if (r["label"] == 0 or mask is not None) else "")

        if any_map:
            self._save_png("colorbar.png", colorbar(self.cmap))

        # scores.csv: paths relative to the data root
        with self._dir.open("scores.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "defect_type", "label", "score", "predicted", "outcome", "heatmap"])
            for r in rows:
                pred = "" if self.threshold is None else int(r["score"] > self.threshold)
                w.writerow([
                    r["rel"],
                    "" if r["defect_type"] is None else r["defect_type"],
                    "" if r["label"] is None else r["label"],
                    repr(r["score"]),
                    pred,
                    r["outcome"] or "",
                    r.get("heatmap", ""),
                ])

        scores = np.array([r["score"] for r in rows], dtype=np.float64)
        counts = {k: sum(1 for r in rows if r["outcome"] == k) for k in OUTCOMES}
        tinfo = dict(self.threshold_info or {})
        summary = {
            "n_images": len(rows),
            "n_anomalous": sum(1 for r in rows if r["label"] == 1) if has_labels else None,
            "n_anomalous_with_mask": sum(1 for r in rows if r["mask"] is not None and r["label"] == 1)
            if has_labels else None,
            "score_min": float(scores.min()) if rows else None,
            "score_median": float(np.median(scores)) if rows else None,
            "score_max": float(scores.max()) if rows else None,
            "threshold": self.threshold,
            "threshold_method": (tinfo.get("method") or "given") if self.threshold is not None else None,
            "threshold_n_images": tinfo.get("n_images") if self.threshold is not None else None,
            "threshold_text": threshold_sentence(self.threshold, tinfo),
            "n_predicted_anomalous": int((scores > self.threshold).sum()) if self.threshold is not None else None,
            "outcomes": counts if (has_labels and self.threshold is not None) else None,
            "heatmap_range": [vmin, vmax] if any_map else None,
            "data_root": scrub.root_name,
            "paths": "relative to the data root",
        }
        doc = {
            "metrics": metrics,
            "per_type": per_type,
            "timings": timings,
            "summary": summary,
            "info": scrub.value(info),
        }

        page = render_page(
            title=scrub.text(self.title), rows=rows, threshold=self.threshold, metrics=metrics, timings=timings,
            info=doc["info"], per_type=per_type, summary=summary, shown=shown, any_map=any_map, any_mask=any_mask,
            vrange=(vmin, vmax), default_scale=self.color_scale,
        )
        with self._dir.open("index.html", "w") as f:
            f.write(page)
        if any_map:
            with self._dir.open("heatmaps/index.html", "w") as f:
                f.write(render_heatmap_index(scrub.text(self.title), rows, order, self.threshold, summary))
        if final_timings is not None:
            doc["timings"] = final_timings()
        self.document = _jsonable(scrub.value(doc))
        with self._dir.open("metrics.json", "w") as f:
            json.dump(self.document, f, indent=2, allow_nan=False)
        self._dir.finish()  # the earlier report's files not rewritten now are removed; final manifest
        return self.out_dir / "index.html"

    def _save_pair(self, stem: str, arr: np.ndarray, twh: tuple[int, int], *, full: str | None = None) -> dict:
        """Write ``<stem>.png`` (the thumbnail, ``twh``) and the full-resolution ``arr`` (to ``full``,
        default ``<stem>_full.png``; already written when it is a heatmap); returns their names and sizes."""
        fwh = (int(arr.shape[1]), int(arr.shape[0]))
        if fwh == tuple(twh):  # a small image: one PNG is both the thumbnail and the full resolution
            one = full or f"{stem}.png"
            if not one.startswith("heatmaps/"):  # a heatmap's full PNG is written already
                self._save_png(one, arr, compress_level=3)
            return {"thumb": one, "full": one, "thumb_wh": fwh, "full_wh": fwh}
        full = full or f"{stem}_full.png"
        if not full.startswith("heatmaps/"):
            self._save_png(full, arr, optimize=False, compress_level=2)
        thumb = np.asarray(Image.fromarray(arr).resize(twh, Image.Resampling.LANCZOS))
        self._save_png(f"{stem}.png", thumb, compress_level=3)
        return {"thumb": f"{stem}.png", "full": full, "thumb_wh": twh, "full_wh": fwh}

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
