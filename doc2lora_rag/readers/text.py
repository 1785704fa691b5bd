"""Plain text and Markdown: decoded bytes, with a Markdown title kept as metadata."""

from __future__ import annotations

from pathlib import Path

from doc2lora_rag.readers.base import ReaderOptions, ReadError, SourceDocument


def decode(data: bytes, encoding: str) -> str:
    """Bytes to text; a UTF-8 byte-order mark is dropped. A wrong encoding is a clear error
    rather than replacement characters that would end up inside an adapter."""
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as error:
        raise ReadError(
            f"not valid {encoding} (byte {error.start}); pass --encoding with the file's encoding"
        ) from error
    except LookupError as error:
        raise ReadError(f"unknown encoding {encoding!r}") from error


def read_text(path: Path, data: bytes, options: ReaderOptions) -> list[SourceDocument]:
    text = decode(data, options.encoding)
    metadata: dict = {"format": "markdown" if path.suffix.lower() in (".md", ".markdown") else "text"}
    if metadata["format"] == "markdown":
        title = markdown_title(text)
        if title:
            metadata["title"] = title
    return [SourceDocument(str(path), text, metadata)]


def markdown_title(text: str) -> str | None:
    """The first level-one ATX heading (``# Title``), if any."""
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip().rstrip("#").strip() or None
    return None
