"""The one language-model shell every family runs in, and the block protocol a family implements.

    tokens (b, l) ─ embeddings ─> x (b, l, d) ─ n_layers × [x ← x + block(norm(x), state_i)]
                  ─ norm_f ─ lm_head ─> logits (b, l, V)

Glossary
    b  batch        l  sequence length        d  d_model        V  vocab_size        i  layer index

A family supplies only its block (the sequence mixer of one layer, see ``RecurrentBlock``) and the class of its
pre-norm (RMSNorm for Mamba-1/2, LayerNorm for S5, GRU, LSTM); ``RecurrentLM`` owns everything else: the
embedding, the residual stream, the final norm, the tied head, the loop over layers, the zero state and the
loading rules of the tied head. Parameter names are those of Hugging Face ``MambaForCausalLM`` /
``Mamba2ForCausalLM`` for every family:

    backbone.embeddings.weight            (V, d)
    backbone.layers.{i}.norm.*            the pre-norm of layer i
    backbone.layers.{i}.mixer.*           the family's block of layer i
    backbone.norm_f.*                     the final norm
    lm_head.weight                        (V, d), the same tensor as backbone.embeddings.weight (tied)

State (see ``base.py``): block i's parts ``{"conv": ..., "ssm": ...}`` are carried as ``"layers.{i}.conv"``,
``"layers.{i}.ssm"``; feeding a sequence in pieces with the carried state gives the logits and the state of
one pass.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import UserError, first_line
from ..ops import ssd_mamba_ssm
from .base import State
from .layers import RMSNorm

NormFactory = Callable[[int, float], nn.Module]
"""``norm(d_model, eps) -> module`` mapping (..., d) to (..., d): ``RMSNorm``, ``nn.LayerNorm``, ..."""

EMBEDDING, HEAD = "backbone.embeddings.weight", "lm_head.weight"


class RecurrentBlock(Protocol):
    """What a family implements: the sequence mixer of one layer, an ``nn.Module`` built as ``block(config, i)``.

    ``state_shapes()`` names the parts of the layer's recurrent state and their shapes without the batch
    dimension, e.g. ``{"conv": (e, k - 1), "ssm": (e, n)}``; every part is real floating point (store a
    complex state with ``torch.view_as_real``). ``forward`` maps the normed residual stream and the state
    before the first token to the block's output and the state after the last token, with the same keys
    and shapes; the returned tensors must be contiguous (safetensors saves them as they are). A block that
    has more than one implementation picks it at call time with ``resolve_scan(config.scan, x.device, kernels)``.
    """

    def __init__(self, config: ModelConfig, layer_idx: int) -> None: ...

    def state_shapes(self) -> dict[str, tuple[int, ...]]: ...

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x (b, l, d), state {part: (b, *shape)} -> y (b, l, d), new state {part: (b, *shape)}."""
        ...


def resolve_scan(
    scan: str, device: torch.device, kernels: Collection[str] = (), dtype: torch.dtype | None = None
) -> Literal["chunked", "reference", "triton", "mamba_ssm"]:
    """The implementation ``model.scan`` selects on ``device`` for a family whose GPU kernels are ``kernels``.

    ``chunked`` is the fast exact algorithm of each family (blocked scans, ``nn.GRU``), ``reference`` the plain
    sequential loop of the same equations, kept as its oracle. Two GPU kernels, each tested against ``reference``:
    ``triton``, our Triton Mamba-1 scan (``ops/selective_scan_triton.py``; Mamba-1 passes ``kernels=("triton",)``),
    and ``mamba_ssm``, the fused SSD kernel of the ``mamba_ssm`` package (``ops/ssd_mamba_ssm.py``; Mamba-2 passes
    ``kernels=("mamba_ssm",)``). A kernel the family does not have runs ``chunked`` (so one config can sweep
    families); a kernel it has that cannot run here is a ``UserError``: its package is missing, or the device is not
    CUDA. Triton kernels also run on the CPU when ``TRITON_INTERPRET=1`` was set before they were built (Triton's
    interpreter: slow, for tests).

    ``auto`` is the best available: ``chunked`` on the CPU (interpreter or not) and for float64 models (``dtype``:
    both kernels compute in float32). On CUDA, Mamba-1 gets ``triton`` when triton is installed and
    ``triton_self_check`` passes on ``device`` (run once per device and process; a failure warns once, naming the
    reason, and gives ``chunked``); Mamba-2 gets ``mamba_ssm`` when the package imports, else ``chunked``.
    """
    if scan not in ("auto", "chunked", "reference", "triton", "mamba_ssm"):
        raise UserError(f"model.scan must be auto, chunked, reference, triton or mamba_ssm; got {scan!r}")
    if scan in ("chunked", "reference"):
        return scan
    if scan == "auto":
        if device.type != "cuda" or dtype == torch.float64:
            return "chunked"
        if "triton" in kernels and _triton_passes_self_check(device):
            return "triton"
        if "mamba_ssm" in kernels and ssd_mamba_ssm.unavailable() is None:
            return "mamba_ssm"
        return "chunked"
    if scan not in kernels:
        return "chunked"
    if scan == "triton":
        try:
            from ..ops import selective_scan_triton
        except ImportError as err:
            raise UserError("model.scan triton needs the triton package: pip install longssm[gpu]") from err
        interpreted = selective_scan_triton.INTERPRETED
    else:
        reason = ssd_mamba_ssm.unavailable()
        if reason is not None:
            raise UserError(f"model.scan mamba_ssm needs the mamba_ssm package (pip install mamba-ssm): {reason}")
        interpreted = ssd_mamba_ssm.interpreted()
    if device.type != "cuda" and not interpreted:
        raise UserError(f"model.scan {scan} runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1); "
                        f"the model is on {device.type}: use model.scan chunked")
    return scan


