"""What a sweep leaves in its MLflow parent run: the table of trials (CSV), the metric against each
searched key, a parallel-coordinates plot, and the best settings as overrides."""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence


def trials_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in columns})
    return buffer.getvalue()


def _numeric(values: Sequence[Any]) -> tuple[list[float], list[str] | None]:
    """Values as plot positions: numbers as they are, anything else as category indices."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], None
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def metric_plots(rows: Sequence[dict[str, Any]], keys: Sequence[str], metric: str, title: str) -> bytes:
    """PNG: one panel per searched key, the metric of each finished trial against its value; and a
    parallel-coordinates panel (every key scaled to [0, 1], one line per trial, coloured by metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [row for row in rows if isinstance(row.get(metric), (int, float)) and not math.isnan(row[metric])]
    panels = len(keys) + 1
    figure, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.2), squeeze=False)
    scores = [row[metric] for row in scored]
    for axis, key in zip(axes[0], keys):
        positions, labels = _numeric([row.get(key) for row in scored])
        axis.scatter(positions, scores, c="tab:blue")
        axis.set_xlabel(key.split(".", 1)[-1], fontsize=8)
        axis.set_ylabel(metric)
        if labels is not None:
            axis.set_xticks(range(len(labels)), labels, rotation=20, fontsize=7)
    axis = axes[0][-1]
    if scored:
        low, high = min(scores), max(scores)
        colours = plt.get_cmap("viridis")
        columns = []
        for key in keys:
            positions, _ = _numeric([row.get(key) for row in scored])
            lo, hi = min(positions), max(positions)
            columns.append([(p - lo) / (hi - lo) if hi > lo else 0.5 for p in positions])
        for index, score in enumerate(scores):
            shade = (score - low) / (high - low) if high > low else 1.0
            axis.plot(range(len(keys)), [column[index] for column in columns], color=colours(shade), alpha=0.8)
        axis.set_xticks(range(len(keys)), [key.rsplit(".", 1)[-1] for key in keys], rotation=20, fontsize=7)
    axis.set_title(f"parallel coordinates (colour: {metric})", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()

