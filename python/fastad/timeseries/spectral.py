"""THEMIS' spectral score on an implicit self-similarity matrix.

For window embeddings ``E: Tensor[W, D]`` with unit rows ``X``, the self-similarity matrix is
``S = |X X^T|`` (absolute cosine similarity, ``[W, W]``). Its rank-k approximation from the k
eigenpairs of largest magnitude is ``A = U diag(lam) U^T`` (the best rank-k approximation of the
symmetric S in Frobenius norm); the spectral score of window i is the relative norm of its residual
row, ``r_i = ||S_i - A_i||_2 / ||S_i||_2`` (``relative=False``: the plain norm): the share of its
similarity profile that the dominant (recurring) patterns do not explain. The relative form matters:
a window unlike all others has a row that is nearly ``e_i`` (tiny plain residual, relative ~1), while
a common window's long row of large similarities leaves a large plain residual.

S is never held whole unless it is small (``max_dense_bytes``): the eigenvectors come from subspace
iteration with Rayleigh-Ritz (a block power method with oversampling, converged on the Ritz
residuals) whose products ``S @ V`` are computed one row tile of S at a time (``tile_bytes``), and
the residual norms are accumulated in the same tiles. Everything runs in float64 (the residual is a
difference of similar quantities). ``method="eigh"`` materialises S and calls the dense
``torch.linalg.eigh`` (the test oracle; small W only).
"""
from __future__ import annotations

import torch

__all__ = ["unit_rows", "similarity_matmul", "top_eigenpairs", "spectral_scores"]


def unit_rows(E: torch.Tensor) -> torch.Tensor:
    """Rows of ``E`` scaled to unit L2 norm (float64); an all-zero row stays zero (similarity 0)."""
    X = E.double()
    n = X.norm(dim=1, keepdim=True)
    return torch.where(n > 0, X / n.clamp_min(1e-300), torch.zeros_like(X))


