"""Which engine a command loads, remembered in the store so later commands need no flags.

A store only works with the base model and hypernetwork that wrote it (fingerprints guard
that). ``ingest --base-model X --hypernet Y`` records X and Y in the store; ``ask`` and the
next ``ingest`` reuse them unless told otherwise.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from doc2lora_rag.errors import Doc2LoRAError
from doc2lora_rag.readers import MissingPathError
from doc2lora_rag.store import AdapterStore

META_KEY = "cli_engine"


class EngineLoadError(Doc2LoRAError):
    """The base model or hypernetwork named could not be loaded."""


@dataclass(frozen=True)
class EngineSpec:
    """Where the engine comes from: a base model (HF id or folder; None = embedded default),
    a hypernetwork folder (None = shipped, or fresh where none fits), device and threads, the
    longest document it reads (None = the engine's default), the refinement steps it gives
    each new adapter (0 = none), and how it refines (``Doc2LoRA.refine``)."""

    base_model: str | None = None
    hypernet: str | None = None
    device: str | None = None
    threads: int | None = None
    max_chars: int | None = None
    refine_steps: int = 0
    refine_by_ending: bool = False
    refine_answer_words: int | None = None
    refine_quote_words: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineSpec:
        keys = ("base_model", "hypernet", "device", "threads", "max_chars", "refine_answer_words", "refine_quote_words")
        return cls(
            **{k: data.get(k) for k in keys},
            refine_steps=data.get("refine_steps") or 0,
            refine_by_ending=bool(data.get("refine_by_ending")),
        )

    @classmethod
    def resolve(
        cls, store: AdapterStore | None, base_model: str | None, hypernet: str | None, **runtime: Any
    ) -> EngineSpec:
        """Flags win; otherwise what the store remembers (both model and hypernet together)."""
        if base_model is None and hypernet is None and store is not None:
            recorded = store.catalog.get_meta(META_KEY) or {}
            base_model, hypernet = recorded.get("base_model"), recorded.get("hypernet")
        return cls(base_model=_local_or_id(base_model), hypernet=_local_or_id(hypernet), **runtime)

    def load(self, warn: Callable[[str], None] | None = None):
        """Load the engine; library warnings go to ``warn`` as single lines."""
        import torch
        from transformers.utils import logging as hf_logging

        from doc2lora_rag.engine import Doc2LoRA

        hf_logging.disable_progress_bar()  # its bars would interleave with ours on stderr
        if self.threads:
            torch.set_num_threads(self.threads)
        for value, what in ((self.base_model, "base model"), (self.hypernet, "hypernetwork")):
            if value is not None and _looks_local(value) and not Path(value).exists():
                raise MissingPathError(f"{what} folder not found: {value}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                engine = Doc2LoRA.from_pretrained(
                    hypernet=self.hypernet,
                    base_model=self.base_model,
                    device=self.device,
                    refine_steps=self.refine_steps,
                    refine_by_ending=self.refine_by_ending,
                    refine_answer_words=self.refine_answer_words,
                    refine_quote_words=self.refine_quote_words,
                )
            except Doc2LoRAError:
                raise
            except (OSError, ValueError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                name = self.base_model or "(embedded default)"
                raise EngineLoadError(f"cannot load base model {name}: {first}") from error
        for item in caught:
            if warn is not None and issubclass(item.category, UserWarning):
                warn(str(item.message))
        if self.max_chars:  # what the scan accepted, the engine must read
            engine.max_chars = self.max_chars
        return engine

    def untrained(self, engine) -> bool:
        """True when the engine runs a fresh hypernetwork (no --hypernet and none shipped)."""
        from doc2lora_rag.engine import DEFAULT_CHECKPOINT, DEFAULT_MODEL_NAME

        shipped = engine.base.name == DEFAULT_MODEL_NAME and (DEFAULT_CHECKPOINT / "hypernet_config.json").is_file()
        return self.hypernet is None and not shipped

    def remember(self, store: AdapterStore, untrained: bool) -> None:
        """Record this spec in the store the first time an engine is bound to it."""
        if store.catalog.get_meta(META_KEY) is not None:
            return
        record = {"base_model": self.base_model, "hypernet": self.hypernet, "untrained": untrained}
        with store.writing(), store.catalog.transaction(bump=False):
            if store.catalog.get_meta(META_KEY) is None:
                store.catalog.set_meta(META_KEY, record)


def _looks_local(value: str) -> bool:
    return value.startswith(("/", ".", "~"))


def _local_or_id(value: str | None) -> str | None:
    """Local folders become absolute (valid from any directory); HF ids stay as given."""
    if value is None:
        return None
    expanded = os.path.expanduser(value)
    return os.path.abspath(expanded) if os.path.exists(expanded) or _looks_local(value) else value
