"""The ``doc2lora`` command line: one module per command group."""

from doc2lora_rag.cli.app import app

__all__ = ["app"]
