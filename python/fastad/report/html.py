"""The ``index.html`` of a report and the text form of its metrics."""
from __future__ import annotations

import html
import math

__all__ = ["METRIC_NAMES", "OUTCOMES", "format_metrics", "render_page", "render_heatmap_index", "fmt", "outcome",
           "threshold_sentence", "is_wide"]

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


#: Outcomes of an image at the threshold: label (1 = defective) vs prediction (score > threshold).
OUTCOMES = ("TP", "FP", "FN", "TN")
_OUTCOME_TEXT = {
    "TP": "true positive: defective, predicted anomalous",
    "FP": "false positive (false alarm): normal, predicted anomalous",
    "FN": "false negative (missed defect): defective, predicted normal",
    "TN": "true negative: normal, predicted normal",
}


def outcome(label, score: float, threshold) -> str | None:
    """``"TP" | "FP" | "FN" | "TN"`` for a labelled image at ``threshold`` (``score > threshold`` is
    anomalous), None without a label or a threshold."""
    if label is None or threshold is None:
        return None
    pred = bool(score > threshold)
    return ("TP" if pred else "FN") if int(label) == 1 else ("FP" if pred else "TN")


def is_wide(w: int, h: int) -> bool:
    """A wide image: its card spans two grid columns (one column: the card stacks its panels)."""
    return w > 1.6 * h


def threshold_sentence(threshold, info: dict | None) -> str:
    """What the threshold is and how it was set (method, on how many images), e.g. ``"0.5 (method
    quantile: the 0.99 quantile of the scores of 24 held-out normal images); ..."``."""
    if threshold is None:
        return "none: the model has no threshold, so no image is predicted anomalous or normal"
    i = info or {}
    m, n, q = i.get("method") or "given", i.get("n_images"), i.get("quantile")
    qs = f"{q:g} " if isinstance(q, (int, float)) else ""
    how = {
        "given": "given by hand, set on no images",
        "quantile": f"the {qs}quantile of the scores of {n} held-out normal images",
        "quantile-corrected": f"the {qs}quantile of the scores of {n} held-out normal images, with the "
                              "finite-sample correction",
        "chi2": f"the {qs}quantile of the score under the fitted Gaussian model, set on no images",
        "f1": f"the F1-maximising threshold on {n} labelled validation images",
        "contamination": f"the top {i.get('fraction', 0):g} of the scores of the {n} images of this run",
    }.get(m, f"set on {n} images")
    return f"{threshold:.4g} (method {m}: {how}); an image scoring above it is predicted anomalous"


