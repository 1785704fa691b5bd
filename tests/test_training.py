"""Meta-training on tiny random models: loss goes down, resume is exact, caches are reused."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from doc2lora_rag.base_model.fingerprint import model_fingerprint
from doc2lora_rag.base_model.prompts import question_prompt
from doc2lora_rag.evaluation.evaluate import general_questions
from doc2lora_rag.evaluation.metrics import normalize_answer
from doc2lora_rag.hypernetwork.config import HypernetConfig
from doc2lora_rag.hypernetwork.model import HyperNetwork
from doc2lora_rag.testing import tiny_base_model
from doc2lora_rag.training.data import (
    QARecord,
    cloze_records,
    has_repeated_digit,
    needle_records,
    squad_records,
    swapped_answer_records,
    synthetic_fact_records,
    token_counter,
    unrelated_records,
)
from doc2lora_rag.training.general import general_records, general_training_questions
from doc2lora_rag.training.objective import (
    distillation_loss,
    distillation_losses,
    response_logits,
    student_batch,
)
from doc2lora_rag.training.plots import plot_metrics, probe_series
from doc2lora_rag.training.sources import DEFAULT_TARGET, load_sources
from doc2lora_rag.training.teacher import Target, Teacher, TeacherCache
from doc2lora_rag.training.trainer import TrainConfig, Trainer, adapter_spread, learning_rate, step_autocast_dtype

SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev-v1.1.json.gz"
TINY_NET = {"width": 32, "num_blocks": 1, "num_heads": 4, "num_kv_heads": 2, "head_width": 16, "chunk_size": 64}


def _config(out: Path, steps: int, **overrides) -> TrainConfig:
    options = dict(
        out=str(out),
        steps=steps,
        batch_size=4,
        lr=3e-3,
        warmup_steps=3,
        save_every=5,
        log_every=1,
        max_doc_tokens=160,
        data=[{"kind": "synthetic", "count": 4}],
        hypernet=TINY_NET,
    )
    return TrainConfig(**{**options, **overrides})


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


@pytest.mark.parametrize("step_dtype", [None, "bfloat16"])
def test_a_few_dozen_steps_lower_the_loss(tmp_path: Path, step_dtype: str | None) -> None:
    config = _config(tmp_path, 40, data=[{"kind": "synthetic", "count": 1}], step_dtype=step_dtype)
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    trainer.train()
    losses = _losses(tmp_path)
    first = sum(losses[s] for s in range(1, 6)) / 5
    last = sum(losses[s] for s in range(36, 41)) / 5
    assert last < 0.85 * first, (first, last)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "checkpoint" / "hypernet.safetensors").is_file()


def test_resumed_run_continues_the_same_trajectory(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    Trainer(_config(straight, 10), base=tiny_base_model(max_positions=512), progress=False).train()
    Trainer(_config(resumed, 10), base=tiny_base_model(max_positions=512), progress=False).train(until=5)
    with open(resumed / "metrics.jsonl", "a") as handle:  # logged past the checkpoint, then killed mid-row
        handle.write('{"step": 6, "loss": 99.0}\n{"step": 7, "lo')
    again = Trainer(_config(resumed, 10), base=tiny_base_model(max_positions=512), progress=False)
    assert again.step == 5
    again.train()
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))  # each step once, the stale rows gone
    a, b = _losses(straight), _losses(resumed)
    for step in range(6, 11):
        assert math.isclose(a[step], b[step], rel_tol=1e-4), (step, a[step], b[step])


def test_bf16_steps_compute_the_same_loss_up_to_rounding(tmp_path: Path) -> None:
    """``step_dtype`` changes the precision of the steps' matrix products, nothing else: the
    first losses match the fp32 run's closely but not exactly."""
    runs = {}
    for step_dtype in (None, "bfloat16"):
        out = tmp_path / str(step_dtype)
        Trainer(_config(out, 3, step_dtype=step_dtype), base=tiny_base_model(max_positions=512), progress=False).train()
        runs[step_dtype] = _losses(out)
    for step in (1, 2, 3):
        exact, fast = runs[None][step], runs["bfloat16"][step]
        assert exact != fast and math.isclose(exact, fast, rel_tol=0.05), (step, exact, fast)


def test_step_dtype_auto_takes_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from doc2lora_rag.training import trainer as trainer_module

    cpu = torch.device("cpu")
    assert step_autocast_dtype(None, cpu) is None
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: True)
    assert step_autocast_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: False)
    assert step_autocast_dtype("auto", cpu) is None
    # asked for by name, bf16 is used, with a warning where it is emulated
    with pytest.warns(UserWarning, match="emulated"):
        assert step_autocast_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="step_dtype"):
        step_autocast_dtype("int8", cpu)
    with pytest.raises(ValueError, match="step_dtype"):
        step_autocast_dtype("bf16", cpu)


def test_time_budget_stops_with_a_checkpoint(tmp_path: Path) -> None:
    trainer = Trainer(_config(tmp_path, 10), base=tiny_base_model(max_positions=512), progress=False)
    trainer.train(minutes=0)  # spent at once: one step, then stop
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert trainer.step == state["step"] == 1


def test_a_save_cut_short_neither_loses_the_checkpoint_nor_blocks_the_next_save(tmp_path: Path) -> None:
    Trainer(_config(tmp_path, 10), base=tiny_base_model(max_positions=512), progress=False).train(until=5)
    checkpoint, old = tmp_path / "checkpoint", tmp_path / "checkpoint.old"
    checkpoint.rename(old)  # cut short between its two renames: only checkpoint.old is complete
    trainer = Trainer(_config(tmp_path, 10), base=tiny_base_model(max_positions=512), progress=False)
    assert trainer.step == 5
    trainer.train(until=6)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 6 and not old.exists()
    shutil.copytree(checkpoint, old)  # cut short while removing checkpoint.old
    trainer.train(until=7)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 7 and not old.exists()


