"""Other programs' checkpoints in and out: ``longssm import`` and ``longssm export``.

Import reads a Hugging Face (mamba, mamba2), fla (gated_deltanet, delta_net, gla) or mamba_ssm directory
(``pretrained.read_pretrained``, which also serves ``train --init-from``: what is read, and what is refused) and
writes a longssm run directory.

Directory written (``export_hf``; ``export_mamba_ssm`` for ``--format mamba_ssm``, below): ``config.json`` +
``model.safetensors`` (+ ``tokenizer.json``), as ``save_pretrained`` writes them, so ``from_pretrained`` loads it and
its logits equal ours:
    mamba, mamba2                   transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM``
    gated_deltanet, deltanet, gla   fla's ``GatedDeltaNetForCausalLM`` / ``DeltaNetForCausalLM`` /
                                    ``GLAForCausalLM`` (``import fla`` registers them with transformers' Auto
                                    classes); only runs with the MLP sublayer (model.mlp_expand > 0), as fla's
                                    models always have one, and GLA with model.gate_rank 16
``export_mamba_ssm`` writes mamba_ssm's own layout (``MambaLMHeadModel``: ``config.json`` with ``d_model``,
``n_layer``, ``vocab_size``, ``ssm_cfg`` naming the layer Mamba1 / Mamba2 / Mamba3, and ``backbone.embedding``):
the only format of Mamba-3, which has no transformers class; ``longssm import`` reads it back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from .checkpoint import load_model, save_run
from .config import DataConfig, ModelConfig, RunConfig
from .data.tokenizer import load_tokenizer
from .errors import UserError
from .files import atomic_dir
from .models import build_model
from .models.hf_adapters import hf_adapter
from .models.linear_attention import head_sizes
from .models.lm import EMBEDDING, HEAD, with_head
from .outputs import check_new_directory
from .paths import resolve_path
from .pretrained import (
    FLA_FIELDS,
    FLA_FIXED,
    FLA_TYPES,
    GLA_GATE_RANK,
    HF_ARCHITECTURES,
    HF_FIELDS,
    HF_FIXED,
    MAMBA_SSM_CFG,
    MAMBA_SSM_FAMILIES,
    MAMBA_SSM_FIELDS,
    MAMBA_SSM_FIXED,
    read_pretrained,
)

MAMBA_SSM_EMBEDDING = "backbone.embedding.weight"
"""mamba_ssm's name of the embedding matrix (ours is ``backbone.embeddings.weight``)."""


def import_checkpoint(path: str | Path, out: str | Path, tokenizer: str | None = None) -> Path:
    """Read the checkpoint directory ``path`` (see ``pretrained.read_pretrained``) and write the run directory ``out``.

    The tokenizer is ``tokenizer`` when given (byte, gpt2 or a tokenizer.json path), else the directory's
    ``tokenizer.json``; a tokenizer file is copied into the run (see ``save_run``). ``out`` is written atomically
    (nothing on error); it must not exist nor lie inside a checkpoint or a run's files (``outputs.py``).
    """
    check_new_directory(out, "--out")
    pretrained = read_pretrained(path)
    spec = tokenizer or pretrained.tokenizer
    if spec is None:
        raise UserError(f"{path} has no tokenizer.json: give --tokenizer byte, gpt2 or a tokenizer.json path")
    vocab = load_tokenizer(spec).vocab_size
    if vocab > pretrained.model.vocab_size:
        raise UserError(f"tokenizer {spec} has {vocab} tokens, more than the embedding's {pretrained.model.vocab_size}")
    model = build_model(pretrained.model)
    model.load_state_dict(pretrained.weights, strict=True)
    cfg = RunConfig(name=Path(out).name, model=pretrained.model, data=DataConfig(tokenizer=spec))
    source = {"imported_from": pretrained.source["path"], "format": pretrained.source["format"]}
    return save_run(out, model, cfg, source)


