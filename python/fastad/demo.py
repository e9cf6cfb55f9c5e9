"""`make demo` / `fastad demo` / `python -m fastad.demo`: PatchCore with EfficientNet-Lite0, end to end.

Default data: the ELPV solar-cell images (``pip install --no-deps elpv-dataset==1.0.0.post1``; 2,624
electroluminescence cells with expert defect probabilities). PatchCore is fitted on functional
(p = 0) cells of one type (``--cell-type mono``) and tested on held-out functional cells against
certainly defective ones (p = 1). The sets are subsampled (``--n-train``, ``--n-test-good``,
``--n-test-defect``) so that the whole demo takes a few minutes on 2 CPU cores.

``--data DIR`` runs the same on any MVTec-layout folder (``train/good``, ``test/<type>``,
``ground_truth/<type>``): at most ``--max-train`` training images (default 120, seeded sample) and
every test image (or ``--max-test``, stratified by type); pixel metrics when masks exist.

It writes the report (heatmaps, ``scores.csv``, ``metrics.json``, ``index.html``) to ``--out``
(default ``reports/demo``) and prints the metrics and the time of every stage: numbers computed now,
on this machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .arguments import cli_names, fraction_arg, nonneg_int, positive_int, ratio_arg
from .pipeline import CLIError, Stopwatch, fit_detector, make_detector, open_dataset, print_metrics, resolve_device
from .pipeline import score_to_report, subsample

ELPV_REF = "ELPV: Buerhop-Lutz et al. 2018, Deitsch et al. 2019 (CC BY-NC-SA 4.0)"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options (shared by ``python -m fastad.demo`` and ``fastad demo``)."""
    p.add_argument("--data", default=None, metavar="DIR", help="an MVTec-layout folder (default: ELPV from its PyPI wheel)")
    p.add_argument("--out", default="reports/demo", metavar="DIR",
                   help="report folder (default reports/demo): new, empty, or an earlier fastad report (only its "
                        "files are replaced); a folder holding other files is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="write the report into a non-empty folder that is not a fastad report (next to its files; "
                        "fastad never overwrites or deletes a file it did not write)")
    p.add_argument("--cell-type", choices=("mono", "poly"), default="mono", help="ELPV cell type (default mono)")
    p.add_argument("--n-train", type=positive_int, default=120, help="ELPV: functional cells to train on (default 120)")
    p.add_argument("--n-test-good", type=positive_int, default=100, help="ELPV: held-out functional test cells (default 100)")
    p.add_argument("--n-test-defect", type=positive_int, default=100, help="ELPV: defective (p = 1) test cells (default 100)")
    p.add_argument("--max-train", type=positive_int, default=120, help="--data: at most this many training images (default 120)")
    p.add_argument("--max-test", type=positive_int, default=None, help="--data: at most this many test images (default all)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--coreset-ratio", type=ratio_arg, default=0.1)
    p.add_argument("--num-neighbors", type=positive_int, default=9)
    p.add_argument("--calibration", type=fraction_arg, default=0.1,
                   help="fraction of the training images held out to set the threshold (default 0.1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--num-workers", type=nonneg_int, default=2)
    p.add_argument("--top-k", type=positive_int, default=24, help="most anomalous images shown in index.html")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="python -m fastad.demo", description=__doc__.splitlines()[0]))


