"""The CLI tests' toy data: a tiny synthetic MVTec-layout tree, the fit options of the random test
backbone, and the one-line-error runner (tests/test_cli.py, test_output_safety.py, test_degenerate.py,
test_fuzz.py; the ``tree`` / ``model`` fixtures on them are in tests/conftest.py)."""
from pathlib import Path

import numpy as np
from PIL import Image

from fastad.cli import main

SIZE = 64
FIT = ["--backbone", "random_cnn", "--image-size", str(SIZE), "--num-workers", "0", "-q"]


def _texture(rng, size=SIZE):
    a = rng.normal(120, 8, (size, size)) + 25 * np.sin(np.arange(size) / 3.0)[None, :]
    return a


def make_tree(root: Path, n_train=12, n_good=4, n_bad=4, seed=0) -> Path:
    """MVTec layout: train/good, test/good, test/scratch (+ ground_truth masks): bright squares."""
    rng = np.random.default_rng(seed)
    for split, kind, n in (("train", "good", n_train), ("test", "good", n_good), ("test", "scratch", n_bad)):
        d = root / split / kind
        d.mkdir(parents=True)
        for i in range(n):
            img = _texture(rng)
            if kind == "scratch":
                m = np.zeros((SIZE, SIZE), np.uint8)
                y, x = rng.integers(8, SIZE - 24, 2)
                img[y : y + 14, x : x + 14] = 250
                m[y : y + 14, x : x + 14] = 255
                g = root / "ground_truth" / kind
                g.mkdir(parents=True, exist_ok=True)
                Image.fromarray(m).save(g / f"{i:03d}_mask.png")
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).convert("RGB").save(d / f"{i:03d}.png")
    return root


def run_err(argv, capsys) -> str:
    """Run a command that must fail cleanly: exit status 2, one line on stderr, no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
