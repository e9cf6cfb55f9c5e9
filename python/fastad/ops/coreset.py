"""Greedy k-center (farthest point sampling) coreset selection, optionally after a seeded sparse
random projection (PatchCore's memory-bank subsampling)."""
from __future__ import annotations

import math
import threading
import time
from typing import Callable, Optional, Tuple, Union

import torch

from ._args import check_args
from .knn import check_finite

#: Rows of the bank projected per matmul block (bounds the temporary fp32 copy of a low-precision bank
#: to ``PROJECTION_BLOCK_ROWS * D * 4`` bytes).
PROJECTION_BLOCK_ROWS = 16384

#: The projected bank gets zero columns up to a multiple of this many (distances are unchanged: a
#: zero column adds (0 - 0)^2 = 0), so every row is a whole number of 16-float / 16-half SIMD blocks and
#: 32/64-byte aligned. Measured: 50,000 x 267 fp16 streams 1.4x faster padded to 272 (RESULTS.md).
PROJECTION_PAD = 16

#: Seconds between two reads of the op's progress counter while a progress bar is shown.
PROGRESS_POLL_S = 0.1

#: ``eps`` of the Johnson-Lindenstrauss bound used by ``projection_dim="auto"`` (anomalib's value).
JL_EPS = 0.9

_STORAGE = (torch.float32, torch.float16, torch.bfloat16)


#: Seconds of selection after which ``on_estimate`` receives the estimated total time ...
ESTIMATE_AFTER_S = 3.0
#: ... once the steps have run this long (the rate is measured on steps, never on the set-up before them).
ESTIMATE_MIN_STEPS_S = 1.0

_METHODS = ("pruned", "exhaustive")


def jl_min_dim(n_samples: int, eps: float = JL_EPS) -> int:
    """Johnson-Lindenstrauss dimension ``int(4 ln(n) / (eps^2/2 - eps^3/3))``, as anomalib computes it
    (e.g. 267 for 50,000 rows at ``eps=0.9``). Note that it does not depend on ``D``: for small ``D`` it
    exceeds ``D`` (anomalib then *expands* the data; :func:`coreset` with ``projection_dim="auto"`` never
    does, see :func:`auto_projection_dim`)."""
    if n_samples < 1:
        raise ValueError(f"jl_min_dim: n_samples must be >= 1, got {n_samples}")
    return int(4.0 * math.log(n_samples) / (eps**2 / 2.0 - eps**3 / 3.0))


def auto_projection_dim(n_rows: int, n_features: int) -> int | None:
    """The projection of ``projection_dim="auto"``: ``min(jl_min_dim(n_rows), n_features)``, and ``None``
    (no projection) when that is ``n_features``: a random projection never expands the data (anomalib
    projects 152-dim features of 493,920 rows to 323 dims; here they are selected on as they are)."""
    k = max(1, jl_min_dim(max(int(n_rows), 1)))  # the bound is 0 for a single row
    return None if k >= n_features else k


def sparse_random_matrix(n_features: int, n_components: int, seed: int = 0) -> torch.Tensor:
    """Very sparse random projection matrix (Achlioptas / Li, Hastie & Church 2006; the scheme of
    scikit-learn's ``SparseRandomProjection(density="auto")`` that anomalib uses).

    Density ``s = 1 / sqrt(n_features)``: each entry is ``+sqrt(1/s) / sqrt(n_components)`` with
    probability ``s/2``, ``-sqrt(1/s) / sqrt(n_components)`` with probability ``s/2``, else 0, so that
    squared distances are preserved in expectation.

    The matrix is drawn on the CPU from ``torch.Generator().manual_seed(seed)``, so a seed gives the same
    matrix on every device and every run (it is small: ``D * k`` floats).

    Returns:
        ``Tensor[n_features, n_components]`` float32 (dense storage), CPU.
    """
    if n_features < 1 or n_components < 1:
        raise ValueError(
            f"sparse_random_matrix: n_features and n_components must be >= 1, got {n_features} and {n_components}"
        )
    g = torch.Generator().manual_seed(int(seed))
    density = 1.0 / math.sqrt(n_features)
    u = torch.rand(n_features, n_components, generator=g, dtype=torch.float64)
    scale = math.sqrt(1.0 / density) / math.sqrt(n_components)
    m = torch.zeros(n_features, n_components, dtype=torch.float32)
    m[u < density / 2] = scale
    m[u > 1.0 - density / 2] = -scale
    return m


