"""The fastad.ops wrappers name a wrongly typed argument (fastad/ops/_args.py) instead of failing deep inside
(numpy arrays: an AttributeError) or silently truncating (k=2.5 ran as k=2)."""
import numpy as np
import pytest
import torch

from fastad import ops

T = torch.rand(12, 4)
A = T.numpy()
TOK = torch.rand(3, 16, 8)

NUMPY = [
    ("knn", "query", lambda: ops.knn(A, T, 2)),
    ("knn", "bank", lambda: ops.knn(T, A, 2)),
    ("knn", "bank_norms", lambda: ops.knn(T, T, 2, bank_norms=np.ones(12, np.float32))),
    ("group_min", "bank", lambda: ops.group_min(T, A, 4)),
    ("coreset", "bank", lambda: ops.coreset(A, 3)),
    ("lnamd", "tokens", lambda: ops.lnamd(TOK.numpy(), 1)),
    ("snamd", "tokens", lambda: ops.snamd(TOK.numpy())),
    ("mutual_scores", "z", lambda: ops.mutual_scores(TOK.numpy())),
    ("lnamd_mutual_scores", "tokens", lambda: ops.lnamd_mutual_scores(TOK.numpy())),
    ("rscin", "image_features", lambda: ops.rscin(torch.rand(6), np.random.rand(6, 8))),
]


@pytest.mark.parametrize("op,arg,call", NUMPY, ids=[f"{o}-{a}" for o, a, _ in NUMPY])
def test_numpy_inputs_are_named(op, arg, call):
    with pytest.raises(TypeError, match=rf"^{op}: {arg} must be a torch.Tensor, got numpy.ndarray \(torch.from_numpy"):
        call()


INTS = [
    ("knn", "k", 2.5, lambda v: ops.knn(T, T, v)),
    ("knn", "k", True, lambda v: ops.knn(T, T, v)),
    ("knn", "k", "2", lambda v: ops.knn(T, T, v)),
    ("group_min", "group_size", 4.0, lambda v: ops.group_min(T, T, v)),
    ("coreset", "n", 2.5, lambda v: ops.coreset(T, v)),
    ("lnamd", "r", 1.5, lambda v: ops.lnamd(TOK, v)),
    ("mutual_scores", "k", 1.5, lambda v: ops.mutual_scores(TOK, k=v)),
    ("lnamd_mutual_scores", "same_position", 0.5, lambda v: ops.lnamd_mutual_scores(TOK, same_position=v)),
]


@pytest.mark.parametrize("op,arg,value,call", INTS, ids=[f"{o}-{a}-{v!r}" for o, a, v, _ in INTS])
def test_non_integer_counts_are_refused(op, arg, value, call):
    with pytest.raises(TypeError, match=rf"^{op}: {arg} must be an int, got {type(value).__name__}"):
        call(value)


def test_integer_like_counts_still_work():
    """numpy integers and 0-d integer tensors are integers (operator.index), as before."""
    d0, i0 = ops.knn(T, T, 3)
    for k in (np.int64(3), torch.tensor(3)):
        d, i = ops.knn(T, T, k)
        assert torch.equal(i, i0) and torch.equal(d, d0)
