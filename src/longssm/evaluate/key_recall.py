"""Scoring a model on the synthetic key-recall task of ``data/synthetic.py``: the loss of the echoed and of the
recalled key, each document read through the chunked stateful feed from a zero state (as a model reads a long text).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.synthetic import KeyRecall
from ..runtime.feed import feed


@torch.no_grad()
def key_losses(model: torch.nn.Module, task: KeyRecall, docs: np.ndarray, chunk: int) -> dict[str, float]:
    """Mean cross-entropy (nats) of the echoed and of the recalled key, each document fed in pieces of ``chunk``
    tokens with the state carried from piece to piece, from a zero state.

    Args:
        model: a ``longssm`` language model, ``model(tokens (b, l), state) -> (logits (b, l, V), state)``.
        task: the layout of ``docs``.
        docs: (n, L) documents, e.g. from ``task.documents``.
        chunk: tokens per forward call.
    Returns:
        ``{"echo": loss of the key at g + 1, "recall": loss of the key at L − 1}``.
    """
    tokens = torch.as_tensor(docs, dtype=torch.long, device=next(model.parameters()).device)
    inputs = tokens[:, :-1]  # the logits at position t predict token t + 1
    logits = torch.cat([piece.float() for _, _, piece, _ in feed(model, inputs, chunk=chunk)], dim=1)  # (n, L − 1, V)
    keys = tokens[:, 0]

    def loss_at(position: int) -> float:
        return float(F.cross_entropy(logits[:, position - 1], keys))

    return {"echo": loss_at(task.echo_at + 1), "recall": loss_at(task.doc_len - 1)}
