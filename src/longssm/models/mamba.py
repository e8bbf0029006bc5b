"""Mamba-1 language model with an explicit, exactly chunkable recurrent state.

References
    [1] Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023.
        Sec. 3.2 + Alg. 2 (selective SSM), Sec. 3.4 + Fig. 3 (the Mamba block), Sec. 3.6 (Δ/A/D init).
    [2] Hugging Face ``transformers`` ``MambaForCausalLM``: parameter names are identical, so its weights load
        with ``strict=True`` (``lm_head.weight`` may be absent, as in ``save_pretrained`` files: it is tied).
    [3] johnma2006/mamba-minimal: the layout this file follows.

Glossary
    b  batch       l  sequence length       d  d_model          e  d_inner = expand · d
    n  d_state     k  d_conv                r  dt_rank          V  vocab_size
    Δ  time step (b, l, e)    A  (e, n), A = -exp(A_log)    B, C  (b, l, n)    D  (e,)

Block (Fig. 3, right):   x ← x + out_proj( SSM( silu(conv1d(in_proj_x(norm(x)))) ) · silu(in_proj_z(norm(x))) )

State (one entry per layer i, see ``longssm.models.base``):
    "layers.{i}.conv"  (b, e, k-1)  the last k-1 inputs of the causal depthwise convolution
    "layers.{i}.ssm"   (b, e, n)    h of the selective SSM (Eq. 2a)
Feeding a sequence in pieces with the carried state gives exactly the logits and state of one pass.

Where we differ from the official code: the residual stream stays in the parameters' dtype (the official
``residual_in_fp32`` only matters for half precision, which we do not use on CPU); RMSNorm computes in at
least float32 but keeps float64 when the model is float64, so the chunked recurrence can be tested to 1e-10.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..ops.selective_scan import selective_scan
from .base import State


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · weight, over the last dimension (computed in ≥ float32)."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        """x: (b, l, d) -> (b, l, d)."""
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class MambaMixer(nn.Module):
    """The Mamba block's sequence mixer [1, Fig. 3]: gated, convolved selective SSM."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, e, n, k = config.d_model, config.d_inner, config.d_state, config.d_conv
        self.d_inner, self.d_state, self.d_conv = e, n, k
        self.dt_rank = config.dt_rank or math.ceil(d / 16)
        self.config = config  # read at call time: config.scan may be switched after construction

        self.in_proj = nn.Linear(d, 2 * e, bias=False)  # -> x, z
        self.conv1d = nn.Conv1d(e, e, kernel_size=k, groups=e, padding=k - 1, bias=True)
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * n, bias=False)  # -> Δ (rank r), B, C
        self.dt_proj = nn.Linear(self.dt_rank, e, bias=True)  # Δ = softplus(bias + W·s_Δ(x)), Alg. 2 / Sec. 3.6
        self.A_log = nn.Parameter(torch.empty(e, n))
        self.D = nn.Parameter(torch.empty(e))
        self.out_proj = nn.Linear(e, d, bias=False)
        self.reset_ssm_parameters(config.dt_min, config.dt_max)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float, dt_max: float, dt_floor: float = 1e-4) -> None:
        """S4D-real A = -(1..n), D = 1, and Δ's bias = softplus⁻¹(Δ₀), Δ₀ log-uniform in [dt_min, dt_max] [1, 3.6]."""
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, hidden: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """hidden (b, l, d), conv_state (b, e, k-1), ssm_state (b, e, n) -> (out (b, l, d), conv_state, ssm_state)."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, l, e) each

        # Causal depthwise convolution over [previous k-1 inputs, x], written as k shifted products
        # (no padding needed; cheaper on CPU than conv1d's backward): x'_t = bias + Σ_j w_j ⊙ xc_{t+j}.
        # The last k-1 rows of xc are the next call's context; this works for any l, also l < k-1.
        xc = torch.cat([conv_state.transpose(1, 2), x], dim=1)  # (b, k-1+l, e)
        l, w = x.shape[1], self.conv1d.weight[:, 0, :]  # w: (e, k)
        x = torch.addcmul(self.conv1d.bias, xc[:, :l], w[:, 0])
        for j in range(1, self.d_conv):
            x = torch.addcmul(x, xc[:, j:j + l], w[:, j])
        x = F.silu(x)  # (b, l, e)
        new_conv_state = xc[:, xc.shape[1] - (self.d_conv - 1):].transpose(1, 2).contiguous()  # (b, e, k-1)

        # Selection (Alg. 2): Δ, B, C depend on the input.
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = dt @ self.dt_proj.weight.t()  # (b, l, e); bias and softplus are applied in the scan
        A = -torch.exp(self.A_log)  # (e, n)
        y, new_ssm_state = selective_scan(
            x, delta, A, B, C, D=self.D, z=z,
            delta_bias=self.dt_proj.bias, delta_softplus=True, initial_state=ssm_state, impl=self.config.scan,
        )  # y = (SSM(x) + D x) · silu(z), (b, l, e)
        return self.out_proj(y), new_conv_state, new_ssm_state


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = MambaMixer(config)

    def forward(self, x: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, conv_state, ssm_state = self.mixer(self.norm(x), conv_state, ssm_state)
        return x + out, conv_state, ssm_state


class MambaBackbone(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(MambaBlock(config) for _ in range(config.n_layers))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)


class MambaLM(nn.Module):
    """Mamba-1 language model: ``forward(tokens (b, l), state) -> (logits (b, l, V), state)``.

    Parameter names are those of HF ``MambaForCausalLM``; ``lm_head.weight`` is the embedding matrix.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        self.lm_head.weight = self.backbone.embeddings.weight  # tied
        self.register_load_state_dict_pre_hook(_fill_tied_and_renamed_keys)

    @torch.no_grad()
    def _init_weights(self) -> None:
        """As the official ``mamba_ssm``: embeddings N(0, 0.02); out_proj scaled by 1/sqrt(n_layers)."""
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02)
        for layer in self.backbone.layers:
            layer.mixer.out_proj.weight.div_(math.sqrt(self.config.n_layers))

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zeros: {"layers.i.conv": (b, e, k-1), "layers.i.ssm": (b, e, n)}."""
        ref = self.backbone.embeddings.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        c = self.config
        state: State = {}
        for i in range(c.n_layers):
            state[f"layers.{i}.conv"] = torch.zeros(batch_size, c.d_inner, c.d_conv - 1, device=device, dtype=dtype)
            state[f"layers.{i}.ssm"] = torch.zeros(batch_size, c.d_inner, c.d_state, device=device, dtype=dtype)
        return state

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens (b, l) int64, state (see ``initial_state``) or None -> logits (b, l, V), state after token l."""
        if state is None:
            state = self.initial_state(tokens.shape[0])
        x = self.backbone.embeddings(tokens)  # (b, l, d)
        new_state: State = {}
        for i, layer in enumerate(self.backbone.layers):
            x, new_state[f"layers.{i}.conv"], new_state[f"layers.{i}.ssm"] = layer(
                x, state[f"layers.{i}.conv"], state[f"layers.{i}.ssm"]
            )
        logits = self.lm_head(self.backbone.norm_f(x))
        return logits, new_state


def _fill_tied_and_renamed_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Accept ``save_pretrained`` files (no ``lm_head.weight``) and ``mamba_ssm`` files (``embedding``, singular)."""
    old, new = prefix + "backbone.embedding.weight", prefix + "backbone.embeddings.weight"
    if old in state_dict and new not in state_dict:
        state_dict[new] = state_dict.pop(old)
    if prefix + "lm_head.weight" not in state_dict and new in state_dict:
        state_dict[prefix + "lm_head.weight"] = state_dict[new]
