"""Checkpoints of other programs, and longssm runs, read into our terms: a model config, weights, a tokenizer.

Directories read (``read_pretrained``, used by ``longssm import`` and ``train --init-from``):
    Hugging Face   ``config.json`` with ``model_type`` mamba (``MambaForCausalLM``) or mamba2 (``Mamba2ForCausalLM``)
    fla            ``config.json`` with ``model_type`` gated_deltanet (``GatedDeltaNetForCausalLM``), delta_net
                   (``DeltaNetForCausalLM``) or gla (``GLAForCausalLM``), as flash-linear-attention's
                   ``save_pretrained`` writes them: our families gated_deltanet, deltanet, gla, always with the MLP
                   sublayer (``model.mlp_expand`` = intermediate_size / hidden_size)
    mamba_ssm      ``config.json`` with ``d_model``, ``n_layer``, ``vocab_size``, ``ssm_cfg`` (``"layer": "Mamba2"``
                   for Mamba-2, ``"Mamba3"`` for Mamba-3 SISO), ``pad_vocab_size_multiple``: the vocabulary is
                   padded up to that multiple
    longssm        a run or checkpoint directory
and the weights of the first three from ``model.safetensors`` or ``pytorch_model.bin``, or from the shards their
``.index.json`` lists. A ``.bin`` is read with ``torch.load(weights_only=True)`` only: tensors and nothing else.
Key names go through ``models/hf_adapters.py`` (``backbone.embedding`` -> ``backbone.embeddings``, fla's
``model.layers.{i}.attn.*`` -> ``backbone.layers.{i}.mixer.*``, a missing tied head); this module translates configs
and reads files.

A config key our blocks do not implement (biases in the projections, a LayerNorm, MLP or attention layers, a clamped
Δ, fla's negative eigenvalues, grouped value / key heads, hybrid attention layers, ...) is refused with a
``UserError`` naming it, never ignored: the imported model computes what the original does.
"""

from __future__ import annotations

import dataclasses
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

FLA_TYPES = {  # fla's model_type -> (our family, fla's class)
    "gated_deltanet": ("gated_deltanet", "GatedDeltaNetForCausalLM"),
    "delta_net": ("deltanet", "DeltaNetForCausalLM"),
    "gla": ("gla", "GLAForCausalLM"),
}
_FLA_COMMON = {"vocab_size": ("vocab_size", 32000), "hidden_size": ("d_model", 2048), "conv_size": ("d_conv", 4),
               "norm_eps": ("norm_eps", 1e-6), "tie_word_embeddings": ("tie_embeddings", False)}
