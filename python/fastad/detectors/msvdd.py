"""M-SVDD: Mahalanobis SVDD on embeddings (any modality: audio, IMU, sensor-window or image features).

Seed paper: "Unsupervised Anomaly Detection for Autonomous Robots via Mahalanobis SVDD with Audio-IMU
Fusion" (arXiv 2505.05811; code ``jamesyang7/M-SVDD``, ``nets/gaussianNet.py``): an encoder maps the
input to a latent ``z``; the hypersphere of Deep SVDD (Ruff et al. 2018) is measured in the Mahalanobis
metric of the normal data's latents (``d(z) = sqrt((z - mu)^T Sigma^-1 (z - mu))``), and a decoder
reconstructs the input from ``z`` so the encoder cannot collapse to a point; the score is ``d(z)``.

fastad's version on embeddings ``Tensor[N, D]`` (standardised per feature with the training mean/std):

- encoder ``D -> hidden -> latent_dim`` and decoder ``latent_dim -> hidden -> D`` MLPs (GELU);
- at each epoch start, the Gaussian of *all* training latents (mean; maximum-likelihood covariance
  plus ``reg * tr(S) / latent_dim * I``; no gradient through it). The reference refits scikit-learn's
  ``MinCovDet`` on each batch of 32 latents in 32 dims plus ``1e-4 I`` (SPEC-gaussian.md (c));
- loss = soft-boundary SVDD in that metric, ``R^2 + (1 / nu) mean(relu(d^2 - R^2))`` (divided by
  ``latent_dim``, the expected ``d^2``, to put it on the reconstruction's scale), where each batch's
  ``d^2`` are rescaled to mean ``latent_dim`` (with gradient): the loss then depends on the *shape* of
  the latent distribution (the tail against the bulk), not its scale. Without this, shrinking every
  latent lowers the loss within an epoch, the next epoch's covariance rescales, and the latents
  collapse in scale until the decoder cannot use them (measured: reconstruction stuck at the input
  variance); the reference fights the same collapse with inverse-variance and condition-number
  penalties. ``R^2`` is the
  ``1 - nu`` quantile of the training ``d^2`` (Ruff et al.'s line search for ``R``; the reference
  trains ``R`` without the ``1 / nu`` factor, so ``R`` only shrinks), plus
  ``recon_weight * mean((decoder(z) - x)^2)``.
  The reference's covariance penalties (inverse diagonal, condition number) are left out: the
  reconstruction branch alone keeps the latent covariance well conditioned here.
- after training, the final Gaussian of the training latents; ``decision_function`` = ``d(z)``.

Seeded (``random_state``; the global RNG is left alone) and deterministic on CPU; ``progress`` shows
the epochs; ``save`` / :func:`fastad.detectors.load` use the detectors' safetensors + JSON format.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._io import ModelFileError, write_model_file
from ._registry import register


def _mahalanobis_sq(x: torch.Tensor, mean: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances ``Tensor[N]`` of ``x: Tensor[N, d]`` to ``mean: Tensor[d]`` with
    precision ``L L^T`` (``factor = L: Tensor[d, d]``, lower triangular); differentiable in ``x``.
    Kept in plain torch on purpose: training differentiates through it in float64 sums of small
    latents (k <= 64), where the op's float32 tiling buys nothing."""
    return ((x - mean) @ factor).square().sum(-1)


