"""The `fastad` command line on a tiny synthetic MVTec-layout tree with the random test backbone.

Each test calls `fastad.cli.main(argv)` in-process (fast); one test runs `python -m fastad` in a
subprocess to check the module entry point.
"""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastad.cli import main
from tests.helpers import cli_tree

SIZE, FIT = cli_tree.SIZE, cli_tree.FIT
make_tree, run_err = cli_tree.make_tree, cli_tree.run_err  # imported from here by other test modules


def links(html: str):
    return re.findall(r'(?:src|href)="([^"#][^"]*)"', html)  # files (not #fragments: enlarged panels)


def check_report(out: Path, n_images: int):
    for f in ("index.html", "metrics.json", "scores.csv"):
        assert (out / f).is_file(), f
    html = (out / "index.html").read_text()
    assert links(html)
    for link in links(html):
        assert (out / link).exists(), f"index.html links to a missing file: {link}"
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == n_images
    assert len(list((out / "heatmaps").glob("*.png"))) == n_images
    # no absolute local path in any file (the data, the model and the report all live under pytest's
    # base temporary folder): paths are relative to the data root
    for needle in {str(out.parent.parent), str(out.parent.parent.resolve()), str(Path.home())}:
        for f in out.rglob("*"):
            assert not f.is_file() or needle.encode() not in f.read_bytes(), f"{f.relative_to(out)} holds {needle}"
    return html, rows, json.loads((out / "metrics.json").read_text())


def test_fit_writes_a_model_with_a_threshold(model, capsys):
    from fastad.detectors import load

    det = load(model)
    assert det.backbone_name_ == "random_cnn" and det.image_size_ == (SIZE, SIZE)
    assert det.threshold_ is not None  # 10% of the 12 training images held out (2 images)


