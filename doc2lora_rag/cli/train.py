"""``doc2lora train``: meta-train a hypernetwork (resumable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from doc2lora_rag.cli.app import app


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="JSON training config; options below override it")] = None,
    base_model: Annotated[str | None, typer.Option(help="HF model id or folder; default: embedded SmolLM2")] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(help="data source: KIND[:PATH] (squad:PATH, swapped:PATH, jsonl:PATH, synthetic, niah) or JSON"),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="total optimiser steps")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (checkpoints, metrics, plots)")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    resume: Annotated[bool, typer.Option(help="continue from the checkpoint in --out")] = False,
    until: Annotated[
        int | None, typer.Option(help="stop (checkpointed) at this step; the schedule still runs to --steps")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option(help="stop (checkpointed) after this much wall-clock time")
    ] = None,
    fit_schedule: Annotated[
        bool, typer.Option(help="with --minutes: size the schedule so it ends as the time runs out")
    ] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch")] = None,
) -> None:
    """Meta-train a hypernetwork; --resume continues the run in --out from its checkpoint."""
    import torch

    from doc2lora_rag.training.trainer import TrainConfig, Trainer

    if threads:
        torch.set_num_threads(threads)
    overrides = {
        "base_model": base_model,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "out": str(out) if out else None,
    }
    if data:
        overrides["data"] = [_data_spec(item) for item in data]
    if config is not None:
        train_config = TrainConfig.from_file(config, **overrides)
    elif out is None:
        raise typer.BadParameter("give --out (or a --config that names one)")
    else:
        train_config = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    checkpoint = Path(train_config.out) / "checkpoint"
    if checkpoint.exists() and not resume:
        raise typer.BadParameter(f"{checkpoint} exists: pass --resume to continue it, or choose another --out")
    if fit_schedule and minutes is None:
        raise typer.BadParameter("--fit-schedule needs --minutes")
    trainer = Trainer(train_config)
    path = trainer.train(until=until, minutes=minutes, fit_schedule=fit_schedule)
    typer.echo(f"checkpoint: {path}")
    if fit_schedule:
        typer.echo(f"schedule fitted to {trainer.config.steps} steps; continue it with --steps {trainer.config.steps}")


def _data_spec(item: str) -> dict:
    """``KIND:PATH`` (``squad:PATH``, ``swapped:PATH``, ...), a bare ``KIND`` (``synthetic``,
    ``niah``), or a JSON object."""
    if item.startswith("{"):
        return json.loads(item)
    kind, _, path = item.partition(":")
    return {"kind": kind, **({"path": path} if path else {})}