def hf_config(model: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` of the HF class that computes what ``model`` does (the inverse of
    ``pretrained.read_foreign_config``)."""
    if model.layers is not None and set(model.layers) != {model.family}:
        raise UserError(f"a hybrid model (model.layers {','.join(model.layers)}) has no Hugging Face class; export "
                        "writes models of one family")
    fla_types = {family: model_type for model_type, (family, _) in FLA_TYPES.items()}
    if model.family in fla_types:
        return _fla_config(model, fla_types[model.family])
    if model.family not in HF_FIELDS:
        hint = "; export it with --format mamba_ssm" if model.family in MAMBA_SSM_FAMILIES.values() else ""
        raise UserError(f"family {model.family!r} has no Hugging Face class (export: "
                        f"{', '.join([*HF_FIELDS, *fla_types])}){hint}")
    scales = [s for s in (model.delta_scale, model.a_scale) if s is not None]
    if any(v != 1 for s in scales for v in s):
        raise UserError("this run has calibrated Δ / A scales, which the Hugging Face classes do not have; "
                        "export the run it was calibrated from")
    config = {hf_key: getattr(model, field) for hf_key, (field, _) in HF_FIELDS[model.family].items()}
    if model.family == "mamba":
        config["time_step_rank"] = model.dt_rank or "auto"
        config["intermediate_size"] = model.d_inner
    else:
        config["num_heads"] = model.d_inner // model.head_dim
    return {"model_type": model.family, "architectures": [HF_ARCHITECTURES[model.family]], **config, **HF_FIXED,
            "dtype": "float32"}


def _fla_config(model: ModelConfig, model_type: str) -> dict[str, Any]:
    """The ``config.json`` of fla's class ``FLA_TYPES[model_type]`` for ``model``; ``UserError`` for what fla's
    models cannot express (no MLP sublayer, another GLA gate rank, head sizes its expand ratios cannot give)."""
    if not model.mlp_expand:
        raise UserError("fla's models always have an MLP sublayer; this run has none (model.mlp_expand 0), so it "
                        "has no fla counterpart")
    if model.family == "gla" and model.gate_rank != GLA_GATE_RANK:
        raise UserError(f"fla's GLAConfig always builds gate_low_rank_dim {GLA_GATE_RANK}; this run has "
                        f"model.gate_rank {model.gate_rank}")
    heads, k, v = head_sizes(model)
    d = model.d_model
    if model_type == "gated_deltanet":
        dims = {"head_dim": k, "num_heads": heads, "expand_v": v / k}
        built = (k, int(k * dims["expand_v"]))  # as fla's GatedDeltaNet computes head_v_dim
    else:
        dims = {"num_heads": heads, "expand_k": heads * k / d, "expand_v": heads * v / d}
        built = tuple(round(d * dims[key]) // heads for key in ("expand_k", "expand_v"))
    if built != (k, v):
        raise UserError(f"fla's expand ratios cannot express head sizes {k} x {v} with {heads} heads and "
                        f"d_model {d}")
    config = {fla_key: getattr(model, field) for fla_key, (field, _) in FLA_FIELDS[model_type].items()}
    config |= dims | {"intermediate_size": round(model.mlp_expand * d), "fuse_norm": True}
    return {"model_type": model_type, "architectures": [FLA_TYPES[model_type][1]], **config,
            **FLA_FIXED[model_type], "dtype": "float32"}


def mamba_ssm_config(model: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` of mamba_ssm's ``MambaLMHeadModel`` that computes what ``model`` does (the inverse of
    ``pretrained._mamba_ssm_model_config``): one family of Mamba layers, no MLP, no calibrated scales."""
    layers = {family: layer for layer, family in MAMBA_SSM_FAMILIES.items()}
    if model.family not in layers or (model.layers is not None and set(model.layers) != {model.family}):
        raise UserError(f"--format mamba_ssm writes mamba, mamba2 and mamba3 models; this run is "
                        f"{','.join(model.layers or [model.family])}")
    if model.mlp_expand:
        raise UserError("this run has an MLP sublayer (model.mlp_expand), which mamba_ssm's LM names differently; "
                        "--format mamba_ssm writes runs without one")
    if any(v != 1 for s in (model.delta_scale, model.a_scale) if s is not None for v in s):
        raise UserError("this run has calibrated Δ / A scales, which mamba_ssm's modules do not have; export the run "
                        "it was calibrated from")
    fields, fixed = MAMBA_SSM_CFG[layers[model.family]]
    ssm_cfg = {"layer": layers[model.family], **{key: getattr(model, field) for key, (field, _) in fields.items()},
               **fixed}
    if ssm_cfg.get("dt_rank", "auto") is None:
        ssm_cfg["dt_rank"] = "auto"
    config = {key: getattr(model, field) for key, (field, _) in MAMBA_SSM_FIELDS.items()}
    return {**config, "vocab_size": model.vocab_size, "pad_vocab_size_multiple": 1, "ssm_cfg": ssm_cfg,
            **MAMBA_SSM_FIXED, "residual_in_fp32": True, "fused_add_norm": True}


def export_hf(run: str | Path, out: str | Path) -> Path:
    """Write the run (or checkpoint) ``run`` as a Hugging Face directory ``out`` (atomically): ``config.json``,
    ``model.safetensors`` (the tied head left out, as ``save_pretrained`` does) and the run's ``tokenizer.json``
    when it has one (byte-level runs have none). ``out`` must not exist nor lie inside a checkpoint or a run's files
    (``outputs.py``)."""
    return _export(run, out, "hf")


def export_mamba_ssm(run: str | Path, out: str | Path) -> Path:
    """Write the run (or checkpoint) ``run`` in mamba_ssm's layout (``mamba_ssm_config``; weights under its names,
    ``backbone.embedding.weight``), otherwise as ``export_hf``."""
    return _export(run, out, "mamba_ssm")


def _export(run: str | Path, out: str | Path, format: str) -> Path:
    check_new_directory(out, "--out")
    model, cfg, _ = load_model(run)
    if format == "mamba_ssm":
        config = mamba_ssm_config(cfg.model)
        weights = with_head(model.state_dict())
        weights[MAMBA_SSM_EMBEDDING] = weights.pop(EMBEDDING)
    else:
        config = hf_config(cfg.model)
        weights = hf_adapter(cfg.model.family).to_hf(model.state_dict())
    if cfg.model.tie_embeddings:
        del weights[HEAD]
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        if cfg.data.tokenizer != "byte":
            tokenizer = "builtin:tokenizers/gpt2/tokenizer.json" if cfg.data.tokenizer == "gpt2" else cfg.data.tokenizer
            shutil.copyfile(resolve_path(tokenizer), tmp / "tokenizer.json")
    return Path(out)
