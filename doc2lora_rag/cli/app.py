"""The typer application that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="doc2lora",
    help="Internalise documents into LoRA adapters and answer questions with them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Internalise documents into LoRA adapters and answer questions with them."""


# Command modules register themselves on import.
from doc2lora_rag.cli import ask as _ask  # noqa: E402,F401
from doc2lora_rag.cli import compare as _compare  # noqa: E402,F401
from doc2lora_rag.cli import evaluate as _evaluate  # noqa: E402,F401
from doc2lora_rag.cli import ingest as _ingest  # noqa: E402,F401
from doc2lora_rag.cli import interpolate as _interpolate  # noqa: E402,F401
from doc2lora_rag.cli import manage as _manage  # noqa: E402,F401
from doc2lora_rag.cli import rebuild as _rebuild  # noqa: E402,F401
from doc2lora_rag.cli import refine as _refine  # noqa: E402,F401
from doc2lora_rag.cli import train as _train  # noqa: E402,F401
