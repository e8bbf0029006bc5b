"""DeltaNet and Gated DeltaNet: the delta-rule mixers (``model.family`` deltanet, gated_deltanet).

References
    [1] S. Yang, B. Wang, Y. Zhang, Y. Shen, Y. Kim. "Parallelizing Linear Transformers with the Delta Rule over
        Sequence Length." NeurIPS 2024. arXiv:2406.06484. Eq. 1 (the delta rule), Sec. 4 (the DeltaNet layer:
        SiLU and L2-normalised q, k, short convolutions, output norm).
    [2] S. Yang, J. Kautz, A. Hatamizadeh. "Gated Delta Networks: Improving Mamba2 with Delta Rule." ICLR 2025.
        arXiv:2412.06464. Eq. 10 (the gated delta rule), Fig. 1 / Sec. 3.4 (the Gated DeltaNet block: decay
        alpha_t = exp(g_t) parametrised like Mamba-2's, output gate).
    [3] fla-org/flash-linear-attention 0.6, ``fla/layers/delta_net.py`` (``DeltaNet``) and
        ``fla/layers/gated_deltanet.py`` (``GatedDeltaNet``): parameter names and shapes here are theirs, so fla's
        Hugging Face checkpoints load by renaming the LM around the mixer only (``models/hf_adapters.py``).

Glossary (code letter -> paper symbol)
    b  batch          l  sequence length       d  d_model            h  heads (model.n_heads)
    K  key / query dim per head (model.head_dim)                     V  value dim per head (model.v_head_dim)
    k_conv  d_conv, the width of the short causal convolutions on q, k, v (model.short_conv)
    q, k  (b, l, h, K)  SiLU, then L2-normalised ([1] Sec. 4)         v  (b, l, h, V)  SiLU
    β     (b, l, h)     sigmoid(b_proj(x)): how strongly each token overwrites what its key held
    g     (b, l, h)     gated_deltanet only: g = -exp(A_log) softplus(a_proj(x) + dt_bias) <= 0, alpha = e^g
                        ([2] Sec. 3.4: Mamba-2's Δ A with A = -exp(A_log) per head)
    S     (b, h, K, V)  the state: a key -> value memory per head (key-major, fla's layout; the paper's S^T)

The block (pre-norm residual, as every family: x <- x + block(norm(x))):
    q, k, v = silu(conv_q(q_proj x)), silu(conv_k(k_proj x)), silu(conv_v(v_proj x))      (per head: reshape)
    q, k    = q / |q|, k / |k|
    S_t     = alpha_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T,   o_t = K^-1/2 S_t^T q_t   ([2] Eq. 10)
    out     = o_proj(RMSNorm_V(o) ⊙ silu(g_proj x))        (without model.output_gate: o_proj(RMSNorm_V(o)))
with alpha = 1 for DeltaNet ([1] Eq. 1). The recurrence runs ``scan_impl``: ``chunked`` (the WY / UT chunkwise
form, ``ops/delta_rule.py``), ``reference`` (its token loop) or ``fla`` (fla's Triton kernels, ``ops/fla_kernels.py``).

Recurrent state per layer i (the whole past: any split of a sequence gives the same logits):
    "layers.{i}.conv_q", "layers.{i}.conv_k"  (b, h K, k_conv - 1)   the last inputs of the q, k convolutions
    "layers.{i}.conv_v"                       (b, h V, k_conv - 1)   the same for v (all three: none without
                                                                     model.short_conv)
    "layers.{i}.kv"                           (b, h, K, V)           the delta-rule memory S
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops.delta_rule import delta_rule_chunked, delta_rule_ref
from ..ops.dispatch import ScanImpl
from ..ops.fla_kernels import fla_delta_rule
from .layers import l2_normalize
from .linear_attention import LinearAttentionMixer


class DeltaNetMixer(LinearAttentionMixer):
    """The DeltaNet block ([1] Sec. 4): (b, l, d) and a layer state -> (b, l, d) and the new layer state."""

    fast_kernels: ClassVar[tuple[str, ...]] = ("fla",)
    gated: ClassVar[bool] = False
    scan_impl: ScanImpl

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, key_activation=F.silu, conv_activation=None)
        d, h = config.d_model, self.n_heads
        self.b_proj = nn.Linear(d, h, bias=False)
        if self.gated:
            self.a_proj = nn.Linear(d, h, bias=False)
            self.A_log = nn.Parameter(torch.empty(h))
            self.dt_bias = nn.Parameter(torch.empty(h))
            self.reset_decay_parameters(config.dt_min, config.dt_max)
        self.init_like_fla(config.n_layers)

    @torch.no_grad()
    def reset_decay_parameters(self, dt_min: float, dt_max: float, dt_floor: float = 1e-4) -> None:
        """[3]'s initialisation of the decay: A ~ U[0, 16] (stored as log), Δ log-uniform in [dt_min, dt_max]
        (stored as softplus^-1, ``dt_bias``): Mamba-2's."""
        h = self.n_heads
        self.A_log.copy_(torch.log(torch.empty(h).uniform_(0.0, 16.0).clamp_min(1e-4)))
        dt = torch.exp(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def decay(self, a: Tensor) -> Tensor:
        """Gated DeltaNet's g = log alpha = -exp(A_log) softplus(a + dt_bias), a = a_proj x (b, l, h)."""
        dtype = torch.promote_types(a.dtype, torch.float32)
        return -torch.exp(self.A_log.to(dtype)) * F.softplus(a.to(dtype) + self.dt_bias.to(dtype))

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x (b, l, d), state {conv_q, conv_k, conv_v (b, c, k_conv - 1), kv (b, h, K, V)} -> (b, l, d), new state."""
        (q, k, v), conv_states, extra = self.project(x, state, ("b_proj", "a_proj") if self.gated else ("b_proj",))
        q, k = l2_normalize(q), l2_normalize(k)
        beta = torch.sigmoid(extra["b_proj"].to(torch.promote_types(x.dtype, torch.float32)))
        g = self.decay(extra["a_proj"]) if self.gated else None
        args = dict(q=q, k=k, v=v, beta=beta, g=g, scale=self.head_k_dim ** -0.5, initial_state=state["kv"])
        if self.scan_impl == "chunked":
            o, kv = delta_rule_chunked(**args, chunk_size=self.chunk_size)
        elif self.scan_impl == "fla":
            o, kv = fla_delta_rule(**args)
        else:
            o, kv = delta_rule_ref(**args)
        return self.output(o, extra.get("gate"), x.dtype), {**conv_states, "kv": kv.to(state["kv"].dtype)}


class GatedDeltaNetMixer(DeltaNetMixer):
    """The Gated DeltaNet block ([2] Fig. 1): DeltaNet with the data-dependent decay alpha_t = exp(g_t) per head."""

    gated: ClassVar[bool] = True