_CSS = """
:root{--tp:#1b7f3b;--tn:#546e7a;--fp:#e07800;--fn:#c62828;--ink:#222;--line:#ddd}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:20px 24px;color:var(--ink);background:#f6f6f6}
h1{font-size:1.45em;margin:0 0 4px}
h2{font-size:1.12em;margin:24px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
a{color:#0b57d0}
table{border-collapse:collapse;margin:4px 0;font-size:.9em;background:#fff}
td,th{border:1px solid var(--line);padding:3px 9px;text-align:left}th{background:#eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.tables{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start;margin:8px 0}
.muted{color:#6b6b6b}.bad{color:#b00020;font-weight:600}.ok{color:#1b6e20;font-weight:600}
.thr{background:#fff;border:1px solid var(--line);border-left:5px solid #0b57d0;padding:6px 10px;margin:10px 0}
.stats{margin:8px 0;font-size:.92em}.note{margin:2px 0 10px;font-size:.85em}
.sw{position:absolute;opacity:0;pointer-events:none}
.controls{display:flex;flex-wrap:wrap;align-items:center;gap:8px;font-size:.88em;margin:8px 0}
.controls label{border:1px solid #aaa;border-radius:14px;padding:2px 11px;cursor:pointer;background:#fff}
#scale-shared:checked~.controls label[for=scale-shared],#scale-own:checked~.controls label[for=scale-own]{background:#333;color:#fff;border-color:#333}
#scale-shared:checked~main .own,#scale-own:checked~main .shared,#scale-shared:checked~.note.own,#scale-own:checked~.note.shared,
#scale-shared:checked~.controls .own,#scale-own:checked~.controls .shared{display:none}
.legend img{vertical-align:middle;margin:0 6px;border:1px solid #999}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px;align-items:start}
.card{background:#fff;border:1px solid var(--line);border-top:6px solid #9e9e9e;border-radius:5px;padding:8px;min-width:0}
.card.TP{border-top-color:var(--tp)}.card.TN{border-top-color:var(--tn)}.card.FP{border-top-color:var(--fp)}.card.FN{border-top-color:var(--fn)}
.panels{display:grid;grid-template-columns:repeat(var(--n),minmax(0,1fr));gap:6px}
.card.wide .panels{grid-template-columns:minmax(0,1fr)}
@media (min-width:742px){.card.wide{grid-column:span 2}.card.wide .panels{grid-template-columns:repeat(var(--n),minmax(0,1fr))}}
.panel{margin:0;min-width:0}
.panel a{display:block;cursor:zoom-in}
.panel img{display:block;width:100%;height:auto;background:#ddd}
.panel figcaption{font-size:.72em;color:#666;text-align:center;margin-top:2px}
.nodefect{display:flex;align-items:center;justify-content:center;text-align:center;width:100%;background:#eef5ee;
 color:#1b6e20;border:1px dashed #8bb88b;font-size:.85em;font-weight:600}
.nodefect.nomask{background:#f3f3f3;color:#777;border-color:#bbb}
.cap{font-size:.82em;margin-top:6px;line-height:1.45;overflow-wrap:anywhere}
.tag{display:inline-block;font-weight:700;font-size:.8em;padding:0 6px;border-radius:3px;color:#fff;background:#9e9e9e;margin-right:4px}
.tag.TP{background:var(--tp)}.tag.TN{background:var(--tn)}.tag.FP{background:var(--fp)}.tag.FN{background:var(--fn)}
.zoom{display:none;position:fixed;inset:0;z-index:10;background:rgba(10,10,10,.95);color:#eee;
 flex-direction:column;align-items:center;justify-content:center;gap:8px;padding:12px}
.zoom:target{display:flex}
.zoom .backdrop{position:absolute;inset:0;cursor:zoom-out}
.zoom img{position:relative;height:calc(100vh - 70px);width:auto;max-width:calc(100vw - 24px);object-fit:contain}
.zoom .bar{position:relative;font-size:.9em;display:flex;flex-wrap:wrap;gap:12px;align-items:center;justify-content:center}
.zoom .bar a{color:#9cc3ff}.zoom .bar a.here{color:#fff;font-weight:700;text-decoration:none}
.zoom .close{font-size:1.3em;text-decoration:none}
"""


def _img(src: str, wh, alt: str, cls: str = "", lazy: bool = True) -> str:
    c = f' class="{cls}"' if cls else ""
    size = "" if wh is None else f' width="{int(wh[0])}" height="{int(wh[1])}"'
    return f'<img{c} src="{html.escape(src)}" alt="{html.escape(alt)}"{size}' + (' loading="lazy"' if lazy else "") + ">"


_PANEL_NAMES = {"input": "input", "heatmap": "heatmap", "mask": "ground truth"}


