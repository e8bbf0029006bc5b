"""Sliding-window attention (SWA): causal softmax attention over the last ``model.window`` tokens, whose keys and
values are the carried state (``model.family swa``, or a layer of a hybrid pattern, ``model.layers``).

References
    [1] Z. Dai, Z. Yang, Y. Yang, J. Carbonell, Q. Le, R. Salakhutdinov. "Transformer-XL: Attentive Language Models
        Beyond a Fixed-Length Context." ACL 2019. arXiv:1901.02860. Sec. 3.2: the keys and values of the previous
        segment are cached, with the gradient stopped, and attended by the next segment (here: a bounded window).
    [2] L. Ren, Y. Liu, Y. Lu, Y. Shen, C. Liang, W. Chen. "Samba: Simple Hybrid State Space Models for Efficient
        Unlimited Context Language Modeling." 2024. arXiv:2406.07522. Sec. 2: Mamba + SWA + MLP layers.
    [3] J. Su, Y. Lu, S. Pan, A. Murtadha, B. Wen, Y. Liu. "RoFormer: Enhanced Transformer with Rotary Position
        Embedding." 2021. arXiv:2104.09864. Eq. 34 (rotary embeddings: a score depends on positions only through i - j).

Glossary (code letter -> symbol)
    b  batch        l  sequence length        d  d_model        h  heads (model.n_heads)     K  head_dim
    W  model.window: a query at position i attends to the keys at positions i - W, ..., i (W + 1 keys: itself and
       the W tokens before it, fewer at the start of a text)
    R_p  the rotary rotation of position p ([3]): q_i^T k_j becomes (R_i q_i)^T (R_j k_j) = q_i^T R_{j-i} k_j

The block (pre-norm residual like every family):
    q, k, v = q_proj x, k_proj x, v_proj x                                  (b, l, h, K)
    o_i     = sum_{j = i-W..i} softmax_j((R_i q_i)^T (R_j k_j) / sqrt(K)) v_j
    out     = o_proj(o)

Recurrent state per layer i: the last W tokens' keys (before rotation) and values, and which of the W slots hold a
token (an empty cache at a text's start: the zero state is an empty cache, so the ``zero`` scheme, ``p_zero`` and
document resets mean "no context"):
    "layers.{i}.k", "layers.{i}.v"   (b, W, h, K)    oldest first
    "layers.{i}.filled"              (b, W)          1 where the slot holds a token, else 0
Rotations use positions relative to the first query of each block of queries, never absolute ones, so no position
counter is carried: by [3] the scores are the same, and the angles stay small at any length. The noise state schemes
(random_noise, fitted_noise) would perturb a cache of real tokens and its slot flags, which has no meaning: they are
refused for models with an SWA layer (``train.setup``).

Implementations (``scan_impl``): ``chunked`` runs blocks of ``model.chunk_size`` queries, each attending to the W
cached tokens and the block itself (memory O(l (W + chunk)), constant in l per block); ``reference`` one query at a
time. Both equal full-sequence banded attention (``tests/test_swa.py``, against
``torch.nn.functional.scaled_dot_product_attention`` with a banded mask).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops.dispatch import ScanImpl
from .linear_attention import head_sizes

ROPE_BASE = 10000.0
"""The rotary frequencies base^(-2m/K) of [3] (Llama's base)."""


def rotate(x: Tensor, positions: Tensor, base: float = ROPE_BASE) -> Tensor:
    """R_p x ([3] Eq. 34, the half-split layout of Llama / GPT-NeoX): x (b, n, h, K), positions (n,) -> (b, n, h, K),
    computed in at least float32."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=dtype) * 2 / x.shape[-1])      # (K/2,)
    angles = positions.to(dtype)[:, None] * freqs                                              # (n, K/2)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]                              # (n, 1, K/2)
    x1, x2 = x.to(dtype)[..., :half], x.to(dtype)[..., half:2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x.to(dtype)[..., 2 * half:]], dim=-1)
    return rotated.to(x.dtype)


def window_attention(q: Tensor, k: Tensor, v: Tensor, cache: tuple[Tensor, Tensor, Tensor], window: int,
                     block: int) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Banded causal attention of queries q (b, l, h, K) over the cached tokens and themselves, ``block`` queries at
    a time. k, v (b, l, h, K); cache = (keys (b, W, h, K), values (b, W, h, K), filled (b, W)) of the W tokens before
    q[:, 0], unrotated -> o (b, l, h, K) and the cache after the last query."""
    ck, cv, filled = cache
    W, outs = window, []
    for s in range(0, q.shape[1], block):
        qb, kb, vb = q[:, s:s + block], k[:, s:s + block], v[:, s:s + block]
        n = qb.shape[1]
        keys, values = torch.cat([ck, kb], dim=1), torch.cat([cv, vb], dim=1)                  # (b, W + n, h, K)
        present = torch.cat([filled, filled.new_ones(filled.shape[0], n)], dim=1) > 0.5       # (b, W + n)
        key_pos = torch.arange(-W, n, device=q.device)
        query_pos = torch.arange(n, device=q.device)
        gap = query_pos[:, None] - key_pos[None, :]                                           # i - j (n, W + n)
        allowed = (gap >= 0) & (gap <= W)                                                      # the band
        mask = allowed[None, None] & present[:, None, None, :]                                 # (b, 1, n, W + n)
        scores = torch.einsum("bihk,bjhk->bhij", rotate(qb, query_pos), rotate(keys, key_pos)) / math.sqrt(q.shape[-1])
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)             # each row has itself
        outs.append(torch.einsum("bhij,bjhk->bihk", weights.to(values.dtype), values))
        ck, cv = keys[:, n:].contiguous(), values[:, n:].contiguous()
        filled = present[:, n:].to(filled.dtype).contiguous()
    o = torch.cat(outs, dim=1) if outs else v.new_zeros(v.shape)
    return o, (ck, cv, filled)


class SWAMixer(nn.Module):
    """Sliding-window attention ([1], [2]): (b, l, d) and the cache of the last W tokens -> (b, l, d), the new cache."""

    scan_impl: ScanImpl
    noise_states: ClassVar[bool] = False  # the noise schemes are refused (see the module docstring)

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads, self.head_dim, _ = head_sizes(config)
        self.window, self.chunk_size = config.window, config.chunk_size
        inner = self.n_heads * self.head_dim
        self.q_proj = nn.Linear(d, inner, bias=False)
        self.k_proj = nn.Linear(d, inner, bias=False)
        self.v_proj = nn.Linear(d, inner, bias=False)
        self.o_proj = nn.Linear(inner, d, bias=False)
        with torch.no_grad():  # as the other mixers: the output projection / sqrt(n_layers)
            self.o_proj.weight.div_(math.sqrt(config.n_layers))

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """k, v: the last W tokens' keys and values (W, h, K); filled: which of the W slots hold one (W,)."""
        shape = (self.window, self.n_heads, self.head_dim)
        return {"k": shape, "v": shape, "filled": (self.window,)}

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x (b, l, d), state {k, v (b, W, h, K), filled (b, W)} -> out (b, l, d), the new state."""
        q, k, v = (F.linear(x, proj.weight).unflatten(-1, (self.n_heads, -1))
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        cache = (state["k"].to(x.dtype), state["v"].to(x.dtype), state["filled"])
        block = 1 if self.scan_impl == "reference" else max(1, self.chunk_size)
        o, (ck, cv, filled) = window_attention(q, k, v, cache, self.window, block)
        out = self.o_proj(o.flatten(-2))
        return out, {"k": ck.to(state["k"].dtype), "v": cv.to(state["v"].dtype), "filled": filled}
