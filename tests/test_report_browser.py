"""The report in a real browser (headless Chromium; skipped when it is not installed): screenshots at
1400 px and 800 px wide and of an enlarged panel, checked by the layout Chromium computed (a DOM dump
of a probe page) and by their pixels. ``FASTAD_SCREENSHOTS=DIR`` keeps the screenshots in DIR."""
import functools
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastad.report import browser
from tests.helpers.report_run import EXPECTED, make_report

pytestmark = pytest.mark.skipif(browser.find_chromium() is None, reason="Chromium is not installed "
                                "(apt-get install chromium)")

# what the probe page reports of the layout Chromium computed
_PROBE = """<script>
window.addEventListener('load', function () {
  var g = document.querySelector('.cards');
  var cols = getComputedStyle(g).gridTemplateColumns.split(' ').filter(function (s) { return s; }).length;
  var cards = Array.prototype.map.call(g.querySelectorAll('.card'), function (c) {
    var r = c.getBoundingClientRect(); return [Math.round(r.left), Math.round(r.top), Math.round(r.width)]; });
  var z = document.querySelector('.zoom:target'), zi = null;
  if (z) { var im = Array.prototype.filter.call(z.querySelectorAll('img'), function (i) { return i.offsetWidth > 0; })[0];
           var r = im.getBoundingClientRect(); zi = [Math.round(r.width), Math.round(r.height)]; }
  var thumb = document.querySelector('.panel img').getBoundingClientRect();
  var shown = function (sel) { return Array.prototype.filter.call(document.querySelectorAll(sel),
    function (e) { return e.offsetWidth > 0; }).length; };
  var p = document.createElement('pre'); p.id = 'probe';
  p.textContent = JSON.stringify({cols: cols, cards: cards, view: window.innerWidth,
    scroll: document.documentElement.scrollWidth, zoom: zi,
    shared: shown('.card img.shared'), own: shown('.card img.own'), ncards: document.querySelectorAll('.card').length, thumb: [Math.round(thumb.width), Math.round(thumb.height)]});
  document.body.appendChild(p);
});
</script>"""


@pytest.fixture(scope="module")
def rep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    out, root, paths = make_report(tmp)
    probe = out / "probe.html"  # the page plus the probe script (the report itself has no script)
    probe.write_text((out / "index.html").read_text().replace("</body>", _PROBE + "</body>"))
    keep = os.environ.get("FASTAD_SCREENSHOTS")
    return out, probe, Path(keep) if keep else tmp / "shots"


ZOOM = "z0-1-heatmap"  # the heatmap of image 1 (the most anomalous), from the first section


@functools.lru_cache(maxsize=None)
def _layout(probe: Path, width: int, fragment: str = "") -> dict:
    dom = browser.dump_dom(probe, width=width, height=1000, fragment=fragment)
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the probe did not run"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def _colour_pixels(a: np.ndarray, rgb, tol: int = 6) -> int:
    return int((np.abs(a[..., :3].astype(int) - np.array(rgb)).max(axis=2) <= tol).sum())


OUTCOME_RGB = {"TP": (0x1B, 0x7F, 0x3B), "TN": (0x54, 0x6E, 0x7A), "FP": (0xE0, 0x78, 0x00), "FN": (0xC6, 0x28, 0x28)}


@pytest.mark.parametrize("width,cols", [(1400, (3, 4)), (800, (1, 2))])
def test_grid_fills_the_window_and_reflows(rep, width, cols):
    out, probe, shots = rep
    lay = _layout(probe, width, ZOOM if width == 1400 else "")  # an open panel leaves the grid as it is
    assert cols[0] <= lay["cols"] <= cols[1], lay
    assert lay["scroll"] <= lay["view"], "the page must not scroll sideways"
    assert lay["shared"] == lay["ncards"] > 0 and lay["own"] == 0, lay  # the switch: one heatmap per card, shared scale
    first_row = [c for c in lay["cards"] if c[1] == lay["cards"][0][1]]
    assert len(first_row) == lay["cols"]
    used = first_row[-1][0] + first_row[-1][2] - first_row[0][0]
    assert used > 0.85 * (lay["view"] - 48), f"the cards use {used} of {lay['view']} px"
    png = browser.screenshot(out / "index.html", shots / f"report_{width}.png", width=width, height=1100)
    a = np.asarray(Image.open(png).convert("RGB"))
    assert a.shape[:2] == (1100, width)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 500, "the screenshot is (nearly) blank"
    # the tags and card borders of every outcome in the first screen of the page
    seen = {k for k, rgb in OUTCOME_RGB.items() if _colour_pixels(a, rgb) > 30}
    assert seen == set(EXPECTED), seen


def test_enlarged_panel(rep):
    out, probe, shots = rep
    frag = ZOOM
    lay = _layout(probe, 1400, frag)
    assert lay["zoom"] is not None, "the :target panel is not shown"
    zw, zh = lay["zoom"]
    assert zh > 700 and zw > 2 * lay["thumb"][0], lay  # shown large: the full-resolution PNG, scaled up
    png = browser.screenshot(out / "index.html", shots / "report_zoom.png", width=1400, height=1000, fragment=frag)
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    corners = np.concatenate([a[:60, :60].reshape(-1, 3), a[-60:, -60:].reshape(-1, 3)])
    assert corners.max() < 40, "the enlarged panel must cover the page with a dark backdrop"
    mid = a[:, 500:900]
    assert (mid.max(axis=2) - mid.min(axis=2)).max() > 100, "no coloured heatmap in the middle of the screen"