def test_teacher_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tiny_base_model()
    records = synthetic_fact_records(3, seed=5)
    cache = TeacherCache(tmp_path, Teacher(base, top_k=4, max_new_tokens=6))
    assert cache.fill(records, progress=False) == 3
    first = cache.get(records[0])
    assert first is not None and first.topk_ids.shape == (len(first.tokens), 4)

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran again although every target is cached")

    reopened = TeacherCache(tmp_path, Teacher(base, top_k=4, max_new_tokens=6))
    monkeypatch.setattr(reopened.teacher, "generate", refuse)
    assert reopened.fill(records, progress=False) == 0
    assert torch.equal(reopened.get(records[0]).tokens, first.tokens)
    # Other settings are other keys: nothing is reused across them.
    assert TeacherCache(tmp_path, Teacher(base, top_k=8, max_new_tokens=6)).missing(records) == records
    low_precision = tiny_base_model()
    low_precision.model.to(torch.bfloat16)
    assert model_fingerprint(low_precision.model) == model_fingerprint(base.model)  # the same weights
    assert TeacherCache(tmp_path, Teacher(low_precision, top_k=4, max_new_tokens=6)).missing(records) == records


def test_questions_the_teacher_answers_without_their_document_share_one_entry(tmp_path: Path) -> None:
    base = tiny_base_model()
    cache = TeacherCache(tmp_path, Teacher(base, top_k=4, max_new_tokens=6))
    bare = [QARecord(doc, "What is ten plus one?", teacher_sees_context=False) for doc in ("a b", "c d", "e f")]
    read = [QARecord(doc, "What is ten plus one?") for doc in ("a b", "c d")]
    assert cache.fill(bare + read, progress=False) == 3  # one bare question, two documents
    assert cache.missing(bare + read) == []
    assert torch.equal(cache.get(bare[0]).tokens, cache.get(bare[2]).tokens)


def test_teacher_targets_with_nan_are_refused_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tiny_base_model()
    records = synthetic_fact_records(2, seed=5)
    cache = TeacherCache(tmp_path, Teacher(base, top_k=4, max_new_tokens=6))
    generate = cache.teacher.generate

    def nan_teacher(prompts):
        *good, last = generate(prompts)
        logprobs = last.topk_logprobs.clone()
        logprobs[0, 0] = float("nan")
        return [*good, Target(last.tokens, last.topk_ids, logprobs)]

    monkeypatch.setattr(cache.teacher, "generate", nan_teacher)
    with pytest.raises(FloatingPointError, match="NaN log-probs for 1 of 2"):
        cache.fill(records, progress=False)
    assert cache.missing(records) == records


def test_gold_target_loss_is_cross_entropy() -> None:
    base = tiny_base_model()
    tokens = base.tokenizer.encode("42", add_special_tokens=False) + [base.tokenizer.eos_token_id]
    target = Target.gold(tokens, top_k=4)
    prompt = question_prompt(base.tokenizer, "What is the answer?")
    batch = student_batch(base.tokenizer, [prompt], [target])
    with torch.no_grad():
        logits = response_logits(base.model, batch)
        loss = distillation_loss(logits, batch)
        expected = -logits.log_softmax(-1)[0, torch.arange(len(tokens)), torch.tensor(tokens)].mean()
    assert torch.allclose(loss, expected, atol=1e-5)


def _short_and_long_answers(base) -> tuple[list[str], list[Target]]:
    """Two questions' prompts and gold targets: a one-token answer and a longer one."""
    answers = ["7", "a much longer answer"]
    targets = [Target.gold(base.tokenizer.encode(a, add_special_tokens=False) + [base.tokenizer.eos_token_id], top_k=4)
               for a in answers]
    return [question_prompt(base.tokenizer, q) for q in ("Which number?", "What else?")], targets


def test_row_loss_averages_each_rows_own_tokens() -> None:
    base = tiny_base_model()
    prompts, targets = _short_and_long_answers(base)
    batch = student_batch(base.tokenizer, prompts, targets)
    with torch.no_grad():
        rows = distillation_losses(response_logits(base.model, batch), batch)[1]
        alone = [distillation_loss(response_logits(base.model, one), one)
                 for one in (student_batch(base.tokenizer, [p], [t]) for p, t in zip(prompts, targets, strict=True))]
    assert rows.shape == (2,)
    assert torch.allclose(rows, torch.stack(alone), atol=1e-4)


def test_the_first_token_weight_counts_each_answers_first_token_that_many_times() -> None:
    base = tiny_base_model()
    prompts, targets = _short_and_long_answers(base)
    batch = student_batch(base.tokenizer, prompts, targets)
    with torch.no_grad():
        logits = response_logits(base.model, batch)
        loss, rows = distillation_losses(logits, batch, first_token_weight=3.0)
        nll = -logits.log_softmax(-1).gather(-1, batch.topk_ids[..., :1]).squeeze(-1)
    lengths = [len(t.tokens) for t in targets]
    weighted = [3 * nll[r, 0] + nll[r, 1 : lengths[r]].sum() for r in range(2)]
    assert torch.allclose(rows, torch.stack([w / (n + 2) for w, n in zip(weighted, lengths, strict=True)]), atol=1e-4)
    assert torch.allclose(loss, sum(weighted) / (sum(lengths) + 4), atol=1e-4)
    assert torch.equal(distillation_losses(logits, batch, 1.0)[0], distillation_loss(logits, batch))


def test_the_first_token_weight_shapes_training_and_leaves_the_probe_alone(tmp_path: Path) -> None:
    config = _config(tmp_path, 1, first_token_weight=4.0, probe_records=8)
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    with torch.no_grad():
        for weight in trainer.hypernet.heads.b_weight.values():
            weight.normal_(0, 0.5)
    batch, records = trainer.sample(0), trainer.probe_set()
    weighted_loss, weighted_probe = trainer.loss(batch)[0].item(), trainer.probe(records)
    trainer.config = dataclasses.replace(config, first_token_weight=1.0)
    assert trainer.loss(batch)[0].item() != pytest.approx(weighted_loss, rel=1e-4)
    assert trainer.probe(records) == weighted_probe


