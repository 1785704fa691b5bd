"""Loss curve of a run, drawn from its metrics log."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_metrics(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Write a PNG of loss (and KL) against step, with the probes' own-adapter loss and gap
    beside it when the run logged any; ``None`` when there is nothing to plot."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    probes = probe_series(rows)
    figure, axes = plt.subplots(1, 2 if probes else 1, figsize=(12 if probes else 7, 4), squeeze=False)
    axis = axes[0][0]
    steps = [r["step"] for r in rows]
    axis.plot(steps, [r["loss"] for r in rows], label="loss", linewidth=1)
    if "kl" in rows[0]:
        axis.plot(steps, [r["kl"] for r in rows], label="KL / CE", linewidth=1, alpha=0.7)
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    if probes:
        for name, (probe_steps, values) in probes.items():
            axes[0][1].plot(probe_steps, values, label=name, marker="o", markersize=3, linewidth=1)
        axes[0][1].set_ylabel("held-out answer loss (nats per token)")
    for axis in axes[0]:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
    return Path(out_path)


def probe_series(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Each probe's own-adapter loss and gap (``probe_own``, ``probe_squad_gap``, ...) as
    (steps, values), from the rows that carry it."""
    names = sorted({key for row in rows for key in row if key.startswith("probe") and key.endswith(("_own", "_gap"))})
    return {
        name: ([row["step"] for row in rows if name in row], [row[name] for row in rows if name in row])
        for name in names
    }