# fla's config key -> (our ModelConfig field, the default of fla's config class); the head sizes and the MLP width
# are derived (``_fla_head_sizes``, ``fla_mlp_width``)
FLA_FIELDS: dict[str, dict[str, tuple[str, Any]]] = {
    "gated_deltanet": {**_FLA_COMMON, "num_hidden_layers": ("n_layers", 21), "use_short_conv": ("short_conv", True),
                       "use_gate": ("output_gate", True)},
    "delta_net": {**_FLA_COMMON, "num_hidden_layers": ("n_layers", 24), "use_short_conv": ("short_conv", True),
                  "use_gate": ("output_gate", False)},
    "gla": {**_FLA_COMMON, "num_hidden_layers": ("n_layers", 24), "use_short_conv": ("short_conv", False),
            "use_output_gate": ("output_gate", True)},
}
FLA_HEAD_DEFAULTS = {  # defaults of fla's config classes for the keys the head sizes come from
    "gated_deltanet": {"head_dim": 256, "num_heads": 6, "expand_v": 2.0},
    "delta_net": {"num_heads": 16, "expand_k": 1.0, "expand_v": 1.0},
    "gla": {"num_heads": 4, "expand_k": 0.5, "expand_v": 1.0},
}
_FLA_FIXED_COMMON = {"hidden_act": "swish", "attn": None, "attnres_block_size": None}
FLA_FIXED: dict[str, dict[str, Any]] = {
    # fla config values our blocks implement (written by export); any other value of these keys is refused
    "gated_deltanet": {**_FLA_FIXED_COMMON, "allow_neg_eigval": False, "num_v_heads": None,
                       "output_gate_activation": "swish"},
    "delta_net": {**_FLA_FIXED_COMMON, "allow_neg_eigval": False, "use_beta": True, "qk_activation": "silu",
                  "qk_norm": "l2", "use_output_norm": True},
    "gla": {**_FLA_FIXED_COMMON, "num_kv_heads": None, "feature_map": None, "clamp_min": None,
            "elementwise_affine": True, "use_gk": True, "use_gv": False},
}
FLA_LAYER_FIXED = {"conv_bias": False, "gate_logit_normalizer": 16, "gate_low_rank_dim": 16}
"""Arguments of fla's layers that its config classes never pass on (so fla always builds these values); a config that
states another value is refused rather than silently built differently."""
GLA_GATE_RANK = 16
MAX_MLP_EXPAND = next(f for f in dataclasses.fields(ModelConfig) if f.name == "mlp_expand").metadata["bounds"]["le"]
"""fla's ``GLAConfig`` always builds ``gate_low_rank_dim`` 16: our ``model.gate_rank``."""

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
    "Mamba3": (
        {"d_state": ("d_state", 128), "expand": ("expand", 2), "headdim": ("head_dim", 64),
         "ngroups": ("n_groups", 1), "rope_fraction": ("rope_fraction", 0.5), "chunk_size": ("chunk_size", 64),
         "dt_min": ("dt_min", 0.001), "dt_max": ("dt_max", 0.1)},
        {"is_mimo": False, "is_outproj_norm": False, "A_floor": 1e-4},
    ),
}
MAMBA_SSM_FAMILIES = {"Mamba1": "mamba", "Mamba2": "mamba2", "Mamba3": "mamba3"}
"""ssm_cfg["layer"] -> our family."""
MAMBA_SSM_INIT_ONLY = {"layer", "dt_init", "dt_scale", "dt_init_floor", "A_init_range", "use_fast_path",
                       "use_mem_eff_path", "learnable_init_states", "mimo_rank", "dropout"}
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
    if family in FLA_TYPES:
        return _fla_model_config(raw, path)
    if family not in HF_FIELDS:
        readable = {**HF_ARCHITECTURES, **{t: a for t, (_, a) in FLA_TYPES.items()}}
        raise UserError(f"{path}: model_type {family!r} is not supported (import reads "
                        + ", ".join(f"{t} ({a})" for t, a in readable.items()) + ")")
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


def _fla_model_config(raw: dict[str, Any], path: Path) -> ModelConfig:
    """An fla ``config.json`` (``model_type`` in ``FLA_TYPES``) -> our model config; every value of ``FLA_FIXED``,
    ``FLA_LAYER_FIXED`` other than ours is refused, as are head and MLP sizes that fla itself could not build."""
    model_type = raw["model_type"]
    family = FLA_TYPES[model_type][0]
    raw = dict(raw)
    heads = raw.get("num_heads", FLA_HEAD_DEFAULTS[model_type]["num_heads"])
    for key in ("num_v_heads", "num_kv_heads"):  # as many value / key heads as heads: no grouping (our None)
        if raw.get(key) is not None and raw[key] == heads:
            raw[key] = None
    if raw.get("output_gate_activation") == "silu":  # fla's alias of swish
        raw["output_gate_activation"] = "swish"
    _translate(raw, {}, FLA_LAYER_FIXED, path)
    fields = _translate(raw, FLA_FIELDS[model_type], FLA_FIXED[model_type], path)
    for key, (field, _) in FLA_FIELDS[model_type].items():
        value, flag = fields[field], field in ("short_conv", "output_gate", "tie_embeddings")
        if not (isinstance(value, bool) if flag else _positive(value, float if field == "norm_eps" else int)):
            raise UserError(f"{path}: {key} must be {'true or false' if flag else 'a positive number'}; got {value!r}")
    d = fields["d_model"]
    width = fla_mlp_width(raw, d, path)
    mlp_expand = width / d
    if round(mlp_expand * d) != width:  # never seen: a ratio of two ints times the divisor rounds back
        raise UserError(f"{path}: intermediate_size {width} / hidden_size {d} does not round-trip as a float")
    if mlp_expand > MAX_MLP_EXPAND:
        raise UserError(f"{path}: intermediate_size {width} is more than {MAX_MLP_EXPAND} * hidden_size, the widest "
                        "MLP longssm builds (model.mlp_expand)")
    extra = {"gate_rank": GLA_GATE_RANK} if family == "gla" else {}
    return ModelConfig(family=family, **fields, **_fla_head_sizes(raw, model_type, d, path), mlp_expand=mlp_expand,
                       **extra)


