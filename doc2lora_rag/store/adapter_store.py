"""``AdapterStore``: documents and their adapters on disk, safe against crashes and races.

Layout of a store directory::

    catalog.sqlite3      the catalog (see catalog.py): text, metadata, checksums, fingerprints
    adapters/<uuid>/     one PEFT adapter directory per document (bf16 safetensors + config)
    tmp/                 adapters being written; anything here after a crash is garbage
    writer.lock          flock'ed by the one process that is writing

A write goes: adapter into ``tmp/<uuid>``, fsync, rename to ``adapters/<uuid>``, then one
catalog transaction makes it visible. Replaced or deleted adapter directories are removed
only after the catalog commit. So a crash at any point leaves either the old or the new
document, never half of one; what it leaves on disk is unreferenced and cleaned on reopen.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.documents import content_hash as hash_text
from doc2lora_rag.errors import (
    AdapterFormatError,
    IncompatibleModelError,
    StoreError,
    UnknownIdError,
)
from doc2lora_rag.store.catalog import Catalog, StoredDocument
from doc2lora_rag.store.files import (
    file_sha256,
    fsync_tree,
    publish_directory,
    remove_tree,
    tree_sha256,
)
from doc2lora_rag.store.lock import WriterLock
from doc2lora_rag.store.lru import AdapterLRU
from doc2lora_rag.store.paths import default_store_path

CATALOG_FILE = "catalog.sqlite3"
STORAGE_DTYPE = torch.bfloat16
"""Adapters are stored in bf16: half the disk of fp32, and far below the hypernetwork's noise."""


