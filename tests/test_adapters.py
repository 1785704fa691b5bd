"""LoRA adapters: PEFT format, rank concatenation, per-row batches, detach, tampering."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import peft
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from doc2lora_rag import AdapterFormatError, Doc2LoRA, IncompatibleModelError, LoRAAdapter
from doc2lora_rag.adapters import lora as lora_module
from doc2lora_rag.adapters.lora import CONFIG_FILE, WEIGHTS_FILE
from doc2lora_rag.adapters.runtime import adapters_attached
from doc2lora_rag.hypernetwork.chunking import (
    chunk_texts,
    chunk_token_ids,
    split_into_parts,
    split_sentences,
    split_token_ids,
)
from doc2lora_rag.router.chunks import best_chunks

SHORT_DOC = "The lighthouse keeper on Varn Island logs the tide at 06:40 every morning."
LONG_DOC = (
    "Quarterly notes. The orchard in Lessay harvested 412 crates of cider apples, "
    "the mill ran nine days, and the new press was ordered from Rennes in March."
)


def token_ids(engine: Doc2LoRA, text: str) -> torch.Tensor:
    """A chat-formatted question, as the engine would ask it."""
    prompt = engine.prompt(text)
    return engine.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def logits_of(model: nn.Module, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    return model(input_ids=ids, **kwargs).logits.float()


@pytest.fixture(scope="module")
def short_adapter(tiny_engine: Doc2LoRA) -> LoRAAdapter:
    return tiny_engine.internalize(SHORT_DOC)


@pytest.fixture(scope="module")
def long_adapter(tiny_engine: Doc2LoRA) -> LoRAAdapter:
    return tiny_engine.internalize(LONG_DOC)


@pytest.fixture(scope="module")
def question(tiny_engine: Doc2LoRA) -> torch.Tensor:
    return token_ids(tiny_engine, "When is the tide logged?")


def test_adapters_change_the_model(tiny_engine, short_adapter, question) -> None:
    """Guard for the equalities below: with random B heads an adapter is not a no-op."""
    base = logits_of(tiny_engine.model, question)
    with adapters_attached(tiny_engine.model, short_adapter):
        adapted = logits_of(tiny_engine.model, question)
    assert (adapted - base).abs().max() > 1e-3


# ---------------------------------------------------------------------------- PEFT format


def test_peft_round_trip(tiny_engine, short_adapter, question, tmp_path) -> None:
    directory = short_adapter.save_pretrained(tmp_path / "adapter")
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == config["lora_alpha"] == short_adapter.rank
    assert config["target_modules"] == ["down_proj"]
    assert isinstance(peft.PeftConfig.from_pretrained(str(directory)), peft.LoraConfig)
    assert (directory / WEIGHTS_FILE).is_file()

    base_logits = logits_of(tiny_engine.model, question)
    with adapters_attached(tiny_engine.model, short_adapter):
        hooked = logits_of(tiny_engine.model, question)
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(tiny_engine.model), str(directory))
    peft_model.eval()
    from_peft = logits_of(peft_model, question)
    assert (from_peft - hooked).abs().max() < 1e-4
    assert (from_peft - base_logits).abs().max() > 1e-3

    loaded = LoRAAdapter.from_pretrained(directory)
    assert loaded.layers == short_adapter.layers
    assert loaded.module_paths == short_adapter.module_paths
    assert loaded.base_fingerprint == short_adapter.base_fingerprint
    assert loaded.hypernet_fingerprint == short_adapter.hypernet_fingerprint
    assert loaded.num_chunks == short_adapter.num_chunks
    assert loaded.metadata == short_adapter.metadata
    assert (loaded.rank, loaded.nbytes) == (short_adapter.rank, short_adapter.nbytes)
    for name, (a, b) in short_adapter.factors.items():
        assert torch.equal(loaded.factors[name][0], a)
        assert torch.equal(loaded.factors[name][1], b)


def test_metadata_survives_round_trip(tiny_engine, tmp_path) -> None:
    adapter = tiny_engine.internalize(SHORT_DOC, metadata={"id": "doc-7", "source": "notes.txt"})
    loaded = LoRAAdapter.from_pretrained(adapter.save_pretrained(tmp_path / "meta"))
    assert loaded.metadata == {"id": "doc-7", "source": "notes.txt"}


@pytest.fixture
def saved_adapter(short_adapter, tmp_path):
    return short_adapter.save_pretrained(tmp_path / "saved") / WEIGHTS_FILE


def test_flipped_tensor_bytes_are_detected(saved_adapter) -> None:
    raw = bytearray(saved_adapter.read_bytes())
    for offset in range(len(raw) - 40, len(raw) - 8):  # inside the last tensor's data
        raw[offset] ^= 0x5A
    saved_adapter.write_bytes(bytes(raw))
    with pytest.raises(AdapterFormatError, match="checksum"):
        LoRAAdapter.from_pretrained(saved_adapter.parent)


@pytest.mark.parametrize("keep", [0.5, 0.01, 0.0])
def test_truncated_file_is_refused(saved_adapter, keep: float) -> None:
    raw = saved_adapter.read_bytes()
    saved_adapter.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(AdapterFormatError, match="not a doc2lora adapter"):
        LoRAAdapter.from_pretrained(saved_adapter.parent)


@pytest.mark.parametrize("length", [2**40, 2**64 - 1])
def test_corrupted_header_length_is_refused(saved_adapter, length: int) -> None:
    """A huge length in the first 8 bytes must not turn into a giant read."""
    raw = saved_adapter.read_bytes()
    saved_adapter.write_bytes(length.to_bytes(8, "little") + raw[8:])
    with pytest.raises(AdapterFormatError):
        LoRAAdapter.from_pretrained(saved_adapter.parent)


def _rewrite_info(weights, change, *, reseal: bool = True) -> None:
    """Re-save the file with its doc2lora header metadata changed and the tensors untouched;
    ``reseal`` recomputes the checksum, as a writer that got the shape wrong would."""
    with safe_open(weights, "pt") as handle:
        info = json.loads(handle.metadata()["doc2lora"])
    tensors = load_file(weights)
    info = change(info)
    if reseal and isinstance(info, dict):
        info["sha256"] = lora_module._digest(tensors, info)
    save_file(tensors, weights, metadata={"doc2lora": json.dumps(info)})


@pytest.mark.parametrize(
    "change",
    [
        lambda info: [],
        lambda info: {k: v for k, v in info.items() if k != "layers"},
        lambda info: {k: v for k, v in info.items() if k != "base_fingerprint"},
        lambda info: {**info, "layers": [*info["layers"], 99]},
        lambda info: {**info, "layers": "0123"},
        lambda info: {**info, "module_paths": {}},
        lambda info: {**info, "chunking": "paragraphs"},
    ],
    ids=[
        "not an object",
        "no layers",
        "no fingerprint",
        "unknown layer",
        "layers a string",
        "no modules",
        "unknown chunking",
    ],
)
def test_malformed_header_metadata_is_refused(saved_adapter, change) -> None:
    """Valid JSON of the wrong shape is as unreadable as broken JSON, not a KeyError."""
    _rewrite_info(saved_adapter, change)
    with pytest.raises(AdapterFormatError, match="not a doc2lora adapter|malformed"):
        LoRAAdapter.from_pretrained(saved_adapter.parent)


@pytest.mark.parametrize("key", ["base_fingerprint", "num_chunks", "metadata"])
def test_edited_header_metadata_fails_the_checksum(saved_adapter, key) -> None:
    """Another base model's fingerprint written into the header must not pass the adapter off."""
    _rewrite_info(saved_adapter, lambda info: {**info, key: {"edited": True}}, reseal=False)
    with pytest.raises(AdapterFormatError, match="checksum"):
        LoRAAdapter.from_pretrained(saved_adapter.parent)


