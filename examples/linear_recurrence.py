"""A custom model family in one small module: a per-channel linear recurrence, trained by longssm's engine.

    h_t = a ⊙ h_{t-1} + (1 − a) ⊙ W x_t        a = sigmoid(decay_logit) ∈ (0, 1)^n, learned per channel    (1)
    y_t = C h_t                                                                                            (2)

Glossary: b batch, l sequence length, d d_model (the residual width), n = model.d_state (state channels).

``LinearRecurrence`` follows the block protocol of ``longssm.models.lm.RecurrentBlock``; longssm wraps it in the
same language-model shell as its own families (embedding -> n_layers × [x + block(norm(x))] -> norm -> tied
head) and carries its state ``"layers.{i}.h"`` (b, n) between training windows like Mamba's. ``main`` registers
it, trains it, evaluates it and reloads its checkpoint; docs/custom_family.md walks through this file, and
tests/test_custom_family.py runs it.

Run it from the repository root (a few minutes on one CPU core with the defaults):

    python examples/linear_recurrence.py runs/linear_recurrence

or, without Python code, name the block by its import path:

    PYTHONPATH=examples longssm train --model.family linear_recurrence:LinearRecurrence --model.d_state 64
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor, nn

import longssm
from longssm.checkpoint import load_model
from longssm.config import EvalConfig, ModelConfig, load_config
from longssm.evaluate.run import evaluate_run
from longssm.train import train


class LinearRecurrence(nn.Module):
    """Eq. (1)-(2): x (b, l, d) and the state h (b, n) before the first token -> y (b, l, d), h after the last."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        d, n = config.d_model, config.d_state
        self.W = nn.Linear(d, n, bias=False)
        self.C = nn.Linear(n, d, bias=False)
        # a from sigmoid(-2) = 0.12 to sigmoid(4) = 0.98: memories of about 1 to 50 tokens
        self.decay_logit = nn.Parameter(torch.linspace(-2.0, 4.0, n))

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """One state part, "h", of n channels (the batch dimension is left out)."""
        return {"h": (self.decay_logit.shape[0],)}

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x (b, l, d), state {"h": (b, n)} -> y (b, l, d), {"h": (b, n)}."""
        a = torch.sigmoid(self.decay_logit)  # (n,)
        inputs = (1 - a) * self.W(x)  # (1 − a) ⊙ W x_t for every t, (b, l, n)
        h = state["h"].to(x.dtype)
        hs = []
        for input_t in inputs.unbind(1):  # Eq. (1), one step per token
            h = a * h + input_t
            hs.append(h)
        return self.C(torch.stack(hs, dim=1)), {"h": h}  # Eq. (2)


def main(run_dir: str = "runs/linear_recurrence", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register the family, train it on the shipped WikiText slice, evaluate it, reload its checkpoint.

    ``overrides``: a nested config dict merged over this example's settings (the test shrinks everything).
    Returns the training summary, the evaluation result and the reloaded model.
    """
    longssm.register_family("linear_recurrence", LinearRecurrence)
    settings: dict[str, Any] = {
        "name": "linear_recurrence",
        "model": {"family": "linear_recurrence", "d_model": 64, "n_layers": 2, "d_state": 64},
        "train": {"seq_len": 64, "batch_size": 16, "steps": 300, "lr": 3e-3},
    }
    for section, values in (overrides or {}).items():
        settings[section] = {**settings.get(section, {}), **values} if isinstance(values, dict) else values
    cfg = load_config(overrides=settings)

    summary = train(cfg, run_dir)  # the normal engine: state schemes, checkpoints, resume all apply
    result = evaluate_run(run_dir, EvalConfig(lengths=[64, 256, 1024]), progress=False)  # perplexity vs. length
    model, _, _ = load_model(run_dir)  # rebuilds the model from the run's config.yaml: needs the registration
    return {"summary": summary, "eval": result, "model": model}


if __name__ == "__main__":
    out = main(*sys.argv[1:2])
    print("final training loss", out["summary"]["final_loss"])
    print("perplexity by evaluation length", out["eval"]["ppl_vs_length"])
