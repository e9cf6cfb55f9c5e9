"""Reports of an anomaly-detection run: heatmap overlays (PNG), ``scores.csv``, ``metrics.json`` and a
self-contained ``index.html``.

Nothing here needs matplotlib: colour maps are 256-entry lookup tables built with numpy, images are
written with Pillow.

Layout of a report folder (every path in it is relative to the data root: no absolute local path
is written anywhere, see :mod:`fastad.report.paths`)::

    index.html          metrics, timings, the threshold (value, method, on how many images) and the
                        most anomalous images as cards in a responsive grid: input | heatmap |
                        ground truth ("no defect" for a normal image), a TP / FP / FN / TN tag; a
                        click on a panel enlarges it at full resolution; a switch between the shared
                        and the per-image colour scale (plain CSS: no script, no external asset)
    metrics.json        every number of the run (metrics, timings, counts, outcomes, settings)
    scores.csv          path, defect_type, label, score, predicted, outcome, heatmap
    colorbar.png        the colour scale of every heatmap, with its score range in index.html
    heatmaps/<i>_<name>.png   one overlay per image at the image's own resolution (the heatmap blended
                              over the image in the shared scale; the ground-truth outline in white)
    heatmaps/index.html every heatmap, most anomalous first, with its image, score and outcome
    images/<i>_<name>_{input,heat,own,mask}.png   thumbnails of the cards, and ``*_full.png``: the
                        enlarged panels (input, per-image-scale heatmap, ground truth over the image)
    .fastad-report.json the manifest: every file fastad wrote here (see :mod:`fastad._output`); a later
                        run into the folder replaces or removes those files only, never the user's

The shared colour scale (the default) is ONE scale for every heatmap of the report (so a pale
heatmap means a normal-looking image, not an image whose own maximum was stretched to red): it runs
from the median to the 99.9th percentile of the pixel scores of the whole run, estimated on a
fixed-size random sample. The per-image scale runs from each map's own minimum to its maximum: it
shows where in an image the score is highest when one global scale saturates (MuSc).

Use :class:`ReportWriter` to stream images in (``add`` per batch, ``finish`` once); maps are spooled
to an unnamed temporary file in the report folder as float16 so memory stays bounded. Modules:
``render`` (colour maps, overlays), ``html`` (``index.html``, :func:`format_metrics`), ``writer``,
``paths`` (paths as a report shows them), ``browser`` (headless Chromium screenshots).
"""
from .html import METRIC_NAMES, format_metrics
from .render import COLORMAPS, colormap, mask_outline, overlay, to_uint8_image
from .writer import ReportWriter

__all__ = ["COLORMAPS", "colormap", "overlay", "to_uint8_image", "mask_outline", "ReportWriter", "METRIC_NAMES",
           "format_metrics"]
