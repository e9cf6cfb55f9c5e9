"""embed(): bad input, cache, order; presets; the Rotten Tomatoes tasks; LOF/KNN == PyOD on real embeddings."""
import numpy as np
import pytest
import torch

from fastad.text import check_texts, embed, evaluate, make_detector, rotten_tomatoes_task, text_digest


@pytest.mark.parametrize("bad,exc,msg", [
    ([], ValueError, "texts is empty"),
    (["ok", ""], ValueError, r"texts\[1\] is empty or blank"),
    (["ok", "   \n"], ValueError, r"texts\[1\] is empty or blank"),
    (["ok", 3], TypeError, r"texts\[1\] must be a str, got int"),
    (["ok", None], TypeError, r"texts\[1\] must be a str, got NoneType"),
    ("a single string", TypeError, "got a single str"),
    (42, TypeError, "must be a list of strings, got int"),
])
def test_bad_texts(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        check_texts(bad)
    with pytest.raises(exc, match=msg):
        embed(bad, cache=False)


def test_digest_changes_with_text_and_model():
    a = text_digest(["x", "y"], "m")
    assert a != text_digest(["xy"], "m") and a != text_digest(["x", "y"], "n") and a == text_digest(["x", "y"], "m")


def _embed_or_skip(texts, **kw):
    try:
        return embed(texts, progress=False, **kw)
    except ImportError as e:
        pytest.skip(str(e))


def test_embed_cache_and_order(tmp_path):
    texts = ["short", "a much longer sentence about a film", "mid length text"]
    e1 = _embed_or_skip(texts, cache=tmp_path, batch_size=2)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    e2 = embed(texts, cache=tmp_path, progress=False)
    assert torch.equal(e1, e2)
    from fastad.text import MiniLM

    torch.testing.assert_close(e1, MiniLM().encode(texts), rtol=0, atol=2e-6)  # input order kept
    with pytest.raises(ValueError, match="batch_size"):
        embed(texts, batch_size=0, cache=False)


def test_presets():
    assert make_detector("knn").n_neighbors == 3 and make_detector("knn").method == "largest"
    assert make_detector("lof").n_neighbors == 30
    with pytest.raises(ValueError, match="name must be one of"):
        make_detector("ocsvm")


def _task(task, limit):
    try:
        return rotten_tomatoes_task(task, limit=limit)
    except ImportError as e:
        pytest.skip(str(e))


def test_rotten_tomatoes_tasks():
    tr, te, y = _task("plot", None)
    assert len(tr) + sum(1 for v in y if v == 0) == 7403 + 5405
    assert 0.075 < sum(y) / len(y) < 0.083
    tr2, te2, y2 = _task("rotten", 500)
    assert len(tr2) == 400 and sum(y2) == round(100 * 1097 / 12808)
    with pytest.raises(ValueError, match="task must be one of"):
        rotten_tomatoes_task("sarcasm")


def test_real_slice_knn_lof_equal_pyod():
    """A small slice of the real task: our KNN/LOF scores equal PyOD's on the same embeddings."""
    pytest.importorskip("numba", reason="PyOD needs numba")
    pytest.importorskip("pyod", reason="PyOD not installed")
    from pyod.models.knn import KNN as PKNN
    from pyod.models.lof import LOF as PLOF
    from scipy.stats import spearmanr

    tr, te, y = _task("plot", 300)
    Etr, Ete = _embed_or_skip(tr), _embed_or_skip(te)
    for name, ref in (("knn", PKNN(n_neighbors=3, method="largest")), ("lof", PLOF(n_neighbors=30))):
        ours = make_detector(name).fit(Etr).decision_function(Ete).double().numpy()
        theirs = ref.fit(Etr.double().numpy()).decision_function(Ete.double().numpy())
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
        assert spearmanr(ours, theirs).statistic > 0.99999
    res = evaluate(Etr, Ete, y)
    assert set(res) == {"knn", "lof", "mahalanobis", "iforest"}
    assert res["knn"]["auroc"] > 0.8  # synopses vs reviews is easy for MiniLM