class AdapterStore:
    """A directory of documents and adapters that many processes read and one writes.

    ``path=None`` is the per-user default store. ``create=False`` refuses a path that is not
    already a store. ``cache_size`` adapters stay loaded in memory (LRU).
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        create: bool = True,
        cache_size: int = 64,
        lock_timeout: float = 60.0,
    ):
        self.path = Path(path) if path is not None else default_store_path()
        catalog_path = self.path / CATALOG_FILE
        if not catalog_path.is_file():
            if not create:
                raise StoreError(f"no store at {self.path} (it has no {CATALOG_FILE})")
            if self.path.is_file() or (self.path.is_dir() and any(self.path.iterdir())):
                raise StoreError(f"{self.path} exists and is not a store; give an empty or new directory")
        self.adapters_dir = self.path / "adapters"
        self.tmp_dir = self.path / "tmp"
        for directory in (self.path, self.adapters_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(catalog_path)
        self.lock = WriterLock(self.path / "writer.lock", timeout=lock_timeout)
        self.cache = AdapterLRU(cache_size)
        self._recovered = False
        if self.lock.try_acquire():
            try:
                self.recover()
            finally:
                self.lock.release()

    def __repr__(self) -> str:
        return f"AdapterStore({str(self.path)!r}, documents={len(self)})"

    def close(self) -> None:
        self.cache.clear()
        self.catalog.close()

    def __enter__(self) -> AdapterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- model binding

    @property
    def fingerprints(self) -> dict[str, str] | None:
        """The base model and hypernetwork this store was made for (None until first bound)."""
        return self.catalog.get_meta("model")

    def bind(self, base_model_name: str, base_fingerprint: str, hypernet_fingerprint: str) -> None:
        """Record the model on first use; afterwards refuse any other model.

        Adapters only mean something to the exact base model and hypernetwork that wrote
        them, so mixing them in one store would silently give wrong answers.
        """
        wanted = {
            "base_model_name": base_model_name,
            "base_fingerprint": base_fingerprint,
            "hypernet_fingerprint": hypernet_fingerprint,
        }
        recorded = self.fingerprints
        if recorded is None:
            with self.writing(), self.catalog.transaction(bump=False):
                recorded = self.catalog.get_meta("model")
                if recorded is None:
                    self.catalog.set_meta("model", wanted)
                    self.catalog.set_meta("created_at", time.time())
                    return
        for key, what in (("base_fingerprint", "base model"), ("hypernet_fingerprint", "hypernetwork")):
            if recorded.get(key) != wanted[key]:
                raise IncompatibleModelError(
                    f"store {self.path} was made for {what} {recorded.get(key)} "
                    f"({recorded.get('base_model_name')}), not {wanted[key]} ({base_model_name}); "
                    "open it with the engine that built it, or use a new store "
                    "(doc2lora rebuild internalises a store's documents again into a new one)"
                )

    # ---------------------------------------------------------------- reading

    def __len__(self) -> int:
        return self.catalog.count()

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self.catalog.adapter_dirs_of([doc_id]))

    def ids(self) -> list[str]:
        return self.catalog.ids()

    def generation(self) -> int:
        return self.catalog.generation()

    def find(self, doc_id: str) -> StoredDocument | None:
        return self.catalog.get(doc_id)

    def get(self, ids: str | Sequence[str]) -> list[StoredDocument]:
        """The documents with these ids, in order; any unknown id raises UnknownIdError."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        found = self.catalog.get_many(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise UnknownIdError(f"no document with id {_quote(missing)} in {self.path}")
        return [found[i] for i in ids]

    def documents(self) -> list[StoredDocument]:
        """Every committed document (a consistent snapshot), oldest first."""
        return self.catalog.all()

    def find_by_hash(self, content_hash: str) -> StoredDocument | None:
        """Some document with exactly this text, if any (its adapter can be reused)."""
        return self.catalog.get_by_hash(content_hash)

    def load_adapter(self, doc_id: str) -> LoRAAdapter:
        """The adapter of one document, verified against the checksums in the catalog."""
        return self.load_document(doc_id)[1]

    def load_document(self, doc_id: str) -> tuple[StoredDocument, LoRAAdapter]:
        """One document's row and its adapter, of the same version: text and metadata read
        apart from the adapter could belong to a replacement written in between.

        A writer may replace the document between reading its row and opening its files;
        then the row is read again (once the row is stable a missing file is real damage).
        """
        for _attempt in range(5):
            doc = self.catalog.get(doc_id)
            if doc is None:
                raise UnknownIdError(f"no document with id {doc_id!r} in {self.path}")
            cached = self.cache.get(doc_id, doc.adapter_dir)
            if cached is not None:
                return doc, cached
            try:
                adapter = self._read_adapter(doc)
            except AdapterFormatError:
                latest = self.catalog.get(doc_id)
                if latest is not None and latest.adapter_dir != doc.adapter_dir:
                    continue
                raise
            self.cache.put(doc_id, doc.adapter_dir, adapter)
            return doc, adapter
        raise StoreError(f"document {doc_id!r} kept changing while it was being read")

    def load_adapters(self, ids: Sequence[str]) -> list[LoRAAdapter]:
        return [self.load_adapter(i) for i in ids]

    def _read_adapter(self, doc: StoredDocument) -> LoRAAdapter:
        directory = self.adapters_dir / doc.adapter_dir
        for name, expected in doc.files.items():
            try:
                actual = file_sha256(directory / name)
            except FileNotFoundError as error:
                raise AdapterFormatError(
                    f"adapter of document {doc.id!r} is missing its file {name} ({directory})"
                ) from error
            if actual != expected:
                raise AdapterFormatError(
                    f"adapter of document {doc.id!r} fails its sha256 check ({directory / name} "
                    "was modified); delete the document and add it again to rebuild it"
                )
        try:
            return LoRAAdapter.from_pretrained(directory)
        except AdapterFormatError as error:
            raise AdapterFormatError(f"adapter of document {doc.id!r}: {error}") from error

    def verify(self, ids: Sequence[str] | None = None) -> dict[str, str]:
        """Check every (or the given) document's adapter; returns ``{id: problem}``."""
        problems = {}
        for doc in self.catalog.all() if ids is None else self.get(ids):
            try:
                self._read_adapter(doc)
            except AdapterFormatError as error:
                problems[doc.id] = str(error)
        return problems

    # ---------------------------------------------------------------- writing

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the writer lock across several changes (each still commits on its own)."""
        with self.lock.held():
            if not self._recovered:
                self.recover()
            yield

    def put(
        self,
        doc_id: str,
        text: str,
        metadata: dict[str, Any],
        adapter: LoRAAdapter,
        *,
        content_hash: str | None = None,
    ) -> StoredDocument:
        """Insert or replace one document and its adapter atomically."""
        with self.writing():
            self._check_adapter(adapter)  # under the lock: another writer may bind the store meanwhile
            previous = self.catalog.get(doc_id)
            now = time.time()

            def row(adapter_dir: str, files: dict[str, str], nbytes: int) -> StoredDocument:
                return StoredDocument(
                    id=doc_id,
                    content_hash=content_hash or hash_text(text),
                    text=text,
                    metadata=dict(metadata),
                    adapter_dir=adapter_dir,
                    files=files,
                    rank=adapter.rank,
                    num_chunks=adapter.num_chunks,
                    nbytes=nbytes,
                    added_at=previous.added_at if previous else now,
                    updated_at=now,
                )

            return self._commit(doc_id, previous, adapter, row, bump=True)

    def replace_adapter(self, doc_id: str, adapter: LoRAAdapter, *, content_hash: str) -> StoredDocument | None:
        """Swap in another adapter of the same text (a refined one), keeping text and metadata,
        so routers need no refit. Writes nothing and returns None when the document was deleted
        or its text changed since ``content_hash`` was read: the newer version wins."""
        with self.writing():
            self._check_adapter(adapter)
            previous = self.catalog.get(doc_id)
            if previous is None or previous.content_hash != content_hash:
                return None
            if adapter.num_chunks != previous.num_chunks:
                raise ValueError(f"adapter has {adapter.num_chunks} chunks, document {doc_id!r} {previous.num_chunks}")

            def row(adapter_dir: str, files: dict[str, str], nbytes: int) -> StoredDocument:
                return dataclasses.replace(
                    previous, adapter_dir=adapter_dir, files=files, rank=adapter.rank, nbytes=nbytes
                )

            return self._commit(doc_id, previous, adapter, row, bump=False)

    def _commit(
        self,
        doc_id: str,
        previous: StoredDocument | None,
        adapter: LoRAAdapter,
        row: Callable[[str, dict[str, str], int], StoredDocument],
        *,
        bump: bool,
    ) -> StoredDocument:
        """Stage the adapter, publish it, then commit ``row`` for it (under the writer lock)."""
        name = uuid.uuid4().hex
        staged = self.tmp_dir / name
        try:
            adapter.to("cpu", STORAGE_DTYPE).save_pretrained(staged)
            fsync_tree(staged)
            files = tree_sha256(staged)
            nbytes = sum((staged / f).stat().st_size for f in files)
            publish_directory(staged, self.adapters_dir / name)
        except BaseException:
            remove_tree(staged)
            raise
        doc = row(name, files, nbytes)
        try:
            with self.catalog.transaction(bump=bump):
                self.catalog.put(doc)
        except BaseException:
            # A Ctrl-C just after COMMIT arrives here with the row already committed: its
            # adapter must stay. Anything left unreferenced is cleaned by recover().
            if not self._references(doc_id, name):
                remove_tree(self.adapters_dir / name)
            raise
        self.cache.discard(doc_id)
        if previous is not None:
            remove_tree(self.adapters_dir / previous.adapter_dir)
        return doc

    def set_metadata(self, doc_id: str, metadata: dict[str, Any]) -> None:
        """Replace a document's metadata; its adapter does not depend on it."""
        with self.writing(), self.catalog.transaction():
            if self.catalog.get(doc_id) is None:
                raise UnknownIdError(f"no document with id {doc_id!r} in {self.path}")
            self.catalog.set_metadata(doc_id, dict(metadata))

    def delete(self, ids: str | Sequence[str]) -> None:
        """Delete documents; all ids are checked first, so an unknown one deletes nothing.
        Rows are not parsed, so this is also the repair for a damaged catalog row."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        with self.writing():
            found = self.catalog.adapter_dirs_of(ids)
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownIdError(f"no document with id {_quote(missing)} in {self.path}")
            with self.catalog.transaction():
                for doc_id in found:
                    self.catalog.delete(doc_id)
            for doc_id, adapter_dir in found.items():
                self.cache.discard(doc_id)
                remove_tree(self.adapters_dir / adapter_dir)

    def recover(self) -> list[str]:
        """Remove what an interrupted writer left: staged and unreferenced adapter dirs.

        Must run under the writer lock (the only writer could be mid-publish otherwise).
        Returns the names removed.
        """
        removed = []
        for leftover in self.tmp_dir.iterdir():
            remove_tree(leftover)
            removed.append(f"tmp/{leftover.name}")
        referenced = self.catalog.adapter_dirs()
        for directory in self.adapters_dir.iterdir():
            if directory.name not in referenced:
                remove_tree(directory)
                removed.append(f"adapters/{directory.name}")
        if removed:
            self.catalog.prune_route_cache()
        self._recovered = True
        return removed

    def _references(self, doc_id: str, adapter_dir: str) -> bool:
        """Whether the committed catalog points ``doc_id`` at ``adapter_dir``; in doubt, yes
        (keeping an unreferenced directory costs disk until recover(), removing a used one loses it)."""
        try:
            return self.catalog.adapter_dirs_of([doc_id]).get(doc_id) == adapter_dir
        except StoreError:
            return True

    def _check_adapter(self, adapter: LoRAAdapter) -> None:
        """An unbound store takes the model of its first adapter; a bound one refuses others'."""
        recorded = self.fingerprints
        if recorded is None:
            self.bind(adapter.base_model_name, adapter.base_fingerprint, adapter.hypernet_fingerprint)
            return
        if (
            adapter.base_fingerprint != recorded["base_fingerprint"]
            or adapter.hypernet_fingerprint != recorded["hypernet_fingerprint"]
        ):
            raise IncompatibleModelError(
                f"adapter was made by base model {adapter.base_fingerprint} / hypernetwork "
                f"{adapter.hypernet_fingerprint}; store {self.path} holds "
                f"{recorded['base_fingerprint']} / {recorded['hypernet_fingerprint']}"
            )


def _quote(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
