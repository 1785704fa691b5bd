"""Validation of incoming document text: clear errors before any work is done."""

from __future__ import annotations

import unicodedata

from doc2lora_rag.errors import InvalidDocumentError

MAX_DOCUMENT_CHARS = 1_000_000
"""Default size cap (~250K tokens): past it, an adapter would outweigh what it replaces."""


def validate_text(text: object, *, max_chars: int = MAX_DOCUMENT_CHARS) -> str:
    """Return ``text`` as a clean ``str`` or raise :class:`InvalidDocumentError`.

    Bytes are accepted when they are valid UTF-8. Text that is empty, binary (NUL bytes or
    mostly control characters) or longer than ``max_chars`` is refused.
    """
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidDocumentError(
                f"document bytes are not valid UTF-8 (byte {error.start}); decode them first"
            ) from error
    if not isinstance(text, str):
        raise InvalidDocumentError(f"a document must be str or UTF-8 bytes, not {type(text).__name__}")
    if not text.strip():
        raise InvalidDocumentError("document is empty or only whitespace")
    if len(text) > max_chars:
        raise InvalidDocumentError(
            f"document has {len(text):,} characters, over the limit of {max_chars:,}; "
            "split it or raise max_chars"
        )
    sample = text[:65536]
    controls = sum(1 for ch in sample if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\v")
    if "\x00" in sample or controls > 0.05 * len(sample):
        raise InvalidDocumentError("document looks binary (NUL or control characters), not text")
    return text
