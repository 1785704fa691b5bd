"""Options every command shares, and the two things they all do first: open the store and
turn what the user typed into document ids."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from doc2lora_rag.cli.errors import CommandError
from doc2lora_rag.errors import StoreError, UnknownIdError
from doc2lora_rag.store import AdapterStore, default_store_path
from doc2lora_rag.store.adapter_store import CATALOG_FILE

StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store",
        envvar="DOC2LORA_STORE",
        help="store directory (env DOC2LORA_STORE); default: the per-user default store",
        show_default=False,
    ),
]
BaseModelOption = Annotated[
    str | None,
    typer.Option(help="HF model id or folder; default: what the store recorded, else the embedded SmolLM2"),
]
HypernetOption = Annotated[
    str | None,
    typer.Option(help="hypernetwork folder (doc2lora train); default: what the store recorded, else the shipped one"),
]
ThreadsOption = Annotated[int | None, typer.Option(help="CPU threads for torch")]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="documents internalised together")]
MaxCharsOption = Annotated[int, typer.Option(min=1, help="longest document accepted")]
ProgressOption = Annotated[
    bool | None, typer.Option("--progress/--no-progress", help="progress bar (default: on a terminal)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]
RefineByEndingOption = Annotated[
    bool,
    typer.Option(
        "--refine-by-ending", help="refinement fits at most one sentence of each ending per step (docs/engine.md)"
    ),
]
RefineAnswerWordsOption = Annotated[
    int | None, typer.Option(min=1, help="refinement fits this many of a sentence's last words (default: 2)")
]
RefineQuoteWordsOption = Annotated[
    int | None,
    typer.Option(min=1, help="refinement fits all of a sentence after its first N words instead (docs/engine.md)"),
]


def check_refine_target(answer_words: int | None, quote_words: int | None) -> None:
    """Refuse both word counts at once: a sentence's last words and all after its first are two
    targets, and the engine would refuse them only after loading the model."""
    if answer_words is not None and quote_words is not None:
        raise CommandError("--refine-answer-words and --refine-quote-words are two refinement targets: give one")


def open_store(path: Path | None, *, create: bool) -> AdapterStore:
    """Open the store; ``create=False`` refuses a path that is not a store yet (StoreError)."""
    where = (path or default_store_path()).expanduser().absolute()
    if not create and not (where / CATALOG_FILE).is_file():
        raise StoreError(f"no store at {where}: ingest something first, or point --store at a store")
    return AdapterStore(where, create=create)


def resolve_ids(store: AdapterStore, given: Sequence[str]) -> list[str]:
    """Ids as typed, or file paths (relative or absolute) for documents ingested from files.

    Every unknown id is named at once and nothing is resolved, so a typo deletes nothing.
    """
    known = store.catalog.adapter_dirs_of(list(given))  # no row parsing: rm must reach a damaged row
    resolved, missing = [], []
    for value in given:
        if value in known:
            resolved.append(value)
            continue
        as_path = os.path.abspath(os.path.expanduser(value))
        if as_path in store:
            resolved.append(as_path)
        else:
            missing.append(value)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UnknownIdError(f"no document with id {shown} in {store.path} (see: doc2lora ls)")
    return resolved


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
