"""`torchrun --nproc_per_node=2 -m fastad fit --distributed` on an MTD slice writes one model file that
scores like the single-process fit's (<= 1e-5)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.spawn_utils import free_port

REPO = Path(__file__).resolve().parents[2]
MTD = Path(os.environ.get("FASTAD_MTD", REPO.parent / "shared" / "data" / "mtd"))
ARGS = ["fit", "--data", str(MTD), "--max-train", "6", "--image-size", "96", "--calibration", "0",
        "--coreset-ratio", "0.2", "--num-workers", "0", "--quiet", "--batch-size", "4"]


@pytest.mark.skipif(not (MTD / "train" / "good").is_dir(), reason="MTD dataset not found (FASTAD_MTD)")
def test_torchrun_fit_distributed_equals_single_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTAD_DISTRIBUTED_TIMEOUT="60")
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    subprocess.run([sys.executable, "-m", "fastad", *ARGS, "--out", str(one)], check=True, env=env, timeout=150,
                   capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                        f"--master_port={free_port()}", "-m", "fastad", *ARGS, "--distributed", "--out", str(two)],
                       env=env, timeout=150, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("model written to") == 1 and ", 2 processes)" in r.stdout  # rank 0 reports
    import fastad.detectors
    from fastad.data import MVTecDataset

    ds = MVTecDataset(MTD, "test", image_size=96)
    x = torch.stack([ds[i]["image"] for i in (0, 200, 500)])
    a, b = fastad.detectors.load(one), fastad.detectors.load(two)
    assert b.distributed is False and b.n_fit_images_ == a.n_fit_images_
    assert b.memory_bank_.shape == a.memory_bank_.shape
    (s1, m1), (s2, m2) = a.score(x), b.score(x)
    assert float((s1 - s2).abs().max()) <= 1e-5 and float((m1 - m2).abs().max()) <= 1e-5
    assert not list(tmp_path.glob("*.tmp"))


def _torchrun(args, env, n=2):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
                           f"--master_port={free_port()}", "-m", "fastad", *args, "--distributed"],
                          env=env, timeout=240, capture_output=True, text=True)


def _scores(report):
    import csv

    with open(report / "scores.csv", newline="") as f:
        return {Path(r["path"]).name + "/" + r.get("defect_type", ""): float(r["score"]) for r in csv.DictReader(f)}


def _same_report(a, b, tol=1e-5):
    sa, sb = _scores(a), _scores(b)
    assert sa.keys() == sb.keys() and len(sa) > 0
    assert max(abs(sa[k] - sb[k]) for k in sa) <= tol
    import json

    ma = json.loads((a / "metrics.json").read_text())["metrics"]
    mb = json.loads((b / "metrics.json").read_text())["metrics"]
    assert ma.keys() == mb.keys() and all(abs(ma[k] - mb[k]) <= 1e-4 for k in ma), (ma, mb)


@pytest.mark.skipif(not (MTD / "train" / "good").is_dir(), reason="MTD dataset not found (FASTAD_MTD)")
def test_torchrun_evaluate_distributed_equals_single_process(tmp_path):
    """evaluate --distributed: a one-file model (each rank scores its share of the images) and a model
    saved with --shard (each rank loads its shard, the bank stays split) report the scores of the
    single-process evaluate (<= 1e-5); the sharded model also evaluates in one process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTAD_DISTRIBUTED_TIMEOUT="60")
    one, sharded = tmp_path / "one.safetensors", tmp_path / "sh.safetensors"
    subprocess.run([sys.executable, "-m", "fastad", *ARGS, "--out", str(one)], check=True, env=env, timeout=150,
                   capture_output=True)
    r = _torchrun([*ARGS, "--shard", "--out", str(sharded)], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors", "sh.safetensors",
                                                        "sh.shard-00001-of-00002.safetensors", "sh.shard-00002-of-00002.safetensors"]
    ev = ["evaluate", "--data", str(MTD), "--max-images", "10", "--num-workers", "0", "--quiet", "--batch-size", "4",
          "--heatmaps", "0"]
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "fastad", *ev, "--model", str(one), "--out", str(ref)], check=True, env=env,
                   timeout=150, capture_output=True)
    for name, model in (("split_images", one), ("split_bank", sharded)):
        r = _torchrun([*ev, "--model", str(model), "--out", str(tmp_path / name)], env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.count("report:") == 1  # rank 0 alone reports
        _same_report(ref, tmp_path / name)
    subprocess.run([sys.executable, "-m", "fastad", *ev, "--model", str(sharded), "--out", str(tmp_path / "whole")],
                   check=True, env=env, timeout=150, capture_output=True)
    _same_report(ref, tmp_path / "whole")


@pytest.mark.skipif(not (MTD / "test" / "good").is_dir(), reason="MTD dataset not found (FASTAD_MTD)")
def test_torchrun_zeroshot_distributed_equals_single_process(tmp_path):
    """zeroshot --distributed: each rank extracts its share, MuSc's mutual scoring on the ring, RsCIN over
    all ranks; the report equals the single-process one (<= 1e-5); --divide-num > 1 is refused."""
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTAD_DISTRIBUTED_TIMEOUT="60")
    zs = ["zeroshot", "--data", str(MTD), "--max-images", "9", "--backbone", "random_vit", "--num-workers", "0",
          "--quiet", "--batch-size", "4", "--heatmaps", "0"]
    subprocess.run([sys.executable, "-m", "fastad", *zs, "--out", str(tmp_path / "ref")], check=True, env=env,
                   timeout=150, capture_output=True)
    r = _torchrun([*zs, "--out", str(tmp_path / "two")], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("report:") == 1
    _same_report(tmp_path / "ref", tmp_path / "two")
    r = _torchrun([*zs, "--divide-num", "2", "--out", str(tmp_path / "no")], env)
    assert r.returncode != 0 and "needs --divide-num 1" in r.stderr


def test_distributed_options_refused_clearly_before_any_work(tmp_path, capsys, monkeypatch):
    from fastad.cli import main

    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    data = tmp_path / "data"
    data.mkdir()
    assert main(["fit", "--data", str(data), "--out", str(tmp_path / "m.safetensors"), "--shard"]) == 2
    assert "--shard writes a memory bank split across processes: it needs --distributed" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "m.safetensors"), "--data", str(data), "--out",
                 str(tmp_path / "r"), "--distributed"]) == 2
    assert "launch with torchrun" in capsys.readouterr().err
    assert main(["zeroshot", "--data", str(data), "--out", str(tmp_path / "z"), "--distributed", "--divide-num", "2"]) == 2
    assert "needs --divide-num 1" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()
