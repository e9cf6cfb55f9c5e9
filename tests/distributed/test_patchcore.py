"""PatchCore(distributed=True) on 2 gloo CPU processes, on an MTD slice: the same scores and maps as the
single-process fit (<= 1e-5), and the model saved from rank 0 loads in one process with equal scores."""
import os
from pathlib import Path

import pytest
import torch

from tests.distributed.spawn_utils import results, run

REPO = Path(__file__).resolve().parents[2]
MTD = Path(os.environ.get("FASTAD_MTD", REPO.parent / "shared" / "data" / "mtd"))


def _images(split, idx, size=96):
    from fastad.data import MVTecDataset

    ds = MVTecDataset(MTD, split, image_size=size)
    return torch.stack([ds[i]["image"] for i in idx])


def _fit_score(rank, world, path):
    import torch.distributed as dist

    import fastad
    import fastad.distributed as fd
    from fastad.detectors import PatchCore

    xtr, xte = _images("train", range(5)), _images("test", [0, 150, 300, 640])
    kw = dict(coreset_ratio=0.2, progress=False, random_state=3, batch_size=4)
    s1, m1 = PatchCore(**kw).fit(xtr).score(xte)
    det = PatchCore(**kw, distributed=True).fit(fd.shard(xtr))
    s2, m2 = det.score(xte)
    det.save(path)
    dist.barrier()
    s3, m3 = fastad.detectors.load(path).score(xte)
    return {"scores": float((s1 - s2).abs().max()), "maps": float((m1 - m2).abs().max()),
            "loaded_scores": float((s1 - s3).abs().max()), "loaded_maps": float((m1 - m3).abs().max()),
            "local_bank": det.memory_bank_.shape[0], "bank": det.n_bank_rows_}


@pytest.mark.skipif(not (MTD / "train" / "good").is_dir(), reason="MTD dataset not found (FASTAD_MTD)")
def test_patchcore_distributed_fit_score_save_equal_single_process(tmp_path):
    path = str(tmp_path / "pc.safetensors")
    outs = results(run(_fit_score, 2, path, deadline=180, fastad_timeout=60))
    for o in outs:
        assert o["scores"] <= 1e-5 and o["maps"] <= 1e-5, o
        assert o["loaded_scores"] <= 1e-5 and o["loaded_maps"] <= 1e-5, o
    assert outs[0]["local_bank"] + outs[1]["local_bank"] == outs[0]["bank"]  # the bank is split, not copied
    assert not list(tmp_path.glob("*.tmp"))
