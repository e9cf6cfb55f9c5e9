"""MuSc ops: parity with the port of the official code (tests/musc_oracle.py) and with the float64
references, opcheck, error paths."""
import pytest
import torch

import fastad
from fastad.ops import _reference as ref
from tests import musc_oracle as O


def _tokens(N, H, C, gen, cls=True, clustered=False):
    x = torch.randn(N, H * H + (1 if cls else 0), C, generator=gen)
    if clustered:  # realistic: shared structure across images, so nearest patches are close
        base = torch.randn(1, x.shape[1], C, generator=gen)
        x = base * 3 + x * 0.5
    return x


# ---- lnamd ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 3, 5, 7])
@pytest.mark.parametrize("N,H,C", [(3, 7, 16), (2, 5, 33), (1, 1, 8), (4, 6, 64)])
def test_lnamd_matches_official(device, r, N, H, C, gen):
    x = _tokens(N, H, C, gen) * 2 + 0.5
    got = fastad.ops.lnamd(x[:, 1:].to(device), r)
    assert got.dtype == torch.float32 and got.shape == (N, H * H, C) and got.device.type == device.type
    want = O.lnamd_official([x], r)[0]
    assert (got.cpu() - want).abs().max().item() <= 1e-6
    assert (got.cpu().double() - ref.lnamd(x[:, 1:], r)).abs().max().item() <= 1e-6


def test_lnamd_non_contiguous_and_half(device, gen):
    x = _tokens(3, 6, 24, gen)
    view = x[:, 1:]  # CLS sliced off: non-contiguous
    assert not view.is_contiguous()
    got = fastad.ops.lnamd(view.to(device), 3)
    assert (got.cpu() - O.lnamd_official([x], 3)[0]).abs().max() <= 1e-6
    got16 = fastad.ops.lnamd(view.half().to(device), 3)
    assert (got16.cpu().double() - ref.lnamd(view.half().float(), 3)).abs().max() <= 1e-5


def test_lnamd_batch_independent(gen):
    x = _tokens(5, 6, 16, gen)[:, 1:]
    full = fastad.ops.lnamd(x, 5)
    assert torch.equal(full[2:3], fastad.ops.lnamd(x[2:3], 5))


# ---- snamd ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("r_list", [[1], [1, 3, 5], [3], [5, 1]])
def test_snamd_matches_reference(device, r_list, gen):
    x = _tokens(2, 6, 12, gen, cls=False) * 0.3
    got = fastad.ops.snamd(x.to(device), r_list)
    assert got.shape == x.shape and got.dtype == torch.float32
    assert (got.cpu().double() - ref.snamd(x, r_list)).abs().max() <= 1e-6


def test_snamd_r1_is_normalised_tokens(gen):
    x = _tokens(2, 4, 8, gen, cls=False)
    assert torch.allclose(fastad.ops.snamd(x, [1]), torch.nn.functional.normalize(x, dim=-1), atol=1e-6)


# ---- mutual_scores -------------------------------------------------------------------------------

@pytest.mark.parametrize("N,H,C", [(5, 4, 8), (12, 5, 40), (9, 7, 130), (7, 3, 3)])
@pytest.mark.parametrize("clustered", [False, True])
def test_mutual_scores_matches_official(device, N, H, C, clustered, gen):
    if clustered and C < 8:
        pytest.skip("3-D clustered features are near-duplicates: both sides carry ~1e-4 cancellation noise (trap 4)")
    x = _tokens(N, H, C, gen, clustered=clustered)
    z = O.lnamd_official([x], 3)[0]
    got = fastad.ops.mutual_scores(z.to(device))
    assert got.shape == (N, H * H) and got.dtype == torch.float32 and got.device.type == device.type
    want = O.msm_official(z)
    assert (got.cpu().double() - want).abs().max().item() <= 1e-5
    k = int(0.3 * (N - 1))
    assert (got.cpu().double() - ref.mutual_scores(z, k)).abs().max().item() <= 1e-5


def test_mutual_scores_real_norms_and_ties(device, gen):
    # not unit-norm, duplicated images (exact zero distances and ties among the minima)
    z = torch.randn(8, 16, 24, generator=gen) * 3
    z[4] = z[1]
    z[6] = z[1]
    got = fastad.ops.mutual_scores(z.to(device), k=3)
    want = ref.mutual_scores(z, 3)
    # exact duplicates: ||x||^2 + ||y||^2 - 2xy cancels to ~1e-7 * ||x||^2 (216 here), sqrt -> ~5e-3,
    # the same cancellation as torch.cdist's mm path used by the official code (trap 4)
    assert (got.cpu().double() - want).abs().max().item() <= 1e-2
    far = ~torch.isin(torch.arange(8), torch.tensor([1, 4, 6]))
    assert (got.cpu().double() - want)[far].abs().max().item() <= 1e-5


