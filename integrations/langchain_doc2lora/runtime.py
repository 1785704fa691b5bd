"""How the framework integrations run the engine: chat turns to a prompt, one generation at a
time per engine, token counts.

Framework-neutral on purpose: ``llama_index_doc2lora`` uses it too, so both integrations
build prompts, count tokens and serialise generations the same way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Generator, Iterator, Sequence
from typing import Any

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.engine import Doc2LoRA
from doc2lora_rag.generation.generate import Completion, complete, stream
from doc2lora_rag.index import Doc2LoRAIndex as CoreIndex
from doc2lora_rag.router import Router

DEFAULT_MAX_NEW_TOKENS = 256

_default_engine: Doc2LoRA | None = None
_default_engine_lock = threading.Lock()

# Adapters reach the model as forward hooks on the one shared model, so two generations
# running at once on the same engine would each see the other's adapters. Every generation
# the integrations start holds its engine's lock for as long as the hooks are attached.
_engine_locks: weakref.WeakKeyDictionary[Doc2LoRA, threading.Lock] = weakref.WeakKeyDictionary()
_engine_locks_guard = threading.Lock()


def default_engine() -> Doc2LoRA:
    """The embedded default engine, loaded once per process on first use."""
    global _default_engine
    if _default_engine is None:
        with _default_engine_lock:
            if _default_engine is None:
                _default_engine = Doc2LoRA.from_pretrained()
    return _default_engine


def open_index(
    owner: object,
    store: str | os.PathLike | None,
    engine: Doc2LoRA | None,
    router: str | Router,
    options: dict[str, Any],
) -> CoreIndex:
    """The core index behind a framework wrapper.

    ``store=None`` gives a fresh temporary store, removed when ``owner`` is garbage
    collected: the frameworks' default vector stores are empty, in-memory ones, and a
    wrapper made without a directory should not add to (or read from) a shared store.
    """
    if store is not None:
        return CoreIndex(store, engine, router, **options)
    directory = tempfile.mkdtemp(prefix="doc2lora-")
    try:
        index = CoreIndex(directory, engine, router, **options)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    weakref.finalize(owner, _remove_store, index, directory)
    return index


def core_index(index: Any) -> CoreIndex:
    """The core index behind whatever was bound (a framework wrapper or the index itself)."""
    if isinstance(index, CoreIndex):
        return index
    core = getattr(index, "core", None)
    if isinstance(core, CoreIndex):
        return core
    raise TypeError(f"index must be a Doc2LoRAIndex (LangChain, LlamaIndex or core), not {type(index).__name__}")


def _remove_store(index: CoreIndex, directory: str) -> None:
    index.close()
    shutil.rmtree(directory, ignore_errors=True)


def engine_lock(engine: Doc2LoRA) -> threading.Lock:
    """The lock that serialises generations on ``engine`` (a plain Lock: a stream consumed
    from executor threads may release it from another thread than the one that took it)."""
    with _engine_locks_guard:
        lock = _engine_locks.get(engine)
        if lock is None:
            lock = _engine_locks[engine] = threading.Lock()
        return lock


def last_user_text(turns: Sequence[tuple[str, str]]) -> str | None:
    """The latest user turn's text: the question that picks a long document's chunks."""
    return next((text for role, text in reversed(turns) if role == "user"), None)


def render_turns(engine: Doc2LoRA, turns: Sequence[tuple[str, str]]) -> str:
    """The prompt for ``(role, text)`` turns, through the tokenizer's own chat template.

    Consecutive turns of one role are merged (several templates insist on alternation);
    without a chat template the turns are joined as plain text.
    """
    merged: list[dict[str, str]] = []
    for role, text in turns:
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] += "\n\n" + text
        else:
            merged.append({"role": role, "content": text})
    if not merged:
        merged = [{"role": "user", "content": ""}]
    tokenizer = engine.tokenizer
    if tokenizer.chat_template is None:
        return "\n\n".join(m["content"] for m in merged) + "\n"
    return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)


def count_tokens(engine: Doc2LoRA, text: str) -> int:
    """Tokens of ``text`` as the generator tokenizes a prompt (no special tokens added)."""
    return len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


def generate(
    engine: Doc2LoRA,
    prompt: str,
    adapter: LoRAAdapter | None,
    *,
    max_new_tokens: int,
    stop: Sequence[str] | None,
) -> Completion:
    """Answer one chat-formatted prompt greedily with ``adapter`` attached (None: base model)."""
    engine.check_adapters(adapter)
    with engine_lock(engine):
        return complete(engine.base, [prompt], adapters=adapter, max_new_tokens=max_new_tokens, stop=stop or None)[0]


def generate_stream(
    engine: Doc2LoRA,
    prompt: str,
    adapter: LoRAAdapter | None,
    *,
    max_new_tokens: int,
    stop: Sequence[str] | None,
) -> Iterator[str]:
    """Like :func:`generate`, piece by piece, and like it without leading or trailing
    whitespace. The engine stays locked until the stream is exhausted or closed, so finish
    (or close) a stream before starting another generation on the same engine from the
    same thread."""
    engine.check_adapters(adapter)
    with engine_lock(engine):
        yield from _stripped(
            stream(engine.base, prompt, adapters=adapter, max_new_tokens=max_new_tokens, stop=stop or None)
        )


def _stripped(pieces: Generator[str, None, None]) -> Iterator[str]:
    """The pieces without leading and trailing whitespace, as :func:`generate` returns the
    text: whitespace is held back until text follows it."""
    pending, started = "", False
    try:
        for piece in pieces:
            if not started:
                piece = piece.lstrip()
                started = bool(piece)
            body = piece.rstrip()
            if body:
                yield pending + body
                pending = piece[len(body) :]
            else:
                pending += piece
    finally:
        pieces.close()  # a reader that stops early stops the generation (and its hooks) now