SELF_CHECK_TOL = 1e-4
"""Largest relative error (norm) of the Triton scan in ``triton_self_check``; float32 is ~1e-6 there."""


def triton_self_check(device: torch.device) -> str | None:
    """Run the Triton Mamba-1 scan once on ``device`` against the chunked scan: None if they agree, else why not.

    The problem is tiny and shaped like the mixer's calls: b = 2, l = 37 (a partial second checkpoint chunk),
    e = 40 (a partial second block of channels), n = 16, with D, z, Δ bias, softplus and an initial state. The
    Triton scan runs in float32 and ``selective_scan_fast`` in float64 on the same device; y, the final state and
    the gradients of a fixed random linear function of both w.r.t. every input must agree to ``SELF_CHECK_TOL``
    (relative norm). Any exception (no such device, a kernel that does not compile or launch) is a failure too.
    The inputs come from a private generator, so the caller's random stream is untouched.
    """
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    try:
        from ..ops import selective_scan_triton
        from ..ops.selective_scan import selective_scan_fast

        b, l, e, n = 2, 37, 40, 16
        shapes = [(b, l, e), (b, l, e), (e, n), (b, l, n), (b, l, n), (e,), (b, l, e), (e,), (b, e, n)]
        gen = torch.Generator().manual_seed(0)
        inputs = [torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in shapes]
        inputs[2] = -inputs[2].abs() - 0.1  # A < 0
        weights = [torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in ((b, l, e), (b, e, n))]
        results = []
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for scan, dtype in ((selective_scan_fast, torch.float64),
                                (selective_scan_triton.selective_scan_triton, torch.float32)):
                leaves = {k: v.to(dtype).requires_grad_() for k, v in zip(names, inputs)}
                y, h = scan(**leaves, delta_softplus=True)
                loss = (y * weights[0].to(dtype)).sum() + (h * weights[1].to(dtype)).sum()
                grads = torch.autograd.grad(loss, list(leaves.values()))
                results.append([t.detach().double().cpu() for t in (y, h, *grads)])
    except Exception as err:
        return f"{type(err).__name__}: {first_line(err)}"
    for name, ref, got in zip(["y", "final state", *(f"grad {k}" for k in names)], *results):
        err = ((got - ref).norm() / ref.norm().clamp_min(1e-6)).item()
        if not err < SELF_CHECK_TOL:  # NaN fails too
            return f"{name} off by {err:.1e} (relative)"
    return None


@functools.cache
def _triton_passes_self_check(device: torch.device) -> bool:
    """``triton_self_check`` once per device: False without triton (silently) or after a failure (one warning)."""
    if importlib.util.find_spec("triton") is None:
        return False
    reason = triton_self_check(device)
    if reason is not None:
        warnings.warn(f"model.scan auto: the Triton scan failed its self-check on {device} ({reason}); "
                      "using chunked", RuntimeWarning, stacklevel=2)
    return reason is None


