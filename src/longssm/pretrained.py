"""Checkpoints of other programs, and longssm runs, read into our terms: a model config, weights, a tokenizer.

Directories read (``read_pretrained``, used by ``longssm import`` and ``train --init-from``):
    Hugging Face   ``config.json`` with ``model_type`` mamba (``MambaForCausalLM``) or mamba2 (``Mamba2ForCausalLM``)
    mamba_ssm      ``config.json`` with ``d_model``, ``n_layer``, ``vocab_size``, ``ssm_cfg`` (``"layer": "Mamba2"``
                   for Mamba-2), ``pad_vocab_size_multiple``: the vocabulary is padded up to that multiple
    longssm        a run or checkpoint directory
and the weights of the first two from ``model.safetensors`` or ``pytorch_model.bin``, or from the shards their
``.index.json`` lists. A ``.bin`` is read with ``torch.load(weights_only=True)`` only: tensors and nothing else.
Key names go through ``models/hf_adapters.py`` (``backbone.embedding`` -> ``backbone.embeddings``, a missing tied
head); this module translates configs and reads files.

A config key our blocks do not implement (biases in the projections, a LayerNorm, MLP or attention layers, a clamped
Δ, ...) is refused with a ``UserError`` naming it, never ignored: the imported model computes what the original does.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import read_config, read_tensors, read_weights, resolve_checkpoint
from .config import ModelConfig
from .errors import UserError, first_line
from .models import RecurrentLM, build_model
from .models.hf_adapters import hf_adapter

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""Weight files looked for, in this order; each may instead be sharded as listed in ``<name>.index.json``."""

# Foreign config key -> (our ModelConfig field, the default its writer assumes when the key is absent).
HF_FIELDS: dict[str, dict[str, tuple[str, Any]]] = {
    "mamba": {  # transformers.MambaConfig
        "vocab_size": ("vocab_size", 50280), "hidden_size": ("d_model", 768), "num_hidden_layers": ("n_layers", 32),
        "state_size": ("d_state", 16), "expand": ("expand", 2), "conv_kernel": ("d_conv", 4),
        "time_step_rank": ("dt_rank", "auto"), "layer_norm_epsilon": ("norm_eps", 1e-5),
        "time_step_min": ("dt_min", 0.001), "time_step_max": ("dt_max", 0.1),
        "tie_word_embeddings": ("tie_embeddings", True),
    },
    "mamba2": {  # transformers.Mamba2Config
        "vocab_size": ("vocab_size", 32768), "hidden_size": ("d_model", 4096), "num_hidden_layers": ("n_layers", 64),
        "state_size": ("d_state", 128), "expand": ("expand", 2), "conv_kernel": ("d_conv", 4),
        "head_dim": ("head_dim", 64), "n_groups": ("n_groups", 8), "chunk_size": ("chunk_size", 256),
        "layer_norm_epsilon": ("norm_eps", 1e-5), "time_step_min": ("dt_min", 0.001),
        "time_step_max": ("dt_max", 0.1), "tie_word_embeddings": ("tie_embeddings", False),
    },
}
HF_FIXED = {"use_bias": False, "use_conv_bias": True, "hidden_act": "silu"}
"""HF config values our blocks implement; any other value of these keys is refused."""
HF_ARCHITECTURES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}

MAMBA_SSM_FIELDS = {  # mamba_ssm.models.config_mamba.MambaConfig; vocab_size is padded separately
    "d_model": ("d_model", 2560), "n_layer": ("n_layers", 64), "norm_epsilon": ("norm_eps", 1e-5),
    "tie_embeddings": ("tie_embeddings", True),
}
MAMBA_SSM_FIXED = {"d_intermediate": 0, "attn_layer_idx": [], "rms_norm": True}
MAMBA_SSM_CFG: dict[str, tuple[dict[str, tuple[str, Any]], dict[str, Any]]] = {
    # ssm_cfg["layer"] -> (ssm_cfg fields, fixed ssm_cfg values), defaults of mamba_ssm's Mamba / Mamba2 modules
    "Mamba1": (
        {"d_state": ("d_state", 16), "d_conv": ("d_conv", 4), "expand": ("expand", 2), "dt_rank": ("dt_rank", "auto"),
         "dt_min": ("dt_min", 0.001), "dt_max": ("dt_max", 0.1)},
        {"conv_bias": True, "bias": False},
    ),
    "Mamba2": (
        {"d_state": ("d_state", 128), "d_conv": ("d_conv", 4), "expand": ("expand", 2), "headdim": ("head_dim", 64),
         "ngroups": ("n_groups", 1), "chunk_size": ("chunk_size", 256), "dt_min": ("dt_min", 0.001),
         "dt_max": ("dt_max", 0.1)},
        {"conv_bias": True, "bias": False, "rmsnorm": True, "norm_before_gate": False, "D_has_hdim": False,
         "d_ssm": None, "dt_limit": [0.0, math.inf]},
    ),
}
MAMBA_SSM_INIT_ONLY = {"layer", "dt_init", "dt_scale", "dt_init_floor", "A_init_range", "use_fast_path",
                       "use_mem_eff_path", "learnable_init_states"}