@pytest.mark.parametrize("window", [1, 3])
def test_mutual_scores_same_position(device, window, gen):
    z = torch.nn.functional.normalize(torch.randn(6, 25, 16, generator=gen), dim=-1)
    got = fastad.ops.mutual_scores(z.to(device), same_position=window)
    want = ref.mutual_scores(z, 1, window=window)
    assert (got.cpu().double() - want).abs().max().item() <= 1e-5
    if window == 1:  # patch p only against patch p
        d = (z[0, None] - z[1:]).norm(dim=-1)  # [5, L]
        assert torch.allclose(got[0].cpu().double(), d.min(0).values.double(), atol=1e-5)


def test_mutual_scores_pool(device, gen):
    z = torch.nn.functional.normalize(torch.randn(3, 16, 10, generator=gen), dim=-1)
    pool = torch.nn.functional.normalize(torch.randn(11, 16, 10, generator=gen), dim=-1)
    got = fastad.ops.mutual_scores(z.to(device), pool=pool.to(device))
    assert got.shape == (3, 16)
    want = ref.mutual_scores(z, int(0.3 * 11), pool=pool)
    assert (got.cpu().double() - want).abs().max().item() <= 1e-5
    # scoring against the pool = the pool's images as the "others" of a joint batch, for query 0
    joint = torch.cat([z[:1], pool])
    assert (got[0].cpu().double() - O.msm_official(joint, query_index=[0])[0]).abs().max() <= 1e-5


def test_mutual_scores_small_n(gen):
    z = torch.nn.functional.normalize(torch.randn(4, 9, 5, generator=gen), dim=-1)
    with pytest.raises(ValueError, match="k = int"):
        fastad.ops.mutual_scores(z)  # int(0.3 * 3) = 0: the official code returns NaN
    got = fastad.ops.mutual_scores(z, ceil_small=True)  # documented ceiling rule k = max(1, k)
    assert torch.isfinite(got).all()
    assert (got.double() - ref.mutual_scores(z, 1)).abs().max() <= 1e-5
    assert fastad.ops.interval_k(4, 0.3) == 1 and fastad.ops.interval_k(9, 0.3) == 2
    with pytest.raises(RuntimeError, match="k must be <="):
        torch.ops.fastad.mutual_scores(z, 4, None, 0)


@pytest.mark.parametrize("window", [0, 3])
def test_lnamd_mutual_scores_fused_matches_official(device, window, gen):
    x = _tokens(7, 6, 48, gen, clustered=True)
    got = fastad.ops.lnamd_mutual_scores(x[:, 1:].to(device), [1, 3, 5], same_position=window or None)
    assert got.shape == (3, 7, 36)
    for i, r in enumerate([1, 3, 5]):
        z = O.lnamd_official([x], r)[0]
        want = O.msm_official(z) if not window else ref.mutual_scores(z, 1, window=window)
        assert (got[i].cpu().double() - want).abs().max().item() <= 1e-5


def test_lnamd_mutual_scores_pool(device, gen):
    x = _tokens(2, 5, 20, gen, cls=False)
    pool = _tokens(6, 5, 20, gen, cls=False)
    got = fastad.ops.lnamd_mutual_scores(x.to(device), [1, 3], pool=pool.to(device))
    for i, r in enumerate([1, 3]):
        want = ref.mutual_scores(ref.lnamd(x, r).float(), 1, pool=ref.lnamd(pool, r).float())
        assert (got[i].cpu().double() - want).abs().max().item() <= 1e-5


# ---- rscin ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k_list", [[1, 2, 3], [1, 8, 9], [2]])
@pytest.mark.parametrize("unit", [True, False])
def test_rscin_matches_official(device, k_list, unit, gen):
    N = 20
    s = torch.rand(N, generator=gen, dtype=torch.float64)
    f = torch.randn(N, 16, generator=gen)
    if unit:
        f = torch.nn.functional.normalize(f, dim=-1)
    got = fastad.ops.rscin(s.to(device), f.to(device), k_list)
    want = O.rscin_official(s.numpy(), f.numpy(), k_list)
    assert (got.cpu().double() - torch.from_numpy(want).double()).abs().max().item() <= 1e-6
    assert (got.cpu().double() - ref.rscin(s, f, k_list)).abs().max().item() <= 1e-6


