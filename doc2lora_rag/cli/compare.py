"""``doc2lora compare``: is the difference between two evaluations more than noise?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from doc2lora_rag.cli.app import app
from doc2lora_rag.cli.errors import EXIT_USAGE, fail

console = Console()


@app.command("compare")
def compare(
    before: Annotated[Path, typer.Argument(help="JSON written by doc2lora eval --json-out")],
    after: Annotated[Path, typer.Argument(help="JSON of a second evaluation on the same questions")],
    metric: Annotated[
        list[str] | None, typer.Option(help="only these metrics (f1, contains, nll); default: all")
    ] = None,
) -> None:
    """Per-question paired differences of two evaluations, with 95% intervals; a * marks an
    interval that excludes zero. Pass/fail scores also count the questions each network alone
    got right, with the sign test's p-value."""
    from doc2lora_rag.evaluation.compare import compare_results
    from doc2lora_rag.evaluation.report import network_named

    first, second = _read(before), _read(after)
    try:
        differences = compare_results(first, second)
    except ValueError as error:
        raise fail(str(error), EXIT_USAGE) from error
    table = Table(
        title=f"{before.name} -> {after.name}: after - before, 95% interval over questions",
        caption=f"before: {network_named(first)}; after: {network_named(second)}",
    )
    for column in ("section", "mode", "metric", "n", "before", "after", "difference", "gained / lost"):
        table.add_column(column)
    for d in differences:
        if metric and d.metric not in metric:
            continue
        mark = " *" if d.significant else ""
        change = f"{d.delta:+.3f} ± {d.half_width:.3f}{mark}"
        flips = "" if d.sign_p is None else f"{d.gained} / {d.lost}, p = {d.sign_p:.2g}"
        table.add_row(d.section, d.mode, d.metric, str(d.count), f"{d.before:.3f}", f"{d.after:.3f}", change, flips)
    console.print(table)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise fail(f"cannot read {path} as an evaluation's JSON: {error}", EXIT_USAGE) from error