"""ssm_cfg keys that only change the initialisation or the kernel, not what a trained model computes."""


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint read into our terms."""

    model: ModelConfig
    weights: dict[str, Tensor]
    """State dict under our names, checked against ``model`` (every name, every shape)."""
    tokenizer: str | None
    """A ``data.tokenizer`` value: the directory's ``tokenizer.json``, a run's tokenizer, or None (none found)."""
    source: dict[str, str]
    """Where it came from: ``{"path": ..., "format": "hf" | "mamba_ssm" | "longssm"}``."""


def read_pretrained(path: str | Path) -> Pretrained:
    """A HF or ``mamba_ssm`` directory (it has a ``config.json``), or a longssm run / checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory (expected a checkpoint directory with config.json and weights)")
    if not (path / "config.json").is_file():
        try:
            ckpt = resolve_checkpoint(path)
        except UserError:
            raise UserError(f"{path} has no config.json (and is not a longssm run or checkpoint)") from None
        run_cfg = read_config(ckpt)
        return Pretrained(run_cfg.model, read_weights(ckpt / "model.safetensors"), run_cfg.data.tokenizer,
                          {"path": str(ckpt.resolve()), "format": "longssm"})
    model, fmt = read_foreign_config(path / "config.json")
    weights = hf_adapter(model.family).from_hf(read_weight_files(path))
    with torch.device("meta"):  # names and shapes only, no memory
        check_weights(build_model(model), weights, path)
    tokenizer = path / "tokenizer.json"
    return Pretrained(model, weights, str(tokenizer) if tokenizer.is_file() else None,
                      {"path": str(path.resolve()), "format": fmt})


def read_foreign_config(path: Path) -> tuple[ModelConfig, str]:
    """``config.json`` of a HF or ``mamba_ssm`` checkpoint -> (our model config, "hf" or "mamba_ssm")."""
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a JSON object")
    if "model_type" in raw:
        return _hf_model_config(raw, path), "hf"
    if "d_model" in raw and "n_layer" in raw:
        return _mamba_ssm_model_config(raw, path), "mamba_ssm"
    raise UserError(f"{path} is neither a Hugging Face config (model_type) nor a mamba_ssm config (d_model, n_layer)")


