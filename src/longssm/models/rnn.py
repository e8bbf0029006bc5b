"""GRU and LSTM: the classical recurrent baselines, as blocks of ``lm.RecurrentLM`` (with LayerNorm).

References:
    [1] Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder", 2014 (GRU).
    [2] Hochreiter & Schmidhuber, "Long Short-Term Memory", 1997 (LSTM); PyTorch's ``nn.LSTM`` variant
        with a forget gate and two bias vectors.

Glossary:
    b   batch          l   sequence length          d   d_model, the residual width and the hidden size
    h   hidden state (b, d)                          c   LSTM cell state (b, d)
    u_t the block's input at step t (b, d)           σ   sigmoid,  ⊙ elementwise

PyTorch's GRU, per step t:

    r = σ(W_ir u_t + b_ir + W_hr h + b_hr)      z = σ(W_iz u_t + b_iz + W_hz h + b_hz)
    g = tanh(W_in u_t + b_in + r ⊙ (W_hn h + b_hn))         h ← (1 − z) ⊙ g + z ⊙ h                  (1)

and its LSTM:

    i, f, g, o = σ, σ, tanh, σ of (W_i· u_t + b_i· + W_h· h + b_h·)
    c ← f ⊙ c + i ⊙ g,      h ← o ⊙ tanh(c)                                                                (2)

Two implementations of the same weights (``model.scan``): ``chunked`` runs ``torch.nn.GRU`` / ``torch.nn.LSTM``
(one layer, batch_first; cuDNN on CUDA), ``reference`` the loop of Eq. (1) / (2) written out below, one step
per token, with the input projections W_i· u_t of all steps computed in one matmul first. Both run in at least
float32 with autocast off, as every family's scan: under half-precision autocast the recurrence is not rounded to
8 mantissa bits at every step, and the carried state stays float32 (oneDNN has no bfloat16 LSTM on some CPUs).

Block (pre-norm residual):  u ← u + dropout(RNN(LayerNorm(u)))   (the residual and the norm are the shell's).

State: ``"layers.{i}.h"`` (b, d) for both; ``"layers.{i}.c"`` (b, d) for the LSTM as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops.dispatch import ScanImpl

__all__ = ["GRUMixer", "LSTMMixer"]

Hidden = tuple[Tensor, ...]
"""The recurrent state of one layer as the cells use it: (h,) for the GRU, (h, c) for the LSTM, each (b, d)."""


class _TorchRNNMixer(nn.Module):
    """dropout(RNN(u)) with ``self.rnn`` a one-layer ``nn.GRU`` / ``nn.LSTM``; subclasses give its class, the
    names of the state parts, and one step of its equation for the reference loop. ``scan_impl`` (chosen by
    ``build_model``): ``chunked`` runs ``self.rnn``, ``reference`` the loop of ``step``."""

    rnn_class: ClassVar[type[nn.RNNBase]]
    parts: ClassVar[tuple[str, ...]]
    step: ClassVar[Callable[[Tensor, Tensor, Hidden], Hidden]]
    """One step of the cell: input gates gi = W_i· u_t + b_i·, recurrent gates gh = W_h· h + b_h· (b, G d) and
    the state before the step -> the state after it (a staticmethod of the subclass)."""
    scan_impl: ScanImpl

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.rnn = self.rnn_class(config.d_model, config.d_model, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """h (d,), and c (d,) for the LSTM."""
        return {part: (self.d_model,) for part in self.parts}

    def forward(self, u: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. (1) or (2) over l steps. u (b, l, d), state {h (b, d)[, c (b, d)]} -> y (b, l, d) in u's dtype, the
        new state in at least float32 (half-precision u is run in float32 with autocast off)."""
        out_dtype = u.dtype
        dtype = torch.promote_types(u.dtype, torch.float32)
        u = u.to(dtype)
        hidden = tuple(state[part].to(dtype) for part in self.parts)
        with torch.autocast(u.device.type, enabled=False):
            if self.scan_impl == "chunked":
                y, hidden = self._torch_rnn(u, hidden)
            else:
                y, hidden = self._loop(u, hidden)
        return self.dropout(y.to(out_dtype)), dict(zip(self.parts, hidden))

    def _torch_rnn(self, u: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """``nn.GRU`` / ``nn.LSTM``, which take and return (num_layers = 1, b, d) states: h, or the pair (h, c)."""
        packed = tuple(s.unsqueeze(0).contiguous() for s in hidden)
        y, out = self.rnn(u, packed if len(packed) > 1 else packed[0])
        out = out if isinstance(out, tuple) else (out,)
        return y, tuple(s.squeeze(0) for s in out)

    def _loop(self, u: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """The reference: one ``step`` per token. u (b, l, d) -> y (b, l, d) (the h of every step), final state."""
        rnn = self.rnn
        input_gates = F.linear(u, rnn.weight_ih_l0, rnn.bias_ih_l0)  # W_i· u_t + b_i· for every t, (b, l, G d)
        ys = []
        for gi in input_gates.unbind(1):  # unbind, not gi[:, t]: indexing in the loop makes the backward O(l²)
            hidden = self.step(gi, F.linear(hidden[0], rnn.weight_hh_l0, rnn.bias_hh_l0), hidden)
            ys.append(hidden[0])
        return torch.stack(ys, dim=1), hidden


class GRUMixer(_TorchRNNMixer):
    """GRU, Eq. (1). State ``"h"`` (b, d)."""

    rnn_class = nn.GRU
    parts = ("h",)

    @staticmethod
    def step(gi: Tensor, gh: Tensor, hidden: Hidden) -> Hidden:
        """Eq. (1); gates in PyTorch's order r, z, n."""
        (h,) = hidden
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        g = torch.tanh(i_n + r * h_n)
        return ((1 - z) * g + z * h,)


class LSTMMixer(_TorchRNNMixer):
    """LSTM, Eq. (2). State ``"h"`` and ``"c"`` (b, d)."""

    rnn_class = nn.LSTM
    parts = ("h", "c")

    @staticmethod
    def step(gi: Tensor, gh: Tensor, hidden: Hidden) -> Hidden:
        """Eq. (2); gates in PyTorch's order i, f, g, o."""
        _, c = hidden
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