def test_per_row_contrast_counts_only_rows_that_read_their_document(tmp_path: Path) -> None:
    config = _config(tmp_path, 1, contrastive_weight=1.0, contrastive_margin=2.0, contrastive_per_row=True,
                     data=[{"kind": "synthetic", "count": 4}])
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    records = [record for record, _, _ in trainer.sample(0)][:3]
    records[2] = dataclasses.replace(records[2], teacher_sees_context=False)
    tokenizer = trainer.base.tokenizer
    targets = [Target.gold(tokenizer.encode("12", add_special_tokens=False), top_k=4)] * 3
    student = student_batch(tokenizer, [question_prompt(tokenizer, r.question) for r in records], targets)
    vocabulary = trainer.base.model.config.vocab_size
    logits_other = torch.zeros(3, student.response_length, vocabulary)  # uniform: loss log(V) per token
    uniform = math.log(vocabulary)
    own = torch.tensor([uniform - 0.5, uniform - 3.0, uniform - 5.0])
    other = distillation_losses(logits_other, student)[1]
    term = trainer._shortfall(own.mean(), torch.tensor(uniform), own, other, records)
    # Row gaps 0.5 and 3.0 against a margin of 2: shortfalls 1.5 and 0; the third row (an
    # unrelated question) is left out although its gap is the largest.
    assert term.item() == pytest.approx(0.75, abs=1e-4)
    batch_wide = dataclasses.replace(config, contrastive_per_row=False)
    trainer.config = batch_wide
    assert trainer._shortfall(own.mean(), torch.tensor(uniform), own, other, records).item() == 0.0


def test_kl_to_the_students_own_top_k_is_its_missing_mass() -> None:
    base = tiny_base_model()
    prompt = question_prompt(base.tokenizer, "Hello?")
    tokens = torch.tensor(base.tokenizer.encode("abc", add_special_tokens=False))
    placeholder = Target(tokens, torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5))
    batch = student_batch(base.tokenizer, [prompt], [placeholder])
    with torch.no_grad():
        top = response_logits(base.model, batch).log_softmax(-1).topk(5, dim=-1)
    own = Target(tokens, top.indices[0], top.values[0])
    batch = student_batch(base.tokenizer, [prompt], [own])
    with torch.no_grad():
        own_loss = distillation_loss(response_logits(base.model, batch), batch)
    # The teacher is renormalised over its top k: matching it in proportion leaves exactly
    # -log(mass the student puts on those k tokens), which training pushes to zero.
    expected = -top.values[0].exp().sum(-1).log().mean()
    assert torch.allclose(own_loss, expected, atol=1e-5)
    assert own_loss.item() > 0


def test_learning_rate_schedule() -> None:
    config = TrainConfig(out="unused", steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 55) == pytest.approx(0.55)
    assert learning_rate(config, 100) == pytest.approx(0.1)


@pytest.mark.skipif(not SQUAD.is_file(), reason="SQuAD dev file not present")
def test_squad_split_and_validation_guard() -> None:
    train = squad_records(SQUAD, "train")
    validation = squad_records(SQUAD, "validation")
    assert len(train) + len(validation) == 10570
    assert not {r.context for r in train} & {r.context for r in validation}
    base = tiny_base_model()
    with pytest.raises(ValueError, match="validation"):
        load_sources([{"kind": "squad", "path": str(SQUAD), "split": "validation"}], base.tokenizer)


@pytest.mark.skipif(not SQUAD.is_file(), reason="SQuAD dev file not present")
def test_held_out_training_articles_leave_every_squad_source() -> None:
    train, kept = squad_records(SQUAD, "train"), squad_records(SQUAD, "train", held_out_articles=3)
    held_out = squad_records(SQUAD, "held_out", held_out_articles=3)
    assert kept + held_out == train and kept and held_out
    assert not {r.context for r in kept} & {r.context for r in held_out}
    with pytest.raises(ValueError, match="held_out_articles"):
        squad_records(SQUAD, "held_out")
    with pytest.raises(ValueError, match="between"):
        squad_records(SQUAD, "train", held_out_articles=38)
    base = tiny_base_model()
    spec = {"path": str(SQUAD), "held_out_articles": 3, "count": 300, "per_paragraph": 1}
    squad, unrelated, general = load_sources(
        [{**spec, "kind": kind} for kind in ("squad", "unrelated", "general")], base.tokenizer
    )
    held_out_contexts = {r.context for r in held_out}
    for source in (squad, unrelated, general):
        assert not held_out_contexts & {r.context for r in source.records}, source.kind
    probe = load_sources([{**spec, "kind": "squad", "split": "held_out"}], base.tokenizer)[0]
    assert {r.context for r in probe.records} == held_out_contexts


