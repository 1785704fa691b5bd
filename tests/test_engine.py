"""The public engine: zero-init adapters, chunking past the window, fingerprints, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from doc2lora_rag import (
    Doc2LoRA,
    HyperNetwork,
    IncompatibleModelError,
    InvalidDocumentError,
    LoRAAdapter,
)
from doc2lora_rag.adapters.runtime import adapters_attached
from doc2lora_rag.base_model.layers import decoder_layers
from doc2lora_rag.base_model.loading import BaseModel, align_special_tokens
from doc2lora_rag.documents import MAX_DOCUMENT_CHARS
from doc2lora_rag.hypernetwork.chunking import chunk_token_ids
from doc2lora_rag.testing import tiny_base_model
from tests.conftest import make_text_engine, make_tiny_engine

DOC = "Ferns of the Ardmore valley: 31 species, 4 endemic, survey by M. Quill in 2019."


def question_ids(engine: Doc2LoRA, question: str = "How many species?") -> torch.Tensor:
    prompt = engine.prompt(question)
    return engine.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def logits_of(engine: Doc2LoRA, ids: torch.Tensor) -> torch.Tensor:
    return engine.model(input_ids=ids).logits


def same_factors(first: LoRAAdapter, second: LoRAAdapter) -> bool:
    return first.factors.keys() == second.factors.keys() and all(
        torch.equal(first.factors[n][0], second.factors[n][0])
        and torch.equal(first.factors[n][1], second.factors[n][1])
        for n in first.factors
    )


# ------------------------------------------------------------------------- zero init


@pytest.mark.parametrize("source_layers", ["all", "quarter"])
def test_fresh_hypernetwork_gives_base_logits(source_layers: str) -> None:
    engine = make_tiny_engine(randomize_b=False, source_layers=source_layers)
    adapter = engine.internalize(DOC * 2)
    assert adapter.num_chunks == 4
    a, _ = adapter.factors["down_proj"]
    assert a.abs().sum() > 0  # the delta is zero because of B, not because nothing was read
    ids = question_ids(engine)
    base = logits_of(engine, ids)
    with adapters_attached(engine.model, adapter):
        adapted = logits_of(engine, ids)
    assert torch.equal(adapted, base)
    with adapters_attached(engine.model, [adapter, adapter]):
        assert torch.equal(logits_of(engine, ids), base)


def test_trained_like_hypernetwork_changes_logits(tiny_engine: Doc2LoRA) -> None:
    """The same check with random B heads must see a difference, or the test above is moot."""
    adapter = tiny_engine.internalize(DOC)
    ids = question_ids(tiny_engine)
    with adapters_attached(tiny_engine.model, adapter):
        adapted = logits_of(tiny_engine, ids)
    assert not torch.equal(adapted, logits_of(tiny_engine, ids))


# ------------------------------------------------------------------------ public API


def test_adapter_properties(tiny_engine: Doc2LoRA) -> None:
    adapter = tiny_engine.internalize(DOC, metadata={"id": "ferns"})
    config = tiny_engine.config
    tokens = len(tiny_engine.tokenizer.encode(DOC, add_special_tokens=False))
    chunks = math.ceil(tokens / config.chunk_size)
    assert adapter.num_chunks == chunks
    assert adapter.rank == chunks * config.rank + config.bias_rank
    in_features, out_features = config.target_modules["down_proj"]
    layers = len(config.target_layers)
    assert adapter.nbytes == layers * adapter.rank * (in_features + out_features) * 4
    assert adapter.metadata == {"id": "ferns"}
    assert adapter.base_fingerprint == tiny_engine.fingerprint
    assert adapter.hypernet_fingerprint == tiny_engine.hypernet.fingerprint


def test_internalize_is_deterministic_and_batch_independent(tiny_engine: Doc2LoRA) -> None:
    """Chunks of several documents batched (and padded) together give each document the
    adapter it gets alone."""
    docs = [DOC, "Short note.", DOC * 3 + " Appendix: ferns, mosses and liverworts."]
    together = tiny_engine.internalize_many(docs)
    for doc, adapter in zip(docs, together, strict=True):
        alone = tiny_engine.internalize(doc)
        assert same_factors(alone, tiny_engine.internalize(doc))
        assert alone.num_chunks == adapter.num_chunks
        for name, (a, b) in alone.factors.items():
            torch.testing.assert_close(adapter.factors[name][0], a, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(adapter.factors[name][1], b, atol=1e-5, rtol=1e-4)


def test_utf8_bytes_are_accepted(tiny_engine: Doc2LoRA) -> None:
    text = "Crème brûlée at Café Noé, 7 € — Tuesdays."
    assert same_factors(tiny_engine.internalize(text.encode()), tiny_engine.internalize(text))


def test_generate_modes_return_text(tiny_engine: Doc2LoRA) -> None:
    adapter = tiny_engine.internalize(DOC)
    plain = tiny_engine.complete("How many species?", max_new_tokens=6)
    adapted = tiny_engine.complete("How many species?", adapters=[adapter], max_new_tokens=6)
    in_context = tiny_engine.complete("How many species?", context=DOC, max_new_tokens=6)
    for completion in (plain, adapted, in_context):
        assert isinstance(completion.text, str)
        assert 1 <= completion.completion_tokens <= 6
    assert in_context.prompt_tokens > plain.prompt_tokens + len(DOC) - 1
    assert adapted.prompt_tokens == plain.prompt_tokens
    answer = tiny_engine.generate("How many species?", adapters=adapter, max_new_tokens=6)
    assert answer == adapted.text
    pieces = tiny_engine.stream("How many species?", adapters=[adapter], max_new_tokens=6)
    assert "".join(pieces).strip() == adapted.text


def test_generate_batch_per_row_equals_one_by_one(tiny_engine: Doc2LoRA) -> None:
    first = tiny_engine.internalize(DOC)
    second = tiny_engine.internalize(DOC * 3)
    assert first.rank != second.rank
    questions = ["How many species?", "Who ran the survey, and in which year was it?", "Endemic?"]
    row_adapters = [first, None, second]
    batched = tiny_engine.generate_batch(questions, adapters=row_adapters, max_new_tokens=8)
    for question, adapter, completion in zip(questions, row_adapters, batched, strict=True):
        alone = tiny_engine.complete(question, adapters=adapter, max_new_tokens=8)
        assert completion.text == alone.text
        assert completion.completion_tokens == alone.completion_tokens
        assert completion.prompt_tokens == alone.prompt_tokens
    with pytest.raises(ValueError, match="one adapter"):
        tiny_engine.generate_batch(questions, adapters=[first], max_new_tokens=2)


def test_generate_batch_with_a_stop_string_counts_each_rows_own_tokens() -> None:
    """A row that meets a stop string is padded while the others go on; those pads are not its
    tokens, so the batch must report what the row generated alone."""
    engine = make_text_engine(seed=4)
    docs = ["Harrow Point light was first lit in 1872.", "The Heron's Wake carries sixty cars."]
    row_adapters = [engine.internalize(docs[0]), engine.internalize(docs[1]), None]
    questions = ["What do you know?", "Tell me about the ferry and the lighthouse please.", "Hi"]
    rows = list(zip(questions, row_adapters, strict=True))
    free = [engine.complete(q, adapters=a, max_new_tokens=16).text for q, a in rows]
    stop = [free[0][:2]]
    alone = [engine.complete(q, adapters=a, max_new_tokens=16, stop=stop) for q, a in rows]
    assert alone[0].finish_reason == "stop" and any(c.finish_reason == "length" for c in alone)
    assert engine.generate_batch(questions, adapters=row_adapters, max_new_tokens=16, stop=stop) == alone


def test_a_stop_given_as_one_string_is_that_string_not_its_letters() -> None:
    engine = make_text_engine(seed=4)
    free = engine.complete("What do you know?", max_new_tokens=16)
    stop = free.text[0] + "\x00"  # never generated; its first letter is, at once
    assert stop not in free.text
    as_string = engine.complete("What do you know?", max_new_tokens=16, stop=stop)
    assert as_string == free and as_string.finish_reason == "length"
    assert "".join(engine.stream("What do you know?", max_new_tokens=16, stop=stop)) == free.text


def test_the_stream_cancel_check_answers_on_the_ids_device() -> None:
    """transformers ORs every stopping criterion into a tensor on the ids' device: a CPU answer
    breaks every stream on a GPU (the meta device stands in for one here)."""
    from transformers import StoppingCriteriaList

    from doc2lora_rag.generation.generate import _Cancelled

    ids = torch.zeros(2, 3, dtype=torch.long, device="meta")
    assert StoppingCriteriaList([_Cancelled()])(ids, None).device == ids.device


# ------------------------------------------------------------------ chunking past the window


def test_document_far_past_the_window() -> None:
    engine = make_tiny_engine(max_positions=64, chunk_size=48, source_layers="all")
    window = engine.model.config.max_position_embeddings
    assert window == 64
    text = " ".join(f"Entry {i}: the pump at station {i % 7} ran {i * 3} hours." for i in range(12))
    tokens = len(engine.tokenizer.encode(text, add_special_tokens=False))
    assert tokens >= 4 * window

    chunks = chunk_token_ids(engine.tokenizer, engine.wrapper, text, engine.config.chunk_size)
    assert max(len(chunk) for chunk in chunks) <= window
    seen: list[int] = []
    embed = engine.model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[-1]))
    try:
        adapter = engine.internalize(text)
    finally:
        handle.remove()
    expected_chunks = math.ceil(tokens / 48)
    assert len(chunks) == adapter.num_chunks == expected_chunks
    assert adapter.rank == expected_chunks * engine.config.rank + engine.config.bias_rank
    assert seen and max(seen) <= window  # the base model never saw more than its window
    a, b = adapter.factors["down_proj"]
    in_features, out_features = engine.config.target_modules["down_proj"]
    layers = len(decoder_layers(engine.model))
    assert a.shape == (layers, adapter.rank, in_features)
    assert b.shape == (layers, out_features, adapter.rank)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


# ---------------------------------------------------------------------- fingerprints


@pytest.fixture(scope="module")
def engines() -> tuple[Doc2LoRA, Doc2LoRA]:
    return make_tiny_engine(seed=0), make_tiny_engine(seed=1)


def test_bases_have_distinct_fingerprints(engines) -> None:
    first, second = engines
    assert first.fingerprint != second.fingerprint
    assert make_tiny_engine(seed=0).fingerprint == first.fingerprint


def test_hypernetwork_refuses_another_base(engines, tmp_path) -> None:
    first, second = engines
    first.hypernet.save_pretrained(tmp_path / "hypernet")
    with pytest.raises(IncompatibleModelError, match="trained for base model"):
        HyperNetwork.from_pretrained(tmp_path / "hypernet", base_fingerprint=second.fingerprint)
    with pytest.raises(IncompatibleModelError):
        Doc2LoRA.from_pretrained(hypernet=tmp_path / "hypernet", base_model=second.base)
    with pytest.raises(IncompatibleModelError, match="hypernetwork was made for"):
        Doc2LoRA(second.base, first.hypernet)


def test_hypernetwork_reloads_on_its_base(engines, tmp_path) -> None:
    first, _ = engines
    first.hypernet.save_pretrained(tmp_path / "hypernet")
    loaded = HyperNetwork.from_pretrained(tmp_path / "hypernet", base_fingerprint=first.fingerprint)
    assert loaded.fingerprint == first.hypernet.fingerprint
    reloaded = Doc2LoRA.from_pretrained(hypernet=tmp_path / "hypernet", base_model=first.base)
    original, again = first.internalize(DOC), reloaded.internalize(DOC)
    assert same_factors(original, again)
    assert again.hypernet_fingerprint == original.hypernet_fingerprint


def test_adapter_refused_by_another_engine(engines) -> None:
    first, second = engines
    adapter = first.internalize(DOC)
    with pytest.raises(IncompatibleModelError, match="adapter was made for"):
        second.generate("How many species?", adapters=[adapter], max_new_tokens=2)
    with pytest.raises(IncompatibleModelError):
        second.generate("How many species?", adapters=adapter, max_new_tokens=2)
    with pytest.raises(IncompatibleModelError):
        second.generate_batch(["a?", "b?"], adapters=[None, adapter], max_new_tokens=2)
    with pytest.raises(IncompatibleModelError):
        next(second.stream("How many species?", adapters=[adapter], max_new_tokens=2))


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        (123, "must be str or UTF-8 bytes, not int"),
        (None, "must be str or UTF-8 bytes, not NoneType"),
        (["a list"], "not list"),
        (b"\xff\xfe", "not valid UTF-8"),
        ("tide \ud800 table", "not valid Unicode"),
        ("a\x00b", "binary"),
        ("\x01\x02\x03 text", "binary"),
        ("x" * (MAX_DOCUMENT_CHARS + 1), "over the limit"),
    ],
)
def test_bad_documents_raise_typed_errors(tiny_engine: Doc2LoRA, document, message: str) -> None:
    with pytest.raises(InvalidDocumentError, match=message) as raised:
        tiny_engine.internalize(document)
    assert isinstance(raised.value, ValueError)


def test_engine_size_limit_is_configurable(tiny_engine: Doc2LoRA) -> None:
    small = Doc2LoRA(tiny_engine.base, tiny_engine.hypernet, max_chars=100)
    assert small.internalize("y" * 100).num_chunks == math.ceil(100 / small.config.chunk_size)
    with pytest.raises(InvalidDocumentError, match="101 characters"):
        small.internalize("y" * 101)


def test_one_bad_document_stops_the_batch(tiny_engine: Doc2LoRA) -> None:
    with pytest.raises(InvalidDocumentError):
        tiny_engine.internalize_many([DOC, ""])


def test_internalize_many_refuses_a_single_string_and_uneven_metadata(tiny_engine: Doc2LoRA) -> None:
    """A str is iterable: it used to become one adapter per character."""
    with pytest.raises(TypeError, match="use internalize for one"):
        tiny_engine.internalize_many(DOC)
    with pytest.raises(ValueError, match="1 metadata dicts for 2 documents"):
        tiny_engine.internalize_many([DOC, DOC + " Again."], metadata=[{}])


@pytest.mark.parametrize("question", ["", "  ", None])
def test_bad_questions_are_refused(tiny_engine: Doc2LoRA, question) -> None:
    with pytest.raises(ValueError, match="question"):
        tiny_engine.generate(question, max_new_tokens=2)


def test_bf16_engine_matches_fp32_up_to_precision() -> None:
    """Adapters generated in bf16 (as on a GPU) agree with fp32 ones (as on a CPU)."""
    fp32 = make_tiny_engine(seed=3, source_layers="all")
    base16 = BaseModel(
        model=copy.deepcopy(fp32.model).to(torch.bfloat16), tokenizer=fp32.tokenizer, name=fp32.base.name
    )
    bf16 = Doc2LoRA(base16, copy.deepcopy(fp32.hypernet))
    assert bf16.fingerprint == fp32.fingerprint  # the fingerprint is dtype-independent
    text = "The ferry Heron's Wake carries sixty cars across the strait every morning."
    a32, a16 = fp32.internalize(text), bf16.internalize(text)
    assert a16.dtype == torch.bfloat16
    for name in a32.factors:
        for full, half in zip(a32.factors[name], a16.factors[name], strict=True):
            error = (full - half.float()).norm() / full.norm()
            assert error < 0.05, (name, float(error))


def test_internalize_reads_in_the_engines_reading_dtype() -> None:
    """An fp32 engine that reads in bf16 writes adapters that differ from fp32 reading by
    rounding only; the factors stay fp32."""
    engine = make_tiny_engine(seed=5, source_layers="all")
    text = "The ferry Heron's Wake carries sixty cars across the strait every morning."
    adapters = {}
    for dtype in (torch.float32, torch.bfloat16):
        engine.reading_dtype = dtype
        adapters[dtype] = engine.internalize(text)
    exact, fast = adapters[torch.float32], adapters[torch.bfloat16]
    assert fast.dtype == torch.float32
    for name in exact.factors:
        for full, read16 in zip(exact.factors[name], fast.factors[name], strict=True):
            error = (full - read16).norm() / full.norm()
            assert 0 < error < 0.05, (name, float(error))


def test_threads_with_different_adapters_get_their_own_answers() -> None:
    """Hooks live on the shared model: concurrent calls must not see each other's adapters."""
    from concurrent.futures import ThreadPoolExecutor

    tiny_engine = make_text_engine(seed=4)
    docs = ["Harrow Point light was first lit in 1872.", "The Heron's Wake carries sixty cars."]
    adapters = [tiny_engine.internalize(d) for d in docs] + [None]
    question = "What do you know?"
    expected = [tiny_engine.complete(question, adapters=a, max_new_tokens=6).text for a in adapters]
    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = [pool.submit(tiny_engine.complete, question, adapters=a, max_new_tokens=6) for a in adapters * 3]
        texts = [job.result().text for job in jobs]
    assert len(set(expected)) >= 2  # the adapters really change the answer
    assert texts == expected * 3


def test_an_abandoned_stream_does_not_block_other_threads() -> None:
    """A reader that stops reading a stream (without closing it) must not keep the model."""
    from concurrent.futures import ThreadPoolExecutor

    engine = make_text_engine(seed=5)
    pieces = engine.stream("Tell me about the ferry.", max_new_tokens=8)
    assert next(pieces)  # read one piece, then walk away without closing the generator
    with ThreadPoolExecutor(max_workers=1) as pool:
        done = pool.submit(engine.complete, "And the lighthouse?", max_new_tokens=4).result(timeout=120)
    assert done.completion_tokens == 4
    pieces.close()


def test_special_tokens_follow_the_model_config() -> None:
    base = tiny_base_model()
    tokenizer, config = base.tokenizer, base.model.config
    right_eos, right_pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    tokenizer.eos_token = tokenizer.bos_token  # as some releases rebuild a GGUF's tokenizer
    assert tokenizer.eos_token_id != right_eos
    align_special_tokens(tokenizer, config)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (right_eos, right_pad) == (
        config.eos_token_id,
        config.pad_token_id,
    )
