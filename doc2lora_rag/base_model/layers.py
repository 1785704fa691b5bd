"""Find the decoder layers and the adaptable linear modules of any HF causal LM."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of decoder blocks (``model.model.layers`` for Llama, Qwen, Mistral, Gemma)."""
    config = model.config.get_text_config()
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == config.num_hidden_layers:
            return module
    raise ValueError(f"no decoder layer stack found in {type(model).__name__}")


def target_linear_paths(model: PreTrainedModel, module_name: str) -> list[str]:
    """Full module paths of the linear ``module_name`` (e.g. ``down_proj``) in every layer."""
    layers = decoder_layers(model)
    stack_path = next(name for name, module in model.named_modules() if module is layers)
    paths = []
    for index, layer in enumerate(layers):
        found = [
            f"{stack_path}.{index}.{name}"
            for name, module in layer.named_modules()
            if name.split(".")[-1] == module_name and isinstance(module, nn.Linear)
        ]
        if len(found) != 1:
            raise ValueError(f"layer {index} has {len(found)} linear modules named {module_name!r}")
        paths.append(found[0])
    return paths