def _tile_rows(W: int, tile_bytes: int) -> int:
    return max(1, min(W, int(tile_bytes) // (8 * max(W, 1))))


def _tiles(X: torch.Tensor, tile_bytes: int):
    W = X.shape[0]
    r = _tile_rows(W, tile_bytes)
    for i0 in range(0, W, r):
        i1 = min(W, i0 + r)
        yield i0, i1, (X[i0:i1] @ X.T).abs_()


def similarity_matmul(X: torch.Tensor, V: torch.Tensor, tile_bytes: int = 64 << 20, S: torch.Tensor | None = None) -> torch.Tensor:
    """``|X X^T| @ V`` for unit rows ``X: [W, D]`` and ``V: [W, m]`` (float64), one row tile of
    ``|X X^T|`` (at most ``tile_bytes``) at a time; or ``S @ V`` when a dense ``S`` is given."""
    if S is not None:
        return S @ V
    out = torch.empty(X.shape[0], V.shape[1], dtype=V.dtype, device=V.device)
    for i0, i1, St in _tiles(X, tile_bytes):
        out[i0:i1] = St @ V
    return out


def top_eigenpairs(X: torch.Tensor, k: int, *, oversample: int = 10, max_iter: int = 300, tol: float = 1e-10,
                   tile_bytes: int = 64 << 20, S: torch.Tensor | None = None, seed: int = 0):
    """The ``k`` eigenpairs of largest magnitude of ``S = |X X^T|`` (``X`` unit rows, float64):
    ``(lam Tensor[k], U Tensor[W, k])``, ``|lam|`` descending. Subspace iteration with Rayleigh-Ritz on
    ``k + oversample`` vectors, stopped when every wanted Ritz pair has
    ``||S u - lam u|| <= tol * |lam_1|`` (or after ``max_iter`` iterations: the result is then the
    best subspace found, and a ``RuntimeWarning`` says so)."""
    W = X.shape[0]
    m = min(W, k + max(0, oversample))
    g = torch.Generator(device="cpu").manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(W, m, generator=g, dtype=torch.float64).to(X.device))
    for it in range(max_iter):
        Z = similarity_matmul(X, Q, tile_bytes, S)
        H = Q.T @ Z
        lam, V = torch.linalg.eigh((H + H.T) / 2)
        order = lam.abs().argsort(descending=True)
        lam, V = lam[order], V[:, order]
        U, SU = Q @ V[:, :k], Z @ V[:, :k]
        res = (SU - U * lam[:k]).norm(dim=0)
        if float(res.max()) <= tol * max(float(lam[0].abs()), 1e-300) or m == W:
            return lam[:k], U
        Q, _ = torch.linalg.qr(Z @ V)  # next subspace (Ritz vectors ordered by |lam|)
    import warnings

    warnings.warn(f"top_eigenpairs: not converged after {max_iter} iterations (max Ritz residual "
                  f"{float(res.max()):.2e} vs |lam_1| {float(lam[0].abs()):.3e}); the scores use the subspace reached",
                  RuntimeWarning, stacklevel=2)
    return lam[:k], U


def spectral_scores(E, k: int = 10, *, method: str = "auto", max_dense_bytes: int = 256 << 20,
                    tile_bytes: int = 64 << 20, tol: float = 1e-10, seed: int = 0, relative: bool = True) -> torch.Tensor:
    """Spectral residual score ``Tensor[W]`` (float64, higher = more anomalous) of the window
    embeddings ``E: Tensor[W, D]`` (see the module docstring).

    Args:
        k: eigenvectors kept (THEMIS reports stable results for k = 2..20).
        method: ``"auto"`` (dense S when ``8 W^2 <= max_dense_bytes``, else tiled / implicit),
            ``"implicit"`` (never more than one tile of S), ``"dense"`` (S held, same iteration),
            ``"eigh"`` (S held, full ``torch.linalg.eigh``: the oracle).
        tile_bytes: the largest row tile of S computed at once on the implicit path.
        relative: divide each residual norm by its row's norm (default; see the module docstring).
    """
    E = torch.as_tensor(E)
    if E.dim() != 2 or E.shape[0] < 2:
        raise ValueError(f"spectral_scores: E must be [W >= 2, D] window embeddings, got shape {list(E.shape)}")
    if not bool(torch.isfinite(E).all()):
        raise ValueError("spectral_scores: E holds NaN or Inf")
    W = E.shape[0]
    if not (isinstance(k, int) and 1 <= k < W):
        raise ValueError(f"spectral_scores: k must be an int in [1, W - 1] = [1, {W - 1}], got {k!r}")
    if method not in ("auto", "implicit", "dense", "eigh"):
        raise ValueError(f"spectral_scores: method must be 'auto', 'implicit', 'dense' or 'eigh', got {method!r}")
    X = unit_rows(E)
    if method == "auto":
        method = "dense" if 8 * W * W <= max_dense_bytes else "implicit"
    S = (X @ X.T).abs_() if method in ("dense", "eigh") else None
    if method == "eigh":
        lam, U = torch.linalg.eigh(S)
        order = lam.abs().argsort(descending=True)[:k]
        lam, U = lam[order], U[:, order]
    else:
        lam, U = top_eigenpairs(X, k, tile_bytes=tile_bytes, S=S, tol=tol, seed=seed)
    UL = U * lam
    if S is not None:
        out, rn = (S - UL @ U.T).norm(dim=1), S.norm(dim=1)
    else:
        out = torch.empty(W, dtype=torch.float64, device=X.device)
        rn = torch.empty(W, dtype=torch.float64, device=X.device)
        for i0, i1, St in _tiles(X, tile_bytes):
            out[i0:i1] = (St - UL[i0:i1] @ U.T).norm(dim=1)
            rn[i0:i1] = St.norm(dim=1)
    if not relative:
        return out
    return torch.where(rn > 0, out / rn.clamp_min(1e-300), torch.zeros_like(out))  # a zero row (flat window) scores 0

