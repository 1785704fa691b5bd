"""Split a document into chat-wrapped chunks, and pad chunks into batches.

Each chunk yields its own rank-r LoRA and the chunk LoRAs are concatenated, so documents far
beyond the base model's context window can be internalised: no chunk ever exceeds it.

Chunks end where sentences end (``"sentences"``, the default) whenever a sentence fits: a fact
cut in two by a chunk boundary is held by neither chunk's adapter. ``"tokens"`` cuts every
``chunk_size`` tokens, as adapters made before sentence boundaries were; an adapter records its
splitting (``LoRAAdapter.chunking``) so that its chunks can be matched to their text again.
"""

from __future__ import annotations

import bisect
import math
import re

import torch
from transformers import PreTrainedTokenizerBase

from doc2lora_rag.base_model.prompts import ChatWrapper

CHUNKINGS = ("sentences", "tokens")
DEFAULT_CHUNKING = "sentences"
# Where a new sentence starts: after . ! ? (and any closing quotes or brackets) and whitespace,
# or after a line break.
_SENTENCE_START = re.compile(r"(?:[.!?][\"'\u201d\u2019)\]]*\s+|\n\s*)(?=\S)")


def chunk_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    wrapper: ChatWrapper,
    text: str,
    chunk_size: int,
    chunking: str = DEFAULT_CHUNKING,
) -> list[list[int]]:
    """Token ids of each chunk of at most ``chunk_size`` document tokens, chat-wrapped."""
    return [wrapper.wrap(ids) for ids in split_token_ids(tokenizer, text, chunk_size, chunking)]


def chunk_texts(
    tokenizer: PreTrainedTokenizerBase, text: str, chunk_size: int, chunking: str = DEFAULT_CHUNKING
) -> list[str]:
    """The text of each chunk, split exactly as :func:`chunk_token_ids` splits it."""
    return [tokenizer.decode(ids) for ids in split_token_ids(tokenizer, text, chunk_size, chunking)]


def check_chunking(chunking: str) -> str:
    """``chunking`` itself, or a ValueError naming the rules there are."""
    if chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {CHUNKINGS}, not {chunking!r}")
    return chunking


def split_sentences(text: str) -> list[str]:
    """The text's sentences, cut where :func:`split_token_ids` may end a chunk."""
    starts = [0, *(m.end() for m in _SENTENCE_START.finditer(text)), len(text)]
    return [text[a:b].strip() for a, b in zip(starts, starts[1:], strict=False) if text[a:b].strip()]


def split_token_ids(
    tokenizer: PreTrainedTokenizerBase, text: str, chunk_size: int, chunking: str = DEFAULT_CHUNKING
) -> list[list[int]]:
    """The document's token ids in chunks of at most ``chunk_size``; the ids are those of the
    whole text tokenised at once, so chunking never changes how a word is tokenised."""
    if check_chunking(chunking) == "tokens":
        ids = tokenizer.encode(text, add_special_tokens=False)
        return [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]
    ids, cuts = _sentence_cuts(tokenizer, text)
    return [ids[begin:end] for begin, end in _pack(cuts, len(ids), chunk_size)]


def split_into_parts(
    tokenizer: PreTrainedTokenizerBase, text: str, parts: int, max_tokens: int, chunking: str = DEFAULT_CHUNKING
) -> list[list[int]]:
    """The first ``max_tokens`` tokens of the document in ``parts`` pieces of about equal size
    (fewer when it is too short: a piece has at least 16 tokens). With ``"sentences"`` each
    cut moves to the sentence start nearest to it within half a piece, so that training splits
    documents as :func:`split_token_ids` splits them when adapters are made."""
    if check_chunking(chunking) == "tokens":
        ids, cuts = tokenizer.encode(text, add_special_tokens=False)[:max_tokens], []
    else:
        ids, cuts = _sentence_cuts(tokenizer, text)
        ids, cuts = ids[:max_tokens], [cut for cut in cuts if cut < max_tokens]
    parts = max(1, min(parts, len(ids) // 16))
    size = math.ceil(len(ids) / parts)
    bounds = [0]
    for k in range(1, parts):
        even = k * size
        near = [cut for cut in cuts if abs(cut - even) <= size / 2 and cut > bounds[-1]]
        bounds.append(min(near, key=lambda cut: abs(cut - even)) if near else max(even, bounds[-1] + 1))
    bounds.append(len(ids))
    return [ids[begin:end] for begin, end in zip(bounds, bounds[1:], strict=False) if end > begin]


def _sentence_cuts(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[int]]:
    """The text's token ids and, ascending, the index of each token that opens a sentence."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, starts = encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]
    # The token holding a sentence's first character opens it (byte-level tokens carry the
    # space before a word, so that token may start one character earlier).
    cuts = sorted({bisect.bisect_right(starts, m.end()) - 1 for m in _SENTENCE_START.finditer(text)} - {0})
    return ids, cuts


def _pack(cuts: list[int], length: int, chunk_size: int) -> list[tuple[int, int]]:
    """Spans of at most ``chunk_size`` tokens, each ending at the last allowed cut that fits
    (or after ``chunk_size`` tokens when a single sentence is longer than that)."""
    spans, begin = [], 0
    while begin < length:
        end = min(begin + chunk_size, length)
        if end < length:
            fitting = bisect.bisect_right(cuts, end) - 1
            if fitting >= 0 and cuts[fitting] > begin:
                end = cuts[fitting]
        spans.append((begin, end))
        begin = end
    return spans


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and a boolean ``attention_mask``, padded on the right."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = True
    return ids, mask


def token_budget_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group indices (longest first) so that rows x longest row stays within ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches
