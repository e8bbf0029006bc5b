"""State-dict adapters between Hugging Face / ``mamba_ssm`` / fla checkpoints and ours, one per family (as
torchtitan's ``models/*/state_dict_adapter.py``).

Mamba-1 / Mamba-2: our parameter names are those of HF ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (see ``lm.py``),
and Mamba-3's those of mamba_ssm's ``Mamba3`` inside its ``MambaLMHeadModel``, so the mapping is the identity except
for what other writers do differently:

    original ``mamba_ssm`` files       ``backbone.embedding.weight`` (singular)  ->  ``backbone.embeddings.weight``
    ``save_pretrained`` files          no ``lm_head.weight`` (tied)              ->  the embedding matrix
                                       (a tied model refuses a different one: see ``lm.tie_head``)

DeltaNet, Gated DeltaNet, GLA: fla's ``DeltaNetForCausalLM``, ``GatedDeltaNetForCausalLM``, ``GLAForCausalLM``
(flash-linear-attention 0.6). Inside a mixer the names are fla's; the LM around it is renamed by prefix:

    fla                                       ours
    model.embeddings.weight                   backbone.embeddings.weight
    model.layers.{i}.attn_norm.weight         backbone.layers.{i}.norm.weight
    model.layers.{i}.attn.*                   backbone.layers.{i}.mixer.*
    model.layers.{i}.mlp_norm.weight          backbone.layers.{i}.mlp_norm.weight
    model.layers.{i}.mlp.{gate,up,down}_proj  backbone.layers.{i}.mlp.{gate,up,down}_proj   (no fused gate/up)
    model.norm.weight                         backbone.norm_f.weight
    lm_head.weight                            lm_head.weight (missing when tied, as above)
    GLA: attn.g_norm_swish_gate.weight        mixer.o_norm.weight   (with the output gate and fla's fuse_norm;
         attn.g_norm.weight                   mixer.o_norm.weight    without either, fla's name is g_norm)

``from_hf`` turns such a state dict into one that ``model.load_state_dict(..., strict=True)`` accepts;
``to_hf`` is its inverse (``lm_head.weight`` always written, as the HF classes' ``state_dict()`` have it; GLA's
norm named ``g_norm_swish_gate`` where the layer has ``g_proj``, as fla builds it with its default fuse_norm).
Keys no rule matches pass unchanged, so ``pretrained.check_weights`` names them as unexpected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from ..errors import UserError
from .lm import EMBEDDING, with_head


class StateDictAdapter(Protocol):
    """What ``hf_adapter`` returns: ``from_hf`` (their state dict -> ours) and ``to_hf`` (ours -> theirs)."""

    def from_hf(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]: ...

    def to_hf(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class HFStateDictAdapter:
    """Key map of one family. ``from_hf_renames``: key in HF / ``mamba_ssm`` files -> our key."""

    from_hf_renames: Mapping[str, str]

    def from_hf(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A HF or ``mamba_ssm`` state dict -> ours (renamed keys; a missing ``lm_head.weight`` = the embedding)."""
        return with_head({self.from_hf_renames.get(key, key): value for key, value in state_dict.items()})

    def to_hf(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Our state dict -> one that the HF class loads with ``strict=True``: our names are HF's, so only a tied
        head left out (as ``save_weights`` stores it once) is written out."""
        return with_head(state_dict)


_FLA_TO_OURS = (  # (pattern, replacement) on whole keys, the first that matches applies
    (r"^model\.embeddings\.", "backbone.embeddings."),
    (r"^model\.norm\.", "backbone.norm_f."),
    (r"^model\.layers\.(\d+)\.attn_norm\.", r"backbone.layers.\1.norm."),
    (r"^model\.layers\.(\d+)\.attn\.", r"backbone.layers.\1.mixer."),
    (r"^model\.layers\.(\d+)\.(mlp_norm|mlp)\.", r"backbone.layers.\1.\2."),
)
_OURS_TO_FLA = (
    (r"^backbone\.embeddings\.", "model.embeddings."),
    (r"^backbone\.norm_f\.", "model.norm."),
    (r"^backbone\.layers\.(\d+)\.norm\.", r"model.layers.\1.attn_norm."),
    (r"^backbone\.layers\.(\d+)\.mixer\.", r"model.layers.\1.attn."),
    (r"^backbone\.layers\.(\d+)\.(mlp_norm|mlp)\.", r"model.layers.\1.\2."),
)


def _rename(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in rules:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    return key


@dataclass(frozen=True)
class FLAStateDictAdapter:
    """Key map of an fla model (see the module docstring). ``gated_norm`` / ``plain_norm``: fla's name of the
    mixer's output norm (our ``o_norm``) in a layer with / without the output gate ``g_proj``."""

    gated_norm: str = "o_norm"
    plain_norm: str = "o_norm"

    def from_hf(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """An fla state dict -> ours (a missing ``lm_head.weight`` = the embedding)."""
        norms = "|".join(sorted({re.escape(self.gated_norm), re.escape(self.plain_norm)}))
        out = {}
        for key, value in state_dict.items():
            ours = re.sub(rf"^(backbone\.layers\.\d+\.mixer\.)(?:{norms})\.", r"\1o_norm.", _rename(key, _FLA_TO_OURS))
            if ours in out:
                raise UserError(f"two tensors are both {ours} in our names (one of them is {key})")
            out[ours] = value
        return with_head(out)

    def to_hf(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Our state dict -> one that fla's class loads with ``strict=True`` (``lm_head.weight`` included)."""
        ours = with_head(state_dict)
        out = {}
        for key, value in ours.items():
            if (m := re.match(r"^(backbone\.layers\.\d+\.mixer\.)o_norm\.", key)) is not None:
                norm = self.gated_norm if f"{m[1]}g_proj.weight" in ours else self.plain_norm
                key = f"{m[1]}{norm}.{key[m.end():]}"
            out[_rename(key, _OURS_TO_FLA)] = value
        return out


_MAMBA_SSM_RENAMES = {"backbone.embedding.weight": EMBEDDING}

HF_ADAPTERS: dict[str, StateDictAdapter] = {
    "mamba": HFStateDictAdapter(_MAMBA_SSM_RENAMES),  # transformers.MambaForCausalLM, mamba_ssm MambaLMHeadModel
    "mamba2": HFStateDictAdapter(_MAMBA_SSM_RENAMES),  # transformers.Mamba2ForCausalLM, mamba_ssm (Mamba2 layers)
    "mamba3": HFStateDictAdapter(_MAMBA_SSM_RENAMES),  # mamba_ssm MambaLMHeadModel with Mamba3 layers
    "gated_deltanet": FLAStateDictAdapter(),  # fla GatedDeltaNetForCausalLM
    "deltanet": FLAStateDictAdapter(),  # fla DeltaNetForCausalLM
    "gla": FLAStateDictAdapter(gated_norm="g_norm_swish_gate", plain_norm="g_norm"),  # fla GLAForCausalLM
}


def hf_adapter(family: str) -> StateDictAdapter:
    """The adapter of ``family`` (``UserError`` for a family without a Hugging Face counterpart)."""
    if family not in HF_ADAPTERS:
        raise UserError(f"no Hugging Face state-dict adapter for family {family!r} (have: {', '.join(HF_ADAPTERS)})")
    return HF_ADAPTERS[family]
