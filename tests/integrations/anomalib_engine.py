"""anomalib's own pipeline (Engine.fit + Engine.predict with a Folder datamodule) on a slice of MTD,
with and without fastad's routing. Shared by tests/integrations/test_anomalib.py and
benchmarks/bench_integrations.py. Needs the real anomalib 2.7 with its dependencies (`make integration`).

The backbone is timm's resnet18 with ``pre_trained=False`` (random weights seeded by
``seed_everything``: nothing is downloaded, and both runs see identical features).

Memory: anomalib 2.7's own ``KCenterGreedy`` inside ``Engine.fit`` keeps every greedy step's ``[N, d]``
temporary alive (its resident size grows by about ``N * d * 4`` bytes per step: 19 GB by the end at 16
MTD images, ratio 0.1, N = 16,384 patches; the routed run stays at 1.1 GB), so the reference runs use
few images or a small ratio."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

MTD = Path(os.environ.get("FASTAD_MTD", Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mtd"))
DEFECTS = ("blowhole", "break", "crack", "fray", "uneven")


def mtd_available() -> bool:
    return (MTD / "train" / "good").is_dir()


def mtd_slice(dst: Path, n_train: int, n_test: int) -> Path:
    """A Folder-layout slice of MTD made of symlinks: ``train/good`` (``n_train`` images),
    ``test/good`` and ``test/bad`` (``n_test`` each; the defects taken round-robin over the classes)."""
    def images(d: Path):
        return sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".png", ".bmp"))

    (dst / "train/good").mkdir(parents=True, exist_ok=True)
    (dst / "test/good").mkdir(parents=True, exist_ok=True)
    (dst / "test/bad").mkdir(parents=True, exist_ok=True)
    good = images(MTD / "train" / "good")
    for p in good[:n_train]:
        _link(p, dst / "train/good" / p.name)
    for p in images(MTD / "test" / "good")[:n_test]:
        _link(p, dst / "test/good" / p.name)
    per_class = [images(MTD / "test" / d) for d in DEFECTS if (MTD / "test" / d).is_dir()]
    picked = [c[i] for i in range(n_test) for c in per_class if i < len(c)][:n_test]
    for p in picked:
        _link(p, dst / "test/bad" / f"{p.parent.name}_{p.name}")
    return dst


def _link(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.symlink_to(src.resolve())


def make_model(kind: str, coreset_ratio: float = 0.1):
    from anomalib.models import Padim, Patchcore

    common = dict(backbone="resnet18", pre_trained=False, post_processor=False, evaluator=False, visualizer=False)
    if kind == "patchcore":
        return Patchcore(layers=["layer2", "layer3"], coreset_sampling_ratio=coreset_ratio, num_neighbors=9, **common)
    if kind == "padim":
        return Padim(layers=["layer1", "layer2", "layer3"], n_features=100, **common)
    raise ValueError(f"kind must be 'patchcore' or 'padim', got {kind!r}")


def run(kind: str, routed: bool, data: Path, workdir: Path, batch_size: int = 8, coreset_ratio: float = 0.1) -> dict:
    """Engine.fit then Engine.predict; returns scores [N], maps [N, H, W], the test image paths and the
    fit / predict wall times (seconds)."""
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from fastad.integrations.anomalib import use_fastad

    seed_everything(0, verbose=False)
    model = make_model(kind, coreset_ratio)
    if routed:
        use_fastad(model)
    dm = Folder(name="mtd", root=data, normal_dir="train/good", abnormal_dir="test/bad", normal_test_dir="test/good",
                train_batch_size=batch_size, eval_batch_size=batch_size, num_workers=0, seed=0)
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=str(workdir),
                    enable_progress_bar=False, enable_model_summary=False)
    seed_everything(0, verbose=False)
    t0 = time.perf_counter()
    engine.fit(model, datamodule=dm)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = engine.predict(model, datamodule=dm)
    t_predict = time.perf_counter() - t0
    scores = torch.cat([b.pred_score.reshape(-1) for b in preds])
    maps = torch.cat([b.anomaly_map.reshape(b.anomaly_map.shape[0], *b.anomaly_map.shape[-2:]) for b in preds])
    paths = [str(p) for b in preds for p in b.image_path]
    return {"scores": scores, "maps": maps, "paths": paths, "fit_s": t_fit, "predict_s": t_predict, "model": model}
