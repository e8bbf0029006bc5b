"""State-dict adapters between Hugging Face / ``mamba_ssm`` checkpoints and ours, one per family (as torchtitan's
``models/*/state_dict_adapter.py``).

Our parameter names are those of HF ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (see ``lm.py``), so the mapping
is the identity except for what other writers do differently:

    original ``mamba_ssm`` files       ``backbone.embedding.weight`` (singular)  ->  ``backbone.embeddings.weight``
    ``save_pretrained`` files          no ``lm_head.weight`` (tied)              ->  the embedding matrix
                                       (a tied model refuses a different one: see ``lm.tie_head``)

``from_hf`` turns such a state dict into one that ``model.load_state_dict(..., strict=True)`` accepts;
``to_hf`` is its inverse for HF (``lm_head.weight`` always written, as ``MambaForCausalLM.state_dict()`` has it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from ..errors import UserError
from .lm import EMBEDDING, with_head


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


_MAMBA_SSM_RENAMES = {"backbone.embedding.weight": EMBEDDING}

HF_ADAPTERS: dict[str, HFStateDictAdapter] = {
    "mamba": HFStateDictAdapter(_MAMBA_SSM_RENAMES),  # transformers.MambaForCausalLM, mamba_ssm MambaLMHeadModel
    "mamba2": HFStateDictAdapter(_MAMBA_SSM_RENAMES),  # transformers.Mamba2ForCausalLM, mamba_ssm (Mamba2 layers)
}


def hf_adapter(family: str) -> HFStateDictAdapter:
    """The adapter of ``family`` (``UserError`` for a family without a Hugging Face counterpart)."""
    if family not in HF_ADAPTERS:
        raise UserError(f"no Hugging Face state-dict adapter for family {family!r} (have: {', '.join(HF_ADAPTERS)})")
    return HF_ADAPTERS[family]
