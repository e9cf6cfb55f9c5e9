"""fastad's MiniLM against sentence-transformers (skipped when either is absent); tokenizer behaviour."""
import pytest
import torch

SENTENCES = [
    "A gripping, beautifully shot thriller.",
    "The plot follows a bank manager who plans to rob his own bank with three blind men.",
    "Meh.",
    "This is " + "very " * 400 + "long (truncated at 256 tokens).",
    "Ünïcödé, emoji 🙂 and   odd\tspacing!",
]


def _ours():
    from fastad.text import MiniLM

    try:
        return MiniLM()
    except ImportError as e:
        pytest.skip(str(e))


def test_minilm_equals_sentence_transformers():
    m = _ours()
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    ref = st.SentenceTransformer(str(m.path), device="cpu")
    want = torch.as_tensor(ref.encode(SENTENCES, batch_size=2, convert_to_numpy=True))
    got = m.encode(SENTENCES, batch_size=3)
    cos = (got * want).sum(1)
    assert float(cos.min()) >= 0.9999
    assert float((got - want).abs().max()) < 1e-5


def test_minilm_properties():
    m = _ours()
    e = m.encode(SENTENCES)
    assert e.shape == (5, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5))
    ids, mask = m.tokenize(SENTENCES)
    assert int(mask.sum(1).max()) == 256  # truncation at max_seq_length
    # padding does not change a text's embedding: alone vs in a batch with a much longer text
    torch.testing.assert_close(m.encode(SENTENCES[2:3]), e[2:3], rtol=0, atol=2e-6)
    # similar texts are closer than unrelated ones
    a, b, c = m.encode(["The film was wonderful.", "The movie was great.", "Stock prices fell sharply today."])
    assert float(a @ b) > float(a @ c) + 0.2


def test_minilm_bad_path(tmp_path):
    from fastad.text import MiniLM

    with pytest.raises(FileNotFoundError, match="must hold config.json"):
        MiniLM(tmp_path)
