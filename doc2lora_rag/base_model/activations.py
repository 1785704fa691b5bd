"""Hidden states entering chosen decoder layers, computed without gradients.

The hypernetwork reads the document through the frozen model: the LoRA of a layer is
generated from activations entering it (or entering an earlier source layer). The forward
pass stops right after the deepest layer that is needed, so reading one early layer costs
only that fraction of a full pass.

Reading may run in bf16 while the model keeps fp32 weights (``reading_dtype``): on a CPU
with native bf16 instructions it is twice as fast, and the activations are stored in bf16
for the hypernetwork anyway.
"""

from __future__ import annotations

import contextlib
import os

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
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return ``[len(layers), batch, seq, hidden]``: the inputs of ``layers``, in that order.

    With ``dtype`` other than the model's, the matrix products run in it (autocast)."""
    stack = decoder_layers(model)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[index] = hidden
            if len(captured) == len(set(layers)):
                raise _EnoughLayers

        return hook

    with model_lock(model), reading_precision(model, dtype):
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


READING_DTYPE_ENV = "DOC2LORA_READING_DTYPE"


def reading_precision(model: PreTrainedModel, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` where it differs from the model's (fp32) weights; else nothing."""
    weight = next(model.parameters())
    if dtype is None or dtype == weight.dtype:
        return contextlib.nullcontext()
    if weight.dtype != torch.float32 or dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"cannot read a {weight.dtype} model in {dtype}: only fp32 weights read in 16 bits")
    return torch.autocast(weight.device.type, dtype=dtype)


def reading_dtype(model: PreTrainedModel) -> torch.dtype:
    """The dtype documents are read in. An fp32 model on a CPU with native bf16 (AVX512-BF16
    or AMX) reads in bf16: twice as fast, with the same answers (docs/engine.md). Elsewhere
    the model's own dtype: emulated bf16 is slower than fp32, and 16-bit weights are read as
    they are. ``DOC2LORA_READING_DTYPE`` (``float32``, ``bfloat16`` or ``auto``) overrides
    the choice for fp32 models."""
    weight = next(model.parameters())
    if weight.dtype != torch.float32:
        return weight.dtype
    choice = os.environ.get(READING_DTYPE_ENV, "auto").strip().lower()
    if choice in ("float32", "bfloat16"):
        return getattr(torch, choice)
    if choice != "auto":
        raise ValueError(f"{READING_DTYPE_ENV} must be float32, bfloat16 or auto, not {choice!r}")
    return torch.bfloat16 if weight.device.type == "cpu" and cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
