"""Quality and latency of answering from adapters, against the base model with and without
the document in context, and against per-document context distillation.

Scores are SQuAD-style token F1 and answer-contains accuracy against gold answers; the
headline is the ratio adapter / in-context (1.0 = as good as reading the document).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.evaluation.likelihood import answer_nll
from doc2lora_rag.evaluation.metrics import answer_contains, normalize_answer, token_f1
from doc2lora_rag.router.base import Corpus
from doc2lora_rag.router.bm25 import BM25Router
from doc2lora_rag.training.data import QARecord, needle_records, token_counter

MODES = (
    "no_context",
    "in_context",
    "adapter",
    "refined_adapter",
    "unrelated_adapter",
    "unrelated_refined",
    "context_distillation",
)
GENERAL_QUESTIONS = Path(__file__).with_name("general_questions.json")


@dataclass
class QAReport:
    """Mean scores per mode, update times, and a few examples to read; ``per_question`` keeps
    every question's score (mode -> metric -> list, in ``questions`` order) so that two
    evaluations on the same questions can be compared pair by pair."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds_per_document: dict[str, float] = field(default_factory=dict)
    num_questions: int = 0
    num_documents: int = 0
    examples: list[dict] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    per_question: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def ratio(self, metric: str, mode: str = "adapter") -> float | None:
        reference = self.scores.get("in_context", {}).get(metric)
        value = self.scores.get(mode, {}).get(metric)
        return None if not reference or value is None else value / reference

    def to_dict(self) -> dict:
        return {
            "scores": self.scores,
            "ratios": {m: self.ratio(m) for m in ("f1", "contains")},
            **(
                {"refined_ratios": {m: self.ratio(m, "refined_adapter") for m in ("f1", "contains")}}
                if "refined_adapter" in self.scores
                else {}
            ),
            "seconds_per_document": self.seconds_per_document,
            "num_questions": self.num_questions,
            "num_documents": self.num_documents,
            "examples": self.examples,
            "questions": self.questions,
            "per_question": self.per_question,
        }


def evaluate_qa(
    engine,
    records: Sequence[QARecord],
    *,
    modes: Sequence[str] = ("no_context", "in_context", "adapter"),
    max_new_tokens: int = 48,
    batch_size: int = 8,
    cd_steps: int = 30,
    refine_steps: int = 10,
    likelihood: bool = False,
    progress: bool = True,
) -> QAReport:
    """Answer every record in each mode and score it against its gold answer; with
    ``likelihood``, also the mean negative log-likelihood of the gold answer (``nll``).
    ``refined_adapter`` is the adapter after ``refine_steps`` steps of ``Doc2LoRA.refine``;
    its update time includes the hypernetwork's."""
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    records = [r for r in records if r.answer]
    by_context: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_context[record.context].append(index)
    report = QAReport(
        num_questions=len(records), num_documents=len(by_context), questions=[r.question for r in records]
    )
    answers: dict[str, list[str]] = {}
    made: dict[str, dict] = {}
    seconds: dict[str, float] = {}  # update time per document of each kind of adapter made

    def build(kind: str, context: str) -> LoRAAdapter:
        if kind == "adapter":
            return engine.internalize(context)
        if kind == "refined_adapter":
            return engine.refine(made["adapter"][context], context, steps=refine_steps)
        # oracle context distillation: fitted on the very questions it is tested on
        from doc2lora_rag.training.context_distill import context_distill

        questions = [records[i].question for i in by_context[context]]
        return context_distill(engine, context, questions, steps=cd_steps)

    def make(kind: str) -> dict:
        """One adapter of ``kind`` per distinct document, made once, timed per document."""
        if kind not in made:
            earlier = 0.0
            if kind == "refined_adapter":  # refinement starts from the hypernetwork's adapters
                make("adapter")
                earlier = seconds["adapter"]
            made[kind], total = {}, 0.0
            for context in tqdm(by_context, desc=kind, disable=not progress):
                started = time.perf_counter()
                made[kind][context] = build(kind, context)
                total += time.perf_counter() - started
            seconds[kind] = earlier + total / max(1, len(by_context))
        return made[kind]

    for mode in modes:
        adapters = None
        if mode in ("adapter", "refined_adapter", "context_distillation"):
            adapters = make(mode)
            report.seconds_per_document[mode] = seconds[mode]
        elif mode in ("unrelated_adapter", "unrelated_refined"):
            # Every question gets the adapter of another document: how much do adapters hurt
            # questions they know nothing about (compare with no_context)?
            own = make("refined_adapter" if mode == "unrelated_refined" else "adapter")
            contexts = list(by_context)
            adapters = {c: own[contexts[(i + 1) % len(contexts)]] for i, c in enumerate(contexts)}
        answers[mode] = _answer_all(engine, records, mode, adapters, max_new_tokens, batch_size, progress)
        report.per_question[mode] = _answer_scores(answers[mode], [r.gold_answers for r in records])
        if likelihood:
            report.per_question[mode]["nll"] = answer_nll(
                engine,
                [r.question for r in records],
                [r.answer for r in records],
                contexts=[r.context for r in records] if mode == "in_context" else None,
                adapters=None if adapters is None else [adapters[r.context] for r in records],
                batch_size=batch_size,
            )
        report.scores[mode] = {metric: _mean(values) for metric, values in report.per_question[mode].items()}
    for index in range(min(5, len(records))):
        report.examples.append(
            {
                "question": records[index].question,
                "gold": records[index].answer,
                **{mode: answers[mode][index] for mode in modes},
            }
        )
    return report