@pytest.mark.skipif(not SQUAD.is_file(), reason="SQuAD dev file not present")
def test_squad_count_takes_an_even_sample_across_the_articles() -> None:
    spec = {"kind": "squad", "path": str(SQUAD), "per_paragraph": 1}
    everything = squad_records(SQUAD, "train", per_paragraph=1)
    (sampled,) = load_sources([{**spec, "count": 50}], tiny_base_model().tokenizer)
    assert len(sampled.records) == 50 and set(sampled.records) <= set(everything)
    assert sampled.records[0] == everything[0] and sampled.records[-1] in everything[-len(everything) // 50 :]
    (whole,) = load_sources([{**spec, "count": 10**6}], tiny_base_model().tokenizer)
    assert whole.records == everything


def test_synthetic_and_needle_generators_are_seeded_and_answerable() -> None:
    first, again = synthetic_fact_records(20, seed=3), synthetic_fact_records(20, seed=3)
    assert first == again and first != synthetic_fact_records(20, seed=4)
    assert all(r.answer in r.context for r in first)
    assert len({r.question for r in first}) == len(first)  # fresh names: every question is new
    # A small pool of names: the same question recurs with other answers in other documents.
    pooled = synthetic_fact_records(200, seed=3, entities=4)
    assert all(r.answer in r.context for r in pooled)
    answers: dict[str, set[str]] = {}
    for record in pooled:
        answers.setdefault(record.question, set()).add(record.answer)
    assert len(answers) < 100 and max(len(a) for a in answers.values()) > 3
    base = tiny_base_model()
    count = token_counter(base.tokenizer)

    needles = needle_records(5, 300, count, seed=1)
    for record in needles:
        assert record.answer in record.context
        assert 250 <= count(record.context) <= 360
    shared = needle_records(12, 60, count, seed=1, keys=["teal heron", "amber lynx"])
    assert {r.question for r in shared} == {
        "What is the secret number of the teal heron?",
        "What is the secret number of the amber lynx?",
    }
    assert len({r.answer for r in shared}) > 2 and all(r.answer in r.context for r in shared)


def test_distractor_needles_join_the_same_haystacks_with_other_keys_and_numbers() -> None:
    base = tiny_base_model()
    count = token_counter(base.tokenizer)

    plain = needle_records(6, 200, count, seed=2)
    crowded = needle_records(6, 200, count, seed=2, distractors=4)
    for alone, record in zip(plain, crowded, strict=True):
        assert (record.question, record.answer) == (alone.question, alone.answer)
        key = record.question.removeprefix("What is the secret number of the ").removesuffix("?")
        facts = re.findall(r"The secret number of the ([a-z ]+) is (\d+)\.", record.context)
        assert len(facts) == 5 and len({k for k, _ in facts}) == 5
        assert [n for k, n in facts if k == key] == [record.answer]
        assert record.answer not in [n for k, n in facts if k != key]
        # The filler is the same: taking the other needles out gives the one-needle haystack.
        others = {f"The secret number of the {k} is {n}." for k, n in facts if k != key}
        assert " ".join(s for s in re.split(r"(?<=\.) ", record.context) if s not in others) == alone.context
    with pytest.raises(ValueError, match="distractors must be >= 0"):
        needle_records(1, 100, count, distractors=-1)
    (source,) = load_sources([{"kind": "niah", "count": 6, "lengths": [200], "distractors": 4}], base.tokenizer, seed=2)
    assert [r.context for r in source.records] == [r.context for r in crowded]
    with pytest.raises(ValueError, match="distinct keys"):
        needle_records(1, 100, count, keys=["teal heron", "amber lynx"], distractors=2)


def test_needle_numbers_can_be_drawn_with_a_digit_twice_in_a_row() -> None:
    base = tiny_base_model()
    count = token_counter(base.tokenizer)

    plain = needle_records(60, 60, count, seed=3)
    every = needle_records(60, 60, count, seed=3, repeated_digits=1.0)
    half = needle_records(60, 60, count, seed=3, repeated_digits=0.5)

    def share(records: list[QARecord]) -> float:
        return sum(has_repeated_digit(r.answer) for r in records) / len(records)

    assert all(has_repeated_digit(r.answer) and r.answer in r.context for r in every)
    assert 0.1 < share(plain) < share(half) < 1.0
    assert all(1000 <= int(r.answer) <= 99999 for r in every + half)
    assert [has_repeated_digit(n) for n in ("42777", "80400", "1212", "90817")] == [True, True, False, False]
    with pytest.raises(ValueError, match="repeated_digits must be a share"):
        needle_records(1, 60, count, repeated_digits=1.5)
    spec = {"kind": "niah", "count": 60, "lengths": [60], "repeated_digits": 1.0}
    (source,) = load_sources([spec], base.tokenizer, seed=3)
    assert [r.answer for r in source.records] == [r.answer for r in every]


def test_cloze_questions_quote_a_sentence_start_and_ask_for_its_end() -> None:
    long_sentence = " ".join(f"word{i}" for i in range(40)) + "."
    documents = ["Ada keeps bees by the river. Tiny. The hives stand in a row of nine.", long_sentence]
    records = cloze_records(documents, 200, seed=1, max_answer_words=3)
    assert len(records) == 200 and {r.source for r in records} == {"cloze"}
    assert {r.context for r in records} == set(documents)  # "Tiny." is too short to ask about
    for record in records:
        start = record.question.split('"')[1].removesuffix(" ...").removeprefix("... ")
        ending = f"{start} {record.answer}"
        assert ending in record.context and 1 <= len(record.answer.split()) <= 3
        assert len(start.split()) >= 4 and len(start.split()) <= 24
        assert not record.answer.endswith(".")
    assert any(r.question.split('"')[1].startswith("... ") for r in records if r.context == long_sentence)
    assert records == cloze_records(documents, 200, seed=1, max_answer_words=3)
    assert records != cloze_records(documents, 200, seed=2, max_answer_words=3)
    with pytest.raises(ValueError, match="at least 5 words"):
        cloze_records(["Too short. Also."], 3)
    with pytest.raises(ValueError, match="max_answer_words"):
        cloze_records(documents, 3, max_answer_words=0)


def test_cloze_questions_with_quote_words_ask_for_all_of_a_sentence_after_its_start() -> None:
    documents = ["Ada keeps bees by the river. Tiny one here. The hives stand in a row of nine."]
    records = cloze_records(documents, 50, seed=3, quote_words=3)
    assert len(records) == 50
    asked = set()
    for record in records:
        start = record.question.split('"')[1].removesuffix(" ...")
        assert len(start.split()) == 3 and f"{start} {record.answer}." in record.context
        asked.add(start)
    assert asked == {"Ada keeps bees", "The hives stand"}  # "Tiny one here." has too few words
    with pytest.raises(ValueError, match="quote_words"):
        cloze_records(documents, 3, quote_words=0)
    with pytest.raises(ValueError, match="at least 9 words"):  # the longest sentence has eight
        cloze_records(documents, 3, quote_words=8)
    with pytest.raises(ValueError, match="at least 5 words"):
        cloze_records([], 3)


def test_cloze_and_general_sources_read_your_own_unlabelled_texts(tmp_path: Path) -> None:
    base = tiny_base_model()
    texts = tmp_path / "texts.jsonl"
    mine = ["The lighthouse on Orrin Point was painted green in 1911.", "Our canteen serves soup on Tuesdays."]
    texts.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(mine)) + "\n\n")
    spec = {"texts": str(texts), "synthetic_docs": 0, "count": 20}
    cloze, general = load_sources([{**spec, "kind": "cloze"}, {**spec, "kind": "general"}], base.tokenizer)
    assert {r.context for r in cloze.records} == set(mine) == {r.context for r in general.records}
    assert all(r.answer in r.context for r in cloze.records)
    (quoted,) = load_sources([{**spec, "kind": "cloze", "quote_words": 3}], base.tokenizer)
    assert {r.question.split('"')[1] for r in quoted.records} == {"The lighthouse on ...", "Our canteen serves ..."}
    texts.write_text(json.dumps({"text": mine[0]}) + "\n" + json.dumps({"body": "no text field"}) + "\n")
    with pytest.raises(ValueError, match=r"texts.jsonl:2: needs a non-empty 'text' field"):
        load_sources([{**spec, "kind": "cloze"}], base.tokenizer)


