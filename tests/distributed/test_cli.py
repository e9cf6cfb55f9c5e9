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
