"""The labelled series inside the aeon wheel (skipped when aeon is absent); a real-data slice scored."""
import pytest
import torch

from fastad.metrics import auroc
from fastad.timeseries import load_series, score_series


def _load(name):
    try:
        return load_series(name)
    except ImportError:
        pytest.skip("aeon not installed (make build installs aeon==1.6.0 with --no-deps)")


def test_internal_bleeding_and_daphnet():
    d = _load("InternalBleeding16")
    assert d["test"].shape == (7501, 1) and d["train"].shape == (1200, 1) and int(d["labels"].sum()) == 12
    dp = _load("Daphnet_S06R02E0")
    assert dp["test"].shape == (7040, 9) and int(dp["labels"].sum()) == 0 and "no anomaly" in dp["note"]
    with pytest.raises(ValueError, match="name must be one of"):
        load_series("nope")


def test_real_slice_scores():
    """A 1,500-point slice of InternalBleeding16 around its anomaly: the THEMIS combination finds it."""
    d = _load("InternalBleeding16")
    x, y = d["test"][3500:5000, 0], d["labels"][3500:5000]
    out = score_series(x, 60, 2, methods=("lof", "spectral", "themis"))
    for m in ("lof", "themis"):
        assert auroc(out[m], y) > 0.9, m
    assert bool(torch.isfinite(out["spectral"]).all())
