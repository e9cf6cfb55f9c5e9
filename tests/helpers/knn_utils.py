"""Tie-aware comparison of k-NN results (in the spirit of faiss' check_ref_knn_with_draws)."""
import torch


def assert_knn_equal(d, i, rd, ri, rtol=1e-4, atol=1e-4):
    """Distances allclose to the reference; indices equal as sets within each group of tied distances.

    A result index may differ from the reference only where its distance ties (within tolerance) with
    the reference distance at that rank, and the result indices must be distinct bank rows.
    """
    d, rd = d.double().cpu(), rd.double().cpu()
    i, ri = i.cpu(), ri.cpu()
    assert d.shape == rd.shape and i.shape == ri.shape, (d.shape, rd.shape)
    fin = torch.isfinite(rd)
    assert torch.equal(fin, torch.isfinite(d)), "padding (inf) slots differ from the reference"
    assert torch.equal(i[~fin], ri[~fin]), "padding slots must hold index -1"
    assert torch.allclose(d[fin], rd[fin], rtol=rtol, atol=atol), (d - rd).abs()[fin].max()
    tol = atol + rtol * rd.abs()
    for q in range(i.shape[0]):
        row = i[q][fin[q]].tolist()
        assert len(set(row)) == len(row), f"query {q}: duplicate indices {row}"
        for c in range(len(row)):
            if row[c] == ri[q, c]:
                continue
            # the differing index must be one of the reference's rows tied with rank c
            tied = ((rd[q] - rd[q, c]).abs() <= 2 * tol[q, c]) & fin[q]
            assert (ri[q][tied] == row[c]).any() or (rd[q, -1] - rd[q, c]).abs() <= 2 * tol[q, c], (
                f"query {q} rank {c}: index {row[c]} is not among the tied reference indices {ri[q][tied].tolist()}"
            )
