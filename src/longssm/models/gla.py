"""Gated linear attention (GLA): the mixer of ``model.family gla``.

References
    [1] S. Yang, B. Wang, Y. Shen, R. Panda, Y. Kim. "Gated Linear Attention Transformers with Hardware-Efficient
        Training." ICML 2024. arXiv:2312.06635. Eq. 3 (the recurrence), Sec. 4.4 (the GLA layer: low-rank forget
        gate alpha_t = sigmoid(x W_1 W_2 + b)^(1/16), output gate with a per-head norm).
    [2] fla-org/flash-linear-attention 0.6, ``fla/layers/gla.py`` (``GatedLinearAttention``): the parameter names
        here are theirs (the output norm, fla's ``g_norm_swish_gate``, is ``o_norm`` as in the delta-rule mixers;
        ``models/hf_adapters.py`` renames it).
    [3] B. Buitrago Ruiz, A. Gu. arXiv:2507.02782 (2025): state passing and TBTT on GLA beside Mamba.

Glossary (code letter -> paper symbol)
    b  batch        l  sequence length     d  d_model          h  heads (model.n_heads)
    K  key dim per head (model.head_dim)   V  value dim per head (model.v_head_dim)      r  model.gate_rank (16)
    q, k  (b, l, h, K)      v  (b, l, h, V)          (short convolutions + SiLU with model.short_conv, as fla)
    g     (b, l, h, K)      log alpha_t = logsigmoid(gk_proj x) / 16 <= 0: a forget gate per key channel
    S     (b, h, K, V)      the state, key-major ([1]'s S_t)

The block ([1] Sec. 4.4):
    q, k, v = q_proj x, k_proj x, v_proj x
    alpha_t = exp(g_t) = sigmoid(W_2 W_1 x_t + b)^(1/16)                 (gk_proj: d -> r -> h K)
    S_t     = diag(alpha_t) S_{t-1} + k_t v_t^T,    o_t = K^-1/2 S_t^T q_t    ([1] Eq. 3, transposed)
    out     = o_proj(RMSNorm_V(o) ⊙ silu(g_proj x))
The recurrence runs ``scan_impl``: ``chunked`` (secondary-chunk form, ``ops/gla.py``), ``reference`` (its token
loop) or ``fla`` (fla's ``chunk_gla``, ``ops/fla_kernels.py``).

Recurrent state per layer i:
    "layers.{i}.conv_q", "conv_k" (b, h K, k_conv - 1), "conv_v" (b, h V, k_conv - 1)   with model.short_conv
    "layers.{i}.kv"    (b, h, K, V)    the GLA state S
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops.dispatch import ScanImpl
from ..ops.fla_kernels import fla_gla
from ..ops.gla import gla_chunked, gla_ref
from .linear_attention import LinearAttentionMixer

GATE_LOGIT_NORMALIZER = 16
"""alpha = sigmoid(.)^(1/16): [1] Sec. 4.4 (fla's ``gate_logit_normalizer``), so the gates start near 1."""


class GLAMixer(LinearAttentionMixer):
    """The GLA block ([1] Sec. 4.4): (b, l, d) and a layer state -> (b, l, d) and the new layer state."""

    fast_kernels: ClassVar[tuple[str, ...]] = ("fla",)
    scan_impl: ScanImpl

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, key_activation=None, conv_activation=F.silu)
        d, h, dk = config.d_model, self.n_heads, self.head_k_dim
        self.gk_proj = nn.Sequential(nn.Linear(d, config.gate_rank, bias=False),
                                     nn.Linear(config.gate_rank, h * dk, bias=True))
        self.init_like_fla(config.n_layers)

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x (b, l, d), state {conv_q, conv_k, conv_v (b, c, k_conv - 1), kv (b, h, K, V)} -> (b, l, d), new state."""
        (q, k, v), conv_states, extra = self.project(x, state)
        gk = self.gk_proj(x).to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (self.n_heads, -1))
        g = F.logsigmoid(gk) / GATE_LOGIT_NORMALIZER
        args = dict(q=q, k=k, v=v, g=g, scale=self.head_k_dim ** -0.5, initial_state=state["kv"])
        if self.scan_impl == "chunked":
            o, kv = gla_chunked(**args, chunk_size=self.chunk_size)
        elif self.scan_impl == "fla":
            o, kv = fla_gla(**args)
        else:
            o, kv = gla_ref(**args)
        return self.output(o, extra.get("gate"), x.dtype), {**conv_states, "kv": kv.to(state["kv"].dtype)}
