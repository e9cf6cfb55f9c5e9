"""The model-file module: write -> verify -> registry -> the class's _from_file."""
import json

import pytest
import torch

from fastad.detectors import KNN, ModelFileError, load
from fastad.detectors import _io


def _fitted(tmp_path):
    X = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    det = KNN(n_neighbors=3).fit(X)
    return det, det.save(tmp_path / "m.safetensors"), X


def test_round_trip_and_metadata(tmp_path):
    det, path, X = _fitted(tmp_path)
    meta = _io.read_meta(path)
    assert meta["format"] == _io.FORMAT_NAME and meta["format_version"] == _io.FORMAT_VERSION
    assert meta["detector"] == "KNN" and set(meta["sha256"]) == {"train", "decision_scores"}
    again = load(path)
    assert torch.equal(again.decision_function(X), det.decision_function(X))
    assert not path.with_name(path.name + ".tmp").exists()


def _rewrite_meta(path, **changes):
    from safetensors.torch import load_file, save_file

    meta = _io.read_meta(path)
    meta.update(changes)
    save_file(load_file(str(path)), str(path), metadata={_io.META_KEY: json.dumps(meta)})


def test_unknown_detector_and_version_are_refused(tmp_path):
    _, path, _ = _fitted(tmp_path)
    _rewrite_meta(path, detector="NoSuchDetector")
    with pytest.raises(ModelFileError, match="unknown detector 'NoSuchDetector'"):
        load(path)
    _rewrite_meta(path, detector="KNN", format_version=99)
    with pytest.raises(ModelFileError, match="format version 99 is not supported"):
        load(path)


def test_digest_mismatch_is_refused(tmp_path):
    _, path, _ = _fitted(tmp_path)
    meta = _io.read_meta(path)
    _rewrite_meta(path, sha256={**meta["sha256"], "train": "0" * 64})
    with pytest.raises(ModelFileError, match="'train' does not match its checksum"):
        load(path)


def test_tensor_digest_depends_on_bytes_not_device_or_layout():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert _io.tensor_digest(t) == _io.tensor_digest(t.t().contiguous().t())
    assert _io.tensor_digest(t) != _io.tensor_digest(t + 1)