def _gaussian(z: torch.Tensor, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, precision factor L)`` (float32) of latents ``z: Tensor[N, k]``: the maximum-likelihood
    covariance plus ``reg * tr(S) / k * I``, factorised in float64."""
    z = z.double()
    mu = z.mean(0)
    zc = z - mu
    S = zc.T @ zc / z.shape[0]
    k = S.shape[0]
    S.diagonal().add_(reg * float(S.diagonal().sum()) / k + 1e-12)
    C, info = torch.linalg.cholesky_ex(S)
    if int(info) != 0:
        raise ValueError(f"MSVDD.fit: the latent covariance ({k} dims) is not positive definite; increase reg (got {reg})")
    L = torch.linalg.cholesky(torch.cholesky_inverse(C))
    return mu.float(), L.float()


class _Net(nn.Module):
    def __init__(self, D: int, hidden: int, latent: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(D, hidden), nn.GELU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, D))


_PARAMS = ("latent_dim", "hidden_dim", "epochs", "batch_size", "lr", "weight_decay", "nu", "recon_weight", "reg",
           "contamination", "random_state", "progress")


@register
class MSVDD:
    """Mahalanobis SVDD with a reconstruction branch, on embeddings ``Tensor[N, D]`` (module docstring).

    Args:
        latent_dim: size of ``z`` (the reference: 128 on fused audio-IMU features).
        hidden_dim: width of the encoder's and decoder's hidden layer.
        epochs, batch_size, lr, weight_decay: Adam training on the normal embeddings.
        nu: soft-boundary fraction in (0, 1) (share of training latents outside the sphere).
        recon_weight: weight of the reconstruction loss (0 turns the branch off).
        reg: ridge of the latent covariance, relative to its mean variance.
        contamination: share of the training set above ``threshold_``.
        random_state: seed of the weights and the batch order. progress: a bar over epochs.

    Fitted: ``mean_`` / ``factor_`` (the latent Gaussian; precision ``factor_ @ factor_.T``),
    ``radius_`` (``R``), ``loss_history_`` (per epoch: total, svdd, reconstruction),
    ``decision_scores_``, ``threshold_``, ``labels_``, ``n_features_in_``. Tensors in and out on the
    input's device (training runs there).
    """

    _params = _PARAMS

    def __init__(self, latent_dim: int = 16, hidden_dim: int = 64, epochs: int = 100, batch_size: int = 32,
                 lr: float = 1e-3, weight_decay: float = 1e-5, nu: float = 0.1, recon_weight: float = 1.0,
                 reg: float = 1e-3, contamination: float = 0.1, random_state: int = 0, progress: bool = False):
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.nu = nu
        self.recon_weight = recon_weight
        self.reg = reg
        self.contamination = contamination
        self.random_state = random_state
        self.progress = progress

    # ---- sklearn parameters
    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in self._params}

    def set_params(self, **params) -> "MSVDD":
        for k, v in params.items():
            if k not in self._params:
                raise ValueError(f"MSVDD: unknown parameter {k!r} (known: {list(self._params)})")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return f"MSVDD({', '.join(f'{k}={getattr(self, k)!r}' for k in self._params)})"

    def _check_params(self) -> None:
        def pos_int(name):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"MSVDD: {name} must be an int >= 1, got {v!r}")

        for name in ("latent_dim", "hidden_dim", "epochs", "batch_size"):
            pos_int(name)
        for name, hi in (("lr", math.inf), ("contamination", 0.5)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v <= hi):
                raise ValueError(f"MSVDD: {name} must be in (0, {hi}], got {v!r}")
        if not (isinstance(self.nu, (int, float)) and 0 < self.nu < 1):  # nu = 1: the rescaled loss is constant
            raise ValueError(f"MSVDD: nu must be in (0, 1), got {self.nu!r}")
        for name in ("weight_decay", "recon_weight", "reg"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise ValueError(f"MSVDD: {name} must be a finite float >= 0, got {v!r}")
        if not isinstance(self.random_state, int):
            raise ValueError(f"MSVDD: random_state must be an int, got {self.random_state!r}")

    @staticmethod
    def _as_x(X, what: str) -> torch.Tensor:
        if not isinstance(X, torch.Tensor):
            X = torch.as_tensor(X)
        if X.dim() != 2:
            raise ValueError(f"MSVDD.{what}: X must be 2-D [N, D], got shape {list(X.shape)}")
        if not X.is_floating_point():
            raise ValueError(f"MSVDD.{what}: X must be floating point, got {X.dtype}")
        if X.shape[1] < 1:
            raise ValueError(f"MSVDD.{what}: X must have D >= 1 features, got shape {list(X.shape)}")
        X = X.float()
        if X.numel() and not bool(torch.isfinite(X).all()):
            raise ValueError(f"MSVDD.{what}: X holds NaN or Inf (or values beyond float32's range)")
        return X.contiguous()

    # ---- fit
    def fit(self, X, y=None) -> "MSVDD":
        """Train on normal embeddings ``X: Tensor[N, D]`` (``y`` ignored). Returns ``self``."""
        self._check_params()
        X = self._as_x(X, "fit")
        N, D = X.shape
        if N < max(2, self.latent_dim + 1):
            raise ValueError(f"MSVDD.fit: needs more training embeddings than latent_dim + 1 = {self.latent_dim + 1}, got N={N}")
        if bool((X == X[:1]).all()):
            raise ValueError(f"MSVDD.fit: all {N} training embeddings are identical (zero variance): there is no normal "
                             "variation to learn; give varied normal embeddings")
        dev = X.device
        self.n_features_in_ = int(D)
        self.scale_mean_ = X.mean(0)
        self.scale_std_ = X.std(0).clamp_min(1e-6)
        Xs = (X - self.scale_mean_) / self.scale_std_
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(self.random_state)
            self._net = _Net(D, self.hidden_dim, self.latent_dim).to(dev)
        gen = torch.Generator().manual_seed(self.random_state)
        opt = torch.optim.Adam(self._net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        epochs = range(int(self.epochs))
        if self.progress:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc="MSVDD fit", leave=False)
        nu, bs, k = float(self.nu), int(self.batch_size), int(self.latent_dim)
        self.loss_history_ = []
        for _ in epochs:
            mu, L, r2 = self._sphere(Xs)
            self._net.train()
            order = torch.randperm(N, generator=gen).to(dev)
            tot = [0.0, 0.0, 0.0]
            for s in range(0, N, bs):
                xb = Xs[order[s : s + bs]]
                z = self._net.encoder(xb)
                d2 = _mahalanobis_sq(z, mu, L)
                d2 = d2 * (k / d2.mean().clamp_min(1e-12))  # scale-free: shrinking every z lowers nothing
                svdd = (r2 + torch.relu(d2 - r2).mean() / nu) / k  # E d2 = k under the model: one scale with rec
                rec = (self._net.decoder(z) - xb).square().mean() if self.recon_weight > 0 else torch.zeros((), device=dev)
                loss = svdd + self.recon_weight * rec
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                w = xb.shape[0] / N
                tot = [tot[0] + w * float(loss.detach()), tot[1] + w * float(svdd.detach()), tot[2] + w * float(rec.detach())]
            self.loss_history_.append(tuple(tot))
            if not math.isfinite(tot[0]):
                raise FloatingPointError(f"MSVDD.fit: the loss diverged (epoch {len(self.loss_history_)}); lower lr (got {self.lr})")
        self._net.eval()
        self.mean_, self.factor_, r2 = self._sphere(Xs)
        self.radius_ = math.sqrt(r2)
        self.decision_scores_ = self._score_std(Xs)
        self.threshold_ = float(torch.quantile(self.decision_scores_.double().cpu(), 1.0 - float(self.contamination)))
        self.labels_ = (self.decision_scores_ > self.threshold_).long()
        return self

    @torch.no_grad()
    def _latents(self, Xs: torch.Tensor) -> torch.Tensor:
        was = self._net.training
        self._net.eval()
        if Xs.shape[0] == 0:  # no rows: no latents (torch.cat needs at least one chunk)
            z = torch.empty(0, int(self.latent_dim), device=Xs.device)
            self._net.train(was)
            return z
        z = torch.cat([self._net.encoder(Xs[s : s + 4096]) for s in range(0, Xs.shape[0], 4096)])
        self._net.train(was)
        return z

    def _sphere(self, Xs: torch.Tensor):
        """The Gaussian of the training latents and ``R^2`` (the ``1 - nu`` quantile of their ``d^2``)."""
        z = self._latents(Xs)
        mu, L = _gaussian(z, float(self.reg))
        d2 = _mahalanobis_sq(z, mu, L)
        return mu, L, float(torch.quantile(d2.double().cpu(), 1.0 - float(self.nu)))

    def _score_std(self, Xs: torch.Tensor) -> torch.Tensor:
        # float64 distances: the latents of a far-out embedding (e.g. 1e30) are finite in float32 while their
        # squares overflow; the distance itself then still fits float32
        z = self._latents(Xs)
        if not bool(torch.isfinite(z).all()):
            raise ValueError("MSVDD.decision_function: X is too far from the training data: its latents overflow float32; "
                             "give finite, comparably scaled embeddings")
        d = _mahalanobis_sq(z.double(), self.mean_.double(), self.factor_.double()).clamp_min(0).sqrt()
        return d.float()

    # ---- scoring
    def _check_fitted(self, what: str) -> None:
        if getattr(self, "mean_", None) is None:
            raise RuntimeError(f"MSVDD.{what}: not fitted yet; call fit(X) first")

    def decision_function(self, X) -> torch.Tensor:
        """``Tensor[N]`` float32 Mahalanobis distances of the latents of ``X: Tensor[N, D]`` (higher = more anomalous)."""
        self._check_fitted("decision_function")
        X = self._as_x(X, "decision_function")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"MSVDD.decision_function: X has {X.shape[1]} features, the model {self.n_features_in_}")
        dev = self.mean_.device
        Xs = (X.to(dev) - self.scale_mean_) / self.scale_std_
        return self._score_std(Xs).to(X.device)

    def predict(self, X) -> torch.Tensor:
        """``Tensor[N]`` int64: 1 where ``decision_function(X) > threshold_``."""
        return (self.decision_function(X) > self.threshold_).long()

    def fit_predict(self, X) -> torch.Tensor:
        return self.fit(X).labels_

    # ---- persistence
    def _state(self) -> dict:
        t = {f"net.{k}": v for k, v in self._net.state_dict().items()}
        t.update(scale_mean=self.scale_mean_, scale_std=self.scale_std_, mean=self.mean_, factor=self.factor_,
                 decision_scores=self.decision_scores_)
        return t

    def save(self, path):
        """Write the fitted detector to ``path`` (safetensors + JSON; read back with :func:`fastad.detectors.load`)."""
        self._check_fitted("save")
        fields = {"params": self.get_params(), "threshold": self.threshold_, "n_features_in": self.n_features_in_,
                  "radius": self.radius_, "loss_history": [list(x) for x in self.loss_history_]}
        return write_model_file(path, type(self).__name__, self._state(), fields)

    @classmethod
    def _from_file(cls, path, meta, tensors, *, device=None, backbone=None):
        """Build a fitted detector from a verified model file (``backbone`` is unused: embeddings in)."""
        try:
            det = cls(**{k: v for k, v in dict(meta["params"]).items() if k in cls._params})
            D, thr, radius = int(meta["n_features_in"]), float(meta["threshold"]), float(meta["radius"])
            hist = [tuple(float(v) for v in x) for x in meta.get("loss_history", [])]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(path, f"the metadata lacks or garbles {e}") from None
        try:
            det._check_params()
        except ValueError as e:
            raise ModelFileError(path, f"incompatible contents: {e}") from None
        net = _Net(D, det.hidden_dim, det.latent_dim)
        want = {f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
        k = det.latent_dim
        want.update(scale_mean=(D,), scale_std=(D,), mean=(k,), factor=(k, k))
        N = tensors.get("decision_scores", torch.empty(0)).shape[0]
        want["decision_scores"] = (N,)
        got = {n: tuple(t.shape) for n, t in tensors.items()}
        if got != want or any(t.dtype != torch.float32 for t in tensors.values()):
            raise ModelFileError(path, f"an MSVDD file (D={D}, latent_dim={k}) holds {want} float32, found "
                                       f"{ {n: (s, str(tensors[n].dtype)) for n, s in got.items()} }")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        net.load_state_dict({n[4:]: t for n, t in tensors.items() if n.startswith("net.")})
        det._net = net.to(dev).eval()
        det.n_features_in_ = D
        det.scale_mean_, det.scale_std_ = tensors["scale_mean"].to(dev), tensors["scale_std"].to(dev)
        det.mean_, det.factor_ = tensors["mean"].to(dev), tensors["factor"].to(dev)
        det.decision_scores_ = tensors["decision_scores"].to(dev)
        det.threshold_, det.radius_, det.loss_history_ = thr, radius, hist
        det.labels_ = (det.decision_scores_ > thr).long()
        return det
