"""Pick the reader by file suffix and turn file-system errors into readable reasons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from doc2lora_rag.readers.base import ReaderOptions, ReadError, ReadFailure, SourceDocument
from doc2lora_rag.readers.html import read_html
from doc2lora_rag.readers.pdf import read_pdf
from doc2lora_rag.readers.records import read_json, read_jsonl
from doc2lora_rag.readers.text import read_text

Reader = Callable[[Path, bytes, ReaderOptions], list[SourceDocument | ReadFailure]]

READERS: dict[str, Reader] = {
    ".txt": read_text,
    ".text": read_text,
    ".md": read_text,
    ".markdown": read_text,
    ".html": read_html,
    ".htm": read_html,
    ".xhtml": read_html,
    ".json": read_json,
    ".jsonl": read_jsonl,
    ".ndjson": read_jsonl,
    ".pdf": read_pdf,
}
SUPPORTED_SUFFIXES = tuple(READERS)

SINGLE_DOCUMENT_SUFFIXES = frozenset(s for s, r in READERS.items() if r in (read_text, read_html, read_pdf))
"""Formats whose one document has the file path as its id (JSON may hold many records)."""


def read_file(path: Path, options: ReaderOptions | None = None) -> list[SourceDocument | ReadFailure]:
    """Read one file into documents; a file that cannot be read at all raises ReadError."""
    options = options or ReaderOptions()
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        supported = " ".join(sorted(SUPPORTED_SUFFIXES))
        raise ReadError(f"unsupported file type {path.suffix or '(no suffix)'!r} (supported: {supported})")
    try:
        data = path.read_bytes()
    except IsADirectoryError as error:
        raise ReadError("is a directory") from error
    except PermissionError as error:
        raise ReadError("permission denied") from error
    except FileNotFoundError as error:
        raise ReadError("the file disappeared while the ingest ran") from error
    except OSError as error:
        raise ReadError(f"cannot read: {error.strerror or error}") from error
    return reader(path, data, options)
