"""fastad.distributed.mutual_scores / lnamd_mutual_scores on 2 and 3 gloo CPU processes == the
single-process ops on all images (required: within 1e-6; observed: bit for bit)."""
import pytest
import torch

import fastad
from tests.distributed.spawn_utils import results, run

SIZES = {2: [(4, 3), (0, 6), (1, 1)], 3: [(3, 0, 4), (2, 2, 2), (1, 5, 1)]}


def _cases(rank, world):
    import fastad.distributed as fd

    out = []
    for si, sizes in enumerate(SIZES[world]):
        g = torch.Generator().manual_seed(si)
        N = sum(sizes)
        tok = torch.randn(N, 16, 6, generator=g)
        z = torch.nn.functional.normalize(torch.randn(N, 16, 6, generator=g), dim=-1)
        z[-1] = z[0]  # a duplicated image: zero distances
        o = sum(sizes[:rank])
        for kw in ({}, {"same_position": 3}, {"k": N - 1}, {"fraction": 0.5, "ceil_small": True}):
            if N < 5 and "k" not in kw and "ceil_small" not in kw:
                kw = dict(kw, ceil_small=True)
            s = fd.mutual_scores(z[o : o + sizes[rank]], **kw)
            ref = fastad.ops.mutual_scores(z, **kw)[o : o + sizes[rank]]
            out.append((sizes, "ms", kw, float((s - ref).abs().max()) if s.numel() else 0.0, torch.equal(s, ref)))
        s = fd.lnamd_mutual_scores(tok[o : o + sizes[rank]], [1, 3], ceil_small=True)
        ref = fastad.ops.lnamd_mutual_scores(tok, [1, 3], ceil_small=True)[:, o : o + sizes[rank]]
        out.append((sizes, "lnamd", {}, float((s - ref).abs().max()) if s.numel() else 0.0, torch.equal(s, ref)))
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_mutual_scores_equal_ops(world):
    for rank_out in results(run(_cases, world, deadline=90)):
        assert len(rank_out) == 3 * 5
        bad = [c for c in rank_out if not c[3] <= 1e-6]
        assert not bad, bad
        assert all(c[4] for c in rank_out), [c for c in rank_out if not c[4]]  # bit for bit in practice


def _disagree_c(rank, world):
    import fastad.distributed as fd

    return fd.mutual_scores(torch.ones(3, 4, 5 if rank == 0 else 6))


def test_mutual_scores_ranks_that_disagree_fail_on_every_rank():
    for o in run(_disagree_c, 2, deadline=40):
        assert o.get("type") == "ValueError" and "same channels C" in o["err"], o


def _detector(rank, world):
    import fastad.distributed as fd
    from fastad.detectors import MuSc

    g = torch.Generator().manual_seed(3)
    toks = [torch.randn(7, 1 + 25, 12, generator=g) for _ in range(2)]
    cls = torch.randn(7, 12, generator=g)
    kw = dict(backbone=None, r_list=(1, 3), image_size=40, progress=False)
    s1, m1 = MuSc(**kw).score_tokens(toks, cls)
    lo, hi = fd.shard_range(7)
    s2, m2 = MuSc(**kw, distributed=True).score_tokens([t[lo:hi] for t in toks], cls[lo:hi])
    return float((s1[lo:hi] - s2).abs().max()), float((m1[lo:hi] - m2).abs().max())


@pytest.mark.parametrize("world", [2, 3])
def test_musc_detector_distributed_scores_equal_single_process(world):
    for ds, dm in results(run(_detector, world, deadline=150)):
        assert ds <= 1e-5 and dm <= 1e-5, (ds, dm)
