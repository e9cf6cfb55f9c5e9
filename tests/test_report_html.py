"""The HTML report: structure (responsive grid, enlargeable full-resolution panels, the colour-scale
switch), TP / FP / FN / TN tags for known labels and scores, "no defect" instead of a black mask, the
threshold line, heatmaps/index.html, and no absolute local path in any file of the report folder."""
import csv
import json
import os
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from fastad.report.html import outcome, threshold_sentence
from fastad.report.paths import PathScrubber, common_root
from tests.helpers.report_run import EXPECTED, H, IMAGES, THRESHOLD, W, make_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rep")
    out, root, paths = make_report(tmp, display_size=32)  # thumbnails smaller than the 60 x 150 images
    return tmp, out, root, paths


def _links(text: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"#][^"]*)"', text)


def _cards(page: str) -> dict[int, str]:
    """Image number -> its card's HTML (first section where it appears)."""
    out = {}
    for m in re.finditer(r'<div class="card ([^"]*)" id="c(\d+)-(\d+)">(.*?)</div></div>', page, re.S):
        out.setdefault(int(m.group(3)), m.group(1) + " " + m.group(4))
    return out


def test_outcome_and_threshold_sentence():
    assert [outcome(1, 0.9, 0.5), outcome(0, 0.9, 0.5), outcome(1, 0.5, 0.5), outcome(0, 0.1, 0.5)] == \
        ["TP", "FP", "FN", "TN"]  # score == threshold is normal (score > threshold is anomalous)
    assert outcome(None, 0.9, 0.5) is None and outcome(1, 0.9, None) is None
    s = threshold_sentence(1.25, {"method": "quantile", "quantile": 0.99, "n_images": 24})
    assert "quantile" in s and "0.99" in s and "24 held-out normal images" in s
    assert "chi2" in threshold_sentence(3.0, {"method": "chi2", "quantile": 0.99, "n_images": 0})
    assert "12 labelled validation images" in threshold_sentence(3.0, {"method": "f1", "n_images": 12})
    assert "given by hand" in threshold_sentence(3.0, None)
    assert threshold_sentence(None, None).startswith("none: the model has no threshold")


def test_path_scrubber():
    s = PathScrubber("/data/sets/mtd", cwd="/work/proj", home="/home/me")
    assert s.path("/data/sets/mtd/test/crack/1.png") == "test/crack/1.png"
    assert s.path("/data/sets/mtd") == "mtd" and s.path("/data/sets/mtd/") == "mtd"
    assert s.path("/work/proj/models/a.pt") == "models/a.pt"
    assert s.path("/home/me/x/a.pt") == "~/x/a.pt"
    assert s.path("/opt/elsewhere/deep/a.pt") == ".../deep/a.pt"
    assert s.path("/data/sets/mtdX/a.png") == ".../mtdX/a.png"  # a sibling sharing the prefix is not inside
    assert s.text("fitted on /data/sets/mtd/train (model /home/me/m.pt)") == "fitted on train (model ~/m.pt)"
    assert s.text("1/2 of the images, wall/cpu") == "1/2 of the images, wall/cpu"  # no path: unchanged
    assert s.value({"a": ["/work/proj/x/y.png", 3]}) == {"a": ["x/y.png", 3]}
    assert common_root(["/a/b/c/1.png", "/a/b/d/2.png"]) == Path("/a/b")


def test_structure_tags_and_panels(report):
    tmp, out, root, paths = report
    page = (out / "index.html").read_text()
    # the responsive grid: auto-filled columns of a minimum width, no fixed number per row
    assert "grid-template-columns:repeat(auto-fill,minmax(" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    cards = _cards(page)
    assert sorted(cards) == list(range(len(IMAGES)))
    for i, want in enumerate(EXPECTED):
        c = cards[i]
        assert c.split()[0] == want, (i, c[:80])  # the card's class: its border colour
        assert f'<span class="tag {want}"' in c and f">{want}</span>" in c
        lab = IMAGES[i][0] != "good"
        assert ("truth <span class='bad'>defective</span>" if lab else "truth <span class='ok'>normal</span>") in c
        assert ("predicted <b>anomalous</b>" if IMAGES[i][1] > THRESHOLD else "predicted <b>normal</b>") in c
        # panels: input, heatmap (two colour scales), and the ground truth or a "no defect" label
        assert "_input.png" in c and "_heat.png" in c and "_own.png" in c
        if lab:
            assert "_mask.png" in c and "no defect" not in c
        else:
            assert "_mask.png" not in c and ">no defect<" in c
        assert f"test/{IMAGES[i][0]}/{i:03d}.png" in c  # the path relative to the data root
    # the threshold line: value, method, number of images, and the outcome counts
    assert "<b>Threshold</b> 0.5 (method quantile-corrected: the 0.99 quantile" in page
    assert "24 held-out normal images" in page
    n = {k: EXPECTED.count(k) for k in ("TP", "FP", "FN", "TN")}
    for k, v in n.items():
        assert f">{k}</span>{v}" in page
    # the colour-scale switch and the enlarged panels (CSS only)
    assert 'id="scale-shared" checked' in page and 'id="scale-own"' in page
    assert "#scale-own:checked~main .shared" in page and ".zoom:target{display:flex}" in page
    for key in re.findall(r'href="#(z[\d-]+-(?:input|heatmap|mask))"', page):
        assert f'id="{key}"' in page, key
    assert 'href="heatmaps/index.html"' in page and "href='heatmaps/'" not in page