def _positive(value: Any, kind: type = float) -> bool:
    """``value`` is a finite number > 0 (an int when ``kind`` is int; never a bool)."""
    return (not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float))
            and math.isfinite(value) and value > 0)


def _fla_number(raw: Mapping[str, Any], model_type: str, key: str, path: Path) -> float:
    """``raw[key]`` (default: fla's, ``FLA_HEAD_DEFAULTS``), which must be a finite positive number."""
    value = raw.get(key, FLA_HEAD_DEFAULTS[model_type].get(key))
    if not _positive(value):
        raise UserError(f"{path}: {key} must be a positive number; got {value!r}")
    return value


def _fla_head_sizes(raw: Mapping[str, Any], model_type: str, d: int, path: Path) -> dict[str, int]:
    """Our ``head_dim`` (K), ``n_heads`` and ``v_head_dim`` (V), computed as fla's layers do: Gated DeltaNet
    K = head_dim, V = int(head_dim * expand_v); DeltaNet and GLA K = round(hidden_size * expand_k) / num_heads and
    V likewise with expand_v. Sizes fla's layers refuse (not integers, not divisible) are refused, naming the key."""
    heads = _fla_number(raw, model_type, "num_heads", path)
    if not isinstance(heads, int):
        raise UserError(f"{path}: num_heads must be an integer; got {heads!r}")
    if model_type == "gated_deltanet":
        k, expand_v = _fla_number(raw, model_type, "head_dim", path), _fla_number(raw, model_type, "expand_v", path)
        if not isinstance(k, int):
            raise UserError(f"{path}: head_dim must be an integer; got {k!r}")
        v = int(k * expand_v)
        if v < 1 or not math.isclose(k * expand_v, v, rel_tol=1e-5):
            raise UserError(f"{path}: expand_v={expand_v!r} gives head_dim * expand_v = {k * expand_v}, "
                            "not a positive integer")
        return {"head_dim": k, "n_heads": heads, "v_head_dim": v}
    sizes = []
    for key in ("expand_k", "expand_v"):
        expand = _fla_number(raw, model_type, key, path)
        total = d * expand
        if not math.isclose(total, round(total)) or round(total) % heads or round(total) < heads:
            raise UserError(f"{path}: {key}={expand!r} gives hidden_size * {key} = {total}, "
                            f"not a positive multiple of num_heads = {heads}")
        sizes.append(round(total) // heads)
    return {"head_dim": sizes[0], "n_heads": heads, "v_head_dim": sizes[1]}


def fla_mlp_width(raw: Mapping[str, Any], d: int, path: Path) -> int:
    """The hidden width of fla's ``GatedMLP``: ``intermediate_size``, or when null int(hidden_size * hidden_ratio *
    2/3) rounded up to a multiple of 256 (hidden_ratio null: 4)."""
    width = raw.get("intermediate_size")
    if width is None:
        ratio = raw.get("hidden_ratio", 4)
        ratio = 4 if ratio is None else ratio
        if not _positive(ratio):
            raise UserError(f"{path}: hidden_ratio must be a positive number; got {ratio!r}")
        width = 256 * ((int(d * ratio * 2 / 3) + 255) // 256)
    if not _positive(width, int):
        raise UserError(f"{path}: intermediate_size must be a positive integer; got {width!r}")
    return width


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
        family=MAMBA_SSM_FAMILIES[layer],
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