def _answer_scores(answers: Sequence[str], golds: Sequence) -> dict[str, list[float]]:
    """Token F1 and answer-contains of every answer against its gold answer(s)."""
    pairs = list(zip(answers, golds, strict=True))
    return {"f1": [token_f1(a, g) for a, g in pairs], "contains": [answer_contains(a, g) for a, g in pairs]}


def _answer_all(engine, records, mode, adapters, max_new_tokens, batch_size, progress) -> list[str]:
    answers: list[str] = []
    for start in tqdm(range(0, len(records), batch_size), desc=f"answer {mode}", disable=not progress):
        batch = records[start : start + batch_size]
        questions = [r.question for r in batch]
        if mode == "in_context":
            done = engine.generate_batch(questions, contexts=[r.context for r in batch], max_new_tokens=max_new_tokens)
        elif adapters is not None:
            rows = [adapters[r.context] for r in batch]
            done = engine.generate_batch(questions, adapters=rows, max_new_tokens=max_new_tokens)
        else:
            done = engine.generate_batch(questions, max_new_tokens=max_new_tokens)
        answers.extend(c.text for c in done)
    return answers


def general_questions(path: str | Path = GENERAL_QUESTIONS) -> list[tuple[str, list[str]]]:
    """General-knowledge questions with their accepted answers, none about any document."""
    return [(item["question"], list(item["answers"])) for item in json.loads(Path(path).read_text())]


