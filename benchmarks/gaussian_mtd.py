"""GaussianAD (Rippel et al.) on MTD: EfficientNet-Lite0 stage levels, Ledoit-Wolf per level, image AUROC.

    .venv/bin/python benchmarks/gaussian_mtd.py      (data: $FASTAD_MTD or ../shared/data/mtd)
"""
import time, torch, numpy as np
from fastad.data import MVTecDataset, batches
from fastad.detectors import GaussianAD
from fastad import metrics
torch.set_num_threads(2)
import os
root = os.environ.get("FASTAD_MTD", str(__import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared/data/mtd"))
tr, te = MVTecDataset(root, "train", image_size=224), MVTecDataset(root, "test", image_size=224)
t0 = time.perf_counter()
det = GaussianAD(progress=False).fit(tr)
t1 = time.perf_counter()
s = det.decision_function(te)
t2 = time.perf_counter()
y = torch.as_tensor(te.labels)
print("levels", det.layers_, "dims", sum(det.layer_dims_.values()))
print(f"fit {t1-t0:.1f} s ({len(tr)} images), score {t2-t1:.1f} s ({len(te)} images)")
print("image AUROC", float(metrics.auroc(s.double(), y)))
types = np.array(te.defect_types)
for t in sorted(set(types) - {"good"}):
    sel = (types == "good") | (types == t)
    print(f"  {t:9s} {float(metrics.auroc(s[torch.from_numpy(sel)].double(), y[torch.from_numpy(sel)])):.4f}")
