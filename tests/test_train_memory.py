"""benchmarks/train_memory.py: its --smoke run (the CI smoke test) writes valid JSON of the documented shape, and
its figures show what the benchmark claims: the training step's memory grows with the window T (the activations
kept for the backward pass), the memory before the step does not."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import train_memory  # noqa: E402

SHORT, LONG, B, VOCAB = 16, 4096, 4, 256


@pytest.mark.slow
def test_smoke_run_writes_one_peak_per_length_and_the_step_grows_with_T(tmp_path):
    out = tmp_path / "memory.json"
    with contextlib.redirect_stdout(io.StringIO()) as stdout, contextlib.redirect_stderr(io.StringIO()):
        train_memory.main(["--smoke", "--family", "s5", "--lengths", f"{SHORT},{LONG}", "--batch-size", str(B),
                           "--vocab", str(VOCAB), "--json", str(out)])
    result = json.loads(out.read_text())
    assert json.loads(stdout.getvalue()) == result
    assert result["device"] == "cpu" and result["config"]["quick"] is True
    assert result["model"]["family"] == "s5" and result["model"]["batch_size"] == B
    peak, setup, step = result["train_peak_mb"], result["setup_mb"], result["step_mb"]
    assert set(peak) == set(setup) == set(step) == {str(SHORT), str(LONG)}
    for T in peak:
        assert isinstance(peak[T], float) and math.isfinite(peak[T]), (T, peak[T])
        assert step[T] == peak[T] - setup[T] and step[T] >= 0, (T, result)

    # At the peak of a step (the backward pass of the cross-entropy) the logits (B, T, V) float32 and their
    # gradient are both held: the longer window's step holds at least 2·B·(T_long − T_short)·V·4 bytes more.
    logits_mb = B * (LONG - SHORT) * VOCAB * 4 / 2**20  # 15.9 MB; measured: the step grows by about 90 MB
    assert step[str(LONG)] - step[str(SHORT)] >= 2 * logits_mb, (step, logits_mb)
    # the model and optimizer built before the step do not depend on T (the batch of tokens: 130 kB)
    assert abs(setup[str(LONG)] - setup[str(SHORT)]) < logits_mb, (setup, logits_mb)

    ratios = result["ratios"]["train_memory"]
    assert ratios[f"step_mb_T{LONG}/T{SHORT}"] == step[str(LONG)] / step[str(SHORT)]
    assert ratios[f"peak_mb_T{LONG}/T{SHORT}"] == peak[str(LONG)] / peak[str(SHORT)]
    assert result["model"]["parameters"] == s5_parameters(result["model"])


def s5_parameters(model: dict) -> int:
    """The parameters of the benchmark's S5 model, counted by building it here (tied weights counted once)."""
    from longssm.config import ModelConfig
    from longssm.models import build_model

    sizes = {k: model[k] for k in ("d_model", "n_layers", "d_state", "expand", "d_conv")}
    built = build_model(ModelConfig(family="s5", vocab_size=model["vocab_size"], **sizes))
    return sum(p.numel() for p in {id(p): p for p in built.parameters()}.values())
