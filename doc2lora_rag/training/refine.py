"""Refinement: a few gradient steps on a generated adapter, for documents worth more than one
forward pass.

The hypernetwork's adapter is the starting point; each chunk's rank block is then fitted so
that the base model, with that block and the document-independent block attached, completes the
chunk's own sentences (``sentence_cloze``: the start of a sentence is quoted, its last two
words are the answer; with ``quote_words`` its first words are quoted and the rest is the
answer, which reaches facts in a sentence's middle). No questions about the document are
needed, so any text can be refined at ingest time. Blocks are fitted one chunk at a time, as
``Doc2LoRA.focus`` later attaches them, and the document-independent block stays as the
hypernetwork wrote it. A step fits at most ``SENTENCES_PER_STEP`` sentences, taken in turn, so
its cost does not grow with the chunk: a chunk of short sentences is covered over several
steps. Some chunks may be refined and the rest later (the index refines the chunks its
questions land on); the adapter records which are done (``LoRAAdapter.refined_chunks``).
Refined for a question, a chunk's ``QUESTION_SENTENCES`` sentences that match it best (BM25)
are fitted at every step and the rest in turn beside them: a long chunk's one relevant sentence
is otherwise seen in only a few of the steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.base_model.prompts import question_prompt
from doc2lora_rag.hypernetwork.chunking import split_sentences
from doc2lora_rag.router.chunks import best_chunks
from doc2lora_rag.training.data import sentence_cloze, sentence_continuation
from doc2lora_rag.training.fitting import fit_lora
from doc2lora_rag.training.objective import student_batch
from doc2lora_rag.training.teacher import Target

REFINE_LR = 1e-3
ANSWER_WORDS = 2
SENTENCES_PER_STEP = 10
QUESTION_SENTENCES = 2


def long_sentences(text: str) -> list[list[str]]:
    """The words of each sentence refinement fits: those of at least five words."""
    return [words for sentence in split_sentences(text) if len(words := sentence.split()) >= 5]


def sentence_endings(text: str, answer_words: int = ANSWER_WORDS) -> list[tuple[str, str]]:
    """One (question, answer) pair per sentence of at least five words: how does it end? The
    answer is the sentence's last ``answer_words`` words."""
    return [cloze for words in long_sentences(text) if (cloze := sentence_cloze(words, answer_words)) is not None]


def sentence_continuations(text: str, quote_words: int) -> list[tuple[str, str]]:
    """One (question, answer) pair per sentence of at least five words and more than
    ``quote_words``: the answer is all of it after its first ``quote_words`` words (a long
    sentence's question quotes the last 24 words before the answer)."""
    if quote_words < 1:
        raise ValueError(f"quote_words must be >= 1, not {quote_words}")
    return [cloze for words in long_sentences(text) if (cloze := sentence_continuation(words, quote_words)) is not None]


