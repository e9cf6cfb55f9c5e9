"""Every ``fastad.ops`` wrapper (not only ``torch.ops.fastad.*``) under torch.jit.script,
torch.compile(fullgraph=True, dynamic=True), torch.export, and with meta tensors.

Each op in ``fastad.ops.__all__`` must have an example below: a new op without one fails
``test_every_op_has_an_example``."""
import pytest
import torch

import fastad
import fastad.ops as ops


def _g():
    return torch.Generator().manual_seed(7)


def _lower(d):
    g = _g()
    return torch.tril(torch.randn(d, d, generator=g)) + 3 * torch.eye(d)


# name -> (positional args builder, keyword args). Keyword args are constants of the call (they are
# baked into the scripted / compiled / exported callable).
EXAMPLES = {
    "knn": (lambda g: (torch.randn(20, 8, generator=g), torch.randn(50, 8, generator=g), 3), {}),
    "knn_cosine_self": (lambda g: (torch.randn(30, 8, generator=g),) * 2 + (4,), {"metric": "cosine", "exclude_self": True}),
    "group_min": (lambda g: (torch.randn(10, 8, generator=g), torch.randn(40, 8, generator=g), 10), {}),
    "lnamd": (lambda g: (torch.randn(3, 16, 8, generator=g), 3), {}),
    "snamd": (lambda g: (torch.randn(3, 16, 8, generator=g), [1, 3]), {}),
    "mutual_scores": (lambda g: (torch.nn.functional.normalize(torch.randn(6, 9, 4, generator=g), dim=-1),), {}),
    "mutual_scores_pool": (
        lambda g: (torch.randn(4, 9, 4, generator=g),), {"k": 2, "pool": None, "same_position": 3}),
    "lnamd_mutual_scores": (lambda g: (torch.randn(6, 16, 8, generator=g), [1, 3]), {}),
    "rscin": (lambda g: (torch.rand(6, generator=g), torch.randn(6, 5, generator=g), [1, 2]), {}),
    "bilinear_max": (lambda g: (torch.rand(3, 4, 4, generator=g), 16), {}),
    "coreset": (lambda g: (torch.randn(50, 8, generator=g), 5), {}),
    "mahalanobis": (lambda g: (torch.randn(10, 4, generator=g), torch.randn(4, generator=g), _lower(4)), {}),
    "gather_maps": (lambda g: ([torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 2, 2, generator=g)],
                               torch.tensor([6, 0, 2, 7])), {}),
}
NOT_TENSOR_OPS = {"interval_k"}  # int -> int; scripted in test_interval_k_scripts
# in-place accumulators (return None): schema and fake kernel checked by opcheck in tests/ops/test_mahalanobis.py
IN_PLACE_OPS = {"gaussian_accumulate", "gaussian_covariance", "cholesky_lower"}  # tests/ops/test_gaussian_covariance.py, test_cholesky_lower.py


def _op_of(name):
    base = name.split("_cosine")[0].split("_pool")[0] if name not in ops.__all__ else name
    fn = getattr(ops, base, None)
    if fn is None:
        pytest.skip(f"fastad.ops.{base} does not exist in this build")
    return fn


def _call(name):
    fn = _op_of(name)
    build, kw = EXAMPLES[name]
    args = build(_g())
    return fn, args, kw


def _same(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_every_op_has_an_example():
    missing = [n for n in ops.__all__ if n not in EXAMPLES and n not in NOT_TENSOR_OPS and n not in IN_PLACE_OPS]
    assert not missing, f"add an example to tests/ops/test_scripting.py for: {missing}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_jit_script(name):
    fn, args, kw = _call(name)
    scripted = torch.jit.script(fn)
    _same(scripted(*args, **kw), fn(*args, **kw))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_torch_compile_fullgraph_dynamic(name):
    fn, args, kw = _call(name)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: fn(*a, **kw), backend="aot_eager", fullgraph=True, dynamic=True)
    _same(compiled(*args), fn(*args, **kw))


class _Wrap(torch.nn.Module):
    def __init__(self, fn, consts, kw):
        super().__init__()
        self.fn, self.consts, self.kw = fn, consts, kw

    def forward(self, *tensors):
        it = iter(tensors)
        full = [next(it) if c is None else c for c in self.consts]
        return self.fn(*full, **self.kw)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_torch_export(name):
    fn, args, kw = _call(name)
    tensors = tuple(a for a in args if isinstance(a, torch.Tensor))
    consts = [None if isinstance(a, torch.Tensor) else a for a in args]
    ep = torch.export.export(_Wrap(fn, consts, kw), tensors)
    assert any("fastad" in str(n.target) for n in ep.graph.nodes) or name in ("rscin", "bilinear_max")
    _same(ep.module()(*tensors), fn(*args, **kw))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_meta_tensors(name):
    fn, args, kw = _call(name)
    eager = fn(*args, **kw)
    meta_args = tuple(a.to("meta") if isinstance(a, torch.Tensor)
                      else [t.to("meta") for t in a] if isinstance(a, list) and all(isinstance(t, torch.Tensor) for t in a)
                      else a for a in args)
    out = fn(*meta_args, **kw)
    outs, ref = (out, eager) if isinstance(out, tuple) else ((out,), (eager,))
    for o, r in zip(outs, ref):
        assert o.device.type == "meta" and o.shape == r.shape and o.dtype == r.dtype


