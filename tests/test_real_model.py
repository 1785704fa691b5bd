"""The embedded SmolLM2-135M-Instruct default, end to end (kept short: well under a minute)."""

from __future__ import annotations

import copy
import dataclasses
import time

import peft
import pytest
import torch
from safetensors import safe_open

from doc2lora_rag import Doc2LoRA, HyperNetwork, LoRAAdapter
from doc2lora_rag.adapters.runtime import adapters_attached
from doc2lora_rag.base_model.fingerprint import model_fingerprint
from doc2lora_rag.base_model.loading import DEFAULT_MODEL_NAME, load_base_model
from doc2lora_rag.engine import DEFAULT_CHECKPOINT
from doc2lora_rag.evaluation.likelihood import answer_nll
from doc2lora_rag.training.data import synthetic_fact_records

pytestmark = pytest.mark.real_model

DOC = (
    "The lighthouse on Varn Island is kept by Ada Moss. "
    "She records the tide every morning at 06:40 in a green ledger."
)
QUESTION = "Who keeps the lighthouse on Varn Island?"


@pytest.fixture(scope="module")
def adapter(real_engine: Doc2LoRA) -> LoRAAdapter:
    return real_engine.internalize(DOC)


def test_second_load_is_fast(real_engine: Doc2LoRA) -> None:
    """The converted safetensors copy in the user cache makes every later load quick."""
    assert real_engine.base.name == DEFAULT_MODEL_NAME
    start = time.perf_counter()
    again = load_base_model()
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"second load took {elapsed:.2f} s"
    assert model_fingerprint(again.model) == real_engine.fingerprint


def test_internalize_short_document(real_engine: Doc2LoRA, adapter: LoRAAdapter) -> None:
    config, model_config = real_engine.config, real_engine.model.config
    assert adapter.num_chunks == 1
    assert adapter.rank == config.rank + config.bias_rank
    assert adapter.layers == config.target_layers
    width = model_config.intermediate_size + model_config.hidden_size  # down_proj in + out
    element = torch.finfo(adapter.dtype).bits // 8
    assert adapter.nbytes == len(config.target_layers) * adapter.rank * width * element
    a, b = adapter.factors["down_proj"]
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert a.abs().sum() > 0


def visible(adapter: LoRAAdapter) -> LoRAAdapter:
    """The adapter itself if it changes the model; otherwise (an untrained hypernetwork emits
    B = 0) the same A with small seeded B, so that the export check below can fail."""
    if any(b.abs().sum() > 0 for _, b in adapter.factors.values()):
        return adapter
    generator = torch.Generator().manual_seed(0)
    factors = {
        name: (a, torch.randn(b.shape, generator=generator, dtype=b.dtype) * 0.02)
        for name, (a, b) in adapter.factors.items()
    }
    return dataclasses.replace(adapter, factors=factors)


def test_peft_export_matches_hooks(real_engine: Doc2LoRA, adapter: LoRAAdapter, tmp_path) -> None:
    adapter = visible(adapter)
    directory = adapter.save_pretrained(tmp_path / "adapter")
    prompt = real_engine.prompt(QUESTION)
    ids = real_engine.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model = real_engine.model
    with torch.inference_mode():
        base = model(input_ids=ids).logits
        with adapters_attached(model, adapter):
            hooked = model(input_ids=ids).logits
        peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(directory)).eval()
        exported = peft_model(input_ids=ids).logits
    assert (exported - hooked).abs().max() < 1e-4
    assert (exported - base).abs().max() > 1e-3
    loaded = LoRAAdapter.from_pretrained(directory)
    assert all(torch.equal(loaded.factors[n][1], b) for n, (_, b) in adapter.factors.items())


def test_generate_in_context(real_engine: Doc2LoRA) -> None:
    answer = real_engine.generate(QUESTION, context=DOC, max_new_tokens=8)
    assert isinstance(answer, str)
    assert answer.strip()


@pytest.mark.skipif(
    not (DEFAULT_CHECKPOINT / "hypernet_config.json").is_file(), reason="no hypernetwork is shipped yet"
)
def test_shipped_hypernetwork_is_the_default_and_reads_documents(real_engine: Doc2LoRA) -> None:
    """The package's checkpoint loads by default (bf16, <= 40 MB), and its adapters carry their
    own document: the gold answers of held-out fact documents are likelier with their own
    document's adapter than with another's."""
    weights = DEFAULT_CHECKPOINT / "hypernet.safetensors"
    assert weights.stat().st_size <= 40 * 1024**2
    with safe_open(weights, "pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}  # noqa: SIM118
    shipped = HyperNetwork.from_pretrained(DEFAULT_CHECKPOINT)
    assert real_engine.hypernet.fingerprint == shipped.fingerprint
    records = synthetic_fact_records(16, seed=31337)
    adapters = {r.context: real_engine.internalize(r.context) for r in records}
    contexts = list(adapters)
    others = [adapters[contexts[(contexts.index(r.context) + 1) % len(contexts)]] for r in records]
    questions, answers = [r.question for r in records], [r.answer for r in records]
    own = answer_nll(real_engine, questions, answers, adapters=[adapters[r.context] for r in records])
    other = answer_nll(real_engine, questions, answers, adapters=others)
    assert sum(own) < sum(other), (sum(own) / len(own), sum(other) / len(other))