def test_evaluate_report_and_metrics(tree, model, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--data", str(tree), "--out", str(out), "-q", "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out
    html, rows, doc = check_report(out, 8)
    m = doc["metrics"]
    # bright squares on a striped texture: easy even for a random CNN
    assert m["image_auroc"] > 0.9 and m["pixel_auroc"] > 0.9, m
    assert 0 <= m["aupro"] <= 1 and 0 <= m["pro_musc"] <= 1
    assert "image AUROC" in printed and f"{m['image_auroc']:.4f}" in printed
    assert doc["per_type"]["scratch"]["n"] == 4 and "auroc" in doc["per_type"]["scratch"]
    assert {"predict", "metrics", "report", "load model"} <= set(doc["timings"])
    assert {r["defect_type"] for r in rows} == {"good", "scratch"}
    assert all(r["predicted"] in ("0", "1") for r in rows)
    assert "image AUROC" in html and "pixel AUROC" in html and "_mask.png" in html


def test_predict_plain_folder_has_no_metrics(tree, model, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--data", str(tree / "test" / "scratch"), "--out", str(out), "-q"]) == 0
    html, rows, doc = check_report(out, 4)
    assert doc["metrics"] == {} and rows[0]["label"] == "" and "no ground truth" in html


def test_predict_mvtec_folder_scores_its_test_split(tree, model, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--data", str(tree), "--out", str(out), "-q", "--heatmaps", "2", "--top-k", "1"]) == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 8 and all(r["path"].startswith("test/") for r in rows)  # relative to the data root
    assert 2 <= sum(bool(r["heatmap"]) for r in rows) < 8
    assert json.loads((out / "metrics.json").read_text())["metrics"] == {}


def test_spade_fit_and_evaluate(tree, tmp_path):
    path = tmp_path / "spade.safetensors"
    assert main(["fit", "--detector", "spade", "--k-images", "3", "--data", str(tree), "--out", str(path),
                 "--calibration", "0"] + FIT) == 0
    out = tmp_path / "r"
    assert main(["evaluate", "--model", str(path), "--data", str(tree), "--out", str(out), "-q"]) == 0
    _, rows, doc = check_report(out, 8)
    assert doc["metrics"]["image_auroc"] > 0.8
    assert rows[0]["predicted"] == ""  # --calibration 0: no threshold


def test_errors_missing_and_empty_folders(tree, model, tmp_path, capsys):
    missing = tmp_path / "nope"
    line = run_err(["fit", "--data", str(missing), "--out", str(tmp_path / "m.st")] + FIT, capsys)
    assert "does not exist" in line and str(missing) in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = run_err(["fit", "--data", str(empty), "--out", str(tmp_path / "m.st")] + FIT, capsys)
    assert "no readable images" in line and str(empty) in line
    line = run_err(["predict", "--model", str(model), "--data", str(empty), "--out", str(tmp_path / "r"), "-q"], capsys)
    assert "no readable images" in line
    (tmp_path / "mv" / "train").mkdir(parents=True)  # MVTec layout without test/
    line = run_err(["evaluate", "--model", str(model), "--data", str(tmp_path / "mv"), "--out", str(tmp_path / "r")], capsys)
    assert "no test/ sub-folder" in line
    line = run_err(["evaluate", "--model", str(model), "--data", str(tree / "test" / "good"), "--out", str(tmp_path / "r")], capsys)
    assert "needs ground truth" in line


def test_errors_model_files(tree, model, tmp_path, capsys):
    common = ["--data", str(tree), "--out", str(tmp_path / "r"), "-q"]
    line = run_err(["predict", "--model", str(tmp_path / "none.safetensors")] + common, capsys)
    assert "does not exist" in line and "none.safetensors" in line
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 definitely not a model" * 10)
    line = run_err(["predict", "--model", str(junk)] + common, capsys)
    assert "junk.safetensors" in line and ("corrupt" in line or "not a" in line)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    line = run_err(["evaluate", "--model", str(trunc)] + common, capsys)
    assert "trunc.safetensors" in line
    line = run_err(["predict", "--model", str(model), "--backbone", "efficientnet_lite0"] + common, capsys)
    assert "random_cnn" in line and "efficientnet_lite0" in line


def test_errors_bad_arguments(tree, tmp_path, capsys):
    line = run_err(["fit", "--data", str(tree), "--out", str(tmp_path / "m.st"), "--backbone", "no_such_net", "-q"], capsys)
    assert "no_such_net" in line
    with pytest.raises(SystemExit) as e:  # argparse: usage + message, status 2
        main(["fit", "--data", str(tree), "--out", str(tmp_path / "m.st"), "--coreset-ratio", "2"])
    assert e.value.code == 2
    assert "--coreset-ratio" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["fit", "--data", str(tree), "--out", str(tmp_path / "m.st"), "--projection-dim", "0"])
    assert e.value.code == 2 and "--projection-dim" in capsys.readouterr().err
    line = run_err(["fit", "--data", str(tree / "train" / "good" / "000.png"), "--out", str(tmp_path / "m.st")] + FIT, capsys)
    assert "is not a folder" in line


def test_unreadable_images_are_skipped_with_a_warning(tree, model, tmp_path, capsys):
    bad_tree = tmp_path / "bad"
    make_tree(bad_tree, n_train=11, n_good=2, n_bad=2, seed=1)
    (bad_tree / "train" / "good" / "broken.png").write_bytes(b"this is not a png")
    good = (bad_tree / "test" / "good" / "000.png").read_bytes()
    (bad_tree / "test" / "good" / "truncated.png").write_bytes(good[: len(good) // 3])
    path = tmp_path / "m.safetensors"
    assert main(["fit", "--data", str(bad_tree), "--out", str(path)] + FIT) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "broken.png" in err and "Traceback" not in err
    out = tmp_path / "r"
    assert main(["evaluate", "--model", str(path), "--data", str(bad_tree), "--out", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "truncated.png" in err and "Traceback" not in err
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 4 and not any("truncated" in r["path"] for r in rows)


def test_demo_on_a_folder(tree, tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--data", str(tree), "--out", str(out), "--backbone", "random_cnn", "--image-size", str(SIZE),
               "--max-train", "10", "--num-workers", "0", "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "metrics.json").read_text())
    # the printed numbers are the ones computed (and saved) by this run
    assert f"{doc['metrics']['image_auroc']:.4f}" in printed and f"{doc['metrics']['pixel_auroc']:.4f}" in printed
    assert "train 10 normal images" in printed and "fit" in printed and "report:" in printed
    check_report(out, 8)


def test_bench_runs_the_scripts_of_a_checkout(tmp_path, monkeypatch, capsys):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "bench_ok.py").write_text("print('ran ok')\n")
    (bench / "bench_fail.py").write_text("raise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--list"]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["bench", "ok"]) == 0
    line = run_err(["bench", "fail"], capsys)
    assert "bench_fail.py (exit 3)" in line
    line = run_err(["bench", "nosuch"], capsys)
    assert "no benchmark named nosuch" in line


def test_python_dash_m_fastad_info():
    r = subprocess.run([sys.executable, "-m", "fastad", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["fastad"]["version"] and "torch" in info["packages"]
    kernels = info["kernels"]  # which kernel each op runs on this CPU
    for op in ("knn float32", "knn float16", "knn bfloat16", "knn screen='auto'", "group_min float32",
               "mutual_scores", "coreset", "mahalanobis float32/float16 factor", "mahalanobis bfloat16 factor",
               "mahalanobis cholesky factor"):
        assert kernels[op], op


def test_op_kernels_follow_the_dispatch(monkeypatch):
    import fastad

    monkeypatch.delenv("FASTAD_BF16_EMULATE", raising=False)
    bi = fastad.build_info()
    k = fastad.op_kernels()
    gemm = {"avx512": "AVX-512 24x16", "avx2": "AVX2/FMA 6x16", "generic": "portable"}[bi["dist_micro_kernel"]]
    assert k["knn float32"].startswith(gemm) and k["group_min float32"].startswith(gemm)
    if bi["bf16_micro_kernel"] == "avx512bf16":
        assert k["knn screen='auto'"].startswith("bf16 screen") and "vdpbf16ps" in k["knn bfloat16"]
        assert k["mutual_scores screen='auto'"].startswith("bf16 screen")
    else:  # no AVX512-BF16: 'auto' stays on the float32 path, bf16 inputs are upcast
        assert k["knn screen='auto'"].startswith(gemm) and "upcast" in k["knn bfloat16"]
        assert "no AVX512-BF16" in k["mutual_scores screen='auto'"]
        if bi["simd"] == "avx2":
            monkeypatch.setenv("FASTAD_BF16_EMULATE", "1")
            k = fastad.op_kernels()
            assert "emulation" in k["knn bfloat16"] and k["knn screen='bf16'"].startswith("bf16 screen")
            assert k["knn screen='auto'"].startswith(gemm)
            assert "emulation" in k["mutual_scores screen='bf16'"] and "no AVX512-BF16" in k["mutual_scores screen='auto'"]
    monkeypatch.setenv("FASTAD_FORCE_GENERIC", "1")
    assert fastad.op_kernels()["knn float32"].startswith("portable")


def test_demo_without_the_elpv_wheel_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)  # import fails as if not installed
    line = run_err(["demo", "-q", "--out", "unused"], capsys)
    assert "pip install --no-deps elpv-dataset==1.0.0.post1" in line


def test_resize_mode_is_stored_and_reused(tree, model, tmp_path, monkeypatch, capsys):
    """`fit --resize` is saved in the model file; predict/evaluate reuse it unless told otherwise."""
    import fastad.cli as cli
    from fastad.detectors import load

    assert load(model).preprocess_ == {"resize": "squash", "image_size": [64, 64]}
    path = tmp_path / "crop.safetensors"
    assert main(["fit", "--data", str(tree), "--out", str(path), "--resize", "shorter_crop"] + FIT) == 0
    assert load(path).preprocess_["resize"] == "shorter_crop"
    seen = []
    real = cli.open_dataset
    monkeypatch.setattr(cli, "open_dataset", lambda *a, **kw: (seen.append(kw["resize"]), real(*a, **kw))[1])
    assert main(["predict", "--model", str(path), "--data", str(tree), "--out", str(tmp_path / "p1"), "-q"]) == 0
    assert seen == ["shorter_crop"]
    capsys.readouterr()
    assert main(["predict", "--model", str(path), "--data", str(tree), "--out", str(tmp_path / "p2"), "-q",
                 "--resize", "squash"]) == 0
    assert seen[-1] == "squash" and "fitted with --resize shorter_crop" in capsys.readouterr().err


def test_fit_coreset_options_are_stored(tree, tmp_path):
    from fastad.detectors import load

    path = tmp_path / "opts.safetensors"
    assert main(["fit", "--data", str(tree), "--out", str(path), "--projection-dim", "none",
                 "--coreset-storage", "float16"] + FIT) == 0
    det = load(path)
    assert det.projection_dim is None and det.coreset_storage == "float16"
    assert det.memory_bank_.dtype == torch.float32


def test_zeroshot_musc_report(tree, tmp_path, capsys):
    """`fastad zeroshot`: MuSc over the test split (8 images score each other), report + metrics, and
    the report's scores are MuSc's own on the same images."""
    from fastad.cli import open_dataset
    from fastad.detectors import MuSc
    from fastad.features import get_backbone

    out = tmp_path / "zs"
    argv = ["zeroshot", "--data", str(tree), "--out", str(out), "--backbone", "random_vit", "--num-workers", "0",
            "--batch-size", "3", "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "MuSc (random_vit) on 8 images" in printed and "image AUROC" in printed
    html, rows, doc = check_report(out, 8)
    assert "image_auroc" in doc["metrics"] and "pixel_auroc" in doc["metrics"]
    ds = open_dataset(tree, "test", image_size=64, normalize=False)
    X = torch.stack([ds[i]["image"] for i in range(len(ds))])
    want, _ = MuSc(backbone=get_backbone("random_vit"), progress=False).score(X)
    got = {(tree / r["path"]).resolve(): float(r["score"]) for r in rows}  # paths relative to the data root
    assert len(got) == len(ds)
    for i in range(len(ds)):
        assert abs(got[Path(ds.paths[i]).resolve()] - float(want[i])) <= 1e-5 * max(1.0, abs(float(want[i])))
    # too few images to average int(0.3 * (n - 1)) others: the op's one-line error; a CNN is refused
    line = run_err(["zeroshot", "--data", str(tree), "--out", str(tmp_path / "z1"), "--backbone", "random_vit",
                    "--max-images", "2", "-q"], capsys)
    assert "score at least 5 images together" in line
    line = run_err(["zeroshot", "--data", str(tree), "--out", str(tmp_path / "z2"), "--backbone", "random_cnn", "-q"],
                   capsys)
    assert "needs a ViT backbone" in line


def test_padim_fit_and_evaluate(tree, tmp_path, capsys):
    from fastad.detectors import PaDiM, load

    path = tmp_path / "padim.safetensors"
    assert main(["fit", "--detector", "padim", "--n-features", "20", "--data", str(tree), "--out", str(path)] + FIT) == 0
    det = load(path)
    assert isinstance(det, PaDiM) and det.channel_idx_.numel() == 20 and det.threshold_ is not None
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(path), "--data", str(tree), "--out", str(out), "-q", "--num-workers", "0"]) == 0
    html, rows, doc = check_report(out, 8)
    assert "image_auroc" in doc["metrics"] and "PaDiM" in capsys.readouterr().out


def test_gaussian_fit_and_evaluate_image_level(tree, tmp_path, capsys):
    """An image-level detector through the CLI: a report without heatmaps, image metrics only."""
    path = tmp_path / "g.safetensors"
    assert main(["fit", "--detector", "gaussian", "--data", str(tree), "--out", str(path)] + FIT) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(path), "--data", str(tree), "--out", str(out), "-q", "--num-workers", "0"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert "image_auroc" in doc["metrics"] and "pixel_auroc" not in doc["metrics"]
    assert (out / "index.html").is_file() and not list((out / "heatmaps").glob("*.png"))
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 8 and "GaussianAD" in capsys.readouterr().out
