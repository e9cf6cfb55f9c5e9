"""Autograd of the fastad ops: knn distances have a tested backward; every other compiled op raises a
clear error when a gradient is asked for (never a silent None)."""
import pytest
import torch

import fastad
from fastad.ops import _reference as ref


def _ref_dist(q, b, idx, metric):
    """Differentiable float64 distances of the pairs (q_i, b_idx[i, j]) (padded slots -> 0)."""
    sel = b[idx.clamp_min(0)]  # [Q, k, D]
    qq = q[:, None, :]
    if metric == "sqeuclidean":
        d = (qq - sel).square().sum(-1)
    elif metric == "l2":
        d = (qq - sel).square().sum(-1).sqrt()
    elif metric == "ip":
        d = (qq * sel).sum(-1)
    else:
        d = 1 - (qq * sel).sum(-1) / (qq.norm(dim=-1) * sel.norm(dim=-1))
    return torch.where(idx >= 0, d, torch.zeros_like(d))


@pytest.mark.parametrize("metric", ["l2", "sqeuclidean", "ip", "cosine"])
def test_knn_backward_matches_float64_autograd(device, metric, gen):
    q = torch.randn(7, 5, generator=gen)
    b = torch.randn(11, 5, generator=gen)
    qg = q.clone().to(device).requires_grad_(True)
    bg = b.clone().to(device).requires_grad_(True)
    d, i = fastad.ops.knn(qg, bg, 3, metric)
    w = torch.randn(d.shape, generator=gen).to(device)
    (d * w).sum().backward()
    q64 = q.double().requires_grad_(True)
    b64 = b.double().requires_grad_(True)
    (_ref_dist(q64, b64, i.cpu(), metric) * w.cpu().double()).sum().backward()
    assert torch.allclose(qg.grad.cpu().double(), q64.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(bg.grad.cpu().double(), b64.grad, rtol=1e-4, atol=1e-5)
    # the distances themselves agree with the reference (so the gradient is of the right function)
    want, _ = ref.knn(q, b, 3, metric)
    assert torch.allclose(d.detach().cpu(), want.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "sqeuclidean", "ip", "cosine"])
def test_knn_gradcheck(metric):
    # the kernels take float32 (no float64 kernel): finite differences in float32 with a loose tolerance
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 3, generator=g).requires_grad_(True)
    b = (torch.randn(6, 3, generator=g) * 2).requires_grad_(True)
    with pytest.warns(UserWarning, match="double precision"):
        assert torch.autograd.gradcheck(lambda q, b: fastad.ops.knn(q, b, 2, metric)[0], (q, b),
                                        eps=1e-2, atol=2e-2, rtol=2e-2, nondet_tol=1e-5)


def test_knn_backward_padded_slots_and_zero_distance_have_zero_gradient():
    b = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    q = torch.tensor([[0.0, 0.0]], requires_grad=True)
    d, i = fastad.ops.knn(q, b, 4, "l2")  # k > N: two padded slots (inf, -1); the first neighbour at d = 0
    assert i[0].tolist() == [0, 1, -1, -1]
    torch.where(torch.isfinite(d), d, torch.zeros_like(d)).sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(b.grad).all()
    assert q.grad.tolist() == [[-1.0, 0.0]] and b.grad.tolist() == [[0.0, 0.0], [1.0, 0.0]]


def test_knn_bank_norms_not_differentiable():
    q = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(5, 4)
    norms = b.square().sum(1).requires_grad_(True)
    d, _ = fastad.ops.knn(q, b, 2, bank_norms=norms)
    with pytest.raises(RuntimeError, match="knn is not differentiable w.r.t. bank_norms"):
        d.sum().backward()


def test_knn_no_grad_outputs_do_not_require_grad():
    d, i = fastad.ops.knn(torch.randn(3, 4), torch.randn(5, 4), 2)
    assert not d.requires_grad and not i.requires_grad
    q = torch.randn(3, 4, requires_grad=True)
    d, i = fastad.ops.knn(q, torch.randn(5, 4), 2)
    assert d.requires_grad and not i.requires_grad


@pytest.mark.parametrize(
    "name,shape,call,arg",
    [
        ("group_min", (3, 4), lambda x: fastad.ops.group_min(x, torch.randn(6, 4), 2), "query"),
        ("group_min", (6, 4), lambda x: fastad.ops.group_min(torch.randn(3, 4), x, 2), "bank"),
        ("lnamd", (2, 9, 2), lambda x: fastad.ops.lnamd(x, 3), "tokens"),
        ("snamd", (2, 9, 2), lambda x: fastad.ops.snamd(x, [1, 3]), "tokens"),
        ("mutual_scores", (6, 4, 4), lambda x: fastad.ops.mutual_scores(x, k=1), "z"),
        ("lnamd_mutual_scores", (6, 4, 3), lambda x: fastad.ops.lnamd_mutual_scores(x, [1], k=1), "tokens"),
    ],
)
def test_other_ops_refuse_backward_clearly(name, shape, call, arg):
    x = torch.randn(*shape).requires_grad_(True)
    out = call(x)
    assert out.requires_grad  # the output is connected to x ...
    with pytest.raises(RuntimeError, match=rf"fastad\.ops\.{name} is not differentiable w\.r\.t\. {arg}"):
        out.sum().backward()  # ... and asking for the gradient is a clear error, not None
    with torch.no_grad():
        assert not call(x).requires_grad


def test_coreset_refuses_a_bank_that_requires_grad():
    bank = torch.randn(20, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="fastad.ops.coreset is not differentiable w.r.t. bank"):
        torch.ops.fastad.coreset(bank, 3)
    idx, dist = torch.ops.fastad.coreset(bank.detach(), 3)
    assert idx.shape == (3,) and not dist.requires_grad
    with torch.no_grad():
        idx2, _ = torch.ops.fastad.coreset(bank, 3)
    assert torch.equal(idx, idx2)


def test_pure_torch_ops_differentiate():
    s = torch.rand(6, requires_grad=True)
    f = torch.randn(6, 4)
    fastad.ops.rscin(s, f, (1, 2)).sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    g = torch.rand(2, 3, 3, requires_grad=True)
    fastad.ops.bilinear_max(g, 8).sum().backward()
    assert g.grad is not None and float(g.grad.sum()) == pytest.approx(2.0)


def test_knn_backward_opcheck_and_compile():
    q = torch.randn(5, 3, requires_grad=True)
    b = torch.randn(7, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.fastad.knn.default, (q, b, 2, "l2", None, False))
    f = torch.compile(lambda q, b: fastad.ops.knn(q, b, 2, "sqeuclidean")[0].sum(), backend="aot_eager", fullgraph=True)
    out = f(q, b)
    out.backward()
    want_q = q.grad.clone()
    q.grad = None
    b.grad = None
    fastad.ops.knn(q, b, 2, "sqeuclidean")[0].sum().backward()
    assert torch.allclose(want_q, q.grad)
