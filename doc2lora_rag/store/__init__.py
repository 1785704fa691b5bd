"""The adapter store: documents, metadata and per-document PEFT adapters on disk."""

from doc2lora_rag.store.adapter_store import AdapterStore
from doc2lora_rag.store.catalog import StoredDocument
from doc2lora_rag.store.paths import default_store_path

__all__ = ["AdapterStore", "StoredDocument", "default_store_path"]
