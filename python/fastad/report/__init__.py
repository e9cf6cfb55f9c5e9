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
    .fastad-report.json the manifest: every file fastad wrote here (see :mod:`fastad._output`); a later
                        run into the folder replaces or removes those files only, never the user's

Heatmaps of one report share ONE colour scale (so a pale heatmap means a normal-looking image, not
an image whose own maximum was stretched to red): the scale runs from the median to the 99.9th
percentile of the pixel scores of the whole run, estimated on a fixed-size random sample.

Use :class:`ReportWriter` to stream images in (``add`` per batch, ``finish`` once); maps are spooled
to an unnamed temporary file in the report folder as float16 so memory stays bounded. Modules:
``render`` (colour maps, overlays), ``html`` (``index.html``, :func:`format_metrics`), ``writer``.
"""
from .html import METRIC_NAMES, format_metrics
from .render import COLORMAPS, colormap, mask_outline, overlay, to_uint8_image
from .writer import ReportWriter

__all__ = ["COLORMAPS", "colormap", "overlay", "to_uint8_image", "mask_outline", "ReportWriter", "METRIC_NAMES",
           "format_metrics"]
