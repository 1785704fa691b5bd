"""Split a document into chat-wrapped chunks, and pad chunks into batches.

Each chunk yields its own rank-r LoRA and the chunk LoRAs are concatenated, so documents far
beyond the base model's context window can be internalised: no chunk ever exceeds it.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from doc2lora_rag.base_model.prompts import ChatWrapper


def chunk_token_ids(
    tokenizer: PreTrainedTokenizerBase, wrapper: ChatWrapper, text: str, chunk_size: int
) -> list[list[int]]:
    """Token ids of each chunk of at most ``chunk_size`` document tokens, chat-wrapped."""
    return [wrapper.wrap(ids) for ids in _split(tokenizer, text, chunk_size)]


def chunk_texts(tokenizer: PreTrainedTokenizerBase, text: str, chunk_size: int) -> list[str]:
    """The text of each chunk, split exactly as :func:`chunk_token_ids` splits it."""
    return [tokenizer.decode(ids) for ids in _split(tokenizer, text, chunk_size)]


def _split(tokenizer: PreTrainedTokenizerBase, text: str, chunk_size: int) -> list[list[int]]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]


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
