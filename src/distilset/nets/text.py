"""Text classifiers over token embeddings: Kim's TextCNN and an LSTM.

Both take either token ids (int64, (N, L)), which they look up in the frozen all-MiniLM-L6-v2 token embeddings of
``distilset.data.text`` (loaded on first use, never trained, not part of the weights), or embedded rows
(float, (N, L, D)) as they are: real snippets come as ids, distilled "sentences" as rows.
"""

from __future__ import annotations

import torch
from torch import nn

from distilset.nets.registry import register_net


class _TokenInput(nn.Module):
    """Turns token ids into their frozen embedding rows; leaves float rows alone."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            return x
        if self.table is None or self.table.device != x.device:
            from distilset.data.text import token_embeddings

            self.table = token_embeddings()[0].to(x.device)
        return self.table[x]


class TextCNN(nn.Module):
    """Kim (2014): 1-D convolutions of several widths over the token rows, ReLU, max over time, dropout, linear."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        num_classes: int,
        widths: tuple[int, ...] = (3, 4, 5),
        maps: int = 100,
        dropout: float = 0.5,
    ):
        super().__init__()
        if len(in_shape) != 2:
            raise ValueError(f"TextCNN takes token rows (L, D), got input shape {tuple(in_shape)}")
        length, dim = in_shape
        if max(widths) > length:
            raise ValueError(f"filter width {max(widths)} is longer than the {length} tokens")
        self.tokens = _TokenInput()
        self.convs = nn.ModuleList(nn.Conv1d(dim, maps, w) for w in widths)
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = maps * len(widths)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.tokens(x).transpose(1, 2)  # (N, D, L)
        return self.dropout(torch.cat([torch.relu(c(rows)).amax(2) for c in self.convs], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class LSTMClassifier(nn.Module):
    """One-layer LSTM over the token rows; its final hidden state feeds a linear classifier (snippets are padded at
    the front, so the final state follows the last real token)."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, width: int = 128):
        super().__init__()
        if len(in_shape) != 2:
            raise ValueError(f"the LSTM takes token rows (L, D), got input shape {tuple(in_shape)}")
        self.tokens = _TokenInput()
        self.lstm = nn.LSTM(in_shape[1], width, batch_first=True)
        self.feature_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.tokens(x)
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's LSTM has no double backward (unrolled methods)
            _, (h, _) = self.lstm(rows)
        return h[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@register_net("textcnn")
def textcnn(in_shape, num_classes, **kw) -> TextCNN:
    """Kim's TextCNN: filter widths 3/4/5 x 100 maps, dropout 0.5; options widths/maps/dropout."""
    return TextCNN(in_shape, num_classes, **kw)


@register_net("lstm")
def lstm(in_shape, num_classes, **kw) -> LSTMClassifier:
    """LSTM classifier, hidden width 128; option width."""
    return LSTMClassifier(in_shape, num_classes, **kw)
