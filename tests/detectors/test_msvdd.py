"""M-SVDD (Mahalanobis SVDD with a reconstruction branch) on embeddings, and the sensor-window loader
(fastad.datasets.sensors) it is benchmarked on."""
import numpy as np
import pytest
import torch

from fastad.detectors import MSVDD, load


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny MLPs: threads only add OpenMP barriers (and the test machines are shared)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(gen, n=300, d=10):
    A = torch.randn(3, d, generator=gen)  # normal data: 3 latent factors + noise
    train = torch.randn(n, 3, generator=gen) @ A + 0.1 * torch.randn(n, d, generator=gen)
    test_n = torch.randn(60, 3, generator=gen) @ A + 0.1 * torch.randn(60, d, generator=gen)
    test_a = (torch.randn(20, 3, generator=gen) + 3.5) @ A + 0.1 * torch.randn(20, d, generator=gen)
    return train, torch.cat([test_n, test_a]), torch.tensor([0] * 60 + [1] * 20)


def _auc(s, y):
    s, y = s.double(), y.bool()
    return float((s[y][:, None] > s[~y][None, :]).double().mean())


def test_fit_scores_and_is_deterministic(gen):
    train, test, y = _data(gen)
    kw = dict(latent_dim=4, hidden_dim=32, epochs=8, batch_size=64, random_state=3)
    state = torch.random.get_rng_state()
    det = MSVDD(**kw).fit(train)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    s = det.decision_function(test)
    assert s.shape == (80,) and s.dtype == torch.float32 and _auc(s, y) > 0.95
    assert torch.equal(MSVDD(**kw).fit(train).decision_function(test), s)  # seeded, deterministic on CPU
    assert not torch.equal(MSVDD(**{**kw, "random_state": 4}).fit(train).decision_function(test), s)
    # the score is the Mahalanobis distance of the latents to the training latents' Gaussian
    with torch.no_grad():
        z = det._net.encoder((test - det.scale_mean_) / det.scale_std_)
        ztr = det._net.encoder((train - det.scale_mean_) / det.scale_std_).double()
    cov = torch.cov(ztr.T, correction=0)
    cov += det.reg * cov.diagonal().mean() * torch.eye(4, dtype=torch.float64)
    d = z.double() - ztr.mean(0)
    want = torch.einsum("ij,jk,ik->i", d, torch.linalg.inv(cov), d).sqrt()
    torch.testing.assert_close(s.double(), want, rtol=1e-4, atol=1e-4)
    # the soft boundary: about nu of the training latents lie outside R
    assert abs(float((det.decision_scores_ > det.radius_).double().mean()) - det.nu) < 0.02
    assert det.threshold_ == pytest.approx(float(torch.quantile(det.decision_scores_.double(), 0.9)))
    assert det.predict(test).dtype == torch.int64 and len(det.loss_history_) == 8


def test_reconstruction_branch_learns(gen):
    X, _, _ = _data(gen)  # intrinsic dimension 3 < latent_dim
    kw = dict(latent_dim=4, hidden_dim=32, epochs=20, random_state=0)
    det = MSVDD(**kw).fit(X)
    first, last = det.loss_history_[0], det.loss_history_[-1]
    assert last[2] < 0.7 * first[2]  # reconstruction learns
    assert last[1] < first[1]  # and the sphere loss falls
    off = MSVDD(**kw, recon_weight=0.0).fit(X)
    assert all(h[2] == 0 for h in off.loss_history_)


def test_roundtrip(gen, tmp_path):
    train, test, _ = _data(gen)
    det = MSVDD(latent_dim=3, hidden_dim=16, epochs=3).fit(train)
    back = load(det.save(tmp_path / "m.safetensors"))
    assert isinstance(back, MSVDD) and back.get_params() == det.get_params()
    assert torch.equal(back.decision_function(test), det.decision_function(test))
    assert back.threshold_ == det.threshold_ and back.radius_ == det.radius_


@pytest.mark.parametrize("kw,match", [
    ({"latent_dim": 0}, "latent_dim must be an int >= 1"),
    ({"nu": 0.0}, r"nu must be in \(0, 1\)"),
    ({"nu": 1.0}, r"nu must be in \(0, 1\)"),
    ({"lr": -1.0}, "lr must be in"),
    ({"reg": float("nan")}, "reg must be a finite float"),
    ({"epochs": 2.5}, "epochs must be an int"),
])
def test_bad_parameters_named(gen, kw, match):
    with pytest.raises(ValueError, match=match):
        MSVDD(**kw).fit(torch.randn(50, 5, generator=gen))


