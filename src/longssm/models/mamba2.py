"""Mamba-2: a language model of SSD mixers, behind the stateful interface of ``base.py``.

References
    [1] T. Dao, A. Gu. "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
        State Space Duality." ICML 2024. arXiv:2405.21060. Section 7 (the Mamba-2 block, Fig. 6), Eq. 2.
    [2] state-spaces/mamba, ``mamba_ssm/modules/mamba2.py`` (official block) and
        ``mamba_ssm/models/mixer_seq_simple.py`` (the LM around it).
    [3] Hugging Face transformers, ``models/mamba2/modeling_mamba2.py`` (``Mamba2ForCausalLM``): parameter names
        here are identical, so its ``state_dict`` loads with ``strict=True``.

Glossary (code letter -> paper symbol)
    b  batch          l  sequence length      d  d_model (D)         e  d_inner = expand * d (= h p)
    h  heads = e / p  p  head_dim (P)         n  d_state (N)         g  n_groups of B, C (h % g == 0)
    k  d_conv, the causal convolution width (K)                      v  vocab_size (V)
    Δ  dt (b, l, h): softplus(in_proj Δ part + dt_bias)              A = -exp(A_log) (h,): one scalar per head
    B, C  (b, l, g, n): input-dependent state projections            D  (h,): skip connection
    z  (b, l, e): the gate                                           xBC: x, B, C before the convolution

The block ([1] Fig. 6, "parallel" projections):
    z, xBC, Δ = in_proj(u)                             (one matmul; split in this order: e, e + 2 g n, h)
    x, B, C   = split(silu(conv1d(xBC)))               (causal depthwise convolution over time, width k)
    y         = SSD(x, Δ, A, B, C) + D x               ([1] Eq. 2 with A_t = exp(Δ_t A) I, see ``ops/ssd.py``)
    out       = out_proj(RMSNorm_g(y * silu(z)))       (gated RMSNorm, normalised per group of e / g channels)
and the residual stream u <- u + block(RMSNorm(u)), L times; logits = lm_head(RMSNorm(u)).

Recurrent state per layer i (the whole past, so that any split of a sequence gives the same logits):
    "layers.{i}.conv"  (b, e + 2 g n, k - 1)  the last k - 1 inputs xBC of the convolution, oldest first
    "layers.{i}.ssm"   (b, h, p, n)           the SSD state h_t
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import UserError
from ..ops.ssd import ssd_chunked, ssd_ref
from .base import State


class RMSNorm(nn.Module):
    """y = w * u / sqrt(mean(u^2) + eps) over the last dim. (..., d) -> (..., d).

    Computed in the input's dtype, at least float32 (HF casts to float32 always, which would break float64).
    """

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, u: Tensor) -> Tensor:
        v = u.to(torch.promote_types(u.dtype, torch.float32))
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * v.to(u.dtype)


class GatedRMSNorm(nn.Module):
    """RMSNorm_g(y * silu(z)): gate, then normalise each of g groups of e / g channels ([2] norm_before_gate=False).

    y, z (..., e) -> (..., e).
    """

    def __init__(self, e: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(e))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        dtype = torch.promote_types(y.dtype, torch.float32)
        v = y.to(dtype) * F.silu(z.to(dtype))
        v = v.unflatten(-1, (-1, self.group_size))
        v = (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return self.weight * v.to(y.dtype)


class Mamba2Mixer(nn.Module):
    """The Mamba-2 block ([1] Fig. 6): (b, l, d) and a layer state -> (b, l, d) and the new layer state."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, e, n, g, k = config.d_model, config.d_inner, config.d_state, config.n_groups, config.d_conv
        self.d_inner, self.d_state, self.n_groups, self.head_dim = e, n, g, config.head_dim
        self.n_heads = e // config.head_dim
        self.conv_dim = e + 2 * g * n
        self.chunk_size = config.chunk_size
        self.scan = config.scan
        self.in_proj = nn.Linear(d, e + self.conv_dim + self.n_heads, bias=False)
        # Only its weight (e + 2gn, 1, k) and bias are used (see forward); the state supplies the k - 1 past inputs.
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=k, groups=self.conv_dim, bias=True)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedRMSNorm(e, group_size=e // g, eps=config.norm_eps)
        self.out_proj = nn.Linear(e, d, bias=False)
        self.reset_ssm_parameters(config.dt_min, config.dt_max)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float, dt_max: float, dt_floor: float = 1e-4) -> None:
        """[2]'s initialisation: Δ log-uniform in [dt_min, dt_max] (stored as softplus^-1), A ~ U[1, 16], D = 1.

        HF initialises A = 1, ..., h instead; we follow the official code (loaded weights override either).
        """
        h = self.n_heads
        dt = torch.exp(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.empty(h).uniform_(1.0, 16.0)))
        self.D.fill_(1.0)

    def forward(self, u: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u (b, l, d), conv_state (b, e + 2gn, k - 1), ssm_state (b, h, p, n) -> out (b, l, d), both new states."""
        b, l, _ = u.shape
        e, g, n, h, p = self.d_inner, self.n_groups, self.d_state, self.n_heads, self.head_dim
        z, xBC, dt = self.in_proj(u).split([e, self.conv_dim, h], dim=-1)

        # Causal depthwise convolution continued from the stored k - 1 inputs ([1] Fig. 6, "Conv"), written as
        # k shifted multiply-adds: exact in any dtype (torch's float64 depthwise conv1d is a slow per-channel loop).
        past = torch.cat([conv_state.transpose(1, 2).to(xBC.dtype), xBC], dim=1)      # (b, k - 1 + l, e + 2gn)
        k = self.conv1d.kernel_size[0]
        weight = self.conv1d.weight[:, 0, :].to(xBC.dtype)                             # (e + 2gn, k)
        conv = self.conv1d.bias.to(xBC.dtype) + sum(past[:, j:j + l] * weight[:, j] for j in range(k))
        new_conv_state = past[:, past.shape[1] - (k - 1):].transpose(1, 2).contiguous()  # (b, e + 2gn, k - 1)
        xBC = F.silu(conv)                                                             # (b, l, e + 2gn)
        x, B, C = xBC.split([e, g * n, g * n], dim=-1)

        dt = F.softplus(dt + self.dt_bias)                                             # Δ (b, l, h)
        A = -torch.exp(self.A_log)                                                     # (h,)
        scan = ssd_chunked if self.scan == "fast" else ssd_ref
        kwargs = {"chunk_size": self.chunk_size} if self.scan == "fast" else {}
        y, new_ssm_state = scan(
            x.reshape(b, l, h, p), dt, A, B.reshape(b, l, g, n), C.reshape(b, l, g, n),
            D=self.D, initial_state=ssm_state, **kwargs,
        )
        y = self.norm(y.reshape(b, l, e), z)
        return self.out_proj(y.to(u.dtype)), new_conv_state, new_ssm_state.to(ssm_state.dtype)


class Mamba2Block(nn.Module):
    """Pre-norm residual block: u + mixer(RMSNorm(u)). (b, l, d) -> (b, l, d).

    The residual stays in the stream's dtype (HF/[2] keep it in float32 by default; for float32 models the two
    agree, and float64 stays float64 so that the exactness tests can be exact).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = Mamba2Mixer(config)

    def forward(self, u: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, conv_state, ssm_state = self.mixer(self.norm(u), conv_state, ssm_state)
        return u + out, conv_state, ssm_state


class Mamba2Backbone(nn.Module):
    """Embedding, L blocks, final norm (HF ``Mamba2Model``). Named ``backbone`` in ``Mamba2LM``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Mamba2Block(config) for _ in range(config.n_layers))
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps)


class Mamba2LM(nn.Module):
    """Mamba-2 language model with an explicit recurrent state (see ``base.py`` for the interface).

    Parameter names equal HF ``Mamba2ForCausalLM``'s: ``backbone.embeddings``, ``backbone.layers.N.norm``,
    ``backbone.layers.N.mixer.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}``, ``backbone.norm_f``,
    ``lm_head``. The matching HF config has num_heads = h, head_dim = p, n_groups = g, state_size = n,
    expand, hidden_size = d, conv_kernel = k, chunk_size, use_bias = False, use_conv_bias = True.

    ``tie_embeddings`` (default True, as in [2]'s LM; HF's Mamba2Config defaults to False): with tied weights
    ``lm_head.weight`` *is* ``backbone.embeddings.weight``; a checkpoint may then omit ``lm_head.weight`` (as
    ``save_pretrained`` does), and an untied checkpoint is refused: load it with ``tie_embeddings=False``.
    """

    def __init__(self, config: ModelConfig, tie_embeddings: bool = True) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise UserError("model.vocab_size is not set (it is normally taken from the tokenizer)")
        if config.d_inner % config.head_dim:
            raise UserError(
                f"model.head_dim must divide expand * d_model = {config.d_inner}; got {config.head_dim}"
            )
        if (config.d_inner // config.head_dim) % config.n_groups:
            raise UserError(
                f"model.n_groups must divide the number of heads {config.d_inner // config.head_dim}; "
                f"got {config.n_groups}"
            )
        self.config = config
        self.backbone = Mamba2Backbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight
            self.register_load_state_dict_pre_hook(_check_tied_keys)

    @torch.no_grad()
    def _init_weights(self) -> None:
        """[2]'s ``_init_weights``: embeddings N(0, 0.02); out_proj (kaiming uniform) scaled by 1/sqrt(n_layers)."""
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02)
        for layer in self.backbone.layers:
            layer.mixer.out_proj.weight /= math.sqrt(len(self.backbone.layers))

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zeros: {"layers.i.conv": (b, e + 2gn, k - 1), "layers.i.ssm": (b, h, p, n)} for every layer i."""
        weight = self.lm_head.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        state: State = {}
        for i, layer in enumerate(self.backbone.layers):
            m = layer.mixer
            state[f"layers.{i}.conv"] = torch.zeros(
                batch_size, m.conv_dim, m.conv1d.kernel_size[0] - 1, device=device, dtype=dtype
            )
            state[f"layers.{i}.ssm"] = torch.zeros(
                batch_size, m.n_heads, m.head_dim, m.d_state, device=device, dtype=dtype
            )
        return state

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens (b, l), state (or None = zeros) -> logits (b, l, v), the state after the last token."""
        if state is None:
            state = self.initial_state(tokens.shape[0])
        u = self.backbone.embeddings(tokens)                                           # (b, l, d)
        new_state: State = {}
        for i, layer in enumerate(self.backbone.layers):
            u, conv, ssm = layer(u, state[f"layers.{i}.conv"], state[f"layers.{i}.ssm"])
            new_state[f"layers.{i}.conv"], new_state[f"layers.{i}.ssm"] = conv, ssm
        logits = self.lm_head(self.backbone.norm_f(u))
        return logits, new_state


def _check_tied_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-time hook of a tied model: fill a missing ``lm_head.weight``; refuse two different matrices."""
    embedding, head = f"{prefix}backbone.embeddings.weight", f"{prefix}lm_head.weight"
    if embedding not in state_dict:
        return
    if head not in state_dict:
        state_dict[head] = state_dict[embedding]
    elif not torch.equal(state_dict[head], state_dict[embedding]):
        raise ValueError(
            "checkpoint has untied lm_head.weight and backbone.embeddings.weight; "
            "build Mamba2LM(config, tie_embeddings=False) to load it"
        )
