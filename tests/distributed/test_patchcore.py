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
            "local_bank": det.memory_bank_.shape[0], "bank": det.n_bank_rows_, "n_fit": det.n_fit_images_}


@pytest.mark.skipif(not (MTD / "train" / "good").is_dir(), reason="MTD dataset not found (FASTAD_MTD)")
def test_patchcore_distributed_fit_score_save_equal_single_process(tmp_path):
    path = str(tmp_path / "pc.safetensors")
    outs = results(run(_fit_score, 2, path, deadline=180, fastad_timeout=60))
    for o in outs:
        assert o["scores"] <= 1e-5 and o["maps"] <= 1e-5, o
        assert o["loaded_scores"] <= 1e-5 and o["loaded_maps"] <= 1e-5, o
    assert outs[0]["local_bank"] + outs[1]["local_bank"] == outs[0]["bank"]  # the bank is split, not copied
    assert outs[0]["n_fit"] == outs[1]["n_fit"] == 5
    assert not list(tmp_path.glob("*.tmp"))


def _interrupted(rank, world, path):
    from fastad.detectors import PatchCore

    g = torch.Generator().manual_seed(rank)
    feats = {"a": torch.randn(3, 4, 5, 5, generator=g)}
    if rank == 1:
        feats["a"][0, 0, 0, 0] = float("nan")  # this rank's fit fails before the coreset
    det = PatchCore(backbone=None, coreset_ratio=0.5, progress=False, distributed=True)
    det.fit_features(feats, image_size=(20, 20))
    det.save(path)
    return True


def test_an_interrupted_distributed_fit_writes_no_model_file(tmp_path):
    path = tmp_path / "pc.safetensors"
    out = run(_interrupted, 2, str(path), deadline=60, fastad_timeout=3)
    assert out[1].get("type") == "ValueError" and "NaN" in out[1]["err"], out[1]
    assert out[0].get("type") == "DistributedError" and "[1]" in out[0]["err"], out[0]
    assert list(tmp_path.iterdir()) == []


