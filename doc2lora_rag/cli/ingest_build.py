"""Making adapters: a batch of texts in, one adapter (or one failure reason) per text out.

The same function runs in-process and inside Ray workers. A batch that fails is retried one
document at a time, so one bad document costs only itself in a bulk ingest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.cli.engine_spec import EngineSpec
from doc2lora_rag.cli.ingest_plan import PendingDocument
from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.store import AdapterStore


@dataclass
class Built:
    """The adapter of one text, or why there is none; ``tokens`` feeds the tokens/s rate."""

    adapter: LoRAAdapter | None
    error: str | None
    tokens: int


@dataclass(frozen=True)
class EngineIdentity:
    """What a store is bound to, as reported by whoever loaded the engine."""

    base_model_name: str
    base_fingerprint: str
    hypernet_fingerprint: str

    @classmethod
    def of(cls, engine: Doc2LoRA) -> EngineIdentity:
        return cls(engine.base.name, engine.fingerprint, engine.hypernet.fingerprint)


class Builder(Protocol):
    """Turns batches of texts into adapters, yielding ``(batch index, results, worker name)``
    as batches finish (not necessarily in order)."""

    identity: EngineIdentity

    def run(self, batches: Sequence[Sequence[str]]) -> Iterator[tuple[int, list[Built], str]]: ...

    def close(self) -> None: ...


def internalize_batch(engine: Doc2LoRA, texts: Sequence[str]) -> list[Built]:
    """Internalise texts together (their chunks share forward passes); on failure, one by one."""
    tokens = [len(ids) for ids in engine.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    try:
        adapters = engine.internalize_many(list(texts))
    except Exception as error:
        # A document that breaks the engine must not take a thousand-file ingest down with it.
        if len(texts) == 1:
            return [Built(None, f"internalising failed: {type(error).__name__}: {error}", tokens[0])]
        return [internalize_batch(engine, [text])[0] for text in texts]
    return [Built(a, None, n) for a, n in zip(adapters, tokens, strict=True)]


class LocalBuilder:
    """Internalises in this process, batch after batch."""

    def __init__(self, engine: Doc2LoRA):
        self.engine = engine
        self.identity = EngineIdentity.of(engine)

    def run(self, batches: Sequence[Sequence[str]]) -> Iterator[tuple[int, list[Built], str]]:
        for index, texts in enumerate(batches):
            yield index, internalize_batch(self.engine, texts), "local"

    def close(self) -> None:
        pass


def bound(store: AdapterStore, spec: EngineSpec, builder: Builder, untrained: bool) -> Builder:
    """Bind the store to the builder's model (refusing another one) before any work is sent."""
    identity = builder.identity
    try:
        store.bind(identity.base_model_name, identity.base_fingerprint, identity.hypernet_fingerprint)
    except BaseException:
        builder.close()
        raise
    spec.remember(store, untrained)
    return builder


def local_builder(store: AdapterStore, spec: EngineSpec, warn: Callable[[str], None]) -> Builder:
    """Load the engine in this process and bind the store to it."""
    engine = spec.load(warn)
    return bound(store, spec, LocalBuilder(engine), spec.untrained(engine))


def commit(store: AdapterStore, doc: PendingDocument, adapter: LoRAAdapter) -> None:
    """Store one document with its adapter, tagged as ``Doc2LoRAIndex`` tags it."""
    tagged = adapter.tagged(id=doc.id, content_hash=doc.content_hash)
    store.put(doc.id, doc.text, doc.metadata, tagged, content_hash=doc.content_hash)
