"""``doc2lora interpolate``: a hypernetwork part of the way from one checkpoint to another."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from doc2lora_rag.cli.app import app
from doc2lora_rag.cli.errors import EXIT_USAGE, fail


@app.command()
def interpolate(
    first: Annotated[Path, typer.Argument(help="hypernetwork folder (weight 0)")],
    second: Annotated[Path, typer.Argument(help="hypernetwork folder trained from the same start (weight 1)")],
    out: Annotated[Path, typer.Option(help="folder for the interpolated hypernetwork")],
    weight: Annotated[float, typer.Option(help="how far from FIRST towards SECOND")] = 0.5,
    bf16: Annotated[bool, typer.Option(help="save in bf16, as the shipped network is")] = True,
) -> None:
    """Save (1 - weight) * FIRST + weight * SECOND, parameter by parameter."""
    import torch

    from doc2lora_rag.errors import Doc2LoRAError
    from doc2lora_rag.hypernetwork.interpolation import interpolate as interpolate_networks
    from doc2lora_rag.hypernetwork.model import HyperNetwork

    try:
        start, end = HyperNetwork.from_pretrained(first), HyperNetwork.from_pretrained(second)
        network = interpolate_networks(start, end, weight)
    except (Doc2LoRAError, ValueError) as error:
        raise fail(str(error), EXIT_USAGE) from error
    network.save_pretrained(out, dtype=torch.bfloat16 if bf16 else torch.float32)
    typer.echo(f"{out}: fingerprint {network.fingerprint}")
