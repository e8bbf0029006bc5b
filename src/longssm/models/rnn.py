"""GRU and LSTM language models: the classical recurrent baselines behind the stateful interface.

References:
    [1] Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder", 2014 (GRU).
    [2] Hochreiter & Schmidhuber, "Long Short-Term Memory", 1997 (LSTM); PyTorch's ``nn.LSTM`` variant
        with a forget gate and two bias vectors.

Glossary:
    b   batch          l   sequence length          d   d_model, the residual width and the hidden size
    h   hidden state (b, d)                          c   LSTM cell state (b, d)

The recurrent cells are ``torch.nn.GRU`` / ``torch.nn.LSTM`` (one layer, batch_first), so CUDA runs cuDNN
with no extra code. PyTorch's GRU, per step t (σ = sigmoid, ⊙ elementwise):

    r = σ(W_ir u_t + b_ir + W_hr h + b_hr)      z = σ(W_iz u_t + b_iz + W_hz h + b_hz)
    g = tanh(W_in u_t + b_in + r ⊙ (W_hn h + b_hn))         h ← (1 − z) ⊙ g + z ⊙ h                  (1)

and its LSTM:

    i, f, g, o = σ, σ, tanh, σ of (W_i· u_t + b_i· + W_h· h + b_h·)
    c ← f ⊙ c + i ⊙ g,      h ← o ⊙ tanh(c)                                                                (2)

Block (pre-norm residual):  u ← u + dropout(RNN(LayerNorm(u)))
Model: embedding -> n_layers blocks -> LayerNorm -> lm_head (tied to the embedding).

State: ``"layers.{i}.h"`` (b, d) for both; ``"layers.{i}.c"`` (b, d) for the LSTM as well.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .base import State

__all__ = ["GRULM", "LSTMLM", "RNNBlock"]


class RNNBlock(nn.Module):
    """u ← u + dropout(RNN(LayerNorm(u))): (b, l, d) -> (b, l, d); state tuple of (b, d) tensors."""

    def __init__(self, config: ModelConfig, cell: str) -> None:
        super().__init__()
        d = config.d_model
        self.cell = cell
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(d, d, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, u: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Eq. (1) or (2) over l steps. u (b, l, d); state (h,) or (h, c), each (b, d)."""
        # nn.GRU / nn.LSTM want (num_layers=1, b, d) states, and contiguous ones.
        hx = tuple(s.unsqueeze(0).contiguous() for s in state)
        y, out = self.rnn(self.norm(u), hx[0] if self.cell == "gru" else hx)
        out = (out,) if self.cell == "gru" else out
        return u + self.dropout(y), tuple(s.squeeze(0) for s in out)


class _RNNLM(nn.Module):
    """Embedding -> n_layers RNN blocks -> LayerNorm -> tied lm_head; ``cell`` selects GRU or LSTM."""

    cell = "gru"
    parts: tuple[str, ...] = ("h",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(RNNBlock(config, self.cell) for _ in range(config.n_layers))
        self.norm_f = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight
        nn.init.normal_(self.embedding.weight, std=0.02)

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zeros: ``{"layers.{i}.h": (b, d)}`` (and ``"layers.{i}.c"`` for the LSTM)."""
        device = device if device is not None else self.embedding.weight.device
        dtype = dtype if dtype is not None else self.embedding.weight.dtype
        return {f"layers.{i}.{part}": torch.zeros(batch_size, self.config.d_model, device=device, dtype=dtype)
                for i in range(len(self.layers)) for part in self.parts}

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens (b, l) -> logits (b, l, V), state after the last token (see ``base.py``)."""
        if state is None:
            state = self.initial_state(tokens.shape[0], tokens.device)
        u = self.embedding(tokens)
        new_state: State = {}
        for i, layer in enumerate(self.layers):
            u, out = layer(u, tuple(state[f"layers.{i}.{part}"].to(u.dtype) for part in self.parts))
            new_state.update({f"layers.{i}.{part}": s for part, s in zip(self.parts, out)})
        return self.lm_head(self.norm_f(u)), new_state


class GRULM(_RNNLM):
    """GRU language model, Eq. (1). State ``"layers.{i}.h"`` (b, d)."""

    cell = "gru"
    parts = ("h",)


class LSTMLM(_RNNLM):
    """LSTM language model, Eq. (2). State ``"layers.{i}.h"`` and ``"layers.{i}.c"`` (b, d)."""

    cell = "lstm"
    parts = ("h", "c")
