"""A short, dtype-independent identity for a base model's weights.

Adapters and hypernetworks only make sense on the exact model they were made for. The
fingerprint hashes the architecture numbers and a few weight slices rounded to bf16, so the
same checkpoint gives the same fingerprint in fp32 on a CPU and in bf16 on a GPU.
"""

from __future__ import annotations

import hashlib
import json

import torch
from transformers import PreTrainedModel

_CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


def model_fingerprint(model: PreTrainedModel) -> str:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    digest = hashlib.sha256()
    digest.update(json.dumps({k: getattr(config, k, None) for k in _CONFIG_KEYS}).encode())
    params = dict(model.named_parameters())
    for name in (next(iter(params)), next(reversed(params))):
        sample = params[name].detach().flatten()[:4096].to("cpu", torch.bfloat16)
        digest.update(name.encode())
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
