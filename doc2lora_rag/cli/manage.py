"""Everyday store commands: ``ls``, ``show``, ``rm``, ``export`` and ``stats``.

None of them loads a model: they read the catalog (``export`` also the adapter files), so
they are quick and safe to run while an ingest is writing.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from doc2lora_rag.adapters.lora import LoRAAdapter
from doc2lora_rag.cli.app import app
from doc2lora_rag.cli.engine_spec import META_KEY
from doc2lora_rag.cli.errors import CommandError, user_errors
from doc2lora_rag.cli.options import JsonOption, StoreOption, human_bytes, open_store, resolve_ids
from doc2lora_rag.store import StoredDocument

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The LoRA ranks vLLM accepts for --max-lora-rank."""

_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "float32": "float32"}


def _when(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")


def _row(doc: StoredDocument) -> dict[str, Any]:
    return {
        "id": doc.id,
        "chunks": doc.num_chunks,
        "rank": doc.rank,
        "bytes": doc.nbytes,
        "characters": len(doc.text),
        "added": _when(doc.added_at),
        "updated": _when(doc.updated_at),
        "metadata": doc.metadata,
    }


@app.command("ls")
def list_documents(
    pattern: Annotated[str | None, typer.Argument(help="only ids matching this shell pattern")] = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """List stored documents: id, chunks, adapter size, last update."""
    with user_errors(), open_store(store, create=False) as adapters:
        docs = [d for d in adapters.documents() if pattern is None or fnmatch.fnmatchcase(d.id, pattern)]
    if json_output:
        typer.echo(json.dumps([_row(d) for d in docs], indent=2))
        return
    for doc in docs:
        chunks = f"{doc.num_chunks} chunk{'s' if doc.num_chunks != 1 else ''}"
        typer.echo(f"{doc.id}\t{chunks}\t{human_bytes(doc.nbytes)}\t{_when(doc.updated_at)}")
    typer.secho(f"{len(docs)} documents", err=True)


@app.command()
def show(
    doc_id: Annotated[str, typer.Argument(metavar="ID", help="document id (or the path it was ingested from)")],
    store: StoreOption = None,
    full: Annotated[bool, typer.Option("--full", help="print the whole text, not the first 500 characters")] = False,
    json_output: JsonOption = False,
) -> None:
    """One document: metadata, adapter details and its text."""
    with user_errors(), open_store(store, create=False) as adapters:
        (doc,) = adapters.get(resolve_ids(adapters, [doc_id]))
        folder = adapters.adapters_dir / doc.adapter_dir
    if json_output:
        typer.echo(json.dumps({**_row(doc), "content_hash": doc.content_hash, "adapter": str(folder), "text": doc.text},
                              indent=2))
        return
    for key, value in _row(doc).items():
        if key != "metadata":
            typer.echo(f"{key:<11}{human_bytes(value) if key == 'bytes' else value}")
    typer.echo(f"{'hash':<11}{doc.content_hash}")
    typer.echo(f"{'adapter':<11}{folder}")
    typer.echo(f"{'metadata':<11}{json.dumps(doc.metadata, sort_keys=True)}")
    text = doc.text if full or len(doc.text) <= 500 else doc.text[:500] + f"... ({len(doc.text) - 500:,} more; --full)"
    typer.echo("\n" + text)


@app.command("rm")
def remove(
    doc_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="document ids (or their paths)")],
    store: StoreOption = None,
) -> None:
    """Delete documents and their adapters. Every id is checked first: one unknown id deletes nothing."""
    with user_errors(), open_store(store, create=False) as adapters:
        ids = list(dict.fromkeys(resolve_ids(adapters, doc_ids)))
        adapters.delete(ids)
    typer.echo(f"removed {len(ids)} document{'s' if len(ids) != 1 else ''}")