def _card(i: int, r: dict, key: str, threshold) -> tuple[str, str]:
    """The card of image ``i`` (its ``rows`` entry ``r``) and its enlarged panels (``key``: unique per card)."""
    e = html.escape
    panels = r.get("panels") or {}
    fw, fh = r.get("full_wh", (1, 1))
    tw, th = r.get("thumb_wh", (fw, fh))
    oc = r.get("outcome")
    lab = r["label"]
    names = [p for p in ("input", "heatmap", "mask") if p in panels]
    figs = []
    for p in names:
        vs = panels[p]
        imgs = "".join(_img(v["thumb"], v["thumb_wh"], f"{_PANEL_NAMES[p]} #{i}", ("shared", "own")[j] if len(vs) > 1 else "")
                       for j, v in enumerate(vs))
        figs.append(f'<figure class="panel"><a href="#z{key}-{p}" title="enlarge">{imgs}</a>'
                    f"<figcaption>{_PANEL_NAMES[p]}</figcaption></figure>")
    text = r.get("mask_text")
    if text:
        cls = "nodefect" if text == "no defect" else "nodefect nomask"
        figs.append(f'<figure class="panel"><div class="{cls}" style="aspect-ratio:{tw}/{th}">{e(text)}</div>'
                    "<figcaption>ground truth</figcaption></figure>")
    n_panels = len(figs)
    tag = f'<span class="tag {oc}" title="{e(_OUTCOME_TEXT[oc])}">{oc}</span>' if oc else ""
    truth = ""
    if lab is not None:
        dt = f" ({e(r['defect_type'])})" if r.get("defect_type") and r["defect_type"] != "good" else ""
        truth = ("truth <span class='bad'>defective</span>" if lab == 1 else "truth <span class='ok'>normal</span>") + dt
    pred = ""
    if threshold is not None:
        pred = "predicted <b>" + ("anomalous" if r["score"] > threshold else "normal") + "</b>"
    line2 = " &middot; ".join(x for x in (truth, pred) if x)
    rng = ""
    if r.get("own_range"):
        lo, hi = r["own_range"]
        rng = f'<span class="muted own"> &middot; own scale {fmt(lo, 3)}&ndash;{fmt(hi, 3)}</span>'
    wide = " wide" if is_wide(fw, fh) else ""
    card = (
        f'<div class="card {oc or "none"}{wide}" id="c{key}"><div class="panels" style="--n:{max(n_panels, 1)}">'
        + "".join(figs) + "</div>"
        f'<div class="cap">{tag}<b>#{i}</b> score <b>{fmt(r["score"])}</b>{rng}'
        + (f"<br>{line2}" if line2 else "")
        + f'<br><span class="muted">{e(r["rel"])}</span></div></div>'
    )
    zooms = []
    for p in names:
        nav = " ".join(
            f'<a class="here">{_PANEL_NAMES[q]}</a>' if q == p else f'<a href="#z{key}-{q}">{_PANEL_NAMES[q]}</a>'
            for q in names)
        vs = panels[p]
        imgs, opens = [], []
        for j, v in enumerate(vs):
            cls = ("shared", "own")[j] if len(vs) > 1 else ""
            imgs.append(_img(v["full"], v["full_wh"], f"{_PANEL_NAMES[p]} #{i}, full resolution", cls))
            c = f' class="{cls}"' if cls else ""
            opens.append(f'<a{c} href="{e(v["full"])}">open the PNG ({v["full_wh"][0]}&times;{v["full_wh"][1]})</a>')
        zooms.append(
            f'<div class="zoom" id="z{key}-{p}"><a class="backdrop" href="#c{key}" aria-label="close"></a>'
            + "".join(imgs)
            + f'<div class="bar">{tag}<span><b>#{i}</b> {e(r["rel"])} &middot; score {fmt(r["score"])}</span>'
            f"<span>{nav}</span>{''.join(opens)}"
            f'<a class="close" href="#c{key}" title="close">&times;</a></div></div>'
        )
    return card, "".join(zooms)


