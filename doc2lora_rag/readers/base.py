"""What a reader returns: documents with ids and metadata, or a reason one could not be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from doc2lora_rag.errors import Doc2LoRAError


class ReadError(Doc2LoRAError):
    """A file cannot be turned into text (unreadable, malformed, encrypted, not text)."""


class MissingPathError(Doc2LoRAError, FileNotFoundError):
    """A path given to read does not exist; raised before any work so nothing is half done."""


@dataclass(frozen=True)
class ReaderOptions:
    """How files are read. ``text_field``/``id_field`` apply to JSON records only."""

    text_field: str = "text"
    id_field: str = "id"
    encoding: str = "utf-8"


@dataclass(frozen=True)
class SourceDocument:
    """One document read from a file. ``id`` is the absolute file path, or ``path#key`` for
    one record of a JSON/JSONL file, so re-reading the same file gives the same ids."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadFailure:
    """One record of a multi-record file that could not be used, while its siblings can."""

    id: str
    reason: str