def test_interval_k_scripts():
    s = torch.jit.script(ops.interval_k)
    assert s(9, 0.3, False) == ops.interval_k(9, 0.3) == 2
    with pytest.raises(Exception, match="reference images"):
        s(2, 0.3, False)


def test_scripted_wrapper_keeps_the_checks():
    s = torch.jit.script(ops.knn)
    with pytest.raises(Exception, match="metric must be one of"):
        s(torch.randn(3, 2), torch.randn(4, 2), 1, "manhattan")
    bank = torch.randn(4, 2)
    d, i = s(bank, bank, 1, "l2", None, True)  # exclude_self, positional as in the op's schema
    assert (i[:, 0] != torch.arange(4)).all()


def test_build_info_still_importable():
    assert "simd" in fastad.build_info()


def test_compiled_wrapper_still_rejects_nan():
    f = torch.compile(ops.rscin, backend="aot_eager", fullgraph=True, dynamic=True)
    s = torch.rand(6)
    s[2] = float("nan")
    with pytest.raises(RuntimeError, match="rscin: scores and image_features must hold finite values"):
        f(s, torch.randn(6, 5), [1, 2])


def test_scripted_coreset_keeps_its_options_and_checks(tmp_path):
    """``torch.jit.script(ops.coreset)`` compiles ``coreset_scriptable``: projection (int / "auto"),
    seed, start, storage dtype and method as in eager mode, the same errors, and it saves / loads."""
    s = torch.jit.script(ops.coreset)
    bank = torch.randn(300, 40, generator=_g())
    for kw in ({}, {"projection_dim": 8, "seed": 3}, {"projection_dim": "auto", "start": 5},
               {"storage_dtype": torch.float16}, {"method": "pruned"}, {"progress": True}):
        _same(s(bank, 12, **kw), ops.coreset(bank, 12, **kw))
    with pytest.raises(Exception, match="projection_dim must be None, an int >= 1 or 'auto', got 'jl'"):
        s(bank, 3, projection_dim="jl")
    with pytest.raises(Exception, match="projection_dim must be None, an int >= 1 or 'auto', got 0"):
        s(bank, 3, projection_dim=0)
    with pytest.raises(Exception, match="storage_dtype must be None, float32, float16 or bfloat16"):
        s(bank, 3, storage_dtype=torch.float64)
    with pytest.raises(Exception, match="method must be 'pruned' or 'exhaustive'"):
        s(bank, 3, method="fast")
    i, d = s(bank.to("meta"), 12, "auto")  # meta tensors through the projection too
    assert i.device.type == "meta" and i.shape == (12,) and d.dtype == torch.float32
    torch.jit.save(s, str(tmp_path / "coreset.pt"))
    loaded = torch.jit.load(str(tmp_path / "coreset.pt"))  # a saved function keeps no defaults: every argument
    _same(loaded(bank, 7, 8, 2, 4, None, False, "exhaustive"), ops.coreset(bank, 7, projection_dim=8, seed=2, start=4))


def test_scripted_code_can_call_the_coreset_wrapper():
    @torch.jit.script
    def select(bank: torch.Tensor) -> torch.Tensor:
        return bank.index_select(0, ops.coreset(bank, 4, projection_dim="auto", seed=1)[0])

    bank = torch.randn(50, 8, generator=_g())
    torch.testing.assert_close(select(bank), bank[ops.coreset(bank, 4, projection_dim="auto", seed=1)[0]])


def test_eager_coreset_keeps_keyword_only_arguments_and_the_bar():
    import inspect

    params = inspect.signature(ops.coreset).parameters
    assert [p.name for p in params.values() if p.kind is p.KEYWORD_ONLY] == [
        "projection_dim", "seed", "start", "storage_dtype", "progress", "method", "on_estimate"]
    with pytest.raises(TypeError):
        ops.coreset(torch.randn(5, 2), 2, 8)  # projection_dim only by keyword in eager mode


def test_gaussian_accumulate_scripts():
    s = torch.jit.script(ops.gaussian_accumulate)
    x = torch.randn(9, 3, generator=_g())
    sums = [torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)]
    ref = [torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)]
    s(x, torch.zeros(3), *sums)
    ops.gaussian_accumulate(x, torch.zeros(3), *ref)
    torch.testing.assert_close(sums[0], ref[0])
    torch.testing.assert_close(sums[1].tril(), ref[1].tril())


def test_compiled_coreset_with_progress_traces_without_the_bar_thread():
    bank = torch.randn(60, 8, generator=_g())
    torch._dynamo.reset()
    f = torch.compile(lambda b: ops.coreset(b, 5, progress=True), backend="aot_eager", fullgraph=True)
    _same(f(bank), ops.coreset(bank, 5))