def test_full_resolution_pngs(report):
    tmp, out, root, paths = report
    page = (out / "index.html").read_text()
    rows = list(csv.DictReader(open(out / "scores.csv")))
    for r in rows:  # every heatmap at the image's own resolution, not a thumbnail
        assert Image.open(out / r["heatmap"]).size == (W, H)
    full = re.findall(r'<div class="zoom" id="z0-1-heatmap">.*?<img class="shared" src="([^"]+)"', page, re.S)
    assert full == [rows[1]["heatmap"]]
    for png in ("images/00001_001_input_full.png", "images/00001_001_own_full.png", "images/00001_001_mask_full.png"):
        assert Image.open(out / png).size == (W, H), png
        assert Image.open(out / png.replace("_full", "")).size == (32, 80), png  # its thumbnail in the card
    # the shared scale keeps a normal image pale; its own scale stretches it to full colour
    sat = lambda p: int((lambda a: (a.max(axis=2).astype(int) - a.min(axis=2)).max())(np.asarray(Image.open(out / p))))
    assert sat("heatmaps/00004_004.png") < sat("images/00004_004_own_full.png")
    # the ground-truth panel of a defect marks it in colour; a normal image has no mask PNG at all
    gt = np.asarray(Image.open(out / "images/00001_001_mask_full.png")).astype(int)
    assert ((gt[..., 0] - gt[..., 2]) > 40).sum() > 20
    assert not list((out / "images").glob("00000_*mask*"))


def test_scores_csv_metrics_and_heatmap_index(report):
    tmp, out, root, paths = report
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [r["path"] for r in rows] == [f"test/{t}/{i:03d}.png" for i, (t, _) in enumerate(IMAGES)]
    assert [r["outcome"] for r in rows] == EXPECTED
    assert all((root / r["path"]).is_file() for r in rows)  # relative to the data root: they resolve there
    doc = json.loads((out / "metrics.json").read_text())
    s = doc["summary"]
    assert s["threshold_method"] == "quantile-corrected" and s["threshold_n_images"] == 24
    assert s["outcomes"] == {k: EXPECTED.count(k) for k in ("TP", "FP", "FN", "TN")}
    assert s["data_root"] == "plates" and doc["info"]["data"] == "plates"
    hi = (out / "heatmaps" / "index.html").read_text()
    order = np.argsort([-sc for _, sc in IMAGES], kind="stable")
    listed = [int(x) for x in re.findall(r"<tr><td class='n'>\d+</td><td class='n'>(\d+)</td>", hi)]
    assert listed == order.tolist()  # most anomalous first
    assert 'href="../index.html"' in hi


def test_no_absolute_path_in_any_file(report):
    tmp, out, root, paths = report
    needles = {str(tmp), str(tmp.resolve()), str(root), str(Path.home()), os.getcwd()}
    needles = {n.encode() for n in needles if len(n) > 1}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 20 and any(p.name == ".fastad-report.json" for p in files)
    for p in files:
        data = p.read_bytes()
        for n in needles:
            assert n not in data, f"{p.relative_to(out)} contains the local path {n.decode()!r}"
        if p.suffix in (".html", ".csv", ".json"):
            text = data.decode()
            assert not re.search(r"(?<![\w.~/])/(home|tmp|root|work|data|Users)/", text), p.name


def test_relative_links_resolve(report):
    tmp, out, root, paths = report
    pages = [out / "index.html", out / "heatmaps" / "index.html"]
    for page in pages:
        links = _links(page.read_text())
        assert len(links) > 10
        for link in links:
            assert not link.startswith("/") and "://" not in link, link
            assert (page.parent / unquote(link)).resolve().is_file(), f"{page.name}: {link}"


def test_no_threshold_no_labels(tmp_path):
    """Without labels or threshold: no tags, no prediction, a statement that there is no threshold."""
    from fastad.report import ReportWriter

    img = tmp_path / "d" / "a.png"
    img.parent.mkdir()
    Image.fromarray(np.full((20, 50, 3), 90, np.uint8)).save(img)
    w = ReportWriter(tmp_path / "r", progress=False, color_scale="per-image")
    w.add(paths=[str(img)], scores=[0.3], maps=np.random.default_rng(0).random((1, 8, 8)))
    w.finish()
    page = (tmp_path / "r" / "index.html").read_text()
    assert 'class="tag' not in page.split("<main>")[1] and "predicted" not in page.split("<main>")[1]
    assert "the model has no threshold" in page and 'id="scale-own" checked' in page
    assert "card none wide" in page  # a wide image: its card stacks the panels
    rows = list(csv.DictReader(open(tmp_path / "r" / "scores.csv")))
    assert rows[0]["path"] == "a.png" and rows[0]["outcome"] == ""