def _hf_model_config(raw: dict[str, Any], path: Path) -> ModelConfig:
    family = raw["model_type"]
    if family not in HF_FIELDS:
        raise UserError(f"{path}: model_type {family!r} is not supported (import reads "
                        + ", ".join(f"{t} ({a})" for t, a in HF_ARCHITECTURES.items()) + ")")
    fields = _translate(raw, HF_FIELDS[family], HF_FIXED, path)
    inner = fields["expand"] * fields["d_model"]
    if family == "mamba" and raw.get("intermediate_size", inner) != inner:
        raise UserError(f"{path}: intermediate_size {raw['intermediate_size']} != expand * hidden_size = {inner}")
    if family == "mamba2":
        if raw.get("num_heads", inner // fields["head_dim"]) * fields["head_dim"] != inner:
            raise UserError(f"{path}: num_heads * head_dim = {raw['num_heads'] * fields['head_dim']} != "
                            f"expand * hidden_size = {inner}")
        # transformers 5 writes a non-finite float as {"__float__": "Infinity"} (JSON has no infinity)
        limit = [float(v["__float__"]) if isinstance(v, dict) else v for v in raw.get("time_step_limit", [0, math.inf])]
        if limit != [0.0, math.inf]:
            raise UserError(f"{path}: time_step_limit {raw['time_step_limit']} is not supported (Δ is not clamped)")
    return ModelConfig(family=family, **fields)


def _mamba_ssm_model_config(raw: dict[str, Any], path: Path) -> ModelConfig:
    ssm_cfg = raw.get("ssm_cfg") or {}
    layer = ssm_cfg.get("layer", "Mamba1")
    if layer not in MAMBA_SSM_CFG:
        raise UserError(f"{path}: ssm_cfg layer {layer!r} is not supported (have: {', '.join(MAMBA_SSM_CFG)})")
    ssm_fields, ssm_fixed = MAMBA_SSM_CFG[layer]
    unknown = sorted(set(ssm_cfg) - set(ssm_fields) - set(ssm_fixed) - MAMBA_SSM_INIT_ONLY)
    if unknown:
        raise UserError(f"{path}: ssm_cfg key(s) {', '.join(unknown)} are not supported")
    if "vocab_size" not in raw:
        raise UserError(f"{path}: no vocab_size")
    multiple = raw.get("pad_vocab_size_multiple", 8)
    return ModelConfig(
        family="mamba2" if layer == "Mamba2" else "mamba",
        vocab_size=math.ceil(raw["vocab_size"] / multiple) * multiple,
        **_translate(raw, MAMBA_SSM_FIELDS, MAMBA_SSM_FIXED, path), **_translate(ssm_cfg, ssm_fields, ssm_fixed, path),
    )


def _translate(raw: Mapping[str, Any], fields: Mapping[str, tuple[str, Any]], fixed: Mapping[str, Any],
               path: Path) -> dict[str, Any]:
    """Our ``ModelConfig`` keywords from a foreign config section: ``fields`` maps its key to (our field, default);
    a key of ``fixed`` with another value than ours is refused. A rank "auto" is our None (ceil(d_model / 16))."""
    for key, ours in fixed.items():
        if key in raw and raw[key] != ours and not (isinstance(ours, list) and list(raw[key]) == ours):
            raise UserError(f"{path}: {key}={raw[key]!r} is not supported (longssm implements {key}={ours!r})")
    out = {field: raw.get(key, default) for key, (field, default) in fields.items()}
    if out.get("dt_rank") == "auto":
        out["dt_rank"] = None
    return out


def read_weight_files(path: Path) -> dict[str, Tensor]:
    """Every tensor of the first of ``WEIGHT_FILES`` in ``path``, whole or sharded (``<name>.index.json``)."""
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return _read_tensor_file(path / name)
        index = path / f"{name}.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{index} has no weight_map") from None
            weights: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if not (path / shard).is_file():
                    raise UserError(f"{index} lists shard {shard}, which is missing")
                weights.update(_read_tensor_file(path / shard))
            return weights
    expected = " or ".join(f"{name} (or {name}.index.json)" for name in WEIGHT_FILES)
    raise UserError(f"{path} holds no weights: expected {expected}")


def _read_tensor_file(path: Path) -> dict[str, Tensor]:
    """A safetensors file, or a ``.bin`` that holds a dict of plain tensors (``torch.load(weights_only=True)``)."""
    if path.suffix == ".safetensors":
        return read_tensors(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise UserError(f"{path} holds something other than plain tensors ({first_line(e)})") from None
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a dict of tensor names to plain tensors")
    return dict(loaded)


def check_weights(model: RecurrentLM, weights: Mapping[str, Tensor], source: Path) -> None:
    """``UserError`` naming the missing and unexpected tensors and wrong shapes of ``weights`` for ``model``."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    problems = []
    if missing := sorted(expected.keys() - weights.keys()):
        problems.append(f"missing {_some(missing)}")
    if unexpected := sorted(weights.keys() - expected.keys()):
        problems.append(f"unexpected {_some(unexpected)}")
    wrong = sorted(f"{k} {tuple(weights[k].shape)} (config says {expected[k]})"
                   for k in expected.keys() & weights.keys() if tuple(weights[k].shape) != expected[k])
    if wrong:
        problems.append(f"wrong shape {_some(wrong)}")
    if problems:
        raise UserError(f"weights in {source} do not fit its config: " + "; ".join(problems))


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" (+{len(names) - shown} more)" if len(names) > shown else "")
