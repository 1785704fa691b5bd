"""Answer generation with adapters attached."""

from doc2lora_rag.generation.generate import Completion, complete, stream

__all__ = ["Completion", "complete", "stream"]
