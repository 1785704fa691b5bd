"""Scan: read the files and decide, per document, what an ingest has to do.

Nothing is written here. A document whose id is stored with the same content hash is
skipped (this is what makes a re-run resume); one stored with other text is an update;
the rest are new. A single-document file whose size and modification time match what was
stored is skipped without being read at all, so resuming over thousands of PDFs is quick
(``--rescan`` turns that off and compares content only).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doc2lora_rag.documents import coerce_document, content_hash
from doc2lora_rag.errors import InvalidDocumentError
from doc2lora_rag.readers import (
    SINGLE_DOCUMENT_SUFFIXES,
    Discovery,
    ReaderOptions,
    ReadError,
    ReadFailure,
    read_file,
)
from doc2lora_rag.readers.dispatch import READERS
from doc2lora_rag.readers.text import read_text
from doc2lora_rag.store import AdapterStore, StoredDocument

FILES_PER_LOOKUP = 256
"""Files scanned between catalog look-ups: bounds the stored text held in memory at once."""
MAX_BYTES_PER_CHAR = 4
"""No text encoding spends more bytes on a character (UTF-8, UTF-32): a plain-text file larger
than this many bytes per allowed character is too long whatever it holds."""


@dataclass(frozen=True)
class PendingDocument:
    """A document whose adapter must be made: ``change`` is ``"added"`` or ``"updated"``."""

    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    change: str


@dataclass
class Plan:
    pending: list[PendingDocument] = field(default_factory=list)
    metadata_updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)


@dataclass
class _Outcomes:
    """Bookkeeping across file chunks: ids seen, sources read, and the running counts."""

    seen: set[str] = field(default_factory=set)
    sources_read: set[str] = field(default_factory=set)
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def scan(
    discovery: Discovery,
    store: AdapterStore | None,
    options: ReaderOptions,
    *,
    max_chars: int,
    rescan: bool = False,
    prune: bool = False,
    on_file: Callable[[], None] | None = None,
) -> tuple[Plan, int, list[tuple[str, str]]]:
    """Return the plan, the number of skipped documents and the failures ``(id, reason)``.

    ``store=None`` (a dry run against a store that does not exist yet) makes everything new.
    """
    plan, seen = Plan(), _Outcomes()
    files = discovery.files
    for start in range(0, len(files), FILES_PER_LOOKUP):
        _scan_chunk(files[start : start + FILES_PER_LOOKUP], store, options, max_chars, rescan, plan, seen, on_file)
    if prune and store is not None:
        plan.removals = _stale(store, discovery.roots, seen)
    return plan, seen.skipped, seen.failures


def _scan_chunk(
    files: list[Path],
    store: AdapterStore | None,
    options: ReaderOptions,
    max_chars: int,
    rescan: bool,
    plan: Plan,
    seen: _Outcomes,
    on_file: Callable[[], None] | None,
) -> None:
    single = [str(p) for p in files if p.suffix.lower() in SINGLE_DOCUMENT_SUFFIXES]
    stored = _lookup(store, single)
    fresh: list[tuple[str, str, dict[str, Any]]] = []  # (id, text, metadata) read in this chunk
    for path in files:
        try:
            _read_one(path, stored, options, max_chars, rescan, seen, fresh)
        finally:
            if on_file is not None:
                on_file()
    stored.update(_lookup(store, [doc_id for doc_id, _, _ in fresh if doc_id not in stored]))
    for doc_id, text, metadata in fresh:
        digest = content_hash(text)
        old = stored.get(doc_id)
        if old is None or old.content_hash != digest:
            change = "added" if old is None else "updated"
            plan.pending.append(PendingDocument(doc_id, text, metadata, digest, change))
        else:
            seen.skipped += 1
            if old.metadata != metadata:
                plan.metadata_updates.append((doc_id, metadata))


def _read_one(
    path: Path,
    stored: dict[str, StoredDocument],
    options: ReaderOptions,
    max_chars: int,
    rescan: bool,
    seen: _Outcomes,
    fresh: list[tuple[str, str, dict[str, Any]]],
) -> None:
    source = str(path)
    try:
        status = path.stat()
    except OSError as error:
        seen.failures.append((source, error.strerror or str(error)))
        return
    previous = stored.get(source)
    if (
        not rescan
        and previous is not None
        and previous.metadata.get("mtime_ns") == status.st_mtime_ns
        and previous.metadata.get("size") == status.st_size
    ):
        seen.seen.add(source)
        seen.sources_read.add(source)
        seen.skipped += 1
        return
    if READERS.get(path.suffix.lower()) is read_text and status.st_size > MAX_BYTES_PER_CHAR * max_chars + 4:
        # Refused unread: a multi-gigabyte log would otherwise be held in memory twice first.
        seen.failures.append((source, f"file has {status.st_size:,} bytes, over the limit of {max_chars:,} characters"))
        return
    try:
        items = read_file(path, options)
    except ReadError as error:
        seen.failures.append((source, str(error)))
        return
    seen.sources_read.add(source)
    for item in items:
        if item.id in seen.seen:
            seen.failures.append((item.id, "duplicate id: an earlier record or file already used it"))
            continue
        seen.seen.add(item.id)
        if isinstance(item, ReadFailure):
            seen.failures.append((item.id, item.reason))
            continue
        metadata = {**item.metadata, "source": source, "mtime_ns": status.st_mtime_ns, "size": status.st_size}
        try:
            document = coerce_document({"text": item.text, "metadata": metadata}, id=item.id, max_chars=max_chars)
        except InvalidDocumentError as error:
            seen.failures.append((item.id, str(error)))
            continue
        fresh.append((item.id, document.text, document.metadata))


def _lookup(store: AdapterStore | None, ids: list[str]) -> dict[str, StoredDocument]:
    return {} if store is None or not ids else store.catalog.get_many(ids)


def _stale(store: AdapterStore, roots: list[Path], seen: _Outcomes) -> list[str]:
    """Stored documents from under ``roots`` that this scan no longer produced: their file is
    gone, or it was read and no longer holds them. Files that failed to read keep theirs."""
    prefixes = [str(r) for r in roots]

    def under(value: str) -> bool:
        return any(value == p or value.startswith(p.rstrip(os.sep) + os.sep) for p in prefixes)

    candidates = [
        doc_id
        for doc_id in store.ids()
        if doc_id not in seen.seen and (under(doc_id) or under(doc_id.rsplit("#", 1)[0]))
    ]
    stale = []
    for doc_id, doc in store.catalog.get_many(candidates).items():
        source = doc.metadata.get("source")
        if isinstance(source, str) and under(source) and (source in seen.sources_read or not os.path.exists(source)):
            stale.append(doc_id)
    return stale