@pytest.mark.skipif(not SQUAD.is_file(), reason="needs the shared SQuAD file")
def test_cloze_source_asks_about_training_paragraphs_with_gold_targets() -> None:
    base = tiny_base_model()
    spec = {"kind": "cloze", "path": str(SQUAD), "count": 50, "synthetic_docs": 5, "held_out_articles": 3}
    (source,) = load_sources([spec], base.tokenizer, seed=4)
    assert source.target == "gold" == DEFAULT_TARGET["cloze"] and len(source.records) == 50
    training = {r.context for r in squad_records(SQUAD, "train", held_out_articles=3)}
    synthetic = {r.context for r in synthetic_fact_records(5, seed=4)}
    assert {r.context for r in source.records} <= training | synthetic
    assert all(r.teacher_sees_context and r.answer for r in source.records)
    with pytest.raises(ValueError, match="not allowed"):
        load_sources([{**spec, "split": "validation"}], base.tokenizer)


def test_swapped_answers_replace_every_occurrence_with_an_answer_of_the_same_form() -> None:
    records = [
        QARecord("The mill opened in 1921. By 1921 it had forty looms.", "When did the mill open?", "1921"),
        QARecord("Ada Brook founded the choir in 1950.", "Who founded the choir?", "Ada Brook"),
        QARecord("The museum keeps maps from 1843.", "How old are the maps?", "1843"),
        QARecord("The ferry is run by Tomas Reyes.", "Who runs the ferry?", "Tomas Reyes"),
        QARecord("It was built of red brick.", "What was it built of?", "red brick"),
        QARecord("Nobody knows.", "Who knows?", "Somebody"),  # not in its document: left out
    ]
    swapped = swapped_answer_records(records, seed=1)
    assert [r.question for r in swapped] == [r.question for r in records[:4]]  # "red brick": no partner
    assert [r.answer for r in swapped] == ["1843", "Tomas Reyes", "1921", "Ada Brook"]
    assert swapped[0].context == "The mill opened in 1843. By 1843 it had forty looms."
    assert all(r.source == "swapped" and r.answer in r.context for r in swapped)
    assert all(o.answer not in s.context for o, s in zip(records[:4], swapped, strict=True))
    assert swapped_answer_records(records, seed=1) == swapped


@pytest.mark.skipif(not SQUAD.is_file(), reason="needs the shared SQuAD file")
def test_swapped_source_keeps_to_the_training_paragraphs() -> None:
    base = tiny_base_model()
    spec = {"kind": "swapped", "path": str(SQUAD), "per_paragraph": 1, "count": 40, "held_out_articles": 3}
    (source,) = load_sources([spec], base.tokenizer)
    assert source.target == "gold" and len(source.records) == 40
    originals = {r.question: r for r in squad_records(SQUAD, "train", per_paragraph=1, held_out_articles=3)}
    for record in source.records:
        original = originals[record.question]
        assert record.answer != original.answer and record.context != original.context
    with pytest.raises(ValueError, match="not allowed"):
        load_sources([{**spec, "split": "validation"}], base.tokenizer)


def test_cli_train_under_torchrun_single_process(tmp_path: Path) -> None:
    """The multi-device path (torchrun, DDP over gloo) in its single-process form."""
    base = tiny_base_model()
    model_dir = tmp_path / "tiny"
    base.model.save_pretrained(model_dir)
    base.tokenizer.save_pretrained(model_dir)
    config = _config(tmp_path / "run", 3, base_model=str(model_dir), save_every=3)
    config_path = tmp_path / "train.json"
    config_path.write_text(json.dumps({k: v for k, v in vars(config).items()}))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        "-m", "doc2lora_rag.cli", "train", "--config", str(config_path), "--threads", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(_losses(tmp_path / "run")) == [1, 2, 3]
    assert (tmp_path / "run" / "checkpoint" / "trainer_state.json").is_file()


def test_records_without_targets_are_refused_for_gold() -> None:
    base = tiny_base_model()
    with pytest.raises(ValueError, match="without answers"):
        load_sources([{"kind": "unrelated", "path": str(SQUAD), "count": 2, "target": "gold"}], base.tokenizer)


def test_general_training_questions_stay_apart_from_the_evaluation_set() -> None:
    questions = general_training_questions()
    assert len(set(questions)) == len(questions) > 300
    evaluation = general_questions()
    asked = {normalize_answer(q) for q, _ in evaluation}
    assert not asked & {normalize_answer(q) for q in questions}
    answers = {normalize_answer(a) for _, golds in evaluation for a in golds if len(a) >= 4}
    named = [(q, a) for q in questions for a in answers if f" {a} " in f" {normalize_answer(q)} "]
    assert not named
    drawn = [r.question for r in general_records(["a document"], 50)]
    assert len(set(drawn)) == 50 and set(drawn) != set(questions[:50])  # drawn from every template
    assert len(general_records(["a document"], len(questions) + 5)) == len(questions) + 5


@pytest.mark.skipif(not SQUAD.is_file(), reason="needs the shared SQuAD file")
def test_general_source_pairs_questions_with_training_documents_and_the_bare_teacher() -> None:
    base = tiny_base_model()
    spec = {"kind": "general", "path": str(SQUAD), "count": 40, "synthetic_docs": 5}
    (source,) = load_sources([spec], base.tokenizer)
    assert source.target == "teacher" and len(source.records) == 40
    assert all(not r.teacher_sees_context and r.answer is None for r in source.records)
    assert {r.question for r in source.records} <= set(general_training_questions())
    validation = {r.context for r in squad_records(SQUAD, "validation")}
    assert not validation & {r.context for r in source.records}
    teacher = Teacher(base)
    record = source.records[0]
    assert teacher.prompt(record) == question_prompt(base.tokenizer, record.question)
    with pytest.raises(ValueError, match="not allowed"):
        load_sources([{"kind": "general", "path": str(SQUAD), "split": "validation"}], base.tokenizer)