@app.command()
def export(
    doc_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="document ids (or their paths)")],
    peft: Annotated[Path, typer.Option("--peft", help="output folder: a PEFT LoRA adapter")],
    store: StoreOption = None,
    dtype: Annotated[str, typer.Option(help="bfloat16 (as stored), float16 or float32")] = "bfloat16",
    base_model_id: Annotated[
        str | None, typer.Option(help="write this as base_model_name_or_path (e.g. the HF id a server loads)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace the output folder if it exists")] = False,
) -> None:
    """Write the documents' adapters as one PEFT adapter that vLLM, LoRAX or PEFT can load
    (rank concatenation, the same combination ask attaches)."""
    import torch

    with user_errors():
        if dtype.lower() not in _DTYPES:
            raise CommandError(f"--dtype must be one of bfloat16, float16, float32; not {dtype!r}")
        target = peft.expanduser().absolute()
        if target.exists() and not (force or (target.is_dir() and not any(target.iterdir()))):
            raise CommandError(f"{target} exists and is not empty; pass --force to replace it")
        with open_store(store, create=False) as adapters:
            _check_outside(target, adapters.path)
            ids = list(dict.fromkeys(resolve_ids(adapters, doc_ids)))
            loaded = adapters.load_adapters(ids)
        combined = loaded[0] if len(loaded) == 1 else LoRAAdapter.concat(loaded)
        combined = combined.to("cpu", getattr(torch, _DTYPES[dtype.lower()]))
        if base_model_id:
            combined = dataclasses.replace(combined, base_model_name=base_model_id)
        _write_atomically(combined, target)
    rank = combined.rank
    serve_rank = next((r for r in VLLM_RANKS if r >= rank), rank)
    typer.echo(f"exported {len(ids)} document{'s' if len(ids) != 1 else ''} as one adapter to {target}")
    typer.echo(f"rank {rank}, {human_bytes(combined.nbytes)}, base model {combined.base_model_name}")
    typer.echo(
        f"serve it: vllm serve <base model> --enable-lora --max-lora-rank {serve_rank} --lora-modules docs={target}"
    )


def _check_outside(target: Path, store: Path) -> None:
    """Refuse a target that is, holds or lies inside the store: --force would delete the store
    (or its adapters), and a folder under adapters/ or tmp/ is removed as debris on the next open."""
    target, store = target.resolve(), store.resolve()
    if target == store or store in target.parents or target in store.parents:
        raise CommandError(f"{target} overlaps the store {store}; export to a folder outside it")


def _write_atomically(adapter: LoRAAdapter, target: Path) -> None:
    """Write beside the target and rename, so a failed export never leaves half an adapter."""
    staged = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        adapter.save_pretrained(staged)
        for written in staged.iterdir():  # safetensors writes 0600; a server under another user must read it
            written.chmod(0o644)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


@app.command()
def stats(store: StoreOption = None, json_output: JsonOption = False) -> None:
    """Documents, adapters and bytes in the store, and the model it belongs to."""
    with user_errors(), open_store(store, create=False) as adapters:
        docs = adapters.documents()
        model = adapters.fingerprints or {}
        engine = adapters.catalog.get_meta(META_KEY) or {}
        folders = sum(1 for d in adapters.adapters_dir.iterdir() if d.is_dir())
        on_disk = sum(f.stat().st_size for f in adapters.path.rglob("*") if f.is_file())
        created = adapters.catalog.get_meta("created_at")
        report = {
            "store": str(adapters.path),
            "documents": len(docs),
            "adapters": folders,
            "chunks": sum(d.num_chunks for d in docs),
            "characters": sum(len(d.text) for d in docs),
            "adapter_bytes": sum(d.nbytes for d in docs),
            "store_bytes": on_disk,
            "base_model": model.get("base_model_name"),
            "base_fingerprint": model.get("base_fingerprint"),
            "hypernet_fingerprint": model.get("hypernet_fingerprint"),
            "hypernet": _hypernet_label(engine),
            "engine_base_model": engine.get("base_model"),
            "created": _when(created) if created else None,
        }
    if json_output:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"store          {report['store']}")
    typer.echo(f"documents      {report['documents']} ({report['chunks']} chunks, {report['characters']:,} characters)")
    typer.echo(f"adapters       {report['adapters']} ({human_bytes(report['adapter_bytes'])})")
    typer.echo(f"on disk        {human_bytes(report['store_bytes'])}")
    if report["base_model"] is None:
        typer.echo("model          (none yet: bound by the first ingest)")
        return
    typer.echo(f"base model     {report['base_model']} (fingerprint {report['base_fingerprint']})")
    typer.echo(f"hypernet       {report['hypernet']} (fingerprint {report['hypernet_fingerprint']})")
    if report["created"]:
        typer.echo(f"created        {report['created']}")


def _hypernet_label(engine: dict[str, Any]) -> str:
    """The hypernetwork as the CLI recorded it; a store made through the Python API has no record."""
    if not engine:
        return "not recorded (store made outside the CLI)"
    if engine.get("hypernet"):
        return engine["hypernet"]
    return "fresh, untrained" if engine.get("untrained") else "shipped default"