def _nccl(rank, world, folder):
    import torch.distributed as dist

    import fastad
    import fastad.distributed as fd

    dev = torch.device("cuda", rank)
    torch.cuda.set_device(dev)
    bank = torch.randn(300, 32, generator=torch.Generator().manual_seed(0))
    q = bank[:7] + 0.1
    mine = bank[:120] if rank == 0 else bank[120:]
    d, i = fd.knn(q.to(dev), mine.to(dev), 4)
    rd, ri = fastad.ops.knn(q.to(dev), bank.to(dev), 4)
    ci, _ = fd.coreset(mine.to(dev), 20)
    rci, _ = fastad.ops.coreset(bank.to(dev), 20)
    z = torch.nn.functional.normalize(torch.randn(6, 16, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    s = fd.mutual_scores(z[:3].to(dev) if rank == 0 else z[3:].to(dev), ceil_small=True)
    rs = fastad.ops.mutual_scores(z.to(dev), ceil_small=True)[:3] if rank == 0 else \
        fastad.ops.mutual_scores(z.to(dev), ceil_small=True)[3:]
    counts = fd.all_rows(torch.tensor([rank, 7]))  # a CPU tensor on an NCCL group: moved to the GPU and back
    # PatchCore on CUDA shards: fit, score, save (one file) and shard=True, loaded per rank
    from fastad.detectors import PatchCore

    kw = dict(backbone=None, coreset_ratio=0.5, progress=False, num_neighbors=3, device=str(dev))
    feats, qf = _feats(0), _feats(1)
    ref = PatchCore(**kw).fit_features({"a": feats["a"].to(dev)}, image_size=(20, 20))
    s1, _ = ref.score_features({"a": qf["a"].to(dev)}, image_size=(20, 20))
    det = PatchCore(**kw, distributed=True).fit_features({"a": feats["a"][3 * rank : 3 * rank + 3].to(dev)}, image_size=(20, 20))
    s2, _ = det.score_features({"a": qf["a"].to(dev)}, image_size=(20, 20))
    det.save(f"{folder}/pc.safetensors", shard=True)
    s3, _ = PatchCore.load(f"{folder}/pc.safetensors", distributed=True, device=str(dev)).score_features(
        {"a": qf["a"].to(dev)}, image_size=(20, 20))
    dist.barrier()
    return (bool(torch.equal(d, rd) and torch.equal(i, ri)), int((ci == rci).sum()), float((s - rs).abs().max()),
            counts.tolist(), float((s1 - s2).abs().max()), float((s1 - s3).abs().max()))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL test: needs 2 GPUs")
def test_nccl_paths_on_two_gpus(tmp_path):
    import tests.distributed.spawn_utils as su

    outs = results(su.run(_nccl, 2, str(tmp_path), deadline=180, backend="nccl"))
    for knn_equal, n_same, musc_err, counts, pc_err, shard_err in outs:
        assert knn_equal and n_same == 20 and musc_err <= 1e-5  # CUDA coreset step: torch arithmetic (no near-ties here)
        assert counts == [0, 7, 1, 7] and pc_err <= 1e-4 and shard_err <= 1e-4


def _feats(seed=0):
    return {"a": torch.randn(6, 4, 5, 5, generator=torch.Generator().manual_seed(seed))}


def _sharded(rank, world, folder):
    import shutil
    from pathlib import Path

    import torch.distributed as dist

    import fastad.distributed as fd
    from fastad.detectors import ModelFileError, PatchCore, load

    kw = dict(backbone=None, coreset_ratio=0.5, progress=False, num_neighbors=3)
    feats, q = _feats(0), _feats(1)
    ref = PatchCore(**kw).fit_features(feats, image_size=(20, 20))
    s1, m1 = ref.score_features(q, image_size=(20, 20))
    lo, hi = fd.shard_range(6)
    det = PatchCore(**kw, distributed=True).fit_features({"a": feats["a"][lo:hi]}, image_size=(20, 20))
    path = Path(folder) / "pc.safetensors"
    assert det.save(path, shard=True) == path
    per_rank = PatchCore.load(path, distributed=True)  # each rank: its own shard
    s2, m2 = per_rank.score_features(q, image_size=(20, 20))
    whole = load(path)  # one process: every shard concatenated
    s3, m3 = whole.score_features(q, image_size=(20, 20))
    out = {"files": sorted(p.name for p in Path(folder).iterdir()), "count": PatchCore.shard_count(path),
           "local_rows": per_rank.memory_bank_.shape[0], "fitted_rows": det.memory_bank_.shape[0],
           "distributed": per_rank.distributed, "whole_rows": whole.memory_bank_.shape[0],
           "ref_rows": ref.memory_bank_.shape[0], "whole_distributed": whole.distributed,
           "err_split": float((s1 - s2).abs().max().max((m1 - m2).abs().max())),
           "err_whole": float((s1 - s3).abs().max().max((m1 - m3).abs().max())),
           # the same rows (the sharded bank is in global row order, the single-process one in selection order)
           "whole_bank_equal": bool(torch.equal(*(b[torch.argsort(b[:, 0])] for b in (whole.memory_bank_, ref.memory_bank_))))}
    dist.barrier()
    if rank == 0:  # a corrupted shard and a missing one are named
        bad = Path(folder) / "bad"
        bad.mkdir()
        for p in Path(folder).glob("pc*"):
            shutil.copy(p, bad / p.name)
        b = (bad / "pc.shard-00002-of-00002.safetensors").read_bytes()
        (bad / "pc.shard-00002-of-00002.safetensors").write_bytes(b[:-4] + bytes(4 * [255]))
        try:
            load(bad / "pc.safetensors")
        except ModelFileError as e:
            out["corrupt"] = str(e)
        (bad / "pc.shard-00001-of-00002.safetensors").unlink()
        try:
            load(bad / "pc.safetensors")
        except ModelFileError as e:
            out["missing"] = str(e)
        shutil.rmtree(bad)
    try:
        PatchCore(**kw).fit_features(feats, image_size=(20, 20)).save(Path(folder) / "x.safetensors", shard=True)
    except ValueError as e:
        out["not_distributed"] = str(e)
    return out


def test_sharded_save_loads_per_rank_and_in_one_process(tmp_path):
    outs = results(run(_sharded, 2, str(tmp_path), deadline=90, fastad_timeout=30))
    for r, o in enumerate(outs):
        assert o["files"] == ["pc.safetensors", "pc.shard-00001-of-00002.safetensors", "pc.shard-00002-of-00002.safetensors"], o
        assert o["count"] == 2 and o["distributed"] and not o["whole_distributed"]
        assert o["local_rows"] == o["fitted_rows"] and o["whole_rows"] == o["ref_rows"]
        assert o["err_split"] <= 1e-5 and o["err_whole"] <= 1e-5 and o["whole_bank_equal"], o
        assert "needs distributed=True" in o["not_distributed"]
    assert outs[0]["local_rows"] + outs[1]["local_rows"] == outs[0]["ref_rows"]
    assert "checksum" in outs[0]["corrupt"] and "shard-00002" in outs[0]["corrupt"]
    assert "pc.shard-00001-of-00002.safetensors' is missing" in outs[0]["missing"]


def _shard_refused(rank, world, folder):
    from pathlib import Path

    import fastad.distributed as fd
    from fastad.detectors import PatchCore

    lo, hi = fd.shard_range(6)
    det = PatchCore(backbone=None, coreset_ratio=0.5, progress=False, distributed=True)
    det.fit_features({"a": _feats(0)["a"][lo:hi]}, image_size=(20, 20))
    det.save(Path(folder) / "pc.safetensors", shard=True)


def test_a_failed_shard_write_leaves_no_index_and_no_shard(tmp_path):
    user = tmp_path / "pc.shard-00002-of-00002.safetensors"
    user.write_text("the user's own file")  # rank 1 must not replace it
    out = run(_shard_refused, 2, str(tmp_path), deadline=60, fastad_timeout=20)
    assert out[1].get("type") == "ValueError" and "not a fastad model shard" in out[1]["err"], out[1]
    assert out[0].get("type") == "DistributedError" and "rank(s) [1]" in out[0]["err"], out[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [user.name] and user.read_text() == "the user's own file"


def _killed_in_coreset(rank, world, path):
    import importlib
    import signal

    from fastad.detectors import PatchCore

    dc = importlib.import_module("fastad.distributed.coreset")
    if rank == 1:  # SIGKILLed at the 3rd greedy step of the fit's coreset: no exception, no goodbye
        orig = dc._Stepper.__call__

        def call(self, s, *a, **kw):
            if s == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(self, s, *a, **kw)

        dc._Stepper.__call__ = call
    det = PatchCore(backbone=None, coreset_ratio=0.5, progress=False, distributed=True)
    det.fit_features({"a": _feats(0)["a"][3 * rank : 3 * rank + 3]}, image_size=(20, 20))
    det.save(path)
    return True


def test_a_rank_killed_during_a_distributed_fit_leaves_no_model_file(tmp_path):
    out = run(_killed_in_coreset, 2, str(tmp_path / "pc.safetensors"), deadline=60, fastad_timeout=6)
    assert out[1].get("missing"), out[1]
    assert out[0].get("type") == "DistributedError" and "rank(s) [1] DIED" in out[0]["err"], out[0]
    assert list(tmp_path.iterdir()) == []
