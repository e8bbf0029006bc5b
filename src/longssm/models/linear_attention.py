"""What the linear-attention mixers share (DeltaNet, Gated DeltaNet, GLA): the head sizes, the q / k / v
projections with their short causal convolutions, and the gated per-head output norm and projection.

References
    [1] fla-org/flash-linear-attention 0.6, ``fla/layers/{delta_net,gated_deltanet,gla}.py``: the parameter names
        used here (``q_proj``, ``q_conv1d``, ``g_proj``, ``o_norm``, ``o_proj``, ...) are theirs.

Glossary
    b  batch   l  length   d  d_model   h  heads (model.n_heads)   K, V  key and value size per head
    k_conv     d_conv, the width of the short convolutions (model.short_conv)

    q, k, v = act(conv_q(q_proj x)), act(conv_k(k_proj x)), act(conv_v(v_proj x))    (b, l, h, K / V)
    out     = o_proj(RMSNorm_V(o) ⊙ silu(g_proj x))          (model.output_gate false: o_proj(RMSNorm_V(o)))
Convolution states (with model.short_conv): "conv_q", "conv_k" (b, h K, k_conv - 1), "conv_v" (b, h V, k_conv - 1),
the last k_conv - 1 inputs of each convolution, oldest first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import UserError
from .layers import CausalDepthwiseConv1d, HeadRMSNorm, causal_depthwise_conv


def head_sizes(config: ModelConfig) -> tuple[int, int, int]:
    """(h, K, V): ``model.n_heads`` (null: d_model / head_dim, which must divide), ``model.head_dim``,
    ``model.v_head_dim`` (null: head_dim). ``UserError`` naming the keys otherwise."""
    if config.n_heads is None:
        if config.d_model % config.head_dim:
            raise UserError(f"model.head_dim must divide model.d_model = {config.d_model} (or set model.n_heads); "
                            f"got {config.head_dim}")
        heads = config.d_model // config.head_dim
    else:
        heads = config.n_heads
    return heads, config.head_dim, config.v_head_dim or config.head_dim


class LinearAttentionMixer(nn.Module):
    """The projections in and out of a linear-attention mixer; subclasses add their gates and the recurrence.

    ``activation`` is applied to q, k and v after their convolutions (SiLU for the delta rule, none for GLA,
    whose fla convolutions apply SiLU themselves: ``conv_activation``).
    """

    def __init__(self, config: ModelConfig, key_activation: Callable[[Tensor], Tensor] | None,
                 conv_activation: Callable[[Tensor], Tensor] | None) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads, self.head_k_dim, self.head_v_dim = h, dk, dv = head_sizes(config)
        self.chunk_size = config.chunk_size
        self.key_activation, self.conv_activation = key_activation, conv_activation
        self.q_proj = nn.Linear(d, h * dk, bias=False)
        self.k_proj = nn.Linear(d, h * dk, bias=False)
        self.v_proj = nn.Linear(d, h * dv, bias=False)
        self.conv_dims = {"q": h * dk, "k": h * dk, "v": h * dv} if config.short_conv else {}
        self.d_conv = config.d_conv
        for name, dim in self.conv_dims.items():
            setattr(self, f"{name}_conv1d", CausalDepthwiseConv1d(dim, config.d_conv, bias=False))
        self.g_proj = nn.Linear(d, h * dv, bias=False) if config.output_gate else None
        self.o_norm = HeadRMSNorm(dv, eps=config.norm_eps)
        self.o_proj = nn.Linear(h * dv, d, bias=False)

    @torch.no_grad()
    def init_like_fla(self, n_layers: int, std: float = 0.02) -> None:
        """[1]'s ``_init_weights``: every linear and convolution weight N(0, std²), biases 0, and the output
        projection divided by sqrt(2 n_layers) (its prenorm-residual rescaling: two residual sublayers per block).
        Subclasses call it last, after adding their own projections; their decay parameters keep their own init.
        (PyTorch's default uniform init of the short convolutions kept tiny models from learning in a few steps.)"""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.o_proj.weight.div_(math.sqrt(2 * n_layers))

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """conv_q, conv_k (h K, k_conv - 1), conv_v (h V, k_conv - 1) (with model.short_conv, else none) and the
        matrix state kv (h, K, V)."""
        convs = {f"conv_{name}": (dim, self.d_conv - 1) for name, dim in self.conv_dims.items()}
        return {**convs, "kv": (self.n_heads, self.head_k_dim, self.head_v_dim)}

    def project(self, x: Tensor, state: dict[str, Tensor], extra: tuple[str, ...] = ()
                ) -> tuple[list[Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """x (b, l, d) -> [q, k (b, l, h, K), v (b, l, h, V)], the new convolution states, and the outputs of the
        bias-free projections named in ``extra`` (and of ``g_proj``, as "gate" (b, l, h, V), with the output gate).

        One matmul for all projections and one convolution for q, k and v together (their weights concatenated):
        the same numbers as module by module, with a fraction of the small-kernel calls on the CPU."""
        names = ["q_proj", "k_proj", "v_proj", *extra, *(["g_proj"] if self.g_proj is not None else [])]
        weights = [getattr(self, name).weight for name in names]
        widths = [w.shape[0] for w in weights]
        # q, k, v are the first three: one slice of the product, convolved together
        qkv, *rest = F.linear(x, torch.cat(weights)).split([sum(widths[:3]), *widths[3:]], dim=-1)
        outputs = dict(zip(names[3:], rest))
        conv_states: dict[str, Tensor] = {}
        if self.conv_dims:
            parts = [f"conv_{name}" for name in self.conv_dims]
            weight = torch.cat([getattr(self, f"{name}_conv1d").weight for name in self.conv_dims])
            qkv, new_state = causal_depthwise_conv(qkv, torch.cat([state[p] for p in parts], dim=1), weight, None)
            conv_states = dict(zip(parts, (s.contiguous() for s in new_state.split(list(self.conv_dims.values()),
                                                                                   dim=1))))
            if self.conv_activation is not None:
                qkv = self.conv_activation(qkv)
        if self.key_activation is not None:
            qkv = self.key_activation(qkv)
        h, dk = self.n_heads, self.head_k_dim
        q, k, v = (t.unflatten(-1, (h, -1)) for t in qkv.split([h * dk, h * dk, h * self.head_v_dim], dim=-1))
        if "g_proj" in outputs:
            outputs["gate"] = outputs.pop("g_proj").unflatten(-1, (h, -1))
        return [q, k, v], conv_states, outputs

    def output(self, o: Tensor, gate: Tensor | None, dtype: torch.dtype) -> Tensor:
        """The recurrence's output o (b, l, h, V) and the output gate (b, l, h, V) or None -> (b, l, d) in dtype."""
        return self.o_proj(self.o_norm(o.to(dtype), gate).flatten(-2))
