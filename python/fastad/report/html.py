"""The ``index.html`` of a report and the text form of its metrics."""
from __future__ import annotations

import html
import math

__all__ = ["METRIC_NAMES", "format_metrics", "render_page", "fmt", "figure"]

#: Display names of the metrics (``metrics.json`` keys).
METRIC_NAMES = {
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


def fmt(v, digits: int = 4) -> str:
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


def figure(src: str, caption: str, wh=None) -> str:
    size = "" if wh is None else f' width="{wh[0]}" height="{wh[1]}"'
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}"{size} loading="lazy">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_page(title, rows, threshold, display_size, metrics, timings, info, per_type, summary, shown, any_map,
                any_mask, vrange) -> str:
    """The self-contained ``index.html`` of a report (see :class:`fastad.report.ReportWriter`)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
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
        f"<h1>{e(title)}</h1>",
    ]
    if info:
        parts.append('<p class="muted">' + " &middot; ".join(f"{e(str(k))}: {fmt(v)}" for k, v in info.items()) + "</p>")

    parts.append('<div class="tables">')
    # metrics table
    parts.append("<div><h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>")
    if metrics:
        for k, v in metrics.items():
            parts.append(f"<tr><td>{e(METRIC_NAMES.get(k, k))}</td><td class='n'>{fmt(v)}</td></tr>")
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
            parts.append(f"<tr><td>{e(label)}</td><td class='n'>{fmt(s[k])}</td></tr>")
    parts.append("</table></div>")
    # timings
    if timings:
        parts.append("<div><h2>Timings</h2><table><tr><th>stage</th><th>wall s</th><th>CPU s</th></tr>")
        for k, v in timings.items():
            if isinstance(v, dict):
                w, c = v.get("wall_s"), v.get("cpu_s")
            else:
                w, c = v, None
            parts.append(f"<tr><td>{e(str(k))}</td><td class='n'>{fmt(w, 2)}</td><td class='n'>{fmt(c, 2)}</td></tr>")
        parts.append("</table></div>")
    # per type
    if per_type:
        cols: list[str] = []
        for d in per_type.values():
            for c in d:
                if c not in cols:
                    cols.append(c)
        parts.append("<div><h2>By defect type</h2><table><tr><th>type</th>")
        parts.extend(f"<th>{e(METRIC_NAMES.get(c, c))}</th>" for c in cols)
        parts.append("</tr>")
        for t, d in per_type.items():
            parts.append(f"<tr><td>{e(str(t))}</td>" + "".join(f"<td class='n'>{fmt(d.get(c))}</td>" for c in cols) + "</tr>")
        parts.append("</table></div>")
    parts.append("</div>")

    if any_map:
        lo, hi = vrange
        parts.append(
            '<p class="legend">heatmap scale: <span>' + fmt(lo, 3) + '</span><img src="colorbar.png" alt="colour scale" '
            'width="256" height="14"><span>' + fmt(hi, 3) + "</span> (one scale for every image; "
            + ("white outline: ground-truth defect" if any_mask else "no defect masks") + ")</p>"
        )
    for section, idxs in shown.items():
        parts.append(f"<h2>{e(section)}</h2>")
        if not idxs:
            parts.append('<p class="muted">none</p>')
        parts.append('<div class="cards">')
        for i in idxs:
            r = rows[i]
            lab = r["label"]
            cls = "" if lab is None else (" class='bad'" if lab == 1 else " class='ok'")
            truth = "" if lab is None else f" &middot; <span{cls}>{'anomalous' if lab == 1 else 'normal'}</span>"
            dt = "" if not r["defect_type"] else f" ({e(r['defect_type'])})"
            pred = ""
            if threshold is not None:
                pred = " &middot; predicted " + ("anomalous" if r["score"] > threshold else "normal")
            figs = []
            w, h = r.get("display_wh", (display_size, display_size))
            n_figs = sum(1 for k in ("input_png", "heatmap", "mask_png") if r.get(k))
            cap_w = max(n_figs, 1) * (w + 6)  # the caption wraps under the images, never widens the card
            if r.get("input_png"):
                figs.append(figure(r["input_png"], "input", (w, h)))
            if r.get("heatmap"):
                figs.append(figure(r["heatmap"], "heatmap", (w, h)))
            if r.get("mask_png"):
                figs.append(figure(r["mask_png"], "ground truth", (w, h)))
            parts.append(
                '<div class="card"><div class="row">' + "".join(figs) + "</div>"
                f'<div class="cap" style="max-width:{cap_w}px"><b>#{i}</b> score <b>{fmt(r["score"])}</b>{truth}{dt}{pred}<br>'
                f'<span class="muted">{e(r["path"])}</span></div></div>'
            )
        parts.append("</div>")
    parts.append(
        '<p class="muted">Files: <a href="scores.csv">scores.csv</a> &middot; <a href="metrics.json">metrics.json</a>'
        + (" &middot; every heatmap in <a href='heatmaps/'>heatmaps/</a>" if any_map else "")
        + "</p></body></html>"
    )
    return "\n".join(parts)


def format_metrics(metrics: dict, per_type: dict) -> str:
    """The metrics and the per-defect-type table as plain text (what the CLI prints)."""
    lines = []
    if metrics:
        lines.append("metrics:")
        for k, v in metrics.items():
            lines.append(f"  {METRIC_NAMES.get(k, k):<28} {v:.4f}")
    if per_type:
        cols: list[str] = []
        for d in per_type.values():
            cols += [c for c in d if c not in cols]
        tw = max(8, max(len(t) for t in per_type))
        lines.append(f"by type:{'':<{tw - 6}}" + "  ".join(f"{c:>10}" for c in cols))
        for t, d in per_type.items():
            cells = []
            for c in cols:
                v = d.get(c)
                cells.append(f"{'':>10}" if v is None else (f"{v:>10d}" if isinstance(v, int) else f"{v:>10.4f}"))
            lines.append(f"  {t:<{tw}}" + "  ".join(cells))
    return "\n".join(lines)