def test_qa_record_keys_distinguish_teacher_context() -> None:
    with_context = QARecord("doc", "q?")
    without = QARecord("doc", "q?", teacher_sees_context=False)
    assert with_context.key != without.key


def test_probe_gap_is_zero_for_a_fresh_network_and_not_for_a_document_reading_one(tmp_path: Path) -> None:
    trainer = Trainer(_config(tmp_path, 1, probe_records=8), base=tiny_base_model(max_positions=512), progress=False)
    records = trainer.probe_set()
    assert records == synthetic_fact_records(8, seed=424242)
    fresh = trainer.probe(records)
    assert fresh["probe_gap"] == 0.0 and fresh["probe_own"] == fresh["probe_other"] > 0
    assert fresh["probe_base"] == pytest.approx(fresh["probe_own"])  # fresh adapters add nothing
    with torch.no_grad():
        for weight in trainer.hypernet.heads.b_weight.values():
            weight.normal_(0, 0.5)
    random = trainer.probe(records)
    assert random["probe_gap"] != 0.0 and random["probe_own"] != fresh["probe_own"]
    assert random["probe_base"] == fresh["probe_base"]
    assert fresh["probe_spread"] == 0.0 < random["probe_spread"]  # B starts at zero: no delta at all


def test_adapter_spread_matches_the_full_size_deltas() -> None:
    generator = torch.Generator().manual_seed(0)
    factors = {
        "down_proj": (torch.randn(5, 3, 4, 12, generator=generator), torch.randn(5, 3, 7, 4, generator=generator)),
        "up_proj": (torch.randn(5, 3, 4, 6, generator=generator), torch.randn(5, 3, 9, 4, generator=generator)),
    }
    deltas = torch.cat([(b @ a).flatten(1) for a, b in factors.values()], dim=1)  # [documents, everything]
    mean = deltas.mean(0)
    expected = ((deltas - mean).pow(2).sum(1).mean().sqrt() / mean.norm()).item()
    assert adapter_spread(factors) == pytest.approx(expected, rel=1e-4)
    same = {name: (a[:1].expand(5, -1, -1, -1), b[:1].expand(5, -1, -1, -1)) for name, (a, b) in factors.items()}
    assert adapter_spread(same) == pytest.approx(0.0, abs=1e-2)  # one adapter for every document


def test_probe_rows_land_in_the_metrics(tmp_path: Path) -> None:
    config = _config(tmp_path, 4, log_every=3, probe_every=2, probe_records=4)
    Trainer(config, base=tiny_base_model(max_positions=512), progress=False).train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4]
    assert ["probe_gap" in r for r in rows] == [True, False, True]


def test_extra_probes_log_beside_the_main_one_under_their_own_names(tmp_path: Path) -> None:
    needles = {"kind": "niah", "count": 4, "lengths": [64]}
    config = _config(tmp_path, 2, log_every=2, probe_every=2, probe_records=4, extra_probes=[needles])
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    assert [record.source for record in trainer.probe_sets()["probe_niah"]] == ["niah"] * 4
    trainer.train()
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"probe_own", "probe_gap", "probe_niah_own", "probe_niah_gap"} <= set(row)
    assert row["probe_niah_base"] != row["probe_base"]  # another set of questions
    twice = _config(tmp_path / "twice", 1, probe_every=1, extra_probes=[needles, needles])
    with pytest.raises(ValueError, match="named"):
        Trainer(twice, base=tiny_base_model(max_positions=512), progress=False).probe_sets()


@pytest.mark.skipif(not SQUAD.is_file(), reason="SQuAD dev file not present")
def test_a_probe_on_held_out_training_articles_is_accepted_and_on_trained_ones_refused(tmp_path: Path) -> None:
    spec = {"kind": "squad", "path": str(SQUAD), "per_paragraph": 1, "held_out_articles": 2}
    probe = {**spec, "split": "held_out"}
    config = _config(tmp_path, 1, data=[spec], probe_data=probe, probe_records=3)
    records = Trainer(config, base=tiny_base_model(max_positions=512), progress=False).probe_set()
    assert {r.context for r in records} <= {r.context for r in squad_records(SQUAD, "held_out", held_out_articles=2)}
    keeps_all = _config(tmp_path / "all", 1, data=[{**spec, "held_out_articles": 0}], probe_data=probe)
    with pytest.raises(ValueError, match="held-out"):
        Trainer(keeps_all, base=tiny_base_model(max_positions=512), progress=False).probe_set()


def test_init_from_another_run_keeps_its_weights_and_adds_the_pointer_and_positions(tmp_path: Path) -> None:
    base = tiny_base_model(max_positions=512)
    first = _config(tmp_path / "first", 3, hypernet={**TINY_NET, "pointer": False})
    Trainer(first, base=base, progress=False).train()
    saved = Trainer(first, base=base, progress=False).hypernet
    added = {**TINY_NET, "pointer": True, "position_encoding": True}
    second_config = _config(tmp_path / "second", 2, init_from=str(tmp_path / "first" / "checkpoint"), hypernet=added)
    second = Trainer(second_config, base=base, progress=False)
    assert second.step == 0 and second.hypernet.pointer is not None
    state = second.hypernet.state_dict()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(state[name], tensor), name
    assert all(torch.count_nonzero(g) == 0 for g in second.hypernet.pointer.gain.values())
    assert torch.count_nonzero(second.hypernet.position.project.weight) == 0
    other = _config(tmp_path / "third", 2, init_from=str(tmp_path / "first" / "checkpoint"),
                    hypernet={**TINY_NET, "rank": 2})
    with pytest.raises(ValueError, match="does not fit"):
        Trainer(other, base=base, progress=False)


def test_init_from_weights_that_read_another_layer_measures_that_layers_inputs(tmp_path: Path) -> None:
    base = tiny_base_model(max_positions=512)
    first = _config(tmp_path / "first", 1, hypernet=TINY_NET)
    Trainer(first, base=base, progress=False).train()
    saved = Trainer(first, base=base, progress=False).hypernet.state_dict()
    start = str(tmp_path / "first" / "checkpoint")
    same = Trainer(_config(tmp_path / "same", 1, init_from=start, hypernet=TINY_NET), base=base, progress=False)
    deeper_net = {**TINY_NET, "source_layers": [2]}
    deeper = Trainer(_config(tmp_path / "deeper", 1, init_from=start, hypernet=deeper_net), base=base, progress=False)
    assert same.hypernet.config.source_layers == [1] and deeper.hypernet.config.source_layers == [2]
    same_state, deeper_state = same.hypernet.state_dict(), deeper.hypernet.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(same_state[name], tensor), name
        measured = name in ("input_mean", "input_std")
        assert torch.equal(deeper_state[name], tensor) != measured, name