def run(a) -> dict:
    import torch

    import fastad

    from ._output import check_not_inside, check_report_dir

    if a.data is not None:  # the report's PNGs must not land among the input images
        check_not_inside(a.out, a.data)
    out = check_report_dir(a.out, getattr(a, "overwrite", False))  # before any work
    t_start = time.perf_counter()
    c_start = time.process_time()
    torch.manual_seed(a.seed)
    sw = Stopwatch()
    device = resolve_device(a.device)
    bi = fastad.build_info()
    print(
        f"fastad {bi['version']} (torch {bi['torch_runtime']}, simd {bi['simd']}, {torch.get_num_threads()} threads, "
        f"device {device})",
        flush=True,
    )
    with sw("load data"):
        if a.data is None:
            from .datasets.elpv import load_elpv

            train, test = load_elpv(
                a.cell_type, n_train=a.n_train, n_test_good=a.n_test_good, n_test_defect=a.n_test_defect,
                image_size=a.image_size, seed=a.seed,
            )
            data_name = f"ELPV {a.cell_type} cells"
            source = ELPV_REF
        else:
            train = subsample(open_dataset(a.data, "train", image_size=a.image_size), a.max_train, a.seed)
            test = subsample(open_dataset(a.data, "test", image_size=a.image_size), a.max_test, a.seed, stratify=True)
            if not hasattr(test, "labels"):
                raise CLIError(f"{a.data} has no test/ split in the MVTec AD layout (test/good/, test/<defect_type>/)")
            data_name = Path(a.data).resolve().name
            source = str(a.data)
    n_def = int(test.labels.sum())
    print(
        f"data: {data_name}: train {len(train)} normal images, test {len(test)} ({len(test) - n_def} normal, "
        f"{n_def} anomalous), {a.image_size} px  [{source}]",
        flush=True,
    )
    with sw("load backbone"):
        det = make_detector(
            "patchcore", backbone=a.backbone, coreset_ratio=a.coreset_ratio, num_neighbors=a.num_neighbors,
            device=device, batch_size=a.batch_size, random_state=a.seed, progress=not a.quiet,
        )
        bb = det._resolve_backbone()
    with cli_names():  # degenerate settings (a bank smaller than --num-neighbors, a tiny --image-size) up front
        det.check_fit_size(len(train), (a.image_size, a.image_size))
    print(f"model: PatchCore, {getattr(bb, 'label', a.backbone)}, layers {det._default_layers()}, "
          f"coreset ratio {a.coreset_ratio}, {a.num_neighbors} neighbours", flush=True)
    with cli_names():
        fit_detector(
            det, train, sw=sw, batch_size=a.batch_size, num_workers=a.num_workers, progress=not a.quiet,
            calibration=a.calibration, seed=a.seed,
        )
    bank = getattr(det, "memory_bank_", None)
    print(
        f"fit: {det.n_fit_images_} images -> memory bank {tuple(bank.shape) if bank is not None else '?'}; "
        + (f"threshold {det.threshold_:.4f} (99% of {det.n_calibration_images_} held-out normal images)"
           if getattr(det, "threshold_", None) is not None else "no threshold"),
        flush=True,
    )
    info = {
        "data": data_name, "source": source, "train images": det.n_fit_images_, "test images": len(test),
        "detector": "PatchCore", "backbone": getattr(bb, "label", a.backbone), "image size": a.image_size,
        "coreset ratio": a.coreset_ratio, "device": device,
    }
    doc = score_to_report(
        det, test, out, sw=sw, evaluate=True, batch_size=a.batch_size, num_workers=a.num_workers,
        progress=not a.quiet, top_k=a.top_k, title=f"fastad demo: PatchCore on {data_name}", info=info,
    )
    print()
    print_metrics(doc["metrics"], doc["per_type"])
    s = doc["summary"]
    if s.get("threshold") is not None:
        print(f"predicted anomalous: {s['n_predicted_anomalous']} of {s['n_images']} at threshold {s['threshold']:.4f} "
              f"({n_def} truly anomalous)")
    print("timings (this machine):")
    print(sw.table())
    print(f"demo wall time {time.perf_counter() - t_start:.1f} s, process CPU {time.process_time() - c_start:.1f} s")
    print(f"report: {doc['index']}  (open it in a browser)")
    return doc


def main(argv=None) -> int:
    """``python -m fastad.demo``: the same as ``fastad demo`` (one-line errors, exit status 2)."""
    from .cli import main as cli_main

    return cli_main(["demo"] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
