"""Sanity check of fastad.data + fastad.features on real data against the number in
shared/docs/DATA.md (a quick PatchCore-style run: EfficientNet-Lite0 blocks 4+10, 224 px squash,
200 train images, random 5% bank, 1-NN: image AUROC 0.800, pixel AUROC 0.761). Not a detector:
fastad.detectors.PatchCore is the real thing.

    .venv/bin/python benchmarks/checks/check_mtd_features.py        # needs ../shared/data/mtd or $FASTAD_MTD
"""
import os
from pathlib import Path

import time, torch, torch.nn.functional as F
from sklearn.metrics import roc_auc_score
import fastad
from fastad.data import MVTecDataset, batches
from fastad.features import get_backbone
torch.set_num_threads(2)
t0 = time.perf_counter(); c0 = time.process_time()
bb = get_backbone("efficientnet_lite0")
root = Path(os.environ.get("FASTAD_MTD", Path(__file__).resolve().parents[3] / "shared" / "data" / "mtd"))
train = MVTecDataset(root, "train", image_size=224)
test = MVTecDataset(root, "test", image_size=224)
g = torch.Generator().manual_seed(0)
sub = torch.utils.data.Subset(train, torch.randperm(len(train), generator=g)[:200].tolist())
fx = bb.extractor(batch_size=32)
def embed(f):
    a = F.avg_pool2d(f["_blocks.4"], 3, 1, 1)
    b = F.interpolate(F.avg_pool2d(f["_blocks.10"], 3, 1, 1), size=a.shape[-2:], mode="bilinear", align_corners=False)
    e = torch.cat([a, b], 1)
    return e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]), e.shape[-2:]
emb, _ = embed(fx(batches(sub, 32, num_workers=2)))
bank = emb[torch.randperm(emb.shape[0], generator=g)[: emb.shape[0] // 20]]
print("bank", bank.shape, f"{time.perf_counter()-t0:.1f}s")
scores, maps, masks, labels, types = [], [], [], [], []
for b in batches(test, 32, num_workers=2):
    e, hw = embed(fx(b["image"]))
    d, _ = fastad.ops.knn(e, bank, 1)
    m = d[:, 0].reshape(-1, 1, *hw)
    scores.append(m.flatten(1).max(1).values)
    maps.append(F.interpolate(m, size=224, mode="bilinear", align_corners=False)[:, 0])
    masks.append(b["mask"]); labels.append(b["label"]); types += b["defect_type"]
s = torch.cat(scores); y = torch.cat(labels); M = torch.cat(maps); G = torch.cat(masks)
print(f"image AUROC {roc_auc_score(y.numpy(), s.numpy()):.3f}")
print(f"pixel AUROC {roc_auc_score(G.flatten().numpy(), M.flatten().numpy()):.3f}")
for t in sorted(set(types) - {'good'}):
    idx = [i for i, tt in enumerate(types) if tt in (t, 'good')]
    print(f"  {t}: image AUROC {roc_auc_score(y[idx].numpy(), s[idx].numpy()):.3f}")
print(f"total {time.perf_counter()-t0:.1f}s wall, {time.process_time()-c0:.1f}s CPU")
