"""``python -m doc2lora_rag.cli`` (used by launchers such as torchrun)."""

from doc2lora_rag.cli import app

app()
