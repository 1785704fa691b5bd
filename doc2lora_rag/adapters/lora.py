"""A generated LoRA adapter, and its standard PEFT directory format.

Factors are kept stacked over layers per target module: ``A [L, R, in]`` and
``B [L, out, R]``, with the scaling already folded into B, so the weight delta of layer l is
simply ``B[l] @ A[l]``. Rank concatenation (chunks, or several documents) is then a ``cat``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from doc2lora_rag.errors import AdapterFormatError, IncompatibleModelError
from doc2lora_rag.hypernetwork.chunking import CHUNKINGS

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
_METADATA_KEY = "doc2lora"
_PEFT_PREFIX = "base_model.model."


@dataclass
class LoRAAdapter:
    """LoRA factors for some layers of one base model, plus where they came from."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    layers: list[int]
    module_paths: dict[str, list[str]]  # module name -> full path per *base* layer
    base_model_name: str
    base_fingerprint: str
    hypernet_fingerprint: str | None = None
    num_chunks: int = 1
    # Where its document's chunks end (hypernetwork/chunking.py); files written before this
    # was recorded were split every ``chunk_size`` tokens.
    chunking: str = "tokens"
    metadata: dict = field(default_factory=dict)
    # The last ``bias_rank`` ranks are the hypernetwork's document-independent block.
    bias_rank: int = 0

    @property
    def rank(self) -> int:
        return next(iter(self.factors.values()))[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.factors.values())

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.factors.values()))[0].dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> LoRAAdapter:
        moved = {n: (a.to(device, dtype), b.to(device, dtype)) for n, (a, b) in self.factors.items()}
        return self._replace(factors=moved)

    @property
    def chunk_rank(self) -> int:
        """Ranks per chunk: the chunk blocks come first, in order, and the bias block last."""
        chunk_ranks = self.rank - self.bias_rank
        if self.num_chunks < 1 or chunk_ranks % self.num_chunks:
            raise ValueError(f"{chunk_ranks} chunk ranks do not split into {self.num_chunks} chunks")
        return chunk_ranks // self.num_chunks

    @property
    def refined_chunks(self) -> frozenset[int]:
        """The chunks whose blocks were refined by gradient steps (``Doc2LoRA.refine``); an
        adapter refined before the chunks were recorded was refined whole."""
        done = self.metadata.get("refined_chunks")
        if done is not None:
            return frozenset(int(c) for c in done)
        return frozenset(range(self.num_chunks)) if self.metadata.get("refine_steps") else frozenset()

    def select_chunks(self, chunks: Sequence[int]) -> LoRAAdapter:
        """The adapter of some of its chunks alone: their rank blocks plus the bias block."""
        size = self.chunk_rank
        chunks = sorted(set(chunks))
        if not chunks or chunks[0] < 0 or chunks[-1] >= self.num_chunks:
            raise ValueError(f"chunks must be a non-empty subset of 0..{self.num_chunks - 1}, not {chunks}")
        keep = [c * size + i for c in chunks for i in range(size)]
        keep += list(range(self.rank - self.bias_rank, self.rank))
        index = torch.tensor(keep, device=next(iter(self.factors.values()))[0].device)
        factors = {n: (a.index_select(1, index), b.index_select(2, index)) for n, (a, b) in self.factors.items()}
        metadata = {**self.metadata, "chunks": chunks}
        if "refined_chunks" in self.metadata:  # renumbered as the kept chunks now are
            done = set(self.metadata["refined_chunks"])
            metadata["refined_chunks"] = [new for new, old in enumerate(chunks) if old in done]
        return self._replace(factors=factors, num_chunks=len(chunks), metadata=metadata)

    def delta(self, module: str, layer: int) -> torch.Tensor:
        """The dense weight delta ``B @ A`` of one module (for checks, not the hot path)."""
        a, b = self.factors[module]
        index = self.layers.index(layer)
        return b[index] @ a[index]

    @classmethod
    def concat(cls, adapters: list[LoRAAdapter]) -> LoRAAdapter:
        """Combine adapters by rank concatenation: the deltas add up."""
        if not adapters:
            raise ValueError("concat needs at least one adapter")
        first = adapters[0]
        for other in adapters[1:]:
            if other.base_fingerprint != first.base_fingerprint:
                raise IncompatibleModelError("cannot combine adapters made for different base models")
            if other.layers != first.layers or set(other.factors) != set(first.factors):
                raise IncompatibleModelError("cannot combine adapters with different layers or modules")
        # The document-independent block is the same in every adapter of one hypernetwork:
        # keep it once, so combining k documents does not add it k times.
        shared = len({(ad.hypernet_fingerprint, ad.bias_rank) for ad in adapters}) == 1 and first.bias_rank > 0
        factors = {}
        for name in first.factors:
            a_parts, b_parts = [], []
            for ad in adapters:
                a, b = ad.factors[name]
                keep = a.shape[1] - ad.bias_rank if shared else a.shape[1]
                a_parts.append(a[:, :keep])
                b_parts.append(b[:, :, :keep])
            if shared:
                a, b = first.factors[name]
                a_parts.append(a[:, -first.bias_rank :])
                b_parts.append(b[:, :, -first.bias_rank :])
            factors[name] = (torch.cat(a_parts, dim=1), torch.cat(b_parts, dim=2))
        hypernets = {ad.hypernet_fingerprint for ad in adapters}
        return first._replace(
            factors=factors,
            num_chunks=sum(ad.num_chunks for ad in adapters),
            hypernet_fingerprint=hypernets.pop() if len(hypernets) == 1 else None,
            metadata={"combined": [ad.metadata.get("id") for ad in adapters]},
            bias_rank=first.bias_rank if shared else 0,
        )

    def tagged(self, **metadata) -> LoRAAdapter:
        """The same adapter with ``metadata`` added to (or replacing keys of) its own."""
        return self._replace(metadata={**self.metadata, **metadata})

    def _replace(self, **changes) -> LoRAAdapter:
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return LoRAAdapter(**{**fields, **changes})

    # ----------------------------------------------------------------- PEFT format

    def peft_config(self) -> LoraConfig:
        """Scaling is folded into B, so ``lora_alpha == r`` makes PEFT's scale exactly 1."""
        all_layers = len(next(iter(self.module_paths.values())))
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.rank,
            lora_dropout=0.0,
            bias="none",
            target_modules=sorted(self.factors),
            layers_to_transform=None if len(self.layers) == all_layers else list(self.layers),
            layers_pattern=None if len(self.layers) == all_layers else "layers",
            base_model_name_or_path=self.base_model_name,
            task_type="CAUSAL_LM",
        )

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, (a, b) in self.factors.items():
            for index, layer in enumerate(self.layers):
                path = _PEFT_PREFIX + self.module_paths[name][layer]
                tensors[f"{path}.lora_A.weight"] = a[index].contiguous()
                tensors[f"{path}.lora_B.weight"] = b[index].contiguous()
        return tensors

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a PEFT adapter directory (``adapter_config.json`` + safetensors)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu() for k, v in self.peft_state_dict().items()}
        info = {
            "layers": self.layers,
            "module_paths": self.module_paths,
            "base_model_name": self.base_model_name,
            "base_fingerprint": self.base_fingerprint,
            "hypernet_fingerprint": self.hypernet_fingerprint,
            "num_chunks": self.num_chunks,
            "chunking": self.chunking,
            "bias_rank": self.bias_rank,
            "metadata": self.metadata,
        }
        info["sha256"] = _digest(tensors, info)
        save_file(tensors, directory / WEIGHTS_FILE, metadata={_METADATA_KEY: json.dumps(info)})
        self.peft_config().save_pretrained(str(directory))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> LoRAAdapter:
        """Load a directory written by :meth:`save_pretrained`, checking its integrity."""
        directory = Path(directory)
        weights = directory / WEIGHTS_FILE
        try:
            with open(weights, "rb") as handle:
                header_len = int.from_bytes(handle.read(8), "little")
                # A corrupted length would otherwise ask read() for up to 2**64 bytes.
                if header_len > os.fstat(handle.fileno()).st_size - 8:
                    raise ValueError(f"header length {header_len} runs past the end of the file")
                header = json.loads(handle.read(header_len))
            info = json.loads(header["__metadata__"][_METADATA_KEY])
            if not isinstance(info, dict):
                raise TypeError(f"its {_METADATA_KEY!r} metadata is {type(info).__name__}, not an object")
            tensors = load_file(weights, device=str(device))
        except FileNotFoundError as error:
            raise AdapterFormatError(f"no adapter at {directory}") from error
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as error:
            raise AdapterFormatError(f"{weights} is not a doc2lora adapter: {error}") from error
        # Files written before the checksum covered the metadata too carry the tensors' alone.
        if "sha256" in info:
            intact = _digest(tensors, info) == info["sha256"]
        else:
            intact = _tensor_digest(tensors) == info.get("tensor_sha256")
        if not intact:
            raise AdapterFormatError(f"{weights} fails its checksum: the file was modified")
        try:
            layers, paths = info["layers"], info["module_paths"]
            if not layers or not paths:
                raise ValueError("it names no layers or no modules")
            chunking = info.get("chunking", "tokens")
            if chunking not in CHUNKINGS:
                raise ValueError(f"its chunks were split by an unknown rule, {chunking!r}")
            factors = {}
            for name in paths:
                keys = [_PEFT_PREFIX + paths[name][layer] for layer in layers]
                factors[name] = (
                    torch.stack([tensors[f"{k}.lora_A.weight"] for k in keys]),
                    torch.stack([tensors[f"{k}.lora_B.weight"] for k in keys]),
                )
            return cls(
                factors=factors,
                layers=layers,
                module_paths=paths,
                base_model_name=info["base_model_name"],
                base_fingerprint=info["base_fingerprint"],
                hypernet_fingerprint=info["hypernet_fingerprint"],
                num_chunks=info["num_chunks"],
                chunking=chunking,
                metadata=info["metadata"],
                bias_rank=info.get("bias_rank", 0),
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValueError, RuntimeError) as error:
            raise AdapterFormatError(f"{weights} has malformed {_METADATA_KEY} metadata: {error!r}") from error


def _digest(tensors: dict[str, torch.Tensor], info: dict) -> str:
    """SHA-256 of the tensors and the header metadata (its checksum keys aside): an edited
    fingerprint could otherwise pass an adapter off as made for another base model."""
    described = {k: v for k, v in info.items() if k not in ("sha256", "tensor_sha256")}
    return _tensor_digest(tensors, json.dumps(described, sort_keys=True, separators=(",", ":")).encode())


def _tensor_digest(tensors: dict[str, torch.Tensor], extra: bytes = b"") -> str:
    digest = hashlib.sha256(extra)
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
