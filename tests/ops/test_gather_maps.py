"""fastad.ops.gather_maps (PaDiM's embedding rows, position-major) against its reference."""
import pytest
import torch

import fastad
from fastad.ops import _reference as ref

# (layer maps [C, h, w] of one image, kept channels): equal grids, nearest x2, non-integer factors,
# grids larger than the first (downsampling), positions not a multiple of 8, one layer
CASES = [
    ([(40, 28, 28), (112, 14, 14)], 152),
    ([(40, 28, 28), (112, 14, 14)], 61),
    ([(3, 5, 7), (4, 3, 2), (2, 5, 7), (2, 11, 13)], 7),
    ([(9, 6, 6)], 4),
    ([(16, 8, 8), (8, 4, 4), (8, 16, 16)], 32),
    ([(1, 1, 1), (2, 3, 3)], 3),
]


@pytest.mark.parametrize("shapes,C", CASES)
@pytest.mark.parametrize("path", ["fast", "generic"])
def test_gather_maps_equals_reference(shapes, C, path, monkeypatch):
    if path == "generic":
        monkeypatch.setenv("FASTAD_FORCE_GENERIC", "1")
    gen = torch.Generator().manual_seed(len(shapes) * 100 + C)
    maps = [torch.randn(3, *s, generator=gen) for s in shapes]
    total = sum(s[0] for s in shapes)
    ch = torch.randperm(total, generator=gen)[:C]
    got = fastad.ops.gather_maps(maps, ch)
    assert torch.equal(got, ref.gather_maps(maps, ch))  # a copy: bit-exact
    out = torch.full_like(got, float("nan"))
    assert fastad.ops.gather_maps(maps, ch, out=out) is out and torch.equal(out, got)


def test_gather_maps_repeated_channels_half_and_noncontiguous():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 6, 4, 4, generator=gen).half()
    b = torch.randn(2, 2, 4, 5, 3, generator=gen)[..., 1].transpose(-1, -2)  # non-contiguous [2, 2, 3, 5]
    ch = torch.tensor([7, 0, 0, 6, 3])
    assert torch.equal(fastad.ops.gather_maps([a, b], ch), ref.gather_maps([a, b], ch))


def test_gather_maps_empty_batch():
    out = fastad.ops.gather_maps([torch.zeros(0, 2, 3, 3), torch.zeros(0, 1, 2, 2)], torch.tensor([2, 0]))
    assert out.shape == (0, 9, 2)


@pytest.mark.parametrize(
    "maps,channels,out,match",
    [
        ([torch.zeros(2, 3, 4)], torch.tensor([0]), None, "maps\\[0\\] must be 4-D"),
        ([torch.zeros(2, 3, 4, 4), torch.zeros(3, 1, 2, 2)], torch.tensor([0]), None, "share N"),
        ([torch.zeros(2, 3, 4, 4, dtype=torch.int32)], torch.tensor([0]), None, "maps\\[0\\] must be float32"),
        ([torch.zeros(2, 3, 4, 4)], torch.tensor([3]), None, "channels\\[0\\] = 3 is outside \\[0, 3\\)"),
        ([torch.zeros(2, 3, 4, 4)], torch.tensor([-1]), None, "outside"),
        ([torch.zeros(2, 3, 4, 4)], torch.tensor([0.0]), None, "channels must be a 1-D int64"),
        ([torch.zeros(2, 3, 4, 4)], torch.tensor([0]), torch.zeros(2, 15, 1), "out must be \\[N, h \\* w, C\\]"),
        ([torch.zeros(2, 3, 4, 4)], torch.tensor([0]), torch.zeros(2, 16, 1, dtype=torch.float64), "out must be float32"),
        ([torch.zeros(2, 3, 4, 4)], torch.tensor([0, 1]), torch.zeros(2, 2, 16).transpose(1, 2), "contiguous"),
    ],
)
def test_gather_maps_bad_input(maps, channels, out, match):
    with pytest.raises(RuntimeError, match=match):
        fastad.ops.gather_maps(maps, channels, out=out)


def test_gather_maps_no_maps():
    with pytest.raises(ValueError, match="at least one layer map"):
        fastad.ops.gather_maps([], torch.tensor([0]))


def test_gather_maps_opcheck(device):
    gen = torch.Generator().manual_seed(5)
    maps = [torch.randn(2, 3, 4, 4, generator=gen).to(device), torch.randn(2, 5, 2, 2, generator=gen).to(device)]
    ch = torch.tensor([6, 0, 2, 7]).to(device)
    torch.library.opcheck(torch.ops.fastad.gather_maps.default, (maps, ch, torch.empty(2, 16, 4, device=device)))
