"""Loss curve of a run, drawn from its metrics log."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_metrics(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Write a PNG of loss (and KL) against step; ``None`` when there is nothing to plot."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, [r["loss"] for r in rows], label="loss", linewidth=1)
    if "kl" in rows[0]:
        axis.plot(steps, [r["kl"] for r in rows], label="KL / CE", linewidth=1, alpha=0.7)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
    return Path(out_path)