def test_rscin_errors_and_passthrough(gen):
    s, f = torch.rand(5, generator=gen), torch.randn(5, 4, generator=gen)
    assert fastad.ops.rscin(s, f, [0]) is s
    with pytest.raises(ValueError, match="rscin: every k"):
        fastad.ops.rscin(s, f, [6])
    with pytest.raises(ValueError, match="rscin: expected"):
        fastad.ops.rscin(s, f[:4], [1])


def test_bilinear_max_matches_upsampled_max(gen):
    g = torch.rand(5, 7, 7, generator=gen, dtype=torch.float64)
    for size in (7, 13, 100, (50, 31)):
        up = torch.nn.functional.interpolate(g[:, None], size=size, mode="bilinear", align_corners=True)
        want = up.reshape(5, -1).max(-1).values
        assert torch.allclose(fastad.ops.bilinear_max(g, size, rows_per_chunk=16), want, rtol=0, atol=1e-14)


# ---- opcheck and error paths ---------------------------------------------------------------------

def test_opcheck(gen):
    x = torch.randn(5, 16, 8, generator=gen)
    p = torch.randn(4, 16, 8, generator=gen)
    torch.library.opcheck(torch.ops.fastad.lnamd.default, (x, 3))
    torch.library.opcheck(torch.ops.fastad.snamd.default, (x, [1, 3]))
    torch.library.opcheck(torch.ops.fastad.mutual_scores.default, (x, 1, None, 0))
    torch.library.opcheck(torch.ops.fastad.mutual_scores.default, (x, 2, p, 3))
    torch.library.opcheck(torch.ops.fastad.lnamd_mutual_scores.default, (x, [1, 3], 1, None, 0))
    torch.library.opcheck(torch.ops.fastad.lnamd_mutual_scores.default, (x, [3], 1, p, 1))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: torch.ops.fastad.lnamd(torch.randn(16, 8), 3), "lnamd: tokens must be 3-D"),
        (lambda: torch.ops.fastad.lnamd(torch.randn(2, 15, 8), 3), "lnamd: tokens must hold a square grid"),
        (lambda: torch.ops.fastad.lnamd(torch.randn(2, 16, 8), 2), "lnamd: r must be an odd"),
        (lambda: torch.ops.fastad.lnamd(torch.randn(2, 16, 8).double(), 3), "lnamd: tokens dtype"),
        (lambda: torch.ops.fastad.snamd(torch.randn(2, 16, 8), []), "snamd: r_list must not be empty"),
        (lambda: torch.ops.fastad.mutual_scores(torch.randn(5, 16, 8), 0, None, 0), "mutual_scores: k must be >= 1"),
        (lambda: torch.ops.fastad.mutual_scores(torch.randn(5, 16, 8), 1, torch.randn(3, 16, 7), 0),
         "mutual_scores: pool must have the same L and C"),
        (lambda: torch.ops.fastad.mutual_scores(torch.randn(5, 16, 8), 1, torch.randn(3, 16, 8).half(), 0),
         "mutual_scores: pool and z must have the same dtype"),
        (lambda: torch.ops.fastad.mutual_scores(torch.randn(5, 15, 8), 1, None, 3), "mutual_scores: z must hold a square"),
        (lambda: torch.ops.fastad.mutual_scores(torch.randn(5, 16, 8), 1, None, 2), "window"),
        (lambda: torch.ops.fastad.lnamd_mutual_scores(torch.randn(5, 16, 8), [1, 4], 1, None, 0),
         "lnamd_mutual_scores: r must be an odd"),
        (lambda: torch.ops.fastad.lnamd_mutual_scores(torch.randn(5, 16, 8), [1], 5, None, 0),
         "lnamd_mutual_scores: k must be <="),
    ],
)
def test_errors(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.parametrize("op", ["lnamd", "mutual_scores", "lnamd_mutual_scores", "snamd"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rejected(op, bad):
    x = torch.randn(5, 16, 8)
    x[2, 3, 1] = bad
    args = {"lnamd": (x, 3), "snamd": (x, [1, 3]), "mutual_scores": (x, 1, None, 0),
            "lnamd_mutual_scores": (x, [1], 1, None, 0)}[op]
    with pytest.raises(RuntimeError, match=f"{op}: .* must hold finite values"):
        getattr(torch.ops.fastad, op)(*args)


def test_empty_inputs():
    assert fastad.ops.lnamd(torch.empty(0, 16, 8), 3).shape == (0, 16, 8)
    assert torch.ops.fastad.mutual_scores(torch.empty(0, 16, 8), 1, None, 0).shape == (0, 16)
    assert torch.ops.fastad.lnamd_mutual_scores(torch.empty(0, 16, 8), [1, 3], 1, None, 0).shape == (2, 0, 16)
    assert torch.ops.fastad.snamd(torch.empty(0, 16, 8), [3]).shape == (0, 16, 8)


def test_mutual_scores_gemm_blocking_edges(device, gen):
    # L > kGramMC (96) rows and > kGramNC (512) columns, not a multiple of the 6 x 16 register tile;
    # C > kGramKcMax (512) and not a multiple of 8 (accumulation across two depth slices, scalar pack
    # tails); L not a square (no window needed)
    z = torch.nn.functional.normalize(torch.randn(5, 533, 603, generator=gen), dim=-1)
    got = fastad.ops.mutual_scores(z.to(device), k=2)
    assert (got.cpu().double() - ref.mutual_scores(z, 2)).abs().max().item() <= 1e-5
    assert (fastad.ops.mutual_scores(z.to(device)).cpu().double() - O.msm_official(z)).abs().max().item() <= 1e-5


def test_cpu_paths_agree_with_official(cpu_path, gen):
    # both CPU builds (AVX2 Gram tile + AVX2 tile passes, and the portable ones) against the oracle
    x = _tokens(6, 5, 300, gen, clustered=True)
    got = fastad.ops.lnamd_mutual_scores(x[:, 1:], [1, 3, 5])
    for i, r in enumerate([1, 3, 5]):
        want = O.msm_official(O.lnamd_official([x], r)[0])
        assert (got[i].double() - want).abs().max().item() <= 1e-5
    z = O.lnamd_official([x], 3)[0]
    w = fastad.ops.mutual_scores(z, same_position=3)
    assert (w.double() - ref.mutual_scores(z, 1, window=3)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("r_list", [[7], [9, 3]])
def test_lnamd_mutual_scores_wide_boxes(cpu_path, r_list, gen):
    # box radii past the unrolled cases (r = 3, 5) and wider than the 5 x 5 grid (every neighbour
    # reached, zero padding on all sides), on both CPU builds, with and without a window
    x = _tokens(6, 5, 40, gen, clustered=True)
    for window in (0, 3):
        got = fastad.ops.lnamd_mutual_scores(x[:, 1:], r_list, same_position=window or None)
        for i, r in enumerate(r_list):
            z = O.lnamd_official([x], r)[0]
            want = O.msm_official(z) if not window else ref.mutual_scores(z, 1, window=window)
            assert (got[i].double() - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("r_list", [[7], [9, 3], [7, 1]])
def test_lnamd_mutual_scores_wide_boxes_device(device, r_list, gen):
    # the device's own paths (CUDA: one r by composition; two or more: one Gram per pair,
    # box-filtered per r) with boxes wider than the 5 x 5 grid, with and without a window
    x = _tokens(6, 5, 40, gen, clustered=True)
    for window in (0, 3):
        got = fastad.ops.lnamd_mutual_scores(x[:, 1:].to(device), r_list, same_position=window or None)
        assert got.device.type == device.type
        for i, r in enumerate(r_list):
            z = O.lnamd_official([x], r)[0]
            want = O.msm_official(z) if not window else ref.mutual_scores(z, 1, window=window)
            assert (got[i].cpu().double() - want).abs().max().item() <= 1e-5


def test_lnamd_mutual_scores_cuda_tile_batches(gen):
    # the official grid (37 x 37) with more images than one CUDA tile holds (35 per 256 MiB at
    # L = 1369), self and pool mode, with and without a window: CUDA against the CPU kernel
    if not (fastad.build_info()["cuda_compiled"] and torch.cuda.is_available()):
        pytest.skip("needs a CUDA build and a GPU")
    x = _tokens(40, 37, 16, gen, cls=False, clustered=True)
    for window in (0, 3):
        want = fastad.ops.lnamd_mutual_scores(x, [1, 3, 5], same_position=window or None)
        got = fastad.ops.lnamd_mutual_scores(x.cuda(), [1, 3, 5], same_position=window or None).cpu()
        assert (got - want).abs().max().item() <= 1e-5
    q, pool = x[:3], x[3:]
    want = fastad.ops.lnamd_mutual_scores(q, [1, 5], pool=pool)
    got = fastad.ops.lnamd_mutual_scores(q.cuda(), [1, 5], pool=pool.cuda()).cpu()
    assert (got - want).abs().max().item() <= 1e-5
