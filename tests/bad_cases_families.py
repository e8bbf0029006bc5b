"""Bad-input cases of issues 22 and 23 (the delta-rule and GLA families; sliding-window attention, hybrids,
Mamba-3), run by ``tests/test_bad_inputs.py`` like its own ``CASES``: (case id, argv as a function of ``Inputs``,
text the one error line must contain, exit code).
``make_inputs(root)``: the checkpoint directories of model types that longssm does not import."""

from __future__ import annotations

import json
from pathlib import Path


def family(i, name: str, *extra: str) -> list[str]:
    return i.train("--model.family", name, *extra)


CASES: list[tuple[str, object, str, int]] = [
    ("gated_deltanet: head_dim does not divide d_model",
     lambda i: family(i, "gated_deltanet", "--model.head_dim", "5"),
     "model.head_dim must divide model.d_model = 16 (or set model.n_heads); got 5", 2),
    ("gla: head_dim does not divide d_model", lambda i: family(i, "gla", "--model.head_dim", "3"),
     "model.head_dim must divide model.d_model = 16", 2),
    ("deltanet: model.scan fla on the CPU",
     lambda i: family(i, "deltanet", "--model.head_dim", "8", "--model.scan", "fla"),
     "model.scan fla runs on CUDA devices", 2),
    ("gla: model.scan fla on the CPU", lambda i: family(i, "gla", "--model.head_dim", "8", "--model.scan", "fla"),
     "model.scan fla runs on CUDA devices", 2),
    ("mlp_expand < 0", lambda i: family(i, "gla", "--model.mlp_expand", "-1"),
     "--model.mlp_expand must be in [0, 64]; got -1.0", 2),
    ("n_heads 0", lambda i: family(i, "deltanet", "--model.n_heads", "0"), "--model.n_heads must be >= 1; got 0", 2),
    ("swa: window 0", lambda i: family(i, "swa", "--model.head_dim", "8", "--model.window", "0"),
     "--model.window must be in [1, 16384]; got 0", 2),
    ("swa: window beyond its bound", lambda i: family(i, "swa", "--model.head_dim", "8", "--model.window", "20000"),
     "--model.window must be in [1, 16384]; got 20000", 2),
    ("a pattern naming an unknown family", lambda i: i.train("--model.layers", "mamba,nope"),
     "model.family must be one of", 2),
    ("swa: heads that do not divide d_model", lambda i: family(i, "swa", "--model.head_dim", "5"),
     "model.head_dim must divide model.d_model = 16", 2),
    ("swa: a noise scheme on a cache", lambda i: i.train("--model.layers", "mamba,swa", "--model.head_dim", "8",
                                                         "--state.scheme", "random_noise"),
     "state.scheme random_noise adds noise to every carried state, and a swa layer's state is a cache", 2),
    ("mamba3: head_dim does not divide expand * d_model", lambda i: family(i, "mamba3", "--model.head_dim", "5"),
     "model.head_dim must divide expand * d_model = 32; got 5", 2),
    ("mamba3: rope_fraction neither 0.5 nor 1", lambda i: family(i, "mamba3", "--model.rope_fraction", "0.3"),
     "model.rope_fraction must be 0.5 or 1; got 0.3", 2),
    ("mamba3: too small a state to rotate", lambda i: family(i, "mamba3", "--model.head_dim", "8",
                                                             "--model.d_state", "2"),
     "mamba3 needs model.d_state * model.rope_fraction >= 2 (one rotated pair); got d_state=2", 2),
    ("mamba3: model.scan mamba_ssm on the CPU", lambda i: family(i, "mamba3", "--model.head_dim", "8",
                                                                 "--model.scan", "mamba_ssm"),
     "model.scan mamba_ssm runs on CUDA devices", 2),
    ("import: an fla directory of an unsupported model type",
     lambda i: ["import", i.path("fla_rwkv7"), "--out", i.path("imported_rwkv7"), "--tokenizer", "byte"],
     "model_type 'rwkv7' is not supported", 2),
]

OUTPUTS: tuple[str, ...] = ("imported_rwkv7",)
"""Names under ``Inputs.root`` that the cases would write: each must still be absent after every case."""


def make_inputs(root: Path) -> None:
    """An fla-style Hugging Face directory of a model type we do not implement (RWKV-7): config.json only."""
    (root / "fla_rwkv7").mkdir()
    (root / "fla_rwkv7" / "config.json").write_text(json.dumps(
        {"model_type": "rwkv7", "architectures": ["RWKV7ForCausalLM"], "hidden_size": 32, "num_hidden_layers": 2,
         "vocab_size": 256}))
