"""Turn the ``data`` entries of a training config into weighted record pools."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from doc2lora_rag.training.data import (
    QARecord,
    cloze_records,
    even_sample,
    jsonl_records,
    needle_records,
    squad_records,
    swapped_answer_records,
    synthetic_fact_records,
    text_documents,
    token_counter,
    unrelated_records,
)
from doc2lora_rag.training.general import general_records

DEFAULT_TARGET = {
    "squad": "teacher",
    "jsonl": "teacher",
    "synthetic": "gold",
    "niah": "gold",
    "unrelated": "teacher",
    "general": "teacher",
    "cloze": "gold",
    "swapped": "gold",
}


@dataclass
class Source:
    kind: str
    records: list[QARecord]
    weight: float
    target: str  # "teacher" (KL to the cached teacher) or "gold" (cross-entropy to the answer)


def load_sources(specs: list[dict], tokenizer: PreTrainedTokenizerBase, *, seed: int = 0) -> list[Source]:
    sources = []
    for spec in specs:
        kind = spec["kind"]
        records = _records(kind, spec, tokenizer, spec.get("seed", seed))
        target = spec.get("target", DEFAULT_TARGET.get(kind, "teacher"))
        if target == "gold" and any(r.answer is None for r in records):
            raise ValueError(f"data source {kind!r} has records without answers; use target 'teacher'")
        if not records:
            raise ValueError(f"data source {spec} yields no records")
        sources.append(Source(kind, records, float(spec.get("weight", 1.0)), target))
    return sources


def _records(kind: str, spec: dict, tokenizer: PreTrainedTokenizerBase, seed: int) -> list[QARecord]:
    if kind in ("squad", "swapped"):
        records = _squad(spec)
        if kind == "swapped":
            records = swapped_answer_records(records, seed=seed)
        return even_sample(records, int(spec["count"])) if "count" in spec else records
    if kind == "unrelated":
        return unrelated_records(_squad(spec), int(spec.get("count", 500)), seed=seed)
    if kind == "general":
        return general_records(_documents(spec, seed), int(spec.get("count", 1000)), seed=seed)
    if kind == "cloze":
        answer_words = int(spec.get("max_answer_words", 5))
        quote_words = spec.get("quote_words") and int(spec["quote_words"])
        return cloze_records(_documents(spec, seed), int(spec.get("count", 2000)), seed, answer_words, quote_words)
    if kind == "jsonl":
        return jsonl_records(spec["path"])
    if kind == "synthetic":
        entities = spec.get("entities")
        return synthetic_fact_records(int(spec.get("count", 2000)), seed=seed, entities=entities and int(entities))
    if kind == "niah":
        per_length = int(spec.get("count", 500))
        return [
            record
            for length in spec.get("lengths", [64, 128, 256])
            for record in needle_records(
                per_length,
                int(length),
                token_counter(tokenizer),
                seed=seed,
                distractors=int(spec.get("distractors", 0)),
                repeated_digits=float(spec.get("repeated_digits", 0.0)),
            )
        ]
    raise ValueError(f"unknown data source kind {kind!r}")


def _documents(spec: dict, seed: int) -> list[str]:
    """Documents to pair with questions the source makes itself: ``synthetic_docs`` synthetic
    fact documents, with ``path`` the SQuAD training paragraphs, and with ``texts`` the lines of
    a JSONL file of ``{"text": ...}``."""
    documents = [r.context for r in synthetic_fact_records(int(spec.get("synthetic_docs", 500)), seed=seed)]
    if "path" in spec:
        documents += [r.context for r in _squad(spec)]
    if "texts" in spec:
        documents += text_documents(spec["texts"])
    return documents


def _squad(spec: dict) -> list[QARecord]:
    """The spec's SQuAD records, refusing the validation articles unless asked explicitly."""
    split = spec.get("split", "train")
    if split not in ("train", "held_out") and not spec.get("allow_validation"):
        raise ValueError("training on the SQuAD validation articles (39-48) is not allowed")
    return squad_records(spec["path"], split, spec.get("per_paragraph"), int(spec.get("held_out_articles", 0)))