def test_files_with_the_tensor_checksum_alone_still_load(saved_adapter, short_adapter) -> None:
    """Adapters saved before the checksum covered the metadata carry ``tensor_sha256`` only."""

    def older(info):
        info = {k: v for k, v in info.items() if k != "sha256"}
        return {**info, "tensor_sha256": lora_module._tensor_digest(load_file(saved_adapter))}

    _rewrite_info(saved_adapter, older, reseal=False)
    loaded = LoRAAdapter.from_pretrained(saved_adapter.parent)
    assert loaded.base_fingerprint == short_adapter.base_fingerprint
    for name, (a, b) in short_adapter.factors.items():
        assert torch.equal(loaded.factors[name][0], a.cpu()) and torch.equal(loaded.factors[name][1], b.cpu())
    raw = bytearray(saved_adapter.read_bytes())
    raw[-20] ^= 0x5A  # inside the last tensor's data: their checksum still guards them
    saved_adapter.write_bytes(bytes(raw))
    with pytest.raises(AdapterFormatError, match="checksum"):
        LoRAAdapter.from_pretrained(saved_adapter.parent)


def test_missing_directory_is_refused(tmp_path) -> None:
    with pytest.raises(AdapterFormatError, match="no adapter"):
        LoRAAdapter.from_pretrained(tmp_path / "nowhere")