def test_contrastive_term_answers_with_another_documents_adapter(tmp_path: Path) -> None:
    data = [{"kind": "synthetic", "count": 8}]
    config = _config(tmp_path, 2, contrastive_weight=1.0, contrastive_margin=100.0, data=data)
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    with torch.no_grad():
        for weight in trainer.hypernet.heads.b_weight.values():
            weight.normal_(0, 0.5)
    batch = trainer.sample(0)
    loss, info = trainer.loss(batch)
    # With a margin no gap reaches, the term is exactly margin - (other - own).
    expected = info["kl"] + config.l1_weight * info["l1"] + 100.0 - (info["kl_other"] - info["kl"])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert info["kl_other"] != info["kl"]
    trainer.model.eval()
    assert "kl_other" not in trainer.loss(batch)[1]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.json")), ids=lambda p: p.name)
def test_shipped_training_configs_are_valid(path: Path) -> None:
    config = TrainConfig.from_file(path)
    assert set(config.hypernet) <= {f.name for f in dataclasses.fields(HypernetConfig)}
    assert config.hypernet.get("head_norm", "document") in ("document", "rms")
    assert all(source["kind"] in DEFAULT_TARGET for source in config.data)
    assert all(source.get("split", "train") == "train" for source in config.data)  # never the validation articles
    for probe in [config.probe_data or {"kind": "synthetic"}, *config.extra_probes]:
        assert probe["kind"] in DEFAULT_TARGET and probe.get("split", "train") in ("train", "held_out")


def test_an_unknown_chunking_or_no_first_token_weight_is_refused_when_the_config_is_made(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunking must be one of"):
        _config(tmp_path, 1, chunking="paragraphs")
    with pytest.raises(ValueError, match="first_token_weight must be positive"):
        _config(tmp_path, 1, first_token_weight=0.0)


def test_training_chunks_end_at_sentences_unless_the_config_asks_for_token_counts(tmp_path: Path) -> None:
    base = tiny_base_model(max_positions=512)
    record = synthetic_fact_records(1, seed=3)[0]
    by_sentence = Trainer(_config(tmp_path / "a", 1), base=base, progress=False)._chunk_ids(record.context, 3)
    by_tokens = Trainer(_config(tmp_path / "b", 1, chunking="tokens"), base=base, progress=False)._chunk_ids(
        record.context, 3
    )
    assert len(by_sentence) == len(by_tokens) == 3 and by_sentence != by_tokens
    texts = [base.tokenizer.decode(ids, skip_special_tokens=True) for ids in by_sentence]
    assert all(text.rstrip().endswith(".") for text in texts[:-1]), texts


def test_probe_data_draws_held_out_documents_of_another_kind(tmp_path: Path) -> None:
    spec = {"kind": "niah", "count": 3, "lengths": [64]}
    config = _config(tmp_path, 1, data=[spec], probe_data=spec, probe_records=2)
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    probe = trainer.probe_set()
    assert len(probe) == 2 and all(record.source == "niah" for record in probe)
    training = {record.context for record in trainer.sources[0].records}
    assert not training & {record.context for record in probe}  # the probe's own seed
    assert trainer.probe(probe)["probe_gap"] == 0.0  # a fresh network: B is zero


@pytest.mark.skipif(not SQUAD.is_file(), reason="SQuAD dev file not present")
def test_a_probe_on_the_training_documents_is_refused(tmp_path: Path) -> None:
    spec = {"kind": "squad", "path": str(SQUAD), "per_paragraph": 1}
    config = _config(tmp_path, 1, data=[spec], probe_data=spec, probe_records=2)
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    with pytest.raises(ValueError, match="held-out"):
        trainer.probe_set()


def test_documents_read_together_match_documents_read_alone(tmp_path: Path) -> None:
    base = tiny_base_model(max_positions=512)
    records = synthetic_fact_records(5, seed=3)
    together = Trainer(_config(tmp_path / "a", 1), base=base, progress=False)
    wanted = [(records[0], 1), (records[1], 3), (records[2], 2), (records[0], 1), (records[3], 1)]
    batched = together.read_documents(wanted, token_budget=200)  # small budget: several passes
    alone = Trainer(_config(tmp_path / "b", 1), base=base, progress=False)
    assert [len(chunks) for chunks in batched] == [1, 3, 2, 1, 1]
    for (record, chunks), read in zip(wanted, batched, strict=True):
        single = alone.chunk_activations(record, chunks)  # one document per forward pass
        assert [ids.tolist() for _, ids in read] == alone._chunk_ids(record.context, chunks)
        for (acts, ids), (acts_alone, ids_alone) in zip(read, single, strict=True):
            assert torch.equal(ids, ids_alone) and acts.shape == acts_alone.shape
            assert torch.allclose(acts.float(), acts_alone.float(), atol=2e-2)


class _StepClock:
    """Stands in for the ``time`` module: it only moves when a training step runs (one
    second per step, after ``slow_steps`` warm-up steps of ten seconds each), so the
    trainer's timing is deterministic."""

    def __init__(self, slow_steps: int = 0) -> None:
        self.now = 0.0
        self.slow_steps = slow_steps

    def tick(self) -> None:
        self.now += 10.0 if self.slow_steps > 0 else 1.0
        self.slow_steps -= 1

    def monotonic(self) -> float:
        return self.now

    perf_counter = time = monotonic


@pytest.mark.parametrize("slow_steps", [0, 5])
def test_fit_schedule_ends_the_learning_rate_decay_as_the_time_runs_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_steps: int
) -> None:
    clock = _StepClock(slow_steps)
    monkeypatch.setattr("doc2lora_rag.training.trainer.time", clock)
    config = _config(tmp_path, 100_000, save_every=1000, log_every=1, warmup_steps=2)
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    step_loss = trainer.loss

    def timed_step(batch, with_other=False):
        clock.tick()
        return step_loss(batch, with_other)

    monkeypatch.setattr(trainer, "loss", timed_step)
    with pytest.raises(ValueError, match="time budget"):
        trainer.train(fit_schedule=True)
    trainer.train(minutes=2, fit_schedule=True)
    # 120 s of this clock: 120 steps, or 5 slow ones (50 s) and 70 at the steady rate; the
    # slow first steps must not make the fitted schedule stop far short of the deadline.
    steady_steps = 120 - 9 * slow_steps
    assert steady_steps - 10 <= trainer.config.steps < steady_steps and trainer.step == trainer.config.steps
    assert json.loads((tmp_path / "train_config.json").read_text())["steps"] == trainer.config.steps
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] == pytest.approx(learning_rate(trainer.config, trainer.step - 1))
    assert rows[-1]["lr"] < 0.11 * config.lr  # decayed to min_lr_ratio


