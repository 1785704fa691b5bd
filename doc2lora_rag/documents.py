"""Validation of incoming document text: clear errors before any work is done."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
        raise InvalidDocumentError(
            f"a document must be str or UTF-8 bytes, not {type(text).__name__}"
        )
    if not text.strip():
        raise InvalidDocumentError("document is empty or only whitespace")
    if len(text) > max_chars:
        raise InvalidDocumentError(
            f"document has {len(text):,} characters, over the limit of {max_chars:,}; "
            "split it or raise max_chars"
        )
    # A lone surrogate (a JSON "\ud800" escape, surrogateescape) breaks hashing, tokenizers, SQLite.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidDocumentError(
            f"document is not valid Unicode (lone surrogate at character {error.start}); "
            "decode its bytes with the right encoding"
        ) from error
    sample = text[:65536]
    controls = sum(
        1 for ch in sample if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\v"
    )
    if "\x00" in sample or controls > 0.05 * len(sample):
        raise InvalidDocumentError("document looks binary (NUL or control characters), not text")
    return text


# --------------------------------------------------------------------------- input coercion

MAX_ID_CHARS = 512
"""Ids are keys in the catalog and shown in answers; longer ones are almost surely a mistake."""

_TEXT_KEYS = ("text", "page_content", "content")


@dataclass(frozen=True)
class DocumentInput:
    """One incoming document reduced to what the index keeps: text, metadata, optional id."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    @property
    def content_hash(self) -> str:
        return content_hash(self.text)


def content_hash(text: str) -> str:
    """SHA-256 of the UTF-8 text: equal text gives an equal adapter, so it is made once."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def derived_id(text: str) -> str:
    """The id of a document added without one: a prefix of its content hash (128 bits)."""
    return content_hash(text)[:32]


def check_id(value: object) -> str:
    """Return ``value`` if it can serve as a document id, else raise InvalidDocumentError."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidDocumentError(f"a document id must be a non-empty string, not {value!r}")
    if len(value) > MAX_ID_CHARS:
        raise InvalidDocumentError(f"document id is {len(value)} characters, over {MAX_ID_CHARS}")
    return value


def check_metadata(metadata: object) -> dict[str, Any]:
    """Metadata is stored as JSON (never pickled), so it must round-trip through JSON."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidDocumentError(f"metadata must be a mapping, not {type(metadata).__name__}")
    try:
        encoded = json.dumps(dict(metadata), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise InvalidDocumentError(f"metadata must be JSON-serialisable: {error}") from error
    return json.loads(encoded)


def coerce_document(
    doc: object, *, id: str | None = None, max_chars: int = MAX_DOCUMENT_CHARS
) -> DocumentInput:
    """Accept the shapes callers already hold, validated, without importing their frameworks.

    ``str``/UTF-8 ``bytes``; LangChain ``Document`` (``page_content``, ``metadata``, ``id``);
    LlamaIndex ``Document``/``TextNode`` (``get_content()``, ``metadata``, ``id_``, with
    ``ref_doc_id`` kept in the metadata); a mapping with ``text`` (or ``page_content`` or
    ``content``), optional ``metadata`` and ``id``, whose other keys join the metadata.
    An explicit ``id`` wins over the document's own.
    """
    own_id: object = None
    if isinstance(doc, str | bytes | bytearray | memoryview):
        text, metadata = doc, {}
    elif isinstance(doc, Mapping):
        key = next((k for k in _TEXT_KEYS if k in doc), None)
        if key is None:
            raise InvalidDocumentError(
                f"a document dict needs one of the keys {list(_TEXT_KEYS)}; "
                f"got {sorted(map(str, doc))}"
            )
        text = doc[key]
        metadata = dict(check_metadata(doc.get("metadata")))
        extra = {k: v for k, v in doc.items() if k not in (key, "metadata", "id")}
        metadata.update(check_metadata(extra))
        own_id = doc.get("id")
    elif hasattr(doc, "page_content"):  # LangChain Document
        text, metadata = doc.page_content, check_metadata(getattr(doc, "metadata", None))
        own_id = getattr(doc, "id", None)
    elif callable(getattr(doc, "get_content", None)):  # LlamaIndex Document / TextNode
        text, metadata = doc.get_content(), dict(check_metadata(getattr(doc, "metadata", None)))
        own_id = getattr(doc, "id_", None)
        ref = getattr(doc, "ref_doc_id", None)
        if ref is not None and ref != own_id:
            metadata.setdefault("ref_doc_id", ref)
    else:
        raise InvalidDocumentError(
            f"cannot read a document from {type(doc).__name__}: give str, bytes, a dict with "
            "'text', a LangChain Document or a LlamaIndex Document/node"
        )
    text = validate_text(text, max_chars=max_chars)
    chosen = id if id is not None else own_id
    return DocumentInput(
        text=text,
        metadata=check_metadata(metadata),
        id=None if chosen is None else check_id(chosen),
    )


def coerce_documents(
    docs: Iterable[object] | object,
    ids: Sequence[str] | None = None,
    *,
    max_chars: int = MAX_DOCUMENT_CHARS,
) -> list[DocumentInput]:
    """Validate a whole batch up front, so that a bad document stops it before any write.

    A single document (a ``str``, bytes or one object) is accepted as a batch of one. The
    error names the position of the first bad document.
    """
    if _is_single_document(docs):
        docs = [docs]
    docs = list(docs)
    if ids is not None:
        if isinstance(ids, str):
            ids = [ids]
        ids = list(ids)
        if len(ids) != len(docs):
            raise InvalidDocumentError(f"got {len(ids)} ids for {len(docs)} documents")
    result = []
    for position, doc in enumerate(docs):
        try:
            given = None if ids is None else ids[position]
            result.append(coerce_document(doc, id=given, max_chars=max_chars))
        except InvalidDocumentError as error:
            raise InvalidDocumentError(f"document {position}: {error}") from error
    return result


def _is_single_document(value: object) -> bool:
    """Pydantic documents iterate over their fields, so test for them before ``Iterable``."""
    return (
        isinstance(value, str | bytes | bytearray | memoryview | Mapping)
        or hasattr(value, "page_content")
        or callable(getattr(value, "get_content", None))
        or not isinstance(value, Iterable)
    )
