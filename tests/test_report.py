"""fastad.report: colour maps, overlays and the report folder (files exist, HTML links resolve)."""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastad.report import COLORMAPS, ReportWriter, colormap, mask_outline, overlay, to_uint8_image


def test_colormaps_are_256_entry_ramps():
    for name, lut in COLORMAPS.items():
        assert lut.shape == (256, 3) and lut.dtype == np.uint8, name
    jet = COLORMAPS["jet"]
    assert tuple(jet[0]) == (0, 0, 128) and tuple(jet[-1]) == (128, 0, 0)  # dark blue -> dark red
    inferno = COLORMAPS["inferno"]
    lum = inferno.astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(lum) >= -1e-9), "inferno-like map must get brighter monotonically"


def test_colormap_range_and_clipping():
    v = np.array([[-1.0, 0.0], [0.5, 2.0]])
    c = colormap(v, "jet", vmin=0.0, vmax=1.0)
    assert c.shape == (2, 2, 3) and c.dtype == np.uint8
    assert (c[0, 0] == c[0, 1]).all()  # below vmin clips to the lowest colour
    assert (c[1, 1] == COLORMAPS["jet"][-1]).all()
    assert (c[1, 0] == COLORMAPS["jet"][128]).all()
    nan = colormap(np.array([np.nan, 1.0]), "jet", vmin=0, vmax=1)
    assert (nan[0] == COLORMAPS["jet"][0]).all()
    with pytest.raises(ValueError, match="unknown colour map 'viridis'"):
        colormap(v, "viridis")


def test_mask_outline():
    m = np.zeros((9, 9), bool)
    m[2:7, 2:7] = True
    e = mask_outline(m)
    assert e.sum() == 16 and not e[4, 4] and e[2, 2]
    assert not mask_outline(np.zeros((4, 4), bool)).any()


def test_overlay_puts_hot_colours_on_high_scores_and_outlines_the_mask():
    img = np.full((40, 60, 3), 100, np.uint8)
    heat = np.zeros((20, 30), np.float32)
    heat[5:10, 5:10] = 1.0  # resized x2 -> rows 10..20, cols 10..20
    mask = np.zeros((20, 30), bool)
    mask[12:18, 20:28] = True
    out = overlay(img, heat, vmin=0.0, vmax=1.0, cmap="jet", mask=mask)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    hot, cold = out[14, 14].astype(int), out[35, 5].astype(int)
    assert hot[0] > hot[2] + 40, "high score must be red"
    assert cold[2] > cold[0], "low score must lean blue"
    assert abs(int(cold.mean()) - 100) < 40, "low scores must keep the image visible"
    assert (out[24, 45] == 255).all() or (out[24, 40] == 255).all()  # outline of the mask is white


def test_to_uint8_image_denormalises():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    x = torch.zeros(3, 4, 5)
    a = to_uint8_image(x, mean, std)
    assert a.shape == (4, 5, 3) and (a == 128).all()
    g = to_uint8_image(np.ones((4, 5), np.float32))
    assert g.shape == (4, 5, 3) and (g == 255).all()


def _fake_run(tmp_path: Path, n=7, size=32, grey=False):
    rng = np.random.default_rng(0)
    paths, scores, maps, labels, masks, types = [], [], [], [], [], []
    for i in range(n):
        p = tmp_path / "imgs" / f"img {i}.png"  # a space in the name: must survive into the HTML links
        p.parent.mkdir(exist_ok=True)
        pix = np.full((size + 8 * i, size, 3), 128, np.uint8) if grey else rng.integers(0, 255, (size + 8 * i, size, 3), dtype=np.uint8)
        Image.fromarray(pix).save(p)
        m = rng.random((size, size)).astype(np.float32) * 0.2
        mask = np.zeros((size, size), bool)
        lab = int(i % 2 == 1)
        if lab:
            m[8:16, 8:16] += 1.0 + i
            mask[8:16, 8:16] = True
        paths.append(str(p))
        scores.append(float(m.max()))
        maps.append(m)
        labels.append(lab)
        masks.append(mask)
        types.append("scratch" if lab else "good")
    return paths, np.array(scores), np.stack(maps), np.array(labels), np.stack(masks), types


def _html_links(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"#][^"]*)"', html)  # files (not #fragments: enlarged panels)


