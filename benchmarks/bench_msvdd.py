"""M-SVDD vs the plain Mahalanobis and KNN detectors on the same real sensor windows (aeon wheel).

    .venv/bin/python benchmarks/bench_msvdd.py [--seeds 3] [--epochs 60] [--out benchmarks/results/msvdd_sensors.json]

Tasks (:mod:`fastad.datasets.sensors`, one-vs-rest: each class in turn is normal, the other classes
anomalous; train on the normal class's TRAIN recordings, score every TEST recording):

- BasicMotions (smart-watch accelerometer + gyroscope, 6 channels, 10 Hz): windows of 20 steps every
  10 (9 per recording), 54 features per window.
- JapaneseVowels (12 LPC cepstrum channels, 7-29 frames): one window per utterance, 108 features.

Detectors on identical features: ``MSVDD`` (seeds 0..seeds-1; and with ``recon_weight=0``, the
ablation without the reconstruction branch), ``Mahalanobis`` (Ledoit-Wolf), ``KNN`` (k=5, largest).
Reported: window AUROC and recording AUROC (mean of the recording's window scores), averaged over
the normal classes; fit + score seconds at 1 thread; the CPU model. Also Lee et al.'s setting
(``lee_ood``): all classes but one normal *with their labels*, the held-out class anomalous;
``ClassConditionalMahalanobis`` (tied Ledoit-Wolf) vs one Gaussian and KNN.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_model  # noqa: E402  (benchmarks/ is the script's folder on sys.path)


def auroc(s: torch.Tensor, y: torch.Tensor) -> float:
    from fastad import metrics

    return float(metrics.auroc(s.double(), y.long()))


def lee_ood(name, kw, classes):
    """Lee et al.'s setting: every class but one is normal, with its labels; the held-out class is the
    anomaly. ClassConditionalMahalanobis (class means, tied Ledoit-Wolf covariance) vs one Gaussian
    (Mahalanobis LW) and KNN on the same windows; mean window AUROC over the held-out classes."""
    from fastad.datasets.sensors import load_sensor_task
    from fastad.detectors import KNN, ClassConditionalMahalanobis, Mahalanobis

    tasks = {c: load_sensor_task(name, c, **kw) for c in classes}  # task c: class c normal
    out = {"ClassConditional LW": [], "Mahalanobis LW": [], "KNN k=5": []}
    for held in classes:
        normal = [c for c in classes if c != held]
        X = torch.cat([tasks[c].train for c in normal])
        y = torch.cat([torch.full((tasks[c].train.shape[0],), i) for i, c in enumerate(normal)])
        t = tasks[held]  # its test windows, labelled 1 = not `held`: flip to 1 = `held` (the anomaly)
        lab = 1 - t.test_labels
        for k, det in (("ClassConditional LW", ClassConditionalMahalanobis(shrinkage="ledoit_wolf").fit(X, y)),
                       ("Mahalanobis LW", Mahalanobis().fit(X)), ("KNN k=5", KNN(n_neighbors=5).fit(X))):
            out[k].append(auroc(det.decision_function(t.test), lab))
    mean = {k: float(np.mean(v)) for k, v in out.items()}
    print(f"{name}: Lee OOD (one class held out as the anomaly, the others labelled normal), mean window AUROC: " +
          "  ".join(f"{k} {v:.4f}" for k, v in mean.items()), flush=True)
    return {"per_held_out_class": {c: {k: out[k][i] for k in out} for i, c in enumerate(classes)}, "mean": mean}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from fastad.datasets.sensors import load_sensor_task
    from fastad.detectors import KNN, MSVDD, Mahalanobis

    tasks = {"BasicMotions": dict(window=20, stride=10), "JapaneseVowels": dict(window=None)}
    res = {"cpu": cpu_model(), "threads": a.threads, "epochs": a.epochs, "seeds": a.seeds, "tasks": {}}
    print(f"CPU: {cpu_model()}; torch threads {a.threads}; MSVDD epochs {a.epochs}, seeds {a.seeds}")
    for name, kw in tasks.items():
        classes = load_sensor_task(name, **kw).classes
        per = {}
        for c in classes:
            t = load_sensor_task(name, c, **kw)
            y_rec = torch.zeros(int(t.test_recording.max()) + 1, dtype=torch.long)
            y_rec[t.test_recording] = t.test_labels  # every window of a recording has its label
            counts = torch.bincount(t.test_recording).double()

            def evaluate(make):
                t0 = time.perf_counter()
                s = make().fit(t.train).decision_function(t.test)
                sec = time.perf_counter() - t0
                s_rec = torch.zeros_like(counts).index_add_(0, t.test_recording, s.double()) / counts
                return auroc(s, t.test_labels), auroc(s_rec, y_rec), sec

            rows = {
                "MSVDD": [evaluate(lambda r=r: MSVDD(epochs=a.epochs, random_state=r)) for r in range(a.seeds)],
                "MSVDD no-recon": [evaluate(lambda r=r: MSVDD(epochs=a.epochs, recon_weight=0.0, random_state=r))
                                   for r in range(a.seeds)],
                "Mahalanobis LW": [evaluate(lambda: Mahalanobis())],
                "KNN k=5": [evaluate(lambda: KNN(n_neighbors=5))],
            }
            per[c] = {k: {"window_auroc": float(np.mean([v[0] for v in vs])), "recording_auroc": float(np.mean([v[1] for v in vs])),
                          "window_auroc_sd": float(np.std([v[0] for v in vs])), "seconds": float(np.mean([v[2] for v in vs]))}
                      for k, vs in rows.items()}
            print(f"{name:15s} normal={c:10s} train {tuple(t.train.shape)} test {tuple(t.test.shape)} | " +
                  "  ".join(f"{k} {v['window_auroc']:.3f}/{v['recording_auroc']:.3f}" for k, v in per[c].items()), flush=True)
        mean = {k: {m: float(np.mean([per[c][k][m] for c in classes])) for m in ("window_auroc", "recording_auroc", "seconds")}
                for k in per[classes[0]]}
        res["tasks"][name] = {"features": kw, "per_class": per, "mean": mean}
        print(f"{name}: mean over {len(classes)} normal classes (window AUROC / recording AUROC / seconds):")
        for k, v in mean.items():
            print(f"  {k:15s} {v['window_auroc']:.4f} / {v['recording_auroc']:.4f} / {v['seconds']:.2f} s")
        res["tasks"][name]["lee_ood"] = lee_ood(name, kw, classes)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
        print("wrote", a.out)


if __name__ == "__main__":
    main()
