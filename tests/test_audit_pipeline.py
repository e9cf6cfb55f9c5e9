"""Audit of the pipeline on messy real-world folders, output safety on failure, and CLI errors.

Tiny synthetic MVTec-layout trees (PIL, in tmp_path) and the random test backbone (no download).
"""
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastad._output import MANIFEST, UsageError, check_report_dir
from fastad.cli import main
from fastad.data import MVTecDataset, load_mask
from tests.helpers.cli_tree import FIT, run_err

H, W = 40, 96  # non-square (landscape) images


def _texture(rng, h=H, w=W):
    return rng.normal(120, 8, (h, w)) + 25 * np.sin(np.arange(w) / 3.0)[None, :]


def _save(path: Path, a: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a8 = a.clip(0, 255).astype(np.uint8)
    if mode == "I;16":
        Image.fromarray((a.clip(0, 255) * 257).astype(np.uint16)).save(path)  # 16-bit grey PNG
    elif mode == "P":
        Image.fromarray(a8).convert("RGB").convert("P").save(path)
    else:
        Image.fromarray(a8).convert(mode).save(path)


def _defect(rng, i, h=H, w=W):
    a = _texture(rng, h, w)
    m = np.zeros((h, w), np.uint8)
    y, x = 8, 10 + 18 * i
    a[y : y + 12, x : x + 12] = 250
    m[y : y + 12, x : x + 12] = 255
    return a, m


def messy_tree(root: Path) -> Path:
    """What a user's folder looks like: every Pillow mode, JPEG and PNG with upper-case suffixes,
    hidden and non-image files, a truncated JPEG, an empty defect type, a mask stored at twice the
    image's resolution and a defective image without a mask."""
    rng = np.random.default_rng(0)
    modes = ["L", "RGB", "RGBA", "P", "I;16"]
    for i in range(12):
        _save(root / "train" / "good" / f"{i:03d}.png", _texture(rng), modes[i % 5])
    (root / "train" / "good" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    for i in range(4):
        name = f"{i:03d}.JPG" if i % 2 else f"{i:03d}.PNG"
        _save(root / "test" / "good" / name, _texture(rng), "RGB")
    (root / "test" / "good" / "notes.txt").write_text("not an image")
    jpg = (root / "test" / "good" / "001.JPG").read_bytes()
    (root / "test" / "good" / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    for i in range(4):
        a, m = _defect(rng, i)
        _save(root / "test" / "scratch" / f"{i:03d}.png", a, modes[i % 5])
        if i == 3:
            continue  # no mask for this one
        mk = Image.fromarray(m)
        if i == 2:
            mk = mk.resize((2 * W, 2 * H), Image.Resampling.NEAREST)  # stored at twice the resolution
        (root / "ground_truth" / "scratch").mkdir(parents=True, exist_ok=True)
        mk.save(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    (root / "test" / "empty_type").mkdir()
    return root


def fit(tree: Path, out: Path, *extra) -> Path:
    assert main(["fit", "--data", str(tree), "--out", str(out)] + FIT + ["--image-size", str(H), str(W)] + list(extra)) == 0
    return out


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    d = tmp_path_factory.mktemp("messy")
    tree = messy_tree(d / "parts")
    return tree, fit(tree, d / "m.safetensors")


def one_error(argv, capsys) -> str:
    """Exit status 2, exactly one error line on stderr (warnings naming files may precede it), no traceback."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err
    return errors[0]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------------------------ real images


def test_messy_folder_evaluates_with_maps_at_the_images_aspect(messy, tmp_path, capsys):
    tree, model = messy
    out = tmp_path / "rep"
    assert main(["evaluate", "--model", str(model), "--data", str(tree), "--out", str(out), "-q", "--num-workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "truncated.jpg" in err  # skipped, named
    assert "003.png" in err and "no mask" in err  # the defective image without a mask, named
    assert "empty_type" in err  # an empty type folder is named, not silently dropped
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert sorted(r["path"] for r in rows) == sorted(
        [f"test/good/{i:03d}.{'JPG' if i % 2 else 'PNG'}" for i in range(4)] + [f"test/scratch/{i:03d}.png" for i in range(4)])
    for r in rows:  # full-resolution heatmaps keep the image's size and aspect
        assert Image.open(out / r["heatmap"]).size == (W, H)
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["image_auroc"] > 0.9 and m["pixel_auroc"] > 0.9, m


@pytest.mark.filterwarnings("ignore:fastad.data")
def test_mask_at_another_resolution_is_aligned_with_its_image(messy):
    tree, _ = messy
    for resize in ("squash", "pad", "none"):
        ds = MVTecDataset(tree, "test", image_size=(H, W), resize=resize, mean=None, std=None)
        i = ds.paths.index(str(tree / "test" / "scratch" / "002.png"))
        item = ds[i]
        mask = item["mask"]
        assert tuple(mask.shape) == tuple(item["image"].shape[-2:])
        # the bright square of the image is exactly where the mask is
        bright = item["image"].mean(0) > 0.9
        if resize == "pad":
            bright &= item["valid"]
        inter = (bright & mask).sum().item()
        assert inter / max(1, (bright | mask).sum().item()) > 0.8, resize


@pytest.mark.filterwarnings("ignore:fastad.data")
def test_mask_of_another_aspect_ratio_is_refused_naming_it(tmp_path, capsys):
    tree = messy_tree(tmp_path / "parts")
    bad = tree / "ground_truth" / "scratch" / "001_mask.png"
    Image.open(bad).transpose(Image.Transpose.ROTATE_90).save(bad)  # W x H -> H x W: cannot be aligned
    with pytest.raises(ValueError, match="001_mask.png.*aspect ratio"):
        MVTecDataset(tree, "test", image_size=(H, W))
    with pytest.raises(ValueError, match="aspect ratio"):
        load_mask(bad, (H, W), image_wh=(W, H))
    model = fit(tree, tmp_path / "m.safetensors")
    line = one_error(["evaluate", "--model", str(model), "--data", str(tree), "--out", str(tmp_path / "rep"), "-q"], capsys)
    assert "001_mask.png" in line and "aspect ratio" in line
    assert not (tmp_path / "rep").exists()


def test_report_shows_16_bit_images_as_the_model_saw_them(tmp_path):
    from fastad.report import ReportWriter

    rng = np.random.default_rng(1)
    a = _texture(rng)
    _save(tmp_path / "img16.png", a, "I;16")
    w = ReportWriter(tmp_path / "rep", progress=False, full_size=None)
    w.add(paths=[str(tmp_path / "img16.png")], scores=torch.tensor([1.0]), maps=torch.rand(1, H, W))
    w.finish()
    shown = np.asarray(Image.open(tmp_path / "rep" / "images" / "00000_img16_input.png").convert("L"), dtype=np.float64)
    assert abs(shown.mean() - a.clip(0, 255).mean()) < 3  # not Pillow's clipped, all-white conversion


# ------------------------------------------------------------------------------------ output safety


def _boom(*a, **k):
    raise RuntimeError("simulated failure")


def _interrupt_after_first_batch(monkeypatch):
    import fastad.pipeline as P

    orig = P.iter_batches

    def once(*a, **k):
        for b in orig(*a, **k):
            yield b
            raise KeyboardInterrupt

    monkeypatch.setattr(P, "iter_batches", once)


@pytest.mark.parametrize("where", ["scoring", "rendering"])
def test_interrupted_report_leaves_no_partial_report(where, messy, tmp_path, monkeypatch, capsys):
    tree, model = messy
    if where == "scoring":
        _interrupt_after_first_batch(monkeypatch)
    else:
        import fastad.report.writer as writer

        monkeypatch.setattr(writer, "render_page", _boom)  # after the heatmaps are written
    out = tmp_path / "new" / "rep"
    rc = main(["predict", "--model", str(model), "--data", str(tree), "--out", str(out), "-q", "--num-workers", "0"])
    assert rc == (130 if where == "scoring" else 1)
    assert not (tmp_path / "new").exists()  # the folders this run created are gone too


def test_interrupted_rerun_keeps_the_earlier_report_whole(messy, tmp_path, monkeypatch, capsys):
    tree, model = messy
    out = tmp_path / "rep"
    argv = ["predict", "--model", str(model), "--data", str(tree), "--out", str(out), "-q", "--num-workers", "0"]
    assert main(argv) == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    import fastad.report.writer as writer

    monkeypatch.setattr(writer, "render_page", _boom)
    assert main(argv + ["--cmap", "inferno"]) == 1
    assert snapshot(out) == before  # old heatmaps not replaced by the failed run's, no staging left
    monkeypatch.undo()
    assert main(argv + ["--cmap", "inferno"]) == 0  # and the folder is still a fastad report
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".fastad-staging")]


def test_interrupted_report_into_an_empty_folder_keeps_the_folder(messy, tmp_path, monkeypatch, capsys):
    tree, model = messy
    out = tmp_path / "mine"
    out.mkdir()
    _interrupt_after_first_batch(monkeypatch)
    assert main(["predict", "--model", str(model), "--data", str(tree), "--out", str(out), "-q"]) == 130
    assert out.is_dir() and not list(out.iterdir())


def test_report_never_writes_through_a_linked_sub_folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "keep.jpg").write_bytes(b"holiday")
    rd = check_report_dir(tmp_path / "rep")
    rd.prepare()
    (tmp_path / "rep" / "heatmaps").symlink_to(photos)
    with pytest.raises(UsageError, match="heatmaps"):
        with rd.open("heatmaps/00000_a.png") as f:
            f.write(b"x")
    rd.abort()
    assert sorted(p.name for p in photos.iterdir()) == ["keep.jpg"]
    assert [p.name for p in (tmp_path / "rep").iterdir()] == ["heatmaps"]  # only the user's link is left


def test_report_files_appear_only_when_the_report_is_complete(tmp_path):
    rd = check_report_dir(tmp_path / "rep")
    with rd.open("index.html", "w") as f:
        f.write("<html>")
    assert sorted(p.name for p in (tmp_path / "rep").iterdir() if not p.name.startswith(".fastad-staging")) == [MANIFEST]
    rd.finish()
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == [MANIFEST, "index.html"]
    assert json.loads((tmp_path / "rep" / MANIFEST).read_text())["files"] == ["index.html"]


def test_demo_refuses_a_report_inside_its_data(messy, capsys, monkeypatch):
    import fastad.demo as demo

    tree, _ = messy
    monkeypatch.setattr(demo, "open_dataset", _boom)  # refused before any work
    line = run_err(["demo", "--data", str(tree), "--out", str(tree / "test" / "good" / "rep"), "--backbone", "random_cnn"],
                   capsys)
    assert "inside" in line
    assert not (tree / "test" / "good" / "rep").exists()


# ------------------------------------------------------------------------------------ CLI errors


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "meta"])
def test_an_unknown_device_is_a_one_line_error(device, messy, tmp_path, capsys):
    tree, _ = messy
    line = run_err(["fit", "--data", str(tree), "--out", str(tmp_path / "m.safetensors"), "--device", device] + FIT, capsys)
    assert f"--device {device!r}" in line and "cpu" in line
    assert not (tmp_path / "m.safetensors").exists()


def test_demo_negative_workers_is_refused_by_the_parser(messy, tmp_path, capsys):
    tree, _ = messy
    with pytest.raises(SystemExit) as e:  # argparse: before any work
        main(["demo", "--data", str(tree), "--out", str(tmp_path / "d"), "--num-workers", "-1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "argument --num-workers" in err, err
