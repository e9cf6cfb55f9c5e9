"""A tiny synthetic inspection run written as a report (tests of the HTML report and its screenshots).

``make_report(tmp_path)`` writes a data folder in the MVTec layout (grey, elongated 1:2.5 surface images,
thin dark cracks on the defective ones) and a report of it, with labels, masks, maps and a threshold
chosen so that every outcome occurs: the expected tag of image ``i`` is ``EXPECTED[i]``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fastad.report import ReportWriter

THRESHOLD = 0.5
THRESHOLD_INFO = {"method": "quantile-corrected", "quantile": 0.99, "n_images": 24}
# (defect type, image score): label 1 for a defect type, 0 for "good"
IMAGES = [
    ("good", 0.20),   # TN
    ("crack", 0.95),  # TP
    ("good", 0.90),   # FP
    ("crack", 0.30),  # FN
    ("good", 0.10),   # TN
    ("crack", 0.80),  # TP
    ("good", 0.35),   # TN
    ("crack", 0.70),  # TP
]
EXPECTED = ["TN", "TP", "FP", "FN", "TN", "TP", "TN", "TP"]
H, W = 150, 60      # the images: tall, 1:2.5
MH, MW = 40, 40     # the maps and masks: at the model's (squashed) input size


def _surface(rng, i: int) -> np.ndarray:
    y = np.linspace(0, 1, H)[:, None]
    x = np.linspace(0, 1, W)[None, :]
    grain = rng.normal(0, 4, (H // 3 + 1, W // 3 + 1)).repeat(3, 0).repeat(3, 1)[:H, :W]  # coarse: small PNGs
    return 120 + 40 * np.sin(6 * y + i) * np.cos(3 * x) + grain


def make_data(root: Path, seed: int = 0):
    """The data folder; returns (paths, labels, types, masks at the model size)."""
    rng = np.random.default_rng(seed)
    paths, labels, types, masks = [], [], [], []
    for i, (t, _) in enumerate(IMAGES):
        img = _surface(rng, i)
        mask = np.zeros((MH, MW), bool)
        if t != "good":
            # a thin crack: a slanted dark line; its mask, drawn at the image size, reduced to the model's
            full = np.zeros((H, W), bool)
            r0, c0 = 25 + (13 * i) % 50, 8 + 3 * i
            for k in range(60):
                r, c = r0 + k, c0 + int(k * 0.5)
                if r < H and c < W:
                    img[r, max(0, c - 1): c + 1] = 35
                    full[max(0, r - 2): r + 3, max(0, c - 3): c + 3] = True
            mask = np.asarray(Image.fromarray(full.astype(np.uint8) * 255).resize((MW, MH), Image.Resampling.BOX)) > 60
        p = root / "test" / t / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(p)
        paths.append(p)
        labels.append(int(t != "good"))
        types.append(t)
        masks.append(mask)
    return paths, labels, types, np.stack(masks)


def make_maps(masks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pixel maps: low noise, raised where the defect is (strongest for the highest image score)."""
    rng = np.random.default_rng(seed + 1)
    maps = []
    for (t, s), m in zip(IMAGES, masks):
        a = (rng.random((MH // 4, MW // 4)).astype(np.float32) * 0.15).repeat(4, 0).repeat(4, 1)
        a[8:14, 30:36] += 0.3 * s  # a bright spot the size of a texture blob on every image
        if m.any():
            blob = np.zeros_like(a)
            blob[m] = 1.0
            k = np.ones(5, np.float32) / 5
            blob = np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 0, blob)
            blob = np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 1, blob)
            a += s * blob / max(float(blob.max()), 1e-6)
        maps.append(a)
    return np.stack(maps)


def make_report(tmp_path: Path, *, top_k: int = 8, name: str = "report", **kw) -> tuple[Path, Path, list[Path]]:
    """Write the data and its report; returns (report folder, data root, image paths)."""
    root = tmp_path / "data" / "plates"
    paths, labels, types, masks = make_data(root)
    maps = make_maps(masks)
    scores = np.array([s for _, s in IMAGES])
    out = tmp_path / name
    w = ReportWriter(out, title=f"fastad evaluate: {root}", top_k=top_k, threshold=THRESHOLD,
                     threshold_info=THRESHOLD_INFO, data_root=root, progress=False, **kw)
    for sl in (slice(0, 5), slice(5, len(paths))):  # two batches
        w.add(paths=[str(p) for p in paths[sl]], scores=scores[sl], maps=maps[sl], labels=np.array(labels[sl]),
              defect_types=types[sl], masks=masks[sl])
    w.finish(metrics={"image_auroc": 0.8}, timings={"predict": {"wall_s": 0.5, "cpu_s": 0.7}},
             info={"detector": "PaDiM", "data": str(root), "model": str(tmp_path / "models" / "padim.safetensors")},
             per_type={"crack": {"n": 4, "auroc": 0.8}})
    return out, root, paths
