"""Output safety: fastad never deletes or overwrites a file it did not create (issue 11).

Every command's --out target is tried with user files in it (``images/``, ``heatmaps/``,
``notes.txt``, a model): the files survive byte for byte, and each refusal is one line on stderr,
exit status 2, given before any work (no dataset opened, no backbone or model loaded).
"""
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastad.cli as cli
import fastad.demo as demo
from fastad._output import (
    MANIFEST,
    UsageError,
    atomic_path,
    atomic_write,
    check_model_path,
    check_not_inside,
    check_report_dir,
)
from fastad.cli import main
from tests.helpers.cli_tree import FIT, SIZE, run_err


def snapshot(root: Path) -> dict:
    """path -> (sha256, mode) of every file under root (folders included as entries)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel + "/"] = None
        else:
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
    return out


def user_files(d: Path, model_bytes: bytes = b"not really a model but the user's") -> Path:
    """A folder as a user might have it: input images, their own heatmaps, notes and a model."""
    rng = np.random.default_rng(7)
    for sub in ("images", "heatmaps"):
        (d / sub).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(d / sub / f"{i:05d}_x.png")
    (d / "notes.txt").write_text("my notes\n")
    os.chmod(d / "notes.txt", 0o640)
    (d / "model.safetensors").write_bytes(model_bytes)
    return d


@pytest.fixture
def no_work(monkeypatch):
    """Any attempt to open data, build a detector, load a model or a backbone fails the test."""

    def boom(*a, **k):
        raise AssertionError("work started before the output path was checked")

    for mod in (cli, demo):
        for name in ("open_dataset", "make_detector", "load_model", "fit_detector", "score_to_report"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, boom)
    import fastad.features

    monkeypatch.setattr(fastad.features, "get_backbone", boom)


def _commands(tree, model, out):
    q = ["-q", "--num-workers", "0"]
    return {
        "predict": ["predict", "--model", str(model), "--data", str(tree), "--out", str(out)] + q,
        "evaluate": ["evaluate", "--model", str(model), "--data", str(tree), "--out", str(out)] + q,
        "zeroshot": ["zeroshot", "--data", str(tree), "--out", str(out), "--backbone", "random_vit"] + q,
        "demo": ["demo", "--data", str(tree), "--out", str(out), "--backbone", "random_cnn", "--image-size", str(SIZE)] + q,
    }


# ------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("command", ["predict", "evaluate", "zeroshot", "demo"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_report_commands_refuse_a_folder_of_user_files_before_any_work(command, overwrite, tree, model, tmp_path,
                                                                       capsys, no_work):
    out = user_files(tmp_path / "mine")
    before = snapshot(out)
    argv = _commands(tree, model, out)[command] + (["--overwrite"] if overwrite else [])
    t0 = time.perf_counter()
    line = run_err(argv, capsys)
    assert time.perf_counter() - t0 < 5
    assert str(out) in line and "fastad" in line
    assert ("--overwrite" in line) != overwrite  # without it: the hint; with it: images/ heatmaps/ still refused
    assert snapshot(out) == before


@pytest.mark.parametrize("command", ["predict", "evaluate", "zeroshot", "demo"])
def test_report_commands_refuse_a_file_as_out(command, tree, model, tmp_path, capsys, no_work):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    line = run_err(_commands(tree, model, out)[command], capsys)
    assert "is a file" in line and out.read_text() == "keep me"


def test_predict_into_the_folder_of_its_input_images_is_refused(tree, model, tmp_path, capsys, monkeypatch, no_work):
    """The issue's repro: `fastad predict --data images --out .` in a folder holding images/*.png."""
    user_files(tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    line = run_err(["predict", "--model", str(model), "--data", "images", "--out", ".", "-q"], capsys)
    assert "not empty" in line
    line = run_err(["predict", "--model", str(model), "--data", "images", "--out", "images/report", "-q"], capsys)
    assert "inside --data" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_fit_refuses_a_folder_and_an_existing_file_before_any_work(overwrite, tree, tmp_path, capsys, no_work):
    user_files(tmp_path)
    before = snapshot(tmp_path)
    extra = ["--overwrite"] if overwrite else []
    line = run_err(["fit", "--data", str(tree), "--out", str(tmp_path / "images")] + FIT + extra, capsys)
    assert "is a folder" in line
    if not overwrite:
        for name in ("notes.txt", "model.safetensors"):
            line = run_err(["fit", "--data", str(tree), "--out", str(tmp_path / name)] + FIT, capsys)
            assert "already exists" in line and "--overwrite" in line
    line = run_err(["fit", "--data", str(tree), "--out", str(tmp_path / "notes.txt" / "m.safetensors")] + FIT + extra, capsys)
    assert "is a file" in line
    assert snapshot(tmp_path) == before


def test_fit_overwrite_replaces_only_the_named_file_with_the_users_mode(tree, tmp_path, capsys):
    user_files(tmp_path)
    before = snapshot(tmp_path)
    target = tmp_path / "model.safetensors"
    assert main(["fit", "--data", str(tree), "--out", str(target), "--overwrite"] + FIT) == 0
    after = snapshot(tmp_path)
    assert after.pop("model.safetensors") != before.pop("model.safetensors")
    assert after == before  # nothing else changed, no stray temporary file
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    from fastad.detectors import load

    assert load(target).backbone_name_ == "random_cnn"


# ------------------------------------------------------------------------------------ reports


def test_report_rerun_replaces_only_its_own_files(tree, model, tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["predict", "--model", str(model), "--data", str(tree), "--out", str(out), "-q", "--num-workers", "0"]
    assert main(argv) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and "index.html" in manifest["files"]
    assert len([f for f in manifest["files"] if f.startswith("heatmaps/") and f.endswith(".png")]) == 8
    assert "heatmaps/index.html" in manifest["files"]
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == set(manifest["files"]) | {MANIFEST}
    # the user adds files into the report folder, then re-runs with fewer heatmaps
    (out / "notes.txt").write_text("mine")
    (out / "heatmaps" / "my_drawing.png").write_bytes(b"user bytes")
    assert main(argv + ["--heatmaps", "1", "--top-k", "1"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "heatmaps" / "my_drawing.png").read_bytes() == b"user bytes"
    manifest2 = json.loads((out / MANIFEST).read_text())
    ours = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"notes.txt", "heatmaps/my_drawing.png", MANIFEST}
    assert ours == set(manifest2["files"])  # stale heatmaps of the first run were removed, only those
    assert len([f for f in manifest2["files"] if f.startswith("heatmaps/") and f.endswith(".png")]) < 8


def test_report_overwrite_adds_next_to_user_files(tree, model, tmp_path, capsys):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["predict", "--model", str(model), "--data", str(tree), "--out", str(out), "-q", "--num-workers", "0"]
    line = run_err(argv, capsys)
    assert "not empty" in line and "--overwrite" in line
    assert main(argv + ["--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "index.html").is_file()
    assert "notes.txt" not in json.loads((out / MANIFEST).read_text())["files"]


def test_report_writer_never_leaves_a_spool_file(tmp_path):
    import torch

    from fastad.report import ReportWriter

    w = ReportWriter(tmp_path / "r", progress=False)
    w.add(paths=["a.png"], scores=torch.tensor([1.0]), maps=torch.rand(1, 8, 8))
    assert [p.name for p in (tmp_path / "r").iterdir()] == [MANIFEST]  # the map spool has no name
    w.finish()
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".fastad-spool")]


# ------------------------------------------------------------------------------------ the module


def test_check_report_dir_cases(tmp_path):
    assert check_report_dir(tmp_path / "new" / "deeper").path == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing created by a check
    (tmp_path / "empty").mkdir()
    check_report_dir(tmp_path / "empty")
    user_files(tmp_path / "u")
    with pytest.raises(UsageError, match="not empty"):
        check_report_dir(tmp_path / "u")
    with pytest.raises(UsageError, match="images"):
        check_report_dir(tmp_path / "u", overwrite=True)
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "notes.txt").write_text("x")
    check_report_dir(tmp_path / "n", overwrite=True)
    with pytest.raises(UsageError, match="is a file"):
        check_report_dir(tmp_path / "n" / "notes.txt")
    with pytest.raises(UsageError, match="is a file"):
        check_report_dir(tmp_path / "n" / "notes.txt" / "sub")
    # a forged manifest cannot make fastad delete files outside the folder
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / MANIFEST).write_text(json.dumps({"format": "fastad-report-manifest", "files": ["../n/notes.txt"]}))
    rd = check_report_dir(tmp_path / "f")
    rd.finish()
    assert (tmp_path / "n" / "notes.txt").read_text() == "x"


