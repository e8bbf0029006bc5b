"""A synthetic long-range recall task: a document's key must be recalled windows after it was seen.

Every document has L = ``doc_len`` tokens (g = ``echo_at``):

    position   0      1 .. g−1    g             g+1    g+2 .. L−3    L−2             L−1
    token      key    filler      echo marker   key    filler        recall marker   key

The key is drawn uniformly from ``n_keys`` key tokens, the filler uniformly and independently from ``n_filler``
filler tokens: the two keys after the markers are the only tokens that depend on anything before them, and the
only information about them is the first token of the document.

Trained on windows of T > g + 1 tokens with L ≥ 2T and documents aligned to windows, the echo lies in the first
window and the recall in the last. A model whose windows start from zero never has the key in context at the recall
marker: its recall loss is ln(n_keys) at best. A model trained with the state carried across windows
("previous") can read the key out of the state it starts the last window with.

Why the echo: under truncated BPTT no gradient reaches the window that wrote the key, so what a model writes
into its state is learned from objectives inside a window. The echo (a key asked for a few tokens after it,
inside the first window, with its own marker) teaches every model to store the key; only carried-state training
also teaches it to read the key at the recall marker, windows later. Without the echo, neither scheme learned
the recall with the settings of ``tests/test_long_range.py`` (recall loss ≈ ln 16 for both, 3 seeds).

Token ids: keys ``0 .. n_keys − 1``, filler ``n_keys .. n_keys + n_filler − 1``, then the echo marker and the
recall marker. Save ``documents(...).ravel()`` with ``numpy.save`` to train on it (``data.train: recall.npy``);
``evaluate.key_recall.key_losses`` scores a model on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KeyRecall:
    """The layout of the key-recall documents (see the module docstring)."""

    doc_len: int
    """L: tokens per document, markers and keys included."""
    echo_at: int = 6
    """g: position of the echo marker (the key is asked for again at g + 1)."""
    n_keys: int = 16
    """Distinct keys: an uninformed guess of a key costs ln(n_keys) nats."""
    n_filler: int = 16
    """Distinct filler tokens, drawn uniformly and independently (they carry no information)."""

    def __post_init__(self) -> None:
        if self.echo_at < 1 or self.doc_len < self.echo_at + 4 or self.n_keys < 2 or self.n_filler < 1:
            raise ValueError(f"KeyRecall needs 1 <= echo_at <= doc_len - 4, n_keys >= 2, n_filler >= 1; got {self}")

    @property
    def echo_marker(self) -> int:
        """The token at position g that asks for the key inside the first window."""
        return self.n_keys + self.n_filler

    @property
    def recall_marker(self) -> int:
        """The token at position L − 2 that asks for the key at the end of the document."""
        return self.n_keys + self.n_filler + 1

    @property
    def vocab_size(self) -> int:
        """Token ids used: keys, filler and the two markers."""
        return self.n_keys + self.n_filler + 2

    @property
    def chance_loss(self) -> float:
        """ln(n_keys): the loss on a key of a model that knows a key comes, but not which."""
        return math.log(self.n_keys)

    def documents(self, n_docs: int, seed: int) -> np.ndarray:
        """``n_docs`` random documents, (n_docs, L) int64; ``.ravel()`` gives a token stream."""
        rng = np.random.default_rng(seed)
        docs = rng.integers(self.n_keys, self.n_keys + self.n_filler, size=(n_docs, self.doc_len))
        keys = rng.integers(0, self.n_keys, size=n_docs)
        docs[:, 0] = docs[:, self.echo_at + 1] = docs[:, -1] = keys
        docs[:, self.echo_at] = self.echo_marker
        docs[:, -2] = self.recall_marker
        return docs