def render_page(*, title, rows, threshold, metrics, timings, info, per_type, summary, shown, any_map, any_mask,
                vrange, default_scale: str = "shared") -> str:
    """The self-contained ``index.html`` of a report (see :class:`fastad.report.ReportWriter`): no
    external asset, no script; the colour-scale switch and the enlarged panels are plain CSS."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{e(title)}</title>",
        "<style>" + _CSS + "</style></head><body>",
    ]
    own_first = default_scale == "per-image"
    # the switch: two radio buttons before everything they restyle (CSS sibling selectors)
    parts.append(f'<input class="sw" type="radio" name="scale" id="scale-shared"{"" if own_first else " checked"}>'
                 f'<input class="sw" type="radio" name="scale" id="scale-own"{" checked" if own_first else ""}>')
    parts.append(f"<h1>{e(title)}</h1>")
    shown_info = {k: v for k, v in (info or {}).items() if k != "threshold"}  # the threshold has its own line
    if shown_info:
        parts.append('<p class="muted">' + " &middot; ".join(f"{e(str(k))}: {fmt(v)}" for k, v in shown_info.items())
                     + "</p>")
    s = summary
    thr = f"<b>Threshold</b> {e(s['threshold_text'])}."
    oc = s.get("outcomes")
    if oc:
        tp, fp, fn = oc["TP"], oc["FP"], oc["FN"]
        rec = fmt(tp / (tp + fn), 3) if tp + fn else "&ndash;"
        prec = fmt(tp / (tp + fp), 3) if tp + fp else "&ndash;"
        thr += (" At this threshold: " + " &middot; ".join(
            f'<span class="tag {k}" title="{e(_OUTCOME_TEXT[k])}">{k}</span>{oc[k]}' for k in OUTCOMES)
            + f" &middot; recall {rec} &middot; precision {prec}.")
    parts.append(f'<div class="thr">{thr}</div>')
    stats = [f"<b>{s['n_images']}</b> images scored"]
    if s.get("n_anomalous") is not None:
        stats.append(f"<b>{s['n_anomalous']}</b> anomalous ({s.get('n_anomalous_with_mask') or 0} with a mask)")
    if s.get("score_min") is not None:
        stats.append(f"score min {fmt(s['score_min'])} &middot; median {fmt(s['score_median'])} &middot; "
                     f"max {fmt(s['score_max'])}")
    if s.get("n_predicted_anomalous") is not None:
        stats.append(f"<b>{s['n_predicted_anomalous']}</b> predicted anomalous")
    stats.append(f'paths relative to the data folder <b>{e(s.get("data_root") or ".")}</b>')
    parts.append('<p class="stats">' + " &middot; ".join(stats) + "</p>")

    parts.append('<div class="tables">')
    parts.append("<div><table><tr><th>metric</th><th>value</th></tr>")
    if metrics:
        for k, v in metrics.items():
            parts.append(f"<tr><td>{e(METRIC_NAMES.get(k, k))}</td><td class='n'>{fmt(v)}</td></tr>")
    else:
        parts.append("<tr><td colspan=2 class='muted'>no ground truth: scores only</td></tr>")
    parts.append("</table></div>")
    if per_type:
        cols: list[str] = []
        for d in per_type.values():
            cols += [c for c in d if c not in cols]
        parts.append("<div><table><tr><th>defect type</th>")
        parts.extend(f"<th>{e(METRIC_NAMES.get(c, c))}</th>" for c in cols)
        parts.append("</tr>")
        for t, d in per_type.items():
            parts.append(f"<tr><td>{e(str(t))}</td>" + "".join(f"<td class='n'>{fmt(d.get(c))}</td>" for c in cols) + "</tr>")
        parts.append("</table></div>")
    parts.append("</div>")

    if any_map:
        lo, hi = vrange
        outline = "white outline: ground-truth defect" if any_mask else "no defect masks"
        parts.append(
            '<div class="controls"><span>colour scale:</span>'
            '<label for="scale-shared">shared (percentile)</label><label for="scale-own">per image</label>'
            f'<span class="legend"><span class="shared">{fmt(lo, 3)}</span><span class="own">min</span>'
            '<img src="colorbar.png" alt="colour scale" width="256" height="14">'
            f'<span class="shared">{fmt(hi, 3)}</span><span class="own">max</span></span>'
            f'<span class="muted">{outline} &middot; click a panel to enlarge it</span></div>'
            '<p class="muted note shared">Shared scale: one scale for every heatmap, from the median to the 99.9th '
            "percentile of all pixel scores of the run: a pale heatmap is a normal-looking image.</p>"
            '<p class="muted note own">Per-image scale: each heatmap from its own minimum (blue) to its own maximum '
            "(red): where in the image the score is highest, not how anomalous the image is.</p>"
        )
    parts.append("<main>")
    zooms = []
    for si, (section, idxs) in enumerate(shown.items()):
        parts.append(f"<h2>{e(section)}</h2>")
        if not idxs:
            parts.append('<p class="muted">none</p>')
        parts.append('<div class="cards">')
        for i in idxs:
            card, zoom = _card(i, rows[i], f"{si}-{i}", threshold)
            parts.append(card)
            zooms.append(zoom)
        parts.append("</div>")
    parts.extend(zooms)
    parts.append("</main>")
    if timings:
        parts.append("<h2>Timings</h2><table><tr><th>stage</th><th>wall s</th><th>CPU s</th></tr>")
        for k, v in timings.items():
            w, c = (v.get("wall_s"), v.get("cpu_s")) if isinstance(v, dict) else (v, None)
            parts.append(f"<tr><td>{e(str(k))}</td><td class='n'>{fmt(w, 2)}</td><td class='n'>{fmt(c, 2)}</td></tr>")
        parts.append("</table>")
    parts.append(
        '<p class="muted">Files: <a href="scores.csv">scores.csv</a> &middot; <a href="metrics.json">metrics.json</a>'
        + (' &middot; every heatmap (full resolution, shared scale): <a href="heatmaps/index.html">heatmaps/index.html</a>'
           if any_map else "")
        + "</p></body></html>"
    )
    return "\n".join(parts)


def render_heatmap_index(title: str, rows: list, order: list, threshold, summary: dict) -> str:
    """``heatmaps/index.html``: every heatmap written, most anomalous first, with its image, score and
    outcome (links relative to ``heatmaps/``)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{e(title)}: heatmaps</title>",
        "<style>" + _CSS + "td img{display:block;height:72px;width:auto}</style></head><body>",
        f"<h1>{e(title)}: heatmaps</h1>",
        '<p><a href="../index.html">&larr; back to the report</a> &middot; full-resolution overlays, one shared colour '
        f"scale; paths relative to the data folder <b>{e(summary.get('data_root') or '.')}</b>; "
        f"threshold {e(summary['threshold_text'])}.</p>",
        "<table><tr><th>rank</th><th>#</th><th>heatmap</th><th>image</th><th>type</th><th>label</th><th>score</th>"
        "<th>outcome</th></tr>",
    ]
    rank = 0
    for i in order:
        r = rows[i]
        h = r.get("heatmap")
        if not h:
            continue
        rank += 1
        name = h.split("/", 1)[1]
        oc = r.get("outcome")
        lab = "" if r["label"] is None else ("defective" if r["label"] == 1 else "normal")
        parts.append(
            f"<tr><td class='n'>{rank}</td><td class='n'>{i}</td>"
            f'<td><a href="{e(name)}">{_img(name, None, f"heatmap #{i}")}</a></td>'
            f'<td><a href="{e(name)}">{e(r["rel"])}</a></td><td>{e(r.get("defect_type") or "")}</td><td>{lab}</td>'
            f"<td class='n'>{fmt(r['score'])}</td>"
            + (f'<td><span class="tag {oc}" title="{e(_OUTCOME_TEXT[oc])}">{oc}</span></td>' if oc else "<td></td>")
            + "</tr>"
        )
    parts.append("</table></body></html>")
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
