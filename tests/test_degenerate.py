"""Degenerate inputs are errors (or documented warnings) that name the parameter and a value that works,
never a silent wrong answer (issue 11)."""
import re
import warnings

import pytest
import torch

from fastad.cli import main
from tests.test_cli import FIT, SIZE, make_tree, run_err


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture
def tiny_backbone():
    from fastad.features import get_backbone

    return get_backbone("random_cnn")


def _suggested(line: str, option: str) -> str:
    m = re.search(rf"use {re.escape(option)}[ =]([0-9.e-]+)", line)
    assert m, line
    return m.group(1)


@pytest.mark.parametrize("option,bad", [("--coreset-ratio", "1e-9"), ("--image-size", "7")])
def test_cli_fit_refuses_degenerate_settings_and_the_suggestion_works(option, bad, tree, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    argv = ["fit", "--data", str(tree), "--out", str(out)] + FIT
    i = argv.index(option) if option in argv else None
    if i is not None:
        argv = argv[:i] + argv[i + 2:]
    line = run_err(argv + [option, bad], capsys)
    assert option in line and "_ratio" not in line and not out.exists()
    good = _suggested(line, option)
    assert main(argv + [option, good]) == 0
    from fastad.detectors import load

    det = load(out)
    size = int(good) if option == "--image-size" else SIZE
    scores = det.decision_function(torch.rand(3, 3, size, size))
    assert float(scores.abs().min()) > 0  # not the silent zero of a one-row bank


def test_patchcore_library_errors_name_a_value_that_works(tiny_backbone):
    from fastad.detectors import PatchCore

    x = torch.rand(4, 3, 7, 7)
    with pytest.raises(ValueError, match=r"image_size=\d+ or larger") as e:
        PatchCore(backbone=tiny_backbone, progress=False).fit(x)
    side = int(re.search(r"image_size=(\d+)", str(e.value)).group(1))
    PatchCore(backbone=tiny_backbone, progress=False, num_neighbors=1).fit(torch.rand(4, 3, side, side))
    with pytest.raises(ValueError, match=r"coreset_ratio=[0-9.e-]+ or larger") as e:
        PatchCore(backbone=tiny_backbone, coreset_ratio=1e-9, progress=False).fit(torch.rand(4, 3, 64, 64))
    ratio = float(re.search(r"use coreset_ratio=([0-9.e-]+)", str(e.value)).group(1))
    det = PatchCore(backbone=tiny_backbone, coreset_ratio=ratio, progress=False).fit(torch.rand(4, 3, 64, 64))
    assert det.memory_bank_.shape[0] >= 9
    with pytest.raises(ValueError, match="num_neighbors"):
        PatchCore(backbone=tiny_backbone, coreset_ratio=1e-9, progress=False).check_fit_size(4, (64, 64))


def test_patchcore_small_bank_warns_and_clamps_like_anomalib():
    from fastad.detectors import PatchCore

    feats = {"a": torch.randn(1, 4, 3, 3)}  # 9 patches, ratio 0.5 -> 4 rows < 9 neighbours
    with pytest.warns(UserWarning, match="4 rows, fewer than num_neighbors=9"):
        det = PatchCore(backbone=None, coreset_ratio=0.5, projection_dim=None, progress=False).fit_features(feats, image_size=(12, 12))
    s, _ = det.score_features({"a": torch.randn(2, 4, 3, 3)})
    assert float(s.abs().min()) > 0
    with pytest.raises(ValueError, match="keeps 1 of 9"):  # one row: every score would be 0
        PatchCore(backbone=None, coreset_ratio=0.1, projection_dim=None, progress=False).fit_features(feats, image_size=(12, 12))


def test_musc_refuses_normalised_images_and_accepts_them_when_told():
    from fastad.detectors import MuSc
    from fastad.features import get_backbone

    bb = get_backbone("random_vit")
    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(bb.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.std).view(1, 3, 1, 1)
    with pytest.raises(ValueError, match=r"in \[0, 1\].*normalized=True"):
        MuSc(backbone=bb, progress=False).score((x - mean) / std)
    want, _ = MuSc(backbone=bb, progress=False).score(x)
    got, _ = MuSc(backbone=bb, progress=False, normalized=True).score((x - mean) / std)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_musc_image_size_smaller_than_the_window(tree, tmp_path, capsys):
    from fastad.detectors import MuSc

    with pytest.raises(ValueError, match=r"use image_size=40 or larger"):
        MuSc(backbone="random_vit", image_size=16, progress=False).check_image_size()
    line = run_err(["zeroshot", "--data", str(tree), "--out", str(tmp_path / "z"), "--backbone", "random_vit",
                    "--image-size", "16", "-q"], capsys)
    assert "--image-size 40" in line and not (tmp_path / "z").exists()


def test_threshold_from_too_few_scores_warns_with_a_quantile_that_works(tiny_backbone):
    from fastad.detectors import PatchCore

    det = PatchCore(backbone=tiny_backbone, progress=False).fit(torch.rand(4, 3, 64, 64))
    with pytest.warns(UserWarning, match=r"0.99 quantile of 5 .* quantile=0.8"):
        det.set_threshold(normal_scores=torch.rand(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det.set_threshold(normal_scores=torch.rand(5), quantile=0.8)
        det.set_threshold(normal_scores=torch.rand(100), quantile=0.99)


def test_images_that_fail_to_decode_are_not_counted(tmp_path, capsys):
    bad = make_tree(tmp_path / "bad", n_train=6, n_good=1, n_bad=1)
    (bad / "train" / "good" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "m.safetensors"
    assert main(["fit", "--data", str(bad), "--out", str(out)] + FIT) == 0
    printed = capsys.readouterr().out
    assert "fitted on 6 images" in printed  # 7 files, one undecodable
    from fastad.detectors import load

    assert load(out).n_fit_images_ == 6


def test_zeroshot_refuses_unknown_blocks_and_a_k_list_beyond_the_images(tree, tmp_path, capsys):
    from fastad.detectors import MuSc

    with pytest.raises(ValueError, match=r"layers=\[99\] are not blocks of this backbone \(4 blocks"):
        MuSc(backbone="random_vit", layers=[1, 99], progress=False).check_settings()
    MuSc(backbone="random_vit", layers=[1, -1], progress=False).check_settings()
    base = ["zeroshot", "--data", str(tree), "--out", str(tmp_path / "z"), "--backbone", "random_vit", "-q"]
    line = run_err(base + ["--layers", "99"], capsys)
    assert "--layers [99]" in line and "0..3" in line
    line = run_err(base + ["--k-list", "9"], capsys)
    assert "--k-list 9" in line and "(8)" in line
    assert not (tmp_path / "z").exists()


def test_predict_refuses_an_image_size_below_the_window(tree, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    assert main(["fit", "--data", str(tree), "--out", str(model)] + FIT) == 0
    capsys.readouterr()
    out = tmp_path / "r"
    line = run_err(["predict", "--model", str(model), "--data", str(tree), "--out", str(out), "--image-size", "7", "-q"],
                   capsys)
    assert "--image-size 7" in line and "--image-size 17 or larger" in line and not out.exists()
    assert main(["predict", "--model", str(model), "--data", str(tree), "--out", str(out), "--image-size", "17", "-q",
                 "--num-workers", "0"]) == 0
    assert "fitted at --image-size 64" in capsys.readouterr().err
