"""LlamaIndex integration of doc2lora-rag (import name ``llama_index_doc2lora``).

``Doc2LoRAIndex`` is a managed index whose nodes become LoRA adapters; its query engine
answers with the routed nodes' adapters attached instead of their text in the prompt.
``Doc2LoRALLM`` is the base model as a ``CustomLLM``. See docs/llama_index.md.
"""

from llama_index_doc2lora.base import Doc2LoRAIndex
from llama_index_doc2lora.llm import Doc2LoRALLM
from llama_index_doc2lora.query_engine import Doc2LoRAQueryEngine
from llama_index_doc2lora.retriever import Doc2LoRARetriever

__all__ = ["Doc2LoRAIndex", "Doc2LoRALLM", "Doc2LoRAQueryEngine", "Doc2LoRARetriever"]
