"""LangChain integration of doc2lora-rag: swap the vector store and the chat model.

``Doc2LoRAIndex`` is a vector store whose documents become LoRA adapters; ``ChatDoc2LoRA``
is a chat model that recognises those documents in the prompts a chain stuffs and attaches
their adapters instead of reading their text. See docs/langchain.md.
"""

from langchain_doc2lora.chat_models import ChatDoc2LoRA
from langchain_doc2lora.vectorstores import Doc2LoRAIndex

__all__ = ["ChatDoc2LoRA", "Doc2LoRAIndex"]
