"""The one stateful interface every model family implements, and family-agnostic state helpers.

Every language model in ``longssm.models`` is a ``torch.nn.Module`` with

    forward(tokens: LongTensor[B, L], state: State | None = None) -> (logits: Tensor[B, L, V], state: State)
    initial_state(batch_size: int, device=None, dtype=None) -> State      # all zeros

``state=None`` means "start from zeros". The returned state is the recurrent state after the last token:
feeding ``tokens[:, :k]`` then ``tokens[:, k:]`` with the carried state equals feeding ``tokens`` at once.

A ``State`` is a flat ``dict[str, Tensor]``:
- keys name the layer and the part, e.g. ``"layers.0.conv"``, ``"layers.0.ssm"``, so the state of *every*
  layer is carried and can be saved to safetensors as is;
- every tensor is real floating point (complex states are stored with ``torch.view_as_real``) and has the
  batch as dimension 0.
Because of this, state schemes (zero, detach, noise, permute across the batch, save) never need to know
the family: they are ``{k: f(v) for k, v in state.items()}``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

State = dict[str, Tensor]


def map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply ``fn`` to every tensor of ``state``; returns a new dict."""
    return {k: fn(v) for k, v in state.items()}


def detach_state(state: State) -> State:
    """Cut the graph at a window boundary (truncated BPTT)."""
    return map_state(Tensor.detach, state)


def select_rows(state: State, rows: Tensor) -> State:
    """Rows ``rows`` (index or bool mask over the batch) of every tensor."""
    return map_state(lambda v: v[rows], state)


def reset_rows(state: State, rows: Tensor) -> State:
    """Zero the state of the batch rows where the bool mask ``rows[B]`` is True; others are kept."""
    def reset(v: Tensor) -> Tensor:
        keep = (~rows).to(v.dtype).view(-1, *([1] * (v.dim() - 1)))
        return v * keep
    return map_state(reset, state)


def concat_states(states: list[State]) -> State:
    """Concatenate several states along the batch dimension."""
    return {k: torch.cat([s[k] for s in states], dim=0) for k in states[0]}


def state_norms(state: State) -> dict[str, float]:
    """Per state tensor, the largest absolute value over the batch: ``{"layers.0.ssm": max|h|, ...}``."""
    return {k: float(v.detach().abs().max()) if v.numel() else 0.0 for k, v in state.items()}


def save_state(state: State, path) -> None:
    """Write a state to safetensors (detached, contiguous, on the CPU)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def load_state(path, device: torch.device | str = "cpu") -> State:
    """Read a state written by ``save_state``.

    The tensors are copied into fresh allocations: memory-mapped safetensors data is not 64-byte aligned, and
    some CPU kernels (e.g. ``nn.GRU``) then round differently, which would break bit-exact continuation.
    """
    from safetensors.torch import load_file

    return {k: v.to(device).clone() for k, v in load_file(str(path)).items()}