def ending_groups(pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
    """The sentences (as ``sentence_endings`` pairs) grouped by how they end, case aside, in
    order of first appearance: filler and boilerplate repeat their endings, facts rarely do."""
    groups: dict[str, list[int]] = {}
    for index, (_, ending) in enumerate(pairs):
        groups.setdefault(ending.lower(), []).append(index)
    return list(groups.values())


def sentence_windows(
    count: int,
    steps: int,
    per_step: int,
    pinned: Sequence[int] = (),
    groups: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """The sentences each step fits: the ``pinned`` ones at every step, the others
    ``per_step`` minus those at a time, in turn, wrapping around; all ``count`` of them at
    every step when they fit. Windows repeat: step ``i`` takes window ``i % len(windows)``.
    ``groups`` (``ending_groups``): a step takes at most one sentence of a group, its members in
    turn, so that a distinct ending among many alike is fitted at every step, not once in a
    while; without groups every sentence is its own."""
    pinned = sorted(set(pinned))
    rest = [kept for group in groups or [[i] for i in range(count)] if (kept := [i for i in group if i not in pinned])]
    room = per_step - len(pinned)
    if sum(len(group) for group in rest) <= room:
        return [pinned + sorted(i for group in rest for i in group)]
    if room < 1:
        raise ValueError(f"{len(pinned)} pinned sentences leave no room in steps of {per_step}")
    windows, taken = [], [0] * len(rest)
    alike = any(len(group) > 1 for group in rest)
    for start in range(steps if alike else min(steps, len(rest))):
        window = list(pinned)
        for j in range(min(room, len(rest))):
            group = (start * room + j) % len(rest)
            window.append(rest[group][taken[group] % len(rest[group])])
            taken[group] += 1
        windows.append(window)
    return windows


def question_sentences(
    question: str | None, pairs: Sequence[tuple[str, str]], k: int = QUESTION_SENTENCES
) -> list[int]:
    """The ``k`` sentences (as ``sentence_endings`` pairs) that match ``question`` best; none
    without a question, or when no sentence shares a term with it."""
    if not question or len(pairs) <= k:
        return []
    return best_chunks(question, [f"{quote} {ending}" for quote, ending in pairs], k) or []


def refine_adapter(
    engine,
    adapter: LoRAAdapter,
    chunk_texts: list[str] | tuple[str, ...],
    *,
    steps: int,
    lr: float = REFINE_LR,
    sentences_per_step: int = SENTENCES_PER_STEP,
    chunks: Sequence[int] | None = None,
    question: str | None = None,
    by_ending: bool = False,
    answer_words: int | None = None,
    quote_words: int | None = None,
) -> LoRAAdapter:
    """``adapter`` with the block of chunk ``i`` fitted for ``steps`` Adam steps to complete
    the sentences of ``chunk_texts[i]`` (their last ``answer_words`` words, default 2; or,
    with ``quote_words``, all but their first ``quote_words``), at most ``sentences_per_step``
    per step; chunks without a sentence of five words stay as made.
    ``chunks``: only these (default: all). ``question``: fit the sentences that match it at
    every step. ``by_ending``: at most one sentence of each ending per step (``ending_groups``).
    The metadata says how the last refinement went and which chunks are refined so far."""
    if steps < 0:
        raise ValueError(f"refinement steps must be >= 0, not {steps}")
    if answer_words is not None and quote_words is not None:
        raise ValueError("give answer_words (a sentence's last words) or quote_words (all but its first), not both")
    if quote_words is not None and quote_words < 1:
        raise ValueError(f"quote_words must be >= 1, not {quote_words}")
    answer_words = ANSWER_WORDS if answer_words is None and quote_words is None else answer_words
    if answer_words is not None and answer_words < 1:
        raise ValueError(f"answer_words must be >= 1, not {answer_words}")
    if sentences_per_step < 1:
        raise ValueError(f"sentences_per_step must be >= 1, not {sentences_per_step}")
    if len(chunk_texts) != adapter.num_chunks:
        raise ValueError(f"got {len(chunk_texts)} chunk texts for an adapter of {adapter.num_chunks} chunks")
    chosen = sorted(set(range(adapter.num_chunks) if chunks is None else chunks))
    if chosen and (chosen[0] < 0 or chosen[-1] >= adapter.num_chunks):
        raise ValueError(f"chunks must lie in 0..{adapter.num_chunks - 1}, not {list(chunks)}")
    if steps == 0 or not chosen:
        return adapter
    base, tokenizer = engine.base, engine.tokenizer
    size, bias_from = adapter.chunk_rank, adapter.rank - adapter.bias_rank
    paths = {name: [adapter.module_paths[name][layer] for layer in adapter.layers] for name in adapter.factors}
    fitted = {name: (a.detach().clone(), b.detach().clone()) for name, (a, b) in adapter.factors.items()}
    frozen = {
        name: (_copy(a[:, bias_from:], base.device), _copy(b[:, :, bias_from:], base.device))
        for name, (a, b) in adapter.factors.items()
    }
    for chunk in chosen:
        text = chunk_texts[chunk]
        if quote_words is None:
            pairs = sentence_endings(text, answer_words)
        else:
            pairs = sentence_continuations(text, quote_words)
        if not pairs:
            continue
        prompts = [question_prompt(tokenizer, question) for question, _ in pairs]
        targets = [Target.for_answer(tokenizer, answer) for _, answer in pairs]
        batches = [
            student_batch(tokenizer, [prompts[i] for i in window], [targets[i] for i in window]).to(base.device)
            for window in sentence_windows(
                len(pairs),
                steps,
                sentences_per_step,
                question_sentences(question, pairs)[: sentences_per_step - 1],
                ending_groups(pairs) if by_ending else None,
            )
        ]
        block = slice(chunk * size, (chunk + 1) * size)
        trainable = {
            name: (
                _copy(a[:, block], base.device).requires_grad_(),
                _copy(b[:, :, block], base.device).requires_grad_(),
            )
            for name, (a, b) in adapter.factors.items()
        }
        fit_lora(base.model, paths, trainable, batches, steps=steps, lr=lr, frozen=frozen)
        for name, (a, b) in trainable.items():
            kept_a, kept_b = fitted[name]
            kept_a[:, block] = a.detach().to(kept_a.device, kept_a.dtype)
            kept_b[:, :, block] = b.detach().to(kept_b.device, kept_b.dtype)
    done = sorted(adapter.refined_chunks | set(chosen))
    return adapter._replace(factors=fitted).tagged(
        refine_steps=steps,
        refine_by_ending=by_ending,
        refine_answer_words=answer_words,
        refine_quote_words=quote_words,
        refined_chunks=done,
    )


def _copy(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float32 copy that autograd may use: the hypernetwork writes inference-mode tensors."""
    return tensor.to(device, torch.float32, copy=True)