@dataclass
class GeneralReport:
    """How an adapter changes answers to questions its document says nothing about.

    ``scores`` holds F1 and answer-contains against the gold answers for the base model alone
    (``no_context``), with an unrelated document's adapter forced on (``unrelated_adapter``),
    and as the index answers (``routed``: BM25 over the documents attaches the best one only
    when it passes the relevance threshold, else the base model answers alone); ``attached``
    is the share of questions the router gave an adapter. ``agreement`` is the forced adapter
    answers' token F1 against the base model's own answers and ``unchanged`` the share of
    those answers that stay the same once normalised.
    """

    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    attached: float = 0.0
    agreement: float = 0.0
    unchanged: float = 0.0
    num_questions: int = 0
    num_documents: int = 0
    examples: list[dict] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    per_question: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_general(
    engine,
    documents: Sequence[str],
    questions: Sequence[tuple[str, Sequence[str]]] | None = None,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    refine_steps: int = 0,
    progress: bool = True,
) -> GeneralReport:
    """Answer general questions with the base model alone, then question ``i`` again with the
    adapter of ``documents[i % len(documents)]``: a knowledge module should leave what the
    model already knew as it was. With ``refine_steps``, also with that adapter refined
    (``unrelated_refined``)."""
    if not documents:
        raise ValueError("evaluate_general needs at least one document")
    questions = list(general_questions() if questions is None else questions)
    adapters = [engine.internalize(text) for text in tqdm(documents, desc="general adapters", disable=not progress)]
    rows = [adapters[i % len(adapters)] for i in range(len(questions))]
    forced = {"unrelated_adapter": rows}
    if refine_steps:
        refined = [engine.refine(a, t, steps=refine_steps) for a, t in zip(adapters, documents, strict=True)]
        forced["unrelated_refined"] = [refined[i % len(refined)] for i in range(len(questions))]
    router = BM25Router()
    ids = [str(i) for i in range(len(documents))]
    router.fit(Corpus(ids=ids, texts=list(documents), hashes=ids))
    hits = [router.search(question, 1) for question, _ in questions]
    routed = [adapters[int(h[0].id)] if h else None for h in hits]
    base_answers, routed_answers = [], []
    forced_answers: dict[str, list[str]] = {mode: [] for mode in forced}
    for start in tqdm(range(0, len(questions), batch_size), desc="general", disable=not progress):
        batch = [q for q, _ in questions[start : start + batch_size]]
        base_answers += [c.text for c in engine.generate_batch(batch, max_new_tokens=max_new_tokens)]
        for mode, chosen in forced.items():
            done = engine.generate_batch(
                batch, adapters=chosen[start : start + batch_size], max_new_tokens=max_new_tokens
            )
            forced_answers[mode] += [c.text for c in done]
        chosen = routed[start : start + batch_size]
        done = base_answers[start : start + batch_size]  # rows the router gave no adapter
        if any(a is not None for a in chosen):
            with_adapters = engine.generate_batch(batch, adapters=chosen, max_new_tokens=max_new_tokens)
            done = [c.text if a is not None else base for c, a, base in zip(with_adapters, chosen, done, strict=True)]
        routed_answers += done
    golds = [answers for _, answers in questions]
    report = GeneralReport(
        num_questions=len(questions), num_documents=len(documents), questions=[q for q, _ in questions]
    )
    report.attached = _mean(float(a is not None) for a in routed)
    adapter_answers = forced_answers["unrelated_adapter"]
    # Forced modes after routed, but unrelated_adapter keeps its place before it.
    modes = {"no_context": base_answers, "unrelated_adapter": adapter_answers, "routed": routed_answers}
    for mode, answers in {**modes, **forced_answers}.items():
        report.per_question[mode] = _answer_scores(answers, golds)
        report.scores[mode] = {metric: _mean(values) for metric, values in report.per_question[mode].items()}
    pairs = list(zip(adapter_answers, base_answers, strict=True))
    report.agreement = _mean(token_f1(a, b) for a, b in pairs)
    report.unchanged = _mean(float(normalize_answer(a) == normalize_answer(b)) for a, b in pairs)
    changed = [i for i, (a, b) in enumerate(pairs) if normalize_answer(a) != normalize_answer(b)]
    for index in changed[:3]:
        report.examples.append(
            {
                "question": questions[index][0],
                "gold": golds[index],
                "no_context": base_answers[index],
                "unrelated_adapter": adapter_answers[index],
            }
        )
    return report


NIAH_MODES = ("adapter", "focused", "focused_refined", "in_context")  # as answered, in order
NIAH_SEED = 1000  # the needles `doc2lora eval --niah` asks about; the needle benchmarks reuse them


def niah_records(engine, count: int, length: int, seed: int = NIAH_SEED, distractors: int = 0) -> list[QARecord]:
    """``count`` needle haystacks of ``length`` tokens, counted by the engine's tokenizer, each
    with ``distractors`` needles of other keys beside the one asked about."""
    return needle_records(count, length, token_counter(engine.tokenizer), seed=seed, distractors=distractors)