def test_plain_peft_directory_is_refused(short_adapter, tmp_path) -> None:
    """A PEFT adapter without our metadata cannot be checked, so it is not loaded."""
    directory = tmp_path / "foreign"
    directory.mkdir()
    save_file(short_adapter.peft_state_dict(), directory / WEIGHTS_FILE)
    with pytest.raises(AdapterFormatError):
        LoRAAdapter.from_pretrained(directory)


# ---------------------------------------------------------------------- rank concatenation


def _bias_delta(adapter: LoRAAdapter, layer: int) -> torch.Tensor:
    a, b = adapter.factors["down_proj"]
    index = adapter.layers.index(layer)
    return b[index][:, -adapter.bias_rank :] @ a[index][-adapter.bias_rank :]


def test_concat_adds_deltas_and_keeps_one_bias_block(tiny_engine, short_adapter, long_adapter, question) -> None:
    combined = LoRAAdapter.concat([short_adapter, long_adapter])
    bias_rank = tiny_engine.config.bias_rank
    assert short_adapter.bias_rank == long_adapter.bias_rank == combined.bias_rank == bias_rank > 0
    assert combined.rank == short_adapter.rank + long_adapter.rank - bias_rank
    assert combined.num_chunks == short_adapter.num_chunks + long_adapter.num_chunks
    model = tiny_engine.model
    dense = copy.deepcopy(model)
    for layer in combined.layers:
        assert _bias_delta(short_adapter, layer).abs().max() > 0
        # The document-independent block is the same in both; it is counted once.
        summed = (
            short_adapter.delta("down_proj", layer)
            + long_adapter.delta("down_proj", layer)
            - _bias_delta(short_adapter, layer)
        )
        assert summed.abs().max() > 0
        torch.testing.assert_close(combined.delta("down_proj", layer), summed, atol=1e-5, rtol=1e-4)
        path = combined.module_paths["down_proj"][layer]
        with torch.no_grad():
            dense.get_submodule(path).weight.add_(summed)

    with adapters_attached(model, combined):
        hooked = logits_of(model, question)
    with adapters_attached(model, [short_adapter, long_adapter]):
        as_list = logits_of(model, question)
    expected = logits_of(dense, question)
    assert (hooked - expected).abs().max() < 1e-4
    assert torch.equal(hooked, as_list)
    assert (hooked - logits_of(model, question)).abs().max() > 1e-3


def test_concat_refuses_mixed_base_models(short_adapter) -> None:
    stranger = dataclasses.replace(short_adapter, base_fingerprint="0" * 16)
    with pytest.raises(IncompatibleModelError):
        LoRAAdapter.concat([short_adapter, stranger])
    with pytest.raises(ValueError):
        LoRAAdapter.concat([])


# ------------------------------------------------------------------------- per-row batches