def register_length_scales(mixer: nn.Module, config: ModelConfig, layer_idx: int) -> None:
    """Give a Mamba mixer its calibrated multipliers of Δ and A (``model.delta_scale``, ``model.a_scale`` of layer
    ``layer_idx``; 1 when unset) as 0-dim buffers ``delta_scale`` and ``a_scale``.

    They are non-persistent: they live in the config, not in the weights file (so HF export and strict loading see
    the same tensors as before), and ``calibrate.py`` replaces them by tensors with gradients through
    ``torch.func.functional_call``. Multiplying by 1 is exact, so an uncalibrated model is unchanged bit for bit.
    """
    for name in ("delta_scale", "a_scale"):
        scales = getattr(config, name)
        mixer.register_buffer(name, torch.tensor(1.0 if scales is None else scales[layer_idx]), persistent=False)


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is bfloat16 or float16 (the dtype autocast gives a mixer's outputs); else ``t``."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class ResidualBlock(nn.Module):
    """Pre-norm residual layer: x ← x + mixer(norm(x), state). (b, l, d) -> (b, l, d).

    The residual stream stays in the stream's dtype (the official Mamba code keeps it in float32 with
    ``residual_in_fp32``; for float32 models the two agree, and float64 stays float64 for the exactness tests).
    """

    def __init__(self, norm: nn.Module, mixer: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.mixer = mixer

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x (b, l, d), the layer's state {part: (b, ...)} -> x (b, l, d), the new layer state."""
        y, new_state = self.mixer(self.norm(x), state)
        return x + y, new_state


class Backbone(nn.Module):
    """Embedding, the residual layers and the final norm (HF ``MambaModel``); named ``backbone`` in the LM."""

    def __init__(self, config: ModelConfig, block: type[nn.Module], norm: NormFactory) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(
            ResidualBlock(norm(config.d_model, config.norm_eps), block(config, i)) for i in range(config.n_layers)
        )
        self.norm_f = norm(config.d_model, config.norm_eps)


class RecurrentLM(nn.Module):
    """A recurrent language model: ``forward(tokens (b, l), state) -> (logits (b, l, V), state)``.

    Args:
        config: the model config; ``config.vocab_size`` must be set. Blocks keep a reference to it and read
            ``config.scan`` at call time, so switching ``model.config.scan`` switches every layer.
        block: the family's block class (see ``RecurrentBlock``), instantiated as ``block(config, i)``.
        norm: the pre-norm and final norm, ``norm(d_model, eps)``.
        tie_embeddings: ``lm_head.weight`` *is* ``backbone.embeddings.weight`` (default, as in the official
            Mamba LMs); False gives the head its own matrix (HF ``Mamba2Config``'s default).

    Weights: the embedding is N(0, 0.02) (the official Mamba init, used for every family); norms start at 1;
    blocks initialise their own parameters.
    """

    def __init__(
        self, config: ModelConfig, block: type[nn.Module], *, norm: NormFactory = RMSNorm, tie_embeddings: bool = True
    ) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise UserError("model.vocab_size is not set (it is normally taken from the tokenizer)")
        self.config = config
        self.tie_embeddings = tie_embeddings
        self.backbone = Backbone(config, block, norm)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02)
        if tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """Zeros: ``{"layers.{i}.{part}": (batch_size, *shape)}`` for every layer i and part of its block's
        ``state_shapes()``, on ``device`` in ``dtype`` (default: those of the parameters)."""
        weight = self.backbone.embeddings.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        return {
            f"layers.{i}.{part}": torch.zeros(batch_size, *shape, device=device, dtype=dtype)
            for i, layer in enumerate(self.backbone.layers)
            for part, shape in layer.mixer.state_shapes().items()
        }

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens (b, l) int64, state (see ``initial_state``; None = zeros) -> logits (b, l, V), the state after
        the last token. Under half-precision autocast the logits are half precision but every returned state
        tensor is at least float32 (``full_precision``): carried states are never rounded at window boundaries."""
        if state is None:
            state = self.initial_state(tokens.shape[0], device=tokens.device)
        x = self.backbone.embeddings(tokens)  # (b, l, d)
        new_state: State = {}
        for i, layer in enumerate(self.backbone.layers):
            prefix = f"layers.{i}."
            x, layer_state = layer(x, {part: state[prefix + part] for part in layer.mixer.state_shapes()})
            new_state.update({prefix + part: full_precision(value) for part, value in layer_state.items()})
        return self.lm_head(self.backbone.norm_f(x)), new_state

    def load_state_dict(
        self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False
    ) -> nn.modules.module._IncompatibleKeys:
        """``nn.Module.load_state_dict`` with the rules of the tied head (a tied model only; see ``tie_head``)."""
        if self.tie_embeddings:
            state_dict = tie_head(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def tie_head(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict for a tied model: a missing ``lm_head.weight`` (``save_pretrained`` omits it) is the embedding;
    an ``lm_head.weight`` that differs from the embedding is refused (``UserError``), never overwritten."""
    out = with_head(state_dict)
    if EMBEDDING in out and (out[HEAD].shape != out[EMBEDDING].shape or not torch.equal(out[HEAD], out[EMBEDDING])):
        raise UserError(
            f"untied lm_head.weight: it differs from {EMBEDDING}, but this model ties the two; "
            "build it with tie_embeddings=False to load separate matrices"
        )
    return out


def with_head(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state_dict`` where a missing ``lm_head.weight`` is the embedding matrix (tied)."""
    out = dict(state_dict)
    if HEAD not in out and EMBEDDING in out:
        out[HEAD] = out[EMBEDDING]
    return out