def test_bad_input_named(gen):
    with pytest.raises(ValueError, match="X must be 2-D"):
        MSVDD().fit(torch.randn(10, generator=gen))
    with pytest.raises(ValueError, match="X holds NaN or Inf"):
        MSVDD().fit(torch.tensor([[1.0, float("nan")]] * 40))
    with pytest.raises(ValueError, match="more training embeddings than latent_dim"):
        MSVDD(latent_dim=16).fit(torch.randn(10, 5, generator=gen))
    with pytest.raises(RuntimeError, match="not fitted"):
        MSVDD().decision_function(torch.randn(3, 5))
    det = MSVDD(latent_dim=2, hidden_dim=8, epochs=1).fit(torch.randn(40, 5, generator=gen))
    with pytest.raises(ValueError, match="X has 4 features, the model 5"):
        det.decision_function(torch.randn(3, 4))


# ---- fastad.datasets.sensors
def _write_ts(path, series, labels):
    lines = ["@problemName Toy", "@timeStamps false", "@univariate false", "@equalLength false",
             f"@classLabel true {' '.join(sorted(set(labels)))}", "@data"]
    for s, c in zip(series, labels):
        lines.append(":".join(",".join(f"{v:.6f}" for v in ch) for ch in s) + f":{c}")
    path.write_text("\n".join(lines) + "\n")


def test_sensor_task_from_ts_files(tmp_path):
    from fastad.datasets.sensors import load_sensor_task, load_ts, sliding_windows, window_features

    rng = np.random.default_rng(0)
    tr = [rng.normal(size=(2, 30)) for _ in range(4)]
    te = [rng.normal(size=(2, 30)), rng.normal(size=(2, 12)) + 5]
    (tmp_path / "Toy").mkdir()
    _write_ts(tmp_path / "Toy" / "Toy_TRAIN.ts", tr, ["a", "b", "a", "b"])
    _write_ts(tmp_path / "Toy" / "Toy_TEST.ts", te, ["a", "b"])
    xs, ys = load_ts(tmp_path / "Toy" / "Toy_TEST.ts")
    assert ys == ["a", "b"] and xs[1].shape == (2, 12) and np.allclose(xs[0], te[0], atol=1e-6)
    w = sliding_windows(tr[0], 10, 5)
    assert w.shape == (5, 2, 10) and np.array_equal(w[1], tr[0][:, 5:15])
    f = window_features(w, n_bands=3)
    assert f.shape == (5, 2 * 8)
    f3 = f.reshape(5, 2, 8)  # per channel: mean, std, min, max, mean |diff|, 3 band energies
    np.testing.assert_allclose(f3[1, :, 0].numpy(), tr[0][:, 5:15].mean(1), rtol=1e-5)
    np.testing.assert_allclose(f3[1, :, 1].numpy(), tr[0][:, 5:15].std(1), rtol=1e-5)
    np.testing.assert_allclose(f3[1, :, 4].numpy(), np.abs(np.diff(tr[0][:, 5:15])).mean(1), rtol=1e-5)
    spec = np.abs(np.fft.rfft(tr[0][:, 5:15] - tr[0][:, 5:15].mean(1, keepdims=True))) ** 2 / 10  # 6 bins: 2 per band
    np.testing.assert_allclose(f3[1, :, 7].numpy(), np.log1p(spec[:, 4:].sum(1)), rtol=1e-5)
    task = load_sensor_task("Toy", "a", window=10, stride=5, n_bands=3, data_dir=tmp_path)
    assert task.classes == ("a", "b") and task.train.shape == (10, 16)  # 2 recordings x 5 windows
    assert task.test.shape == (6, 16) and task.test_labels.tolist() == [0] * 5 + [1]  # the short one: 1 window
    assert task.test_recording.tolist() == [0] * 5 + [1]
    with pytest.raises(ValueError, match="normal_class must be one of"):
        load_sensor_task("Toy", "c", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="Nope_TRAIN.ts"):
        load_sensor_task("Nope", data_dir=tmp_path)


def test_sensor_task_on_aeon_basic_motions():
    from fastad.datasets.sensors import load_sensor_task

    try:
        task = load_sensor_task("BasicMotions", "Standing")
    except ImportError:
        pytest.skip("the aeon wheel is not installed (pip install --no-deps aeon==1.6.0)")
    assert task.classes == ("Badminton", "Running", "Standing", "Walking")
    assert task.train.shape == (10 * 9, 6 * 9)  # 10 recordings x 9 windows (20 steps, stride 10), 6 channels
    assert task.test.shape[0] == 40 * 9 and int(task.test_labels.sum()) == 30 * 9