def test_report_files_and_links(tmp_path):
    paths, scores, maps, labels, masks, types = _fake_run(tmp_path)
    out = tmp_path / "report"
    w = ReportWriter(out, title="unit test", top_k=3, threshold=1.0)
    for s in (slice(0, 4), slice(4, 7)):  # two batches
        w.add(paths=paths[s], scores=torch.tensor(scores[s]), maps=torch.tensor(maps[s]),
              labels=torch.tensor(labels[s]), defect_types=types[s], masks=torch.tensor(masks[s]))
    index = w.finish(metrics={"image_auroc": 1.0}, timings={"predict": {"wall_s": 0.5, "cpu_s": 0.7}},
                     info={"detector": "test"}, per_type={"scratch": {"n": 3, "auroc": 1.0}})
    assert index == out / "index.html"
    for f in ("index.html", "metrics.json", "scores.csv", "colorbar.png"):
        assert (out / f).is_file(), f
    assert not list(out.glob(".maps-*")), "the map spool file must be removed"
    heat = sorted((out / "heatmaps").glob("*.png"))
    assert len(heat) == 7
    html = index.read_text()
    links = _html_links(html)
    assert links, "index.html shows no images"
    for link in links:
        if link.endswith("/"):
            assert (out / link).is_dir(), link
        else:
            assert (out / link).is_file(), f"index.html links to a missing file: {link}"
        assert not link.startswith("/") and "://" not in link, "links must be relative"
    # the top image (highest score) is shown first, with input, heatmap and mask
    top = int(np.argmax(scores))
    first_card = html.split('<div class="card ')[1]
    assert f"<b>#{top}</b>" in first_card and "_input" in first_card and "_mask" in first_card
    assert "unit test" in html and "image AUROC" in html and "1.0000" in html
    # scores.csv: one row per image, in input order, with the threshold applied
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [r["path"] for r in rows] == [Path(p).name for p in paths]  # relative to the images' folder
    assert [float(r["score"]) for r in rows] == pytest.approx(scores.tolist())
    assert [int(r["predicted"]) for r in rows] == [int(s > 1.0) for s in scores]
    assert all((out / r["heatmap"]).is_file() for r in rows)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["metrics"]["image_auroc"] == 1.0 and doc["summary"]["n_images"] == 7
    assert doc["summary"]["n_anomalous"] == 3 and doc["timings"]["predict"]["wall_s"] == 0.5
    # heatmaps at the full resolution of the input (its own aspect ratio), not thumbnails
    img = Image.open(out / rows[6]["heatmap"])
    assert img.size == (32, 32 + 48)


def test_report_one_colour_scale_for_all_images(tmp_path):
    paths, scores, maps, labels, masks, types = _fake_run(tmp_path, n=4, grey=True)
    out = tmp_path / "r"
    w = ReportWriter(out, top_k=4)
    w.add(paths=paths, scores=scores, maps=maps)
    w.finish()
    rows = list(csv.DictReader(open(out / "scores.csv")))
    # a normal image (low map) must not be stretched to full colour: on a grey input, the colour
    # saturation (max - min channel) of its overlay stays low, while the defect's is strong
    sat = []
    for r in rows:
        a = np.asarray(Image.open(out / r["heatmap"])).astype(int)
        sat.append((a.max(axis=2) - a.min(axis=2)).max())
    assert sat[0] < 40 and sat[2] < 40, sat
    assert sat[1] > 60 and sat[3] > 120 and sat[1] > 2 * sat[0], sat  # image 1 peaks mid-scale, image 3 at the top
    assert rows[0]["label"] == "" and rows[0]["predicted"] == ""  # no labels, no threshold


def test_report_limited_heatmaps_and_unreadable_source(tmp_path):
    paths, scores, maps, labels, masks, types = _fake_run(tmp_path, n=6)
    paths[2] = str(tmp_path / "gone.png")  # unreadable source: the given tensor is shown instead
    out = tmp_path / "r"
    w = ReportWriter(out, top_k=2, heatmaps=1)
    images = torch.zeros(6, 3, 32, 32)
    w.add(paths=paths, scores=scores, maps=maps, labels=labels, masks=masks, images=images)
    w.finish()
    rows = list(csv.DictReader(open(out / "scores.csv")))
    written = [r for r in rows if r["heatmap"]]
    shown = set(_html_links((out / "index.html").read_text()))
    assert len(written) < 6 and all(r["heatmap"] in shown for r in written)
    for link in shown:
        assert (out / link).exists(), link


def test_report_without_maps(tmp_path):
    out = tmp_path / "r"
    w = ReportWriter(out, top_k=5)
    w.add(paths=["a.png", "b.png"], scores=[0.1, 0.9], images=torch.zeros(2, 3, 8, 8))
    w.finish()
    html = (out / "index.html").read_text()
    assert "no ground truth" in html and not (out / "colorbar.png").exists()
    for link in _html_links(html):
        assert (out / link).exists(), link


def test_report_add_checks_shapes(tmp_path):
    w = ReportWriter(tmp_path / "r")
    with pytest.raises(ValueError, match="2 paths but 3 scores"):
        w.add(paths=["a", "b"], scores=[1, 2, 3])
    with pytest.raises(ValueError, match="maps must be"):
        w.add(paths=["a", "b"], scores=[1, 2], maps=np.zeros((3, 4, 4)))
    w.finish()
    with pytest.raises(RuntimeError, match="already finished"):
        w.add(paths=["a"], scores=[1])