def test_check_model_path_cases(tmp_path):
    assert check_model_path(tmp_path / "sub" / "m.safetensors") == tmp_path / "sub" / "m.safetensors"
    (tmp_path / "m").write_bytes(b"x")
    with pytest.raises(UsageError, match="already exists"):
        check_model_path(tmp_path / "m")
    check_model_path(tmp_path / "m", overwrite=True)
    with pytest.raises(UsageError, match="is a folder"):
        check_model_path(tmp_path, overwrite=True)
    with pytest.raises(UsageError, match="is a file"):
        check_model_path(tmp_path / "m" / "x.safetensors", overwrite=True)
    with pytest.raises(UsageError, match="inside --data"):
        check_not_inside(tmp_path / "a" / "b", tmp_path / "a")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_model_path_read_only_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UsageError, match="not writable"):
            check_model_path(ro / "m.safetensors")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_leaves_the_target_and_no_temp_on_failure(tmp_path, exc):
    target = tmp_path / "notes.txt"
    target.write_text("original")
    with pytest.raises(exc):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise exc()
    assert target.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with pytest.raises(exc):
        with atomic_path(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"x")
            raise exc()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_atomic_write_gives_the_users_mode(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "a.txt", "w") as f:
            f.write("hello")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


def test_interrupted_model_save_leaves_nothing(tree, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    (tmp_path / "notes.txt").write_text("keep")
    rc = main(["fit", "--data", str(tree), "--out", str(tmp_path / "m.safetensors")] + FIT)
    assert rc == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_report_of_an_older_fastad_without_manifest_is_recognised(tree, model, tmp_path, capsys):
    out = tmp_path / "old"
    argv = ["predict", "--model", str(model), "--data", str(tree), "--out", str(out), "-q", "--num-workers", "0"]
    assert main(argv) == 0
    (out / MANIFEST).unlink()  # what fastad wrote before manifests existed
    assert main(argv + ["--heatmaps", "1", "--top-k", "1"]) == 0
    assert len(list((out / "heatmaps").iterdir())) < 8  # its stale heatmaps were fastad's: replaced
    # one foreign file inside makes it a user folder again
    (out / MANIFEST).unlink()
    (out / "images" / "holiday.jpg").write_bytes(b"jpeg")
    line = run_err(argv, capsys)
    assert "not empty" in line
    assert (out / "images" / "holiday.jpg").read_bytes() == b"jpeg"


def test_stale_files_are_never_removed_through_a_symlink(tmp_path):
    rd = check_report_dir(tmp_path / "rep")
    with rd.open("heatmaps/00000_a.png") as f:
        f.write(b"ours")
    rd.finish()
    # the user replaces heatmaps/ by a link to their own photos, which has a file of the same name
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "00000_a.png").write_bytes(b"holiday")
    import shutil

    shutil.rmtree(tmp_path / "rep" / "heatmaps")
    (tmp_path / "rep" / "heatmaps").symlink_to(photos)
    rd = check_report_dir(tmp_path / "rep")
    rd.finish()  # the old manifest lists heatmaps/00000_a.png: not followed through the link
    assert (photos / "00000_a.png").read_bytes() == b"holiday"
