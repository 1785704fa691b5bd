"""doc2lora-rag: internalise documents into LoRA adapters and answer with them.

A meta-trained hypernetwork reads a document through the frozen base model and writes a LoRA
adapter in one forward pass; questions are then answered with the adapter attached instead of
the document stuffed into the prompt.
"""

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.errors import (
    AdapterFormatError,
    Doc2LoRAError,
    IncompatibleModelError,
    InvalidDocumentError,
    UnknownIdError,
)
from doc2lora_rag.hypernetwork.config import HypernetConfig
from doc2lora_rag.hypernetwork.model import HyperNetwork
from doc2lora_rag.index import Doc2LoRAIndex as Doc2LoRAIndex  # re-export

__all__ = [
    "AdapterFormatError",
    "Doc2LoRA",
    "Doc2LoRAError",
    "HyperNetwork",
    "HypernetConfig",
    "IncompatibleModelError",
    "InvalidDocumentError",
    "LoRAAdapter",
    "UnknownIdError",
]
__version__ = "0.1.0"
