"""Hypernetwork configuration, output shapes, masking and activation extraction."""

from __future__ import annotations

import json

import pytest
import torch

from doc2lora_rag import AdapterFormatError, HypernetConfig, HyperNetwork
from doc2lora_rag.base_model import activations
from doc2lora_rag.base_model.activations import READING_DTYPE_ENV, layer_inputs, reading_dtype
from doc2lora_rag.base_model.layers import decoder_layers
from doc2lora_rag.engine import DEFAULT_CHECKPOINT
from doc2lora_rag.hypernetwork.chunking import pad_right, token_budget_batches
from doc2lora_rag.hypernetwork.model import CONFIG_FILE, WEIGHTS_FILE, DocumentCentering
from doc2lora_rag.testing import tiny_base_model
from tests.conftest import TINY_HYPERNET

NUM_LAYERS = 4  # tiny_base_model's default depth


@pytest.fixture(scope="module")
def base():
    return tiny_base_model(seed=0)


def _config(base, **options) -> HypernetConfig:
    return HypernetConfig.for_base_model(base, **{**TINY_HYPERNET, **options})


@pytest.mark.parametrize(
    ("source_layers", "expected"),
    [("all", [0, 1, 2, 3]), ("quarter", [NUM_LAYERS // 4]), ([2, 0], [0, 2])],
)
def test_source_layer_choices(base, source_layers, expected: list[int]) -> None:
    config = _config(base, source_layers=source_layers)
    assert config.source_layers == expected
    assert config.target_layers == list(range(NUM_LAYERS))
    assert config.layers_per_source == NUM_LAYERS // len(expected)


@pytest.mark.parametrize("source_layers", ["all", "quarter", [0, 2]])
def test_forward_and_assemble_shapes(base, source_layers) -> None:
    """The shapes promised in model.py: A [N, L, r, in], B [N, L, out, r]; assembled
    factors stack chunks along the rank and append the bias block."""
    config = _config(base, source_layers=source_layers)
    torch.manual_seed(0)
    network = HyperNetwork(config).eval()
    sources, chunks, tokens = len(config.source_layers), 3, 11
    hidden = base.model.config.hidden_size
    in_features, out_features = config.target_modules["down_proj"]
    activations = torch.randn(sources, chunks, tokens, hidden)
    mask = torch.ones(chunks, tokens, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        factors = network(activations, mask, torch.randn(chunks, tokens, hidden))
        a, b = factors["down_proj"]
        assert a.shape == (chunks, NUM_LAYERS, config.rank, in_features)
        assert b.shape == (chunks, NUM_LAYERS, out_features, config.rank)
        assert torch.isfinite(a).all()
        a_all, b_all = network.assemble(factors)["down_proj"]
    total_rank = chunks * config.rank + config.bias_rank
    assert a_all.shape == (NUM_LAYERS, total_rank, in_features)
    assert b_all.shape == (NUM_LAYERS, out_features, total_rank)
    # Chunk c's rows sit at ranks [c*r, (c+1)*r) of every layer.
    torch.testing.assert_close(a_all[2, config.rank : 2 * config.rank], a[1, 2])
    torch.testing.assert_close(a_all[:, chunks * config.rank :], network.bias_a["down_proj"])


def test_fresh_network_emits_zero_b_and_nonzero_a(base) -> None:
    """Zero delta at initialisation must come from B alone, with A still informative."""
    network = HyperNetwork(_config(base, source_layers="all")).eval()
    activations = torch.randn(NUM_LAYERS, 2, 9, base.model.config.hidden_size)
    mask = torch.ones(2, 9, dtype=torch.bool)
    with torch.no_grad():
        embeddings = torch.randn(2, 9, base.model.config.hidden_size)
        a, b = network.assemble(network(activations, mask, embeddings))["down_proj"]
    assert torch.count_nonzero(b) == 0
    assert a.abs().sum() > 0


def test_padding_is_ignored(base) -> None:
    """A chunk padded inside a batch must get the same factors as the chunk on its own."""
    torch.manual_seed(1)
    network = HyperNetwork(_config(base, source_layers=[0, 2], pointer=True)).eval()
    with torch.no_grad():
        for name in network.heads.b_weight:
            network.heads.b_weight[name].normal_(0, 0.02)
        for gain in network.pointer.gain.values():
            gain.normal_(0, 0.01)
    hidden = base.model.config.hidden_size
    long, short = torch.randn(2, 1, 12, hidden), torch.randn(2, 1, 5, hidden)
    padded = torch.cat([long, torch.cat([short, torch.randn(2, 1, 7, hidden)], dim=2)], dim=1)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 5:] = False
    embed_long, embed_short = torch.randn(1, 12, hidden), torch.randn(1, 5, hidden)
    embeddings = torch.cat([embed_long, torch.cat([embed_short, torch.randn(1, 7, hidden)], dim=1)])
    with torch.no_grad():
        a_batch, b_batch = network(padded, mask, embeddings)["down_proj"]
        a_alone, b_alone = network(short, torch.ones(1, 5, dtype=torch.bool), embed_short)["down_proj"]
    assert b_alone.abs().sum() > 0
    torch.testing.assert_close(a_batch[1:], a_alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b_batch[1:], b_alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("source_layers", "target_layers"), [([0, 1, 2], None), ([0, 1], [0, 1, 2])]
)
def test_uneven_split_is_refused(base, source_layers: list[int], target_layers) -> None:
    with pytest.raises(ValueError, match="cannot be split evenly"):
        _config(base, source_layers=source_layers, target_layers=target_layers)


def test_invalid_sizes_are_refused(base) -> None:
    with pytest.raises(ValueError, match="rank"):
        _config(base, rank=0)
    with pytest.raises(ValueError, match="num_heads"):
        _config(base, width=30, num_heads=4)


def test_config_json_round_trip(base, tmp_path) -> None:
    config = _config(base, source_layers=[1, 3], rank=4, bias_rank=0, chunk_size=64)
    path = tmp_path / "hypernet_config.json"
    config.save(path)
    loaded = HypernetConfig.from_dict(json.loads(path.read_text()))
    assert loaded == config
    assert loaded.scale == pytest.approx(2 * 4**1.5)
    with pytest.raises(ValueError, match="unknown hypernetwork config keys"):
        HypernetConfig.from_dict({**config.to_dict(), "surprise": 1})
    # Files written before head_norm existed describe networks with the per-vector RMS norm.
    older = {k: v for k, v in config.to_dict().items() if k != "head_norm"}
    assert HypernetConfig.from_dict(older).head_norm == "rms"
    assert HyperNetwork(HypernetConfig.from_dict(older)).heads.centering is None
    assert HyperNetwork(_config(base, head_norm="document")).heads.centering is not None
    with pytest.raises(ValueError, match="head_norm"):
        _config(base, head_norm="layer")


def test_document_centering_removes_what_documents_share() -> None:
    """Training: a vector shared by every document in the batch vanishes. Inference: the
    running mean, so a document's output does not depend on the others batched with it."""
    torch.manual_seed(3)
    centering = DocumentCentering(2 * 3 * 4)
    h = torch.randn(6, 2, 3, 4)
    shared = torch.randn(1, 2, 3, 4) * 100
    out = centering(h + shared)
    torch.testing.assert_close(out, centering(h), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.mean(0), torch.zeros(2, 3, 4), atol=1e-4, rtol=0)
    assert not torch.equal(centering.running_mean, torch.zeros_like(centering.running_mean))
    centering.eval()
    torch.testing.assert_close(centering(h)[:1], centering(h[:1]))
    torch.testing.assert_close(centering(h)[:1], (h[:1].flatten(1) - centering.running_mean).view(1, 2, 3, 4))
    alone = DocumentCentering(24).train()
    torch.testing.assert_close(alone(h[:1]), h[:1])  # one chunk: the running mean (still zero)


def test_bias_rank_zero_has_no_bias_block(base) -> None:
    config = _config(base, bias_rank=0)
    network = HyperNetwork(config).eval()
    activations = torch.randn(1, 2, 6, base.model.config.hidden_size)
    mask = torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        a, _ = network.assemble(network(activations, mask, torch.randn(*mask.shape, activations.shape[-1])))[
            "down_proj"
        ]
    assert a.shape[1] == 2 * config.rank


def test_layer_inputs_match_hidden_states_and_stop_early(base) -> None:
    """The inputs of a layer are the model's hidden states there, and layers past the last
    source never run (so an early read-out costs only part of a forward pass)."""
    model = base.model
    ids = torch.randint(3, 200, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    reference = output.hidden_states
    calls: list[int] = []
    stack = decoder_layers(model)
    handles = [
        layer.register_forward_pre_hook(lambda *_, i=i: calls.append(i))
        for i, layer in enumerate(stack)
    ]
    try:
        captured = layer_inputs(model, ids, mask, [1])
    finally:
        for handle in handles:
            handle.remove()
    assert captured.shape == (1, 2, 10, model.config.hidden_size)
    torch.testing.assert_close(captured[0], reference[1])
    assert calls == [0, 1]
    both = layer_inputs(model, ids, mask, [2, 0])
    torch.testing.assert_close(both[0], reference[2])
    torch.testing.assert_close(both[1], reference[0])


def test_bf16_reading_stays_close_to_fp32_and_keeps_the_residual_in_fp32(base) -> None:
    """Reading in bf16 (autocast) changes the layer inputs by rounding only: the residual
    stream is still added up in fp32, so the error stays near bf16's own precision."""
    ids = torch.randint(3, 200, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    exact = layer_inputs(base.model, ids, mask, [1, 3])
    fast = layer_inputs(base.model, ids, mask, [1, 3], torch.bfloat16)
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact)
    relative = (fast - exact).norm() / exact.norm()
    assert relative < 0.03, relative
    assert torch.equal(layer_inputs(base.model, ids, mask, [1, 3], torch.float32), exact)


def test_a_16_bit_model_is_not_read_in_another_precision() -> None:
    model = tiny_base_model(seed=0).model.to(torch.bfloat16)
    ids = torch.randint(3, 200, (1, 5))
    with pytest.raises(ValueError, match="only fp32 weights"):
        layer_inputs(model, ids, torch.ones_like(ids, dtype=torch.bool), [1], torch.float16)
    assert reading_dtype(model) == torch.bfloat16


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_reading_dtype_follows_the_cpu(base, monkeypatch, native: bool, expected: torch.dtype) -> None:
    monkeypatch.delenv(READING_DTYPE_ENV, raising=False)
    monkeypatch.setattr(activations, "cpu_has_native_bf16", lambda: native)
    assert reading_dtype(base.model) == expected


def test_reading_dtype_can_be_set_by_environment(base, monkeypatch) -> None:
    monkeypatch.setattr(activations, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv(READING_DTYPE_ENV, "float32")
    assert reading_dtype(base.model) == torch.float32
    monkeypatch.setattr(activations, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setenv(READING_DTYPE_ENV, "bfloat16")
    assert reading_dtype(base.model) == torch.bfloat16
    monkeypatch.setenv(READING_DTYPE_ENV, "fp8")
    with pytest.raises(ValueError, match=READING_DTYPE_ENV):
        reading_dtype(base.model)


def test_token_budget_batches_respect_budget() -> None:
    lengths = [30, 10, 50, 20, 50, 5]
    batches = token_budget_batches(lengths, max_tokens=100)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 100 or len(batch) == 1
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_damaged_checkpoints_raise_format_errors(base, tmp_path) -> None:
    """Missing, truncated or mismatched files are reported as AdapterFormatError."""
    network = HyperNetwork(_config(base))
    with pytest.raises(AdapterFormatError):
        HyperNetwork.from_pretrained(tmp_path / "nowhere")
    network.save_pretrained(tmp_path / "net")
    assert HyperNetwork.from_pretrained(tmp_path / "net").fingerprint == network.fingerprint
    weights = tmp_path / "net" / WEIGHTS_FILE
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(AdapterFormatError, match="cannot read"):
        HyperNetwork.from_pretrained(tmp_path / "net")
    weights.write_bytes(raw)
    other = _config(base, width=64)
    (tmp_path / "net" / CONFIG_FILE).write_text(json.dumps(other.to_dict()))
    with pytest.raises(AdapterFormatError, match="do not fit"):
        HyperNetwork.from_pretrained(tmp_path / "net")


def test_input_statistics_make_the_network_blind_to_per_dimension_scale_and_offset(base, tmp_path) -> None:
    """Outlier dimensions of a residual stream are divided away: the same tokens shifted and
    scaled per dimension give the same factors once the statistics are measured on them."""
    torch.manual_seed(2)
    network = HyperNetwork(_config(base, source_layers=[0, 2])).eval()
    with torch.no_grad():
        for name in network.heads.b_weight:
            network.heads.b_weight[name].normal_(0, 0.02)
    hidden = base.model.config.hidden_size
    tokens = torch.randn(2, 1, 10, hidden)
    scale, offset = torch.rand(2, 1, 1, hidden) * 50 + 0.1, torch.randn(2, 1, 1, hidden) * 20
    mask = torch.ones(1, 10, dtype=torch.bool)
    twin = HyperNetwork(network.config).eval()
    twin.load_state_dict(network.state_dict())
    network.set_input_statistics([tokens[:, 0]])
    twin.set_input_statistics([(tokens * scale + offset)[:, 0]])
    embeddings = torch.randn(1, 10, hidden)
    with torch.no_grad():
        a, b = network(tokens, mask, embeddings)["down_proj"]
        a_twin, b_twin = twin(tokens * scale + offset, mask, embeddings)["down_proj"]
    torch.testing.assert_close(a_twin, a, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(b_twin, b, atol=1e-4, rtol=1e-3)
    assert not torch.equal(network.input_std, twin.input_std)
    # The statistics travel with the weights.
    twin.save_pretrained(tmp_path / "net")
    loaded = HyperNetwork.from_pretrained(tmp_path / "net")
    torch.testing.assert_close(loaded.input_std, twin.input_std)
    assert loaded.fingerprint == twin.fingerprint


def test_pointer_writes_document_token_embeddings_into_b(base) -> None:
    """With the pointer's gain set and every other B source silenced, each B column is a
    convex mix of the chunk's token embeddings (padding never chosen), times its gain."""
    torch.manual_seed(3)
    network = HyperNetwork(_config(base, source_layers=[0, 2], bias_rank=0, pointer=True)).eval()
    hidden = base.model.config.hidden_size
    tokens = torch.randn(2, 1, 6, hidden)
    embeddings = torch.cat([torch.eye(hidden)[:4], torch.full((2, hidden), 1e6)])[None]  # 2 padded rows
    mask = torch.tensor([[True, True, True, True, False, False]])
    with torch.no_grad():
        network.pointer.gain["down_proj"].fill_(0.01)
        _, b = network(tokens, mask, embeddings)["down_proj"]
    weights = b[0] / (100.0 * 0.01)  # [L, d, r]: columns are mixing weights over the 4 one-hot embeddings
    torch.testing.assert_close(weights[:, :4].sum(1), torch.ones(NUM_LAYERS, network.config.rank))
    assert (weights[:, :4] >= 0).all() and weights[:, 4:].abs().max() < 1e-6
    with pytest.raises(ValueError, match="embeddings"):
        network(tokens, mask)


def test_b_head_gain_scales_the_generated_b_only(base) -> None:
    balanced = HyperNetwork(_config(base, source_layers="all")).eval()
    assert balanced.heads.b_gain == pytest.approx(1 / (balanced.config.scale * balanced.config.head_width**0.5))
    published = HyperNetwork(_config(base, source_layers="all", b_head_gain=1.0)).eval()
    published.load_state_dict(balanced.state_dict())
    with torch.no_grad():
        for weight in balanced.heads.b_weight.values():
            weight.normal_(0, 0.1)
        published.load_state_dict(balanced.state_dict())
        activations = torch.randn(NUM_LAYERS, 2, 9, base.model.config.hidden_size)
        mask = torch.ones(2, 9, dtype=torch.bool)
        a_bal, b_bal = balanced(activations, mask)["down_proj"]
        a_pub, b_pub = published(activations, mask)["down_proj"]
    assert torch.equal(a_bal, a_pub)
    assert torch.allclose(b_pub, b_bal / balanced.heads.b_gain, rtol=1e-4)
    loaded = HypernetConfig.from_dict({k: v for k, v in balanced.config.to_dict().items() if k != "b_head_gain"})
    assert loaded.b_head_gain is None  # configs saved before the option keep the balanced gain


def test_position_encoding_makes_the_network_see_token_order(base) -> None:
    """Without positions a chunk is a set: shuffling its tokens changes nothing. With them,
    a fresh projection is exactly a no-op, and a trained one tells the orders apart."""
    torch.manual_seed(4)
    plain = HyperNetwork(_config(base, source_layers="all")).eval()
    with torch.no_grad():
        for weight in plain.heads.b_weight.values():
            weight.normal_(0, 0.1)
    placed = HyperNetwork(_config(base, source_layers="all", position_encoding=True)).eval()
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["position.project.weight"] and not unexpected
    activations = torch.randn(NUM_LAYERS, 1, 10, base.model.config.hidden_size)
    shuffled = activations[:, :, torch.randperm(10)]
    mask = torch.ones(1, 10, dtype=torch.bool)
    with torch.no_grad():
        _, b_plain = plain(activations, mask)["down_proj"]
        torch.testing.assert_close(plain(shuffled, mask)["down_proj"][1], b_plain)
        torch.testing.assert_close(placed(activations, mask)["down_proj"][1], b_plain)
        placed.position.project.weight.normal_(0, 0.5)
        _, b_placed = placed(activations, mask)["down_proj"]
        assert not torch.allclose(placed(shuffled, mask)["down_proj"][1], b_placed, atol=1e-4)
        torch.testing.assert_close(placed.position(700)[1], placed.position(2)[1])  # same index, same vector


def test_new_options_at_their_default_keep_a_networks_fingerprint(base) -> None:
    """Adapter stores are bound to a hypernetwork fingerprint: a library that gains an option
    must not change the fingerprint of a network saved before it."""
    plain, placed = _config(base), _config(base, position_encoding=True)
    assert plain.identity() == {k: v for k, v in plain.to_dict().items() if k != "position_encoding"}
    assert placed.identity()["position_encoding"] is True
    # The shipped network's fingerprint, as recorded by stores built with it; it changes only
    # when a new checkpoint ships.
    assert HyperNetwork.from_pretrained(DEFAULT_CHECKPOINT).fingerprint == "30dc37d52b9fa60d"


def test_interpolation_walks_the_line_between_two_networks(base) -> None:
    """Weight 0 and 1 give back the two networks; 0.5 is every parameter's mean; the input
    statistics, measured rather than learned, are carried over unchanged."""
    from doc2lora_rag.hypernetwork.interpolation import interpolate

    torch.manual_seed(3)
    first = HyperNetwork(_config(base))
    tokens = (len(first.config.source_layers), 12, base.model.config.hidden_size)
    first.set_input_statistics([torch.randn(tokens)])
    second = HyperNetwork(first.config)
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        for parameter in second.parameters():
            parameter.add_(torch.randn_like(parameter))
    assert interpolate(first, second, 0.0).fingerprint == first.fingerprint
    assert interpolate(first, second, 1.0).fingerprint == second.fingerprint
    middle = interpolate(first, second, 0.5)
    for name, parameter in middle.named_parameters():
        expected = (first.get_parameter(name) + second.get_parameter(name)) / 2
        torch.testing.assert_close(parameter, expected)
    torch.testing.assert_close(middle.input_std, first.input_std)
    assert middle.fingerprint not in (first.fingerprint, second.fingerprint)


def test_interpolation_refuses_networks_from_different_starts(base) -> None:
    from doc2lora_rag.hypernetwork.interpolation import interpolate

    first = HyperNetwork(_config(base))
    with pytest.raises(ValueError, match="different configs"):
        interpolate(first, HyperNetwork(_config(base, width=64)), 0.5)
    restandardised = HyperNetwork(first.config)
    restandardised.load_state_dict(first.state_dict())
    tokens = (len(first.config.source_layers), 12, base.model.config.hidden_size)
    restandardised.set_input_statistics([torch.randn(tokens)])
    with pytest.raises(ValueError, match="input_std|input_mean"):
        interpolate(first, restandardised, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(first, first, 1.5)