def project(bank: torch.Tensor, matrix: torch.Tensor, block_rows: int = PROJECTION_BLOCK_ROWS) -> torch.Tensor:
    """``bank @ matrix`` in fp32, ``block_rows`` rows at a time (bounded temporaries).

    Args:
        bank: ``Tensor[N, D]`` float32 / float16 / bfloat16, any device.
        matrix: ``Tensor[D, k]`` (moved to the bank's device, fp32).
    Returns:
        ``Tensor[N, k]`` float32 on the bank's device.
    """
    m = matrix.to(device=bank.device, dtype=torch.float32)
    out = torch.empty(bank.shape[0], m.shape[1], dtype=torch.float32, device=bank.device)
    for r0 in range(0, bank.shape[0], block_rows):
        blk = bank[r0 : r0 + block_rows]
        torch.mm(blk if blk.dtype == torch.float32 else blk.float(), m, out=out[r0 : r0 + block_rows])
    return out


def projected_bank(bank: torch.Tensor, k: int, seed: int = 0, pad_to: int = PROJECTION_PAD) -> torch.Tensor:
    """The selection space of ``coreset(..., projection_dim=k, seed=seed)``.

    Returns:
        ``Tensor[N, k + pad]`` float32 on the bank's device: ``bank @ sparse_random_matrix(D, k, seed)``
        followed by ``pad = -k % pad_to`` zero columns (distances are those of the k columns;
        ``pad_to`` defaults to :data:`PROJECTION_PAD`). Scriptable (``torch.jit.script``).
    """
    m = sparse_random_matrix(bank.shape[1], k, seed)
    pad = -k % pad_to
    if pad:
        m = torch.cat([m, m.new_zeros(m.shape[0], pad)], dim=1)
    return project(bank, m)