def evaluate_niah(
    engine,
    lengths: Sequence[int],
    *,
    count: int = 10,
    seed: int = NIAH_SEED,
    in_context_max_tokens: int | None = None,
    max_chunks: int | None = None,
    distractors: int = 0,
    refine_steps: int = 0,
    progress: bool = True,
) -> dict[int, dict]:
    """Needle retrieval accuracy by haystack length, from the adapter and (where the document
    fits in the window and under ``in_context_max_tokens``) with the document in context.
    With ``max_chunks``, also from the adapter cut down to the chunks that match the question
    best (``focused``), as the index answers from a long document. ``per_needle`` keeps each
    needle's hit per mode, for paired comparisons, and ``answers`` what each mode answered
    beside each needle's ``gold`` number, so that misses can be told apart (a near miss of the
    number or no number) without a rerun. ``distractors``: other keys' needles in each haystack
    (see ``needle_records``). ``refine_steps`` (with ``max_chunks``): also from
    those chunks refined by that many steps first (``focused_refined``), as an index with
    ``refine_on_query`` answers."""
    window = getattr(engine.model.config, "max_position_embeddings", None) or 2048
    limit = window if in_context_max_tokens is None else min(window, in_context_max_tokens)  # 0: never
    results: dict[int, dict] = {}
    for length in lengths:
        records = niah_records(engine, count, length, seed=seed, distractors=distractors)
        answers: dict[str, list[str]] = {mode: [] for mode in NIAH_MODES}
        for record in tqdm(records, desc=f"niah {length}", disable=not progress):
            said = answer_needle(
                engine, record, max_chunks=max_chunks, refine_steps=refine_steps, in_context=length + 64 <= limit
            )
            for mode, answer in said.items():
                answers[mode].append(answer)
        answers = {mode: said for mode, said in answers.items() if said}  # the modes that ran
        hits = {
            mode: [answer_contains(answer, r.answer) for answer, r in zip(said, records, strict=True)]
            for mode, said in answers.items()
        }
        results[length] = {
            "adapter": _mean(hits.get("adapter", [])),
            "in_context": _mean(hits["in_context"]) if "in_context" in hits else None,
        }
        if max_chunks is not None:
            results[length]["focused"] = _mean(hits.get("focused", []))
        if "focused_refined" in hits:
            results[length]["focused_refined"] = _mean(hits["focused_refined"])
        results[length].update(per_needle=hits, answers=answers, gold=[record.answer for record in records])
    return results


def answer_needle(
    engine, record: QARecord, *, max_chunks: int | None = None, refine_steps: int = 0, in_context: bool = False
) -> dict[str, str]:
    """One needle's answers, by mode of ``NIAH_MODES`` (see ``evaluate_niah``): from the
    haystack's adapter, from its best chunks (with ``max_chunks``), from those refined first
    (with ``refine_steps`` too) and with the haystack in context (``in_context``)."""

    def ask(**where) -> str:
        return engine.generate(record.question, max_new_tokens=16, **where)

    adapter = engine.internalize(record.context)
    answers = {"adapter": ask(adapters=[adapter])}
    if max_chunks is not None:
        chosen, _ = engine.answering_chunks(adapter, record.context, record.question, max_chunks)
        answers["focused"] = ask(adapters=[adapter if chosen is None else adapter.select_chunks(chosen)])
        if refine_steps:  # the chunks the index would refine (none: it answers unrefined)
            chosen, refinable = engine.answering_chunks(
                adapter, record.context, record.question, max_chunks, refining=True
            )
            refined = adapter if chosen is None else adapter.select_chunks(chosen)
            if refinable:
                refined = engine.refine(adapter, record.context, steps=refine_steps, chunks=refinable)
                refined = refined if chosen is None else refined.select_chunks(chosen)
            answers["focused_refined"] = ask(adapters=[refined])
    if in_context:
        answers["in_context"] = ask(context=record.context)
    return answers


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0