def test_non_finite_steps_leave_the_weights_alone_and_a_run_of_them_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = Trainer(_config(tmp_path, 3), base=tiny_base_model(max_positions=512), progress=False)
    step_loss = trainer.loss
    poisoned = {1}

    def sometimes_nan(batch, with_other=False):
        loss, info = step_loss(batch, with_other)
        return (loss * float("nan") if trainer.step in poisoned else loss), info

    monkeypatch.setattr(trainer, "loss", sometimes_nan)
    trainer.train(until=1)
    before = {k: v.clone() for k, v in trainer.hypernet.state_dict().items()}
    trainer.train(until=2)
    assert all(torch.equal(before[k], v) for k, v in trainer.hypernet.state_dict().items())
    assert all(torch.isfinite(v).all() for v in trainer.hypernet.state_dict().values())
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.hypernet.state_dict().items())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("skipped", 0) for row in rows] == [0, 1, 0]

    poisoned.update(range(3, 100))
    trainer.config.steps = 100
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.train()
    assert trainer.step < 3 + 25


def test_answer_head_learns_to_name_the_answer_tokens(tmp_path: Path) -> None:
    config = _config(tmp_path, 30, data=[{"kind": "synthetic", "count": 2}], answer_weight=1.0, lr=1e-2)
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    assert trainer.hypernet.config.answer_head and trainer.hypernet.answer_head is not None
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["answer"] for r in rows[:5]) / 5
    last = sum(r["answer"] for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert all(r["loss"] - r["kl"] == pytest.approx(r["answer"], abs=1e-3) for r in rows)  # part of the loss
    saved = HyperNetwork.from_pretrained(tmp_path / "checkpoint")
    assert saved.answer_head is not None
    activations = torch.randn(len(saved.config.source_layers), 1, 5, saved.config.base_hidden_size)
    factors = saved(activations, torch.ones(1, 5, dtype=torch.bool))  # inference ignores the head
    assert set(factors) == set(saved.config.target_modules)


def test_answer_loss_leaves_out_questions_unrelated_to_their_document(tmp_path: Path) -> None:
    config = _config(tmp_path, 1, answer_weight=1.0)
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    record = synthetic_fact_records(1, seed=5)[0]
    unrelated = dataclasses.replace(record, teacher_sees_context=False)
    target = trainer.target(record, "gold")
    summary = torch.randn(2, trainer.hypernet.config.width)
    assert trainer._answer_loss(summary, [0, 1], [(record, target, 1), (unrelated, target, 1)]) > 0
    alone = trainer._answer_loss(summary[1:], [0], [(unrelated, target, 1)])
    assert alone.item() == 0.0


def test_unrelated_questions_come_from_another_document_and_one_document_is_refused() -> None:
    records = [QARecord(doc, f"Question {i} on {doc}?") for doc in ("doc a", "doc b", "doc c") for i in range(3)]
    paired = unrelated_records(records, 20, seed=1)
    assert len(paired) == 20
    assert all(not r.teacher_sees_context and r.answer is None for r in paired)
    assert all(not r.question.endswith(f"on {r.context}?") for r in paired)
    with pytest.raises(ValueError, match="two different documents"):  # it used to spin forever
        unrelated_records([QARecord("doc a", f"Question {i}?") for i in range(5)], 3)
    assert unrelated_records(records[:1], 0) == []


def test_the_loss_plot_draws_each_probe_beside_the_loss(tmp_path: Path) -> None:
    rows = [
        {"step": 10, "loss": 2.0},
        {"step": 20, "loss": 1.5, "probe_own": 1.2, "probe_gap": 0.3, "probe_squad_own": 2.5, "probe_base": 7.0},
    ]
    assert probe_series(rows) == {
        "probe_gap": ([20], [0.3]),
        "probe_own": ([20], [1.2]),
        "probe_squad_own": ([20], [2.5]),
    }
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert plot_metrics(metrics, tmp_path / "loss.png").stat().st_size > 0
    assert plot_metrics(tmp_path / "missing.jsonl", tmp_path / "none.png") is None


def test_own_only_contrast_sends_no_gradient_through_the_other_adapter(tmp_path: Path) -> None:
    data = [{"kind": "synthetic", "count": 8}]
    config = _config(tmp_path, 2, contrastive_weight=1.0, contrastive_margin=100.0, l1_weight=0.0, data=data)
    trainer = Trainer(config, base=tiny_base_model(max_positions=512), progress=False)
    with torch.no_grad():
        for weight in trainer.hypernet.heads.b_weight.values():
            weight.normal_(0, 0.5)
    batch = trainer.sample(0)

    def gradient(**change) -> torch.Tensor:
        trainer.config = dataclasses.replace(config, **change)
        trainer.hypernet.zero_grad()
        trainer.loss(batch)[0].backward()
        return torch.cat([p.grad.flatten() for p in trainer.hypernet.parameters() if p.grad is not None])

    plain = gradient(contrastive_weight=0.0)
    # Every row is short of a margin of 100, so the own-only term adds the own loss once more.
    assert torch.allclose(gradient(contrastive_own_only=True), 2 * plain, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(gradient(), 2 * plain, rtol=1e-4, atol=1e-7)  # two-sided: the other adapter moves too