def coreset(
    bank: torch.Tensor,
    n: int,
    *,
    projection_dim: int | str | None = None,
    seed: int = 0,
    start: int = 0,
    storage_dtype: torch.dtype | None = None,
    progress: bool = False,
    method: str = "pruned",
    on_estimate: Callable[[dict], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-center (farthest point sampling) selection of ``n`` bank rows.

    Starting from row ``start``, each step adds the row whose Euclidean distance to its nearest
    already-chosen row is largest (ties: the smallest row index). Chosen rows are never chosen again,
    so the indices are distinct even when the bank has duplicated rows. An exhaustive step is one fused
    streaming pass over the bank (distance, running min, argmax). ``method="pruned"`` (CPU; the default)
    keeps a compact summary of every row (its coordinates on the bank's top 32 principal axes, float16,
    plus its residual norm) at the leaves of a ball tree that keeps every node's largest running min:
    the summaries give a rigorous lower bound of each row's distance to a new centre, so a pass skips
    the subtrees and rows that cannot get closer and reads in full only the rest. Centres come in
    batches: the current argmax is provably the next greedy choice as long as no centre of the batch is
    closer to it than its running min, so up to 16 centres share one pass. The rows it reads get exactly
    the exhaustive step's distance (same code, same float32 arithmetic) in the same order, and the
    bounds carry the rounding margins, so both methods return **identical indices and distances** (same
    tie rule: the largest running min, smallest row index on ties). It runs exhaustive steps by itself
    while the filter does not pay (it is built only once the cheap per-row triangle test skips >= 5% of
    the rows, e.g. never on high-dimensional noise, and each kind of step is timed). On CUDA the whole loop stays on the device (no host synchronisation per
    step) and ``"pruned"`` runs that exhaustive loop.

    Args:
        bank: ``Tensor[N, D]``, float32 / float16 / bfloat16 (arithmetic is float32), CPU or CUDA.
        n: number of rows to choose, ``1 <= n <= N``.
        projection_dim: ``None`` selects in the full dimension ``D``. An ``int`` ``k`` first projects the
            bank to ``Tensor[N, k]`` with a seeded very sparse random projection
            (:func:`sparse_random_matrix`, applied in blocks of :data:`PROJECTION_BLOCK_ROWS` rows; the
            result is zero-padded to a multiple of :data:`PROJECTION_PAD` columns, which changes no
            distance);
            ``"auto"`` uses the Johnson-Lindenstrauss dimension :func:`jl_min_dim` ``(N, eps=0.9)``,
            as anomalib's PatchCore does (e.g. 267 for N = 50,000), but never more than ``D``: when
            the bound is ``>= D`` the bank is not projected (:func:`auto_projection_dim`; anomalib
            would expand 152-dim features to 323 dims for 493,920 rows).
        seed: seed of the projection matrix (ignored without projection). Same seed, same result.
        start: index of the first chosen row, ``0 <= start < N`` (anomalib draws it at random; pass
            ``torch.randint(N, (1,), generator=g).item()`` for that behaviour).
        storage_dtype: dtype the (projected) bank is stored in while selecting: ``torch.float16`` or
            ``torch.bfloat16`` halve the bytes streamed per step (float32 arithmetic either way).
            ``None`` keeps the bank's dtype (a projected bank is float32). A projected bank is small
            enough that fp16 storage may keep it in the last-level cache: measured 3x faster per step
            at 50,000 x 267 (benchmarks/RESULTS.md, "## coreset").
        progress: show a tqdm bar of the centres chosen (CPU banks: the op runs in a worker thread,
            which it allows by releasing the GIL, and reports every step through a counter; the result
            is the same); its postfix shows the share of rows skipped (not read in full) in recent steps. On CUDA
            the loop runs on the device without host synchronisation, so no bar.
        method: ``"pruned"`` (default) or ``"exhaustive"``; same result (see above). On the real PatchCore
            features of the whole MTD training set (548,800 x 152, 10% coreset) the pruned method takes
            62.6 CPU-s on one thread vs ~1,700 s exhaustive (benchmarks/RESULTS.md, "coreset pruning");
            the fit's 493,920 rows: 53.7 CPU-s on an AVX2 EPYC, 44.6 s wall in ``fastad fit`` on a Zen 4.
        on_estimate: CPU banks: called once, from this thread, after :data:`ESTIMATE_AFTER_S` seconds of
            selection (not at all when it finishes sooner) with a dict: ``rows``, ``dims`` (of the
            selection space), ``centres``, ``done`` (centres chosen), ``elapsed_s``, ``estimate_s``
            (estimated total: elapsed + remaining steps at the rate of the recent steps, measured after
            the set-up and over at least :data:`ESTIMATE_MIN_STEPS_S` of steps; later steps of
            the pruned method are usually faster, so an upper estimate) and ``read_fraction`` (rows read
            / rows of full scans so far).

    ``torch.jit.script(coreset)`` (and a call from scripted code) compiles :func:`coreset_scriptable`:
    the same arguments but ``on_estimate``, positional or keyword (TorchScript has no keyword-only
    arguments with defaults), the same checks and result; ``progress`` draws no bar there.
    ``torch.compile`` / ``torch.export`` trace this function (no bar either).

    Returns:
        ``(indices Tensor[n] int64, min_distances Tensor[n] float32)`` on the bank's device:
        ``indices[i]`` is the i-th chosen row (``indices[0] == start``) and ``min_distances[i]`` the
        Euclidean distance (in the selection space: projected / stored dtype) of that row to the rows
        ``indices[:i]``; ``min_distances[0]`` is ``+inf`` (the distance to the empty set). The
        distances are non-increasing; ``min_distances[i]`` is the covering radius of the first ``i``
        centres.

    Raises:
        RuntimeError (from the op) for bad shapes/dtypes, ``n`` or ``start`` out of range, an empty
        bank, or NaN/Inf in the bank (detected during the first step, so not when ``n == 1``);
        ValueError for a bad ``projection_dim`` / ``storage_dtype`` / ``method``, or NaN/Inf in a CUDA
        bank.

    Example:
        >>> import torch, fastad
        >>> bank = torch.tensor([[0., 0.], [1., 0.], [10., 0.], [5., 0.]])
        >>> idx, dist = fastad.ops.coreset(bank, 3)
        >>> idx.tolist(), dist.tolist()
        ([0, 2, 3], [inf, 10.0, 5.0])
    """
    if not torch.jit.is_scripting():
        check_args("coreset", {"bank": bank}, {"n": n, "seed": seed, "start": start})
    x = _selection_space(bank, projection_dim, seed, storage_dtype, method)
    if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
        if (progress or on_estimate is not None) and x.device.type == "cpu" and int(n) > 1 and x.dim() == 2:
            return _coreset_watched(x, int(n), int(start), method, bool(progress), on_estimate)
    return torch.ops.fastad.coreset(x, int(n), int(start), None, method)


def coreset_scriptable(
    bank: torch.Tensor,
    n: int,
    projection_dim: Optional[Union[int, str]] = None,
    seed: int = 0,
    start: int = 0,
    storage_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    method: str = "pruned",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """What ``torch.jit.script(coreset)`` compiles: :func:`coreset` without ``on_estimate`` and without a
    progress bar (``progress`` is accepted and ignored), its arguments positional or keyword. Same
    checks, same result."""
    x = _selection_space(bank, projection_dim, seed, storage_dtype, method)
    return torch.ops.fastad.coreset(x, int(n), int(start), None, method)


# torch.jit.script calls an object's __prepare_scriptable__ and compiles what it returns (for a function
# passed to it and for one called from scripted code): coreset's keyword-only arguments, its
# on_estimate callback and its progress thread are not TorchScript, coreset_scriptable is.
setattr(coreset, "__prepare_scriptable__", lambda: coreset_scriptable)


def _selection_space(bank: torch.Tensor, projection_dim: Optional[Union[int, str]], seed: int,
                     storage_dtype: Optional[torch.dtype], method: str) -> torch.Tensor:
    """The checked arguments' selection space: the bank, projected and / or cast as asked (scriptable)."""
    if not torch.jit.is_scripting():  # scripted: the op checks ``method`` (TorchScript reads no globals)
        if method not in _METHODS:
            raise ValueError(f"coreset: method must be 'pruned' or 'exhaustive', got '{method}'")
    if storage_dtype is not None and storage_dtype not in [torch.float32, torch.float16, torch.bfloat16]:
        raise ValueError(f"coreset: storage_dtype must be None, float32, float16 or bfloat16, got {storage_dtype}")
    x = bank
    if projection_dim is not None:
        if bank.dim() != 2:
            raise ValueError(f"coreset: bank must be 2-D [N, D], got shape {list(bank.shape)}")
        k: Optional[int] = None
        if isinstance(projection_dim, str):
            if projection_dim != "auto":
                raise ValueError(f"coreset: projection_dim must be None, an int >= 1 or 'auto', got '{projection_dim}'")
            k = auto_projection_dim(bank.shape[0], bank.shape[1])
        elif isinstance(projection_dim, int) and not isinstance(projection_dim, bool) and projection_dim >= 1:
            k = projection_dim
        else:
            raise ValueError(f"coreset: projection_dim must be None, an int >= 1 or 'auto', got {projection_dim}")
        if k is not None and bank.shape[0] >= 1 and bank.shape[1] >= 1 and _storable(bank.dtype):
            x = projected_bank(bank, k, seed)
    if storage_dtype is not None and x.dtype != storage_dtype and _storable(x.dtype):
        x = x.to(storage_dtype)
    if x.device.type != "cpu" and x.dim() == 2:  # the CPU kernel detects NaN/Inf itself, for free
        check_finite("bank", "coreset", x)
    return x


def _storable(dtype: torch.dtype) -> bool:
    """``dtype in _STORAGE``, in TorchScript."""
    return dtype == torch.float32 or dtype == torch.float16 or dtype == torch.bfloat16


def _coreset_watched(x: torch.Tensor, n: int, start: int, method: str, bar_on: bool,
                     on_estimate: Callable[[dict], None] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.fastad.coreset`` in a worker thread while this thread polls the op's progress
    counters: a tqdm bar (centres; postfix: rows skipped in recent steps) and/or one ``on_estimate`` call
    (errors are re-raised here)."""
    tqdm = None
    if bar_on:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is a runtime dependency, but never fail on a progress bar
            tqdm = None
    counter = torch.zeros(3, dtype=torch.int64)  # centres chosen, rows read, rows of full scans
    box: dict = {}

    def work() -> None:
        try:
            box["out"] = torch.ops.fastad.coreset(x, n, start, counter, method)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["err"] = e

    worker = threading.Thread(target=work, name="fastad-coreset", daemon=True)
    bar = tqdm(total=n, desc="coreset", unit="centre", leave=False) if tqdm is not None else None
    t0 = time.perf_counter()
    hist = [(t0, 1, 0, 0)]  # (time, centres, rows read, rows of full scans)
    steps0 = None  # the first poll after the loop's second centre: the set-up (the pruned method's tree) is over
    estimated = on_estimate is None
    try:
        worker.start()
        while worker.is_alive():
            worker.join(PROGRESS_POLL_S)
            now = time.perf_counter()
            done, read, full = (int(v) for v in counter.tolist())
            hist.append((now, done, read, full))
            while len(hist) > 2 and now - hist[1][0] > 2.0:  # a window of the last ~2 s
                hist.pop(0)
            old = hist[0]
            if bar is not None:
                bar.update(done - bar.n)
                if full > old[3]:
                    # rows not read in full; the share read shown too, as it is what the step costs
                    read_pct = 100.0 * (read - old[2]) / (full - old[3])
                    bar.set_postfix_str(f"rows skipped {100.0 - read_pct:.1f}% (read {read_pct:.3g}%)", refresh=False)
            if steps0 is None and done >= 2:
                steps0 = hist[-1]
            # the rate of steps only: the set-up before the first step is no step's cost (extrapolated, the
            # pruned method's ~4 s tree build on 493,920 rows once made 44 s look like 49,522 s)
            w0 = old if steps0 is None or old[0] >= steps0[0] else steps0
            if (not estimated and steps0 is not None and now - t0 >= ESTIMATE_AFTER_S
                    and now - steps0[0] >= ESTIMATE_MIN_STEPS_S and done > w0[1] and worker.is_alive()):
                estimated = True
                rate = (now - w0[0]) / (done - w0[1])  # seconds per centre, recent steps
                on_estimate(dict(rows=int(x.shape[0]), dims=int(x.shape[1]), centres=n, done=done,
                                 elapsed_s=now - t0, estimate_s=(now - t0) + rate * (n - done),
                                 read_fraction=read / full if full else 1.0))
    finally:
        if bar is not None:
            bar.close()
    if "err" in box:
        raise box["err"]
    return box["out"]
