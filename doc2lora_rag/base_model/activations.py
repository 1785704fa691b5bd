"""Hidden states entering chosen decoder layers, computed without gradients.

The hypernetwork reads the document through the frozen model: the LoRA of a layer is
generated from activations entering it (or entering an earlier source layer). The forward
pass stops right after the deepest layer that is needed, so reading one early layer costs
only that fraction of a full pass.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from doc2lora_rag.base_model.layers import decoder_layers
from doc2lora_rag.base_model.locking import model_lock


class _EnoughLayers(Exception):
    """Raised inside the forward pass once every requested layer input is captured."""


@torch.no_grad()
def layer_inputs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: list[int],
) -> torch.Tensor:
    """Return ``[len(layers), batch, seq, hidden]``: the inputs of ``layers``, in that order."""
    stack = decoder_layers(model)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[index] = hidden
            if len(captured) == len(set(layers)):
                raise _EnoughLayers

        return hook

    with model_lock(model):
        handles = [stack[i].register_forward_pre_hook(make_hook(i), with_kwargs=True) for i in set(layers)]
        try:
            backbone = getattr(model, "model", model)  # skip the LM head: only layer inputs matter
            backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _EnoughLayers:
            pass
        finally:
            for handle in handles:
                handle.remove()
    return torch.stack([captured[i] for i in layers])
