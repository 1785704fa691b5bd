"""Hypernetwork configuration: what it reads, what it emits, and how big it is."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from doc2lora_rag.base_model.fingerprint import model_fingerprint
from doc2lora_rag.base_model.layers import decoder_layers, target_linear_paths
from doc2lora_rag.base_model.loading import BaseModel

# Options added after networks were shipped, with the default that means "as before".
OPTIONS_ADDED_LATER = {"position_encoding": False}


@dataclass
class HypernetConfig:
    """Everything needed to rebuild a hypernetwork; saved as JSON beside its weights.

    ``source_layers`` are the base-model layers whose inputs are read. Target layers are split
    into as many contiguous groups as there are source layers, and group i is generated from
    source layer i: with every layer as a source, layer l's LoRA comes from the activations
    entering layer l (as published); with one early source, ingest runs only up to it.
    """

    base_model_name: str
    base_fingerprint: str
    base_hidden_size: int
    # target module name -> [in_features, out_features]
    target_modules: dict[str, list[int]]
    # target module name -> full module path per base layer (for PEFT export)
    module_paths: dict[str, list[str]]
    target_layers: list[int]
    source_layers: list[int]
    rank: int = 8
    alpha: float | None = None  # None: 2 * rank**1.5, applied directly (not alpha / rank)
    bias_rank: int = 8  # rank of the learned document-independent block; 0 disables it
    width: int = 256
    num_blocks: int = 4
    num_heads: int = 8
    num_kv_heads: int = 2
    num_latents: int = 8
    mlp_ratio: int = 4
    head_width: int = 64
    chunk_size: int = 1024
    # B columns of residual-writing modules may also point at the chunk's token embeddings
    # (see hypernetwork/pointer.py); the network then needs those embeddings as input.
    pointer: bool = False
    # "rms": per-vector RMS norm of the head features, as published; "document": centre each
    # feature over documents first (model.DocumentCentering).
    head_norm: str = "rms"
    # Multiplies the B head's output before alpha. None: 1 / (alpha * sqrt(head_width)), so an
    # optimiser step moves B about as much as A. 1.0: alpha applies in full, as published,
    # which makes B learn about alpha * sqrt(head_width) times faster than A (use a lower lr).
    b_head_gain: float | None = None
    # A training-only head that reads the answer's tokens off the latents (TrainConfig's
    # answer_weight), a direct signal for the cross-attention to find what the document says.
    answer_head: bool = False
    # Add each token's index in its chunk to the context the latents attend to
    # (perceiver.TokenPositions); without it the cross-attention sees the chunk as a set.
    position_encoding: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rank < 1 or self.chunk_size < 8 or self.bias_rank < 0:
            raise ValueError("rank >= 1, chunk_size >= 8 and bias_rank >= 0 are required")
        if len(self.target_layers) % len(self.source_layers):
            raise ValueError(
                f"{len(self.target_layers)} target layers cannot be split evenly over "
                f"{len(self.source_layers)} source layers"
            )
        if self.head_norm not in ("document", "rms"):
            raise ValueError(f"head_norm must be 'document' or 'rms', not {self.head_norm!r}")
        if self.width % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("width must divide by num_heads, and num_heads by num_kv_heads")

    @property
    def scale(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank**1.5

    @property
    def layers_per_source(self) -> int:
        return len(self.target_layers) // len(self.source_layers)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """What the hypernetwork fingerprint hashes: the config without options newer than
        shipped networks while they are at their default, so that a saved network keeps its
        fingerprint (and the adapter stores bound to it) when the library gains an option."""
        return {k: v for k, v in self.to_dict().items() if OPTIONS_ADDED_LATER.get(k, object()) != v}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict) -> HypernetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown hypernetwork config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def for_base_model(
        cls,
        base: BaseModel,
        *,
        target_modules: tuple[str, ...] = ("down_proj",),
        source_layers: list[int] | str = "quarter",
        target_layers: list[int] | None = None,
        **options,
    ) -> HypernetConfig:
        """Derive shapes and paths from ``base``.

        ``source_layers``: ``"all"`` (as published), ``"quarter"`` (one layer at a quarter of
        the depth, the cheap default), or explicit layer indices.
        """
        num_layers = len(decoder_layers(base.model))
        targets = list(range(num_layers)) if target_layers is None else sorted(target_layers)
        if source_layers == "all":
            sources = list(targets)
        elif source_layers == "quarter":
            sources = [num_layers // 4]
        else:
            sources = sorted(int(i) for i in source_layers)
        modules = {}
        paths = {}
        for name in target_modules:
            paths[name] = target_linear_paths(base.model, name)
            linear = base.model.get_submodule(paths[name][0])
            modules[name] = [linear.in_features, linear.out_features]
        return cls(
            base_model_name=base.name,
            base_fingerprint=model_fingerprint(base.model),
            base_hidden_size=base.model.config.get_text_config().hidden_size,
            target_modules=modules,
            module_paths=paths,
            target_layers=targets,
            source_layers=sources,
            **options,
        )