def left_padded(engine: Doc2LoRA, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded batch with position ids that restart at each row's first real token."""
    batch = engine.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return {**batch, "position_ids": positions}


def test_per_row_batch_equals_one_by_one(tiny_engine, short_adapter, long_adapter) -> None:
    """Row i uses adapter i only (None = base), even with different ranks in one batch."""
    assert short_adapter.rank != long_adapter.rank
    model = tiny_engine.model
    prompts = [
        tiny_engine.prompt("Who keeps the lighthouse?"),
        tiny_engine.prompt("How many crates?"),
        tiny_engine.prompt("When was the new press ordered, and from which city?"),
        tiny_engine.prompt("Tide?"),
    ]
    row_adapters = [short_adapter, None, long_adapter, long_adapter]
    batch = left_padded(tiny_engine, prompts)
    ids = batch.pop("input_ids")
    assert batch["attention_mask"].sum(-1).unique().numel() > 1  # padding is exercised
    with adapters_attached(model, row_adapters, per_row=True):
        batched = logits_of(model, ids, **batch)[:, -1]
    for row, (prompt, adapter) in enumerate(zip(prompts, row_adapters, strict=True)):
        ids = tiny_engine.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with adapters_attached(model, adapter):
            alone = logits_of(model, ids["input_ids"])[0, -1]
        torch.testing.assert_close(batched[row], alone, atol=1e-5, rtol=0)
        if adapter is not None:
            assert (alone - logits_of(model, ids["input_ids"])[0, -1]).abs().max() > 1e-3


def test_per_row_all_none_is_base(tiny_engine, question) -> None:
    model = tiny_engine.model
    base_logits = logits_of(model, question)
    with adapters_attached(model, [None], per_row=True):
        assert not any(m._forward_hooks for m in model.modules())
        assert torch.equal(logits_of(model, question), base_logits)


def test_per_row_refuses_mismatched_layers(tiny_engine, short_adapter) -> None:
    fewer = dataclasses.replace(
        short_adapter,
        layers=short_adapter.layers[:2],
        factors={n: (a[:2], b[:2]) for n, (a, b) in short_adapter.factors.items()},
    )
    with (
        pytest.raises(ValueError, match="same layers"),
        adapters_attached(tiny_engine.model, [short_adapter, fewer], per_row=True),
    ):
        pass


# --------------------------------------------------------------------------------- detach


def test_detach_leaves_no_hooks_and_no_copies(tiny_engine, short_adapter, question) -> None:
    model = tiny_engine.model
    paths = [short_adapter.module_paths["down_proj"][layer] for layer in short_adapter.layers]
    weights = {p: model.get_submodule(p).weight for p in paths}
    pointers = {p: w.data_ptr() for p, w in weights.items()}
    values = {p: w.detach().clone() for p, w in weights.items()}
    base_logits = logits_of(model, question)

    with adapters_attached(model, short_adapter):
        assert all(len(model.get_submodule(p)._forward_hooks) == 1 for p in paths)
        assert {p: model.get_submodule(p).weight.data_ptr() for p in paths} == pointers
        assert not torch.equal(logits_of(model, question), base_logits)

    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert {p: model.get_submodule(p).weight.data_ptr() for p in paths} == pointers
    assert all(torch.equal(model.get_submodule(p).weight, values[p]) for p in paths)
    assert torch.equal(logits_of(model, question), base_logits)


def test_detach_after_an_error(tiny_engine, short_adapter, question) -> None:
    model = tiny_engine.model
    base_logits = logits_of(model, question)
    with pytest.raises(RuntimeError, match="boom"), adapters_attached(model, short_adapter):
        raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.equal(logits_of(model, question), base_logits)


# ------------------------------------------------------------------ chunks of long documents

CHAPTERS = [
    "The harbour of Tesk shelters forty fishing boats and a ferry to the mainland. " * 2,
    "The granary of Oulme stores barley, rye and oats through the long winter months. " * 2,
    "The observatory of Pirra tracks comets with a bronze telescope built in 1890. " * 2,
    "The vineyard of Calst presses its grapes by hand and ages the wine in oak casks. " * 2,
]


@pytest.fixture(scope="module")
def chaptered(tiny_engine: Doc2LoRA) -> tuple[str, LoRAAdapter]:
    text = " ".join(CHAPTERS)
    return text, tiny_engine.internalize(text)


def test_select_chunks_keeps_those_chunks_and_the_bias_block(tiny_engine, chaptered) -> None:
    text, adapter = chaptered
    chunk_factors = tiny_engine._chunk_factors(
        chunk_token_ids(tiny_engine.tokenizer, tiny_engine.wrapper, text, tiny_engine.config.chunk_size)
    )
    assert adapter.num_chunks == len(chunk_factors) > 3
    picked = adapter.select_chunks([3, 1])
    assert picked.num_chunks == 2 and picked.metadata["chunks"] == [1, 3]
    assert picked.rank == 2 * adapter.chunk_rank + adapter.bias_rank
    for index, layer in enumerate(adapter.layers):
        expected = _bias_delta(adapter, layer)
        for chunk in (1, 3):
            a, b = chunk_factors[chunk]["down_proj"]
            expected = expected + b[0, index] @ a[0, index]
        torch.testing.assert_close(picked.delta("down_proj", layer), expected, atol=1e-5, rtol=1e-4)
    for wrong in ([], [adapter.num_chunks], [-1]):
        with pytest.raises(ValueError, match="subset"):
            adapter.select_chunks(wrong)


def test_best_chunks_ranks_by_the_question_and_keeps_document_order() -> None:
    assert best_chunks("Which telescope tracks comets at Pirra?", CHAPTERS, 1) == [2]
    assert best_chunks("Where are barley and wine kept?", CHAPTERS, 2) == [1, 3]
    assert best_chunks("Quantum chromodynamics?", CHAPTERS, 2) is None
    assert best_chunks("anything", CHAPTERS[:2], 3) == [0, 1]
    with pytest.raises(ValueError, match="at least 1"):
        best_chunks("anything", CHAPTERS, 0)


def test_focus_answers_with_the_matching_chunk_of_a_long_document(tiny_engine, chaptered) -> None:
    text, adapter = chaptered
    chunks = chunk_texts(tiny_engine.tokenizer, text, tiny_engine.config.chunk_size)
    target = next(i for i, chunk in enumerate(chunks) if "telescope" in chunk)
    focused = tiny_engine.focus(adapter, text, "What does the bronze telescope track?", max_chunks=1)
    assert focused.metadata["chunks"] == [target]
    assert tiny_engine.focus(adapter, text, "What?", max_chunks=adapter.num_chunks) is adapter
    assert tiny_engine.focus(adapter, text, "Quantum chromodynamics?", max_chunks=1) is adapter
    with pytest.raises(ValueError, match="splits into"):
        tiny_engine.focus(adapter, CHAPTERS[0], "What does the telescope track?", max_chunks=1)


def test_a_refined_document_answered_whole_answers_from_its_best_chunk_alone(tiny_engine, chaptered) -> None:
    text, adapter = chaptered
    n = adapter.num_chunks
    chunks = chunk_texts(tiny_engine.tokenizer, text, tiny_engine.config.chunk_size)
    target = next(i for i, chunk in enumerate(chunks) if "telescope" in chunk)
    question = "What does the bronze telescope track?"
    everything = list(range(n))
    assert tiny_engine.answering_chunks(adapter, text, question, n) == (None, everything)
    assert tiny_engine.answering_chunks(adapter, text, question, None) == (None, everything)
    assert tiny_engine.answering_chunks(adapter, text, question, n, refining=True) == ([target], [target])
    refined = adapter._replace(metadata={"refined_chunks": [0]})  # refined earlier, for another question
    assert tiny_engine.answering_chunks(refined, text, question, None) == ([target], [target])
    assert tiny_engine.answering_chunks(adapter, text, "Quantum chromodynamics?", n, refining=True) == (None, [])
    # A long document keeps its max_chunks best chunks, refined or not; one chunk is its own best.
    long = tiny_engine.answering_chunks(adapter, text, "Where are barley and wine kept?", 2, refining=True)
    assert len(long[0]) == 2 and long[0] == long[1]
    single = adapter.select_chunks([target])
    assert single.num_chunks == 1
    assert tiny_engine.answering_chunks(single, chunks[target], question, 3, refining=True) == (None, [0])


SENTENCES = "Ada keeps bees. The hives stand by the river! Why? Honey sells in May.\nPrices rise. " * 4


def test_sentence_chunks_end_where_sentences_end_and_keep_every_token(tiny_engine) -> None:
    tokenizer = tiny_engine.tokenizer
    whole = tokenizer.encode(SENTENCES, add_special_tokens=False)
    by_tokens = split_token_ids(tokenizer, SENTENCES, 40, "tokens")
    by_sentences = split_token_ids(tokenizer, SENTENCES, 40, "sentences")
    assert sum(by_tokens, []) == whole == sum(by_sentences, [])
    assert all(len(chunk) == 40 for chunk in by_tokens[:-1])
    assert any(not tokenizer.decode(chunk).rstrip().endswith((".", "!", "?")) for chunk in by_tokens[:-1])
    assert len(by_sentences) > len(by_tokens)
    for chunk in by_sentences:
        assert len(chunk) <= 40
        assert tokenizer.decode(chunk).rstrip().endswith((".", "!", "?")), tokenizer.decode(chunk)
    # A sentence longer than a chunk is cut after chunk_size tokens, as it must be.
    long = "A" * 100 + ". Short one. Another short one."
    pieces = [tokenizer.decode(c) for c in split_token_ids(tokenizer, long, 40, "sentences")]
    assert pieces == ["A" * 40, "A" * 40, "A" * 20 + ". Short one. ", "Another short one."]
    with pytest.raises(ValueError, match="chunking must be one of"):
        split_token_ids(tokenizer, SENTENCES, 40, "paragraphs")
    with pytest.raises(ValueError, match="chunking must be one of"):
        Doc2LoRA(tiny_engine.base, tiny_engine.hypernet, chunking="paragraphs")


def test_sentences_are_split_where_sentence_chunks_may_end(tiny_engine) -> None:
    sentences = split_sentences(SENTENCES)
    first = ["Ada keeps bees.", "The hives stand by the river!", "Why?", "Honey sells in May.", "Prices rise."]
    assert sentences[:5] == first
    assert len(sentences) == 20 and split_sentences("  \n ") == []
    chunks = [tiny_engine.tokenizer.decode(c).strip() for c in split_token_ids(tiny_engine.tokenizer, SENTENCES, 40)]
    assert all(chunk in sentences or chunk.startswith(tuple(sentences)) for chunk in chunks)
    assert " ".join(split_sentences(" ".join(chunks))) == " ".join(sentences)


def test_training_parts_end_at_the_sentence_start_nearest_an_equal_share(tiny_engine) -> None:
    tokenizer = tiny_engine.tokenizer
    whole = tokenizer.encode(SENTENCES, add_special_tokens=False)
    size = math.ceil(len(whole) / 3)
    assert split_into_parts(tokenizer, SENTENCES, 3, 1000, "tokens") == [
        whole[i : i + size] for i in range(0, len(whole), size)
    ]
    parts = split_into_parts(tokenizer, SENTENCES, 3, 1000, "sentences")
    assert len(parts) == 3 and sum(parts, []) == whole
    ends = [len(sum(parts[: k + 1], [])) for k in range(2)]
    assert ends != [size, 2 * size]
    for k, (part, end) in enumerate(zip(parts, ends, strict=False), start=1):
        assert tokenizer.decode(part).rstrip().endswith((".", "!", "?")), tokenizer.decode(part)
        assert abs(end - k * size) <= size / 2
    assert sum(split_into_parts(tokenizer, SENTENCES, 2, 50, "sentences"), []) == whole[:50]
    # Too short for the parts asked (16 tokens at least each): fewer parts.
    assert split_into_parts(tokenizer, "Ada keeps bees.", 3, 1000) == [tokenizer.encode("Ada keeps bees.")]
    # No sentence end near a share: the equal cut.
    run_on = "and the river runs on " * 20
    by_share = split_into_parts(tokenizer, run_on, 2, 1000, "tokens")
    assert split_into_parts(tokenizer, run_on, 2, 1000, "sentences") == by_share


def test_an_adapter_keeps_its_chunking_and_focus_splits_its_text_by_it(tiny_engine, tmp_path) -> None:
    """Chunks found for a question must be the adapter's own, whichever rule the engine uses now."""
    text = " ".join(CHAPTERS)
    by_tokens = Doc2LoRA(tiny_engine.base, tiny_engine.hypernet, chunking="tokens")
    adapter = by_tokens.internalize(text)
    assert tiny_engine.chunking == "sentences" and adapter.chunking == "tokens"
    texts = chunk_texts(tiny_engine.tokenizer, text, tiny_engine.config.chunk_size, "tokens")
    assert texts != chunk_texts(tiny_engine.tokenizer, text, tiny_engine.config.chunk_size, "sentences")
    focused = tiny_engine.focus(adapter, text, "What does the bronze telescope track?", max_chunks=1)
    assert "telescope" in texts[focused.metadata["chunks"][0]]
    loaded = LoRAAdapter.from_pretrained(adapter.save_pretrained(tmp_path / "tokens"))
    assert loaded.chunking == "tokens"
    assert LoRAAdapter.from_pretrained(tiny_engine.internalize(text).save_pretrained(tmp_path / "s")).chunking == (
        "sentences"
    )
    # Files written before the rule was recorded were split every chunk_size tokens.
    _rewrite_info(tmp_path / "s" / WEIGHTS_FILE, lambda info: {k: v for k, v in info.items() if k != "chunking"})
    assert LoRAAdapter.from_pretrained(tmp_path / "s").chunking == "tokens"
