"""Table 2 as a figure: one group of bars per dataset, one bar per model, seed std as error bars.

Drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so nothing touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from camn.experiments.tables import paper_order
from camn.models.registry import display_name
from camn.stats import Stat


def plot_auc(
    summary: dict[str, dict[str, dict[str, Stat]]],
    datasets: Sequence[str],
    models: Sequence[str],
    path: str | Path,
    metric: str = "test_auc",
) -> Path:
    """Grouped bar chart of ``metric`` mean ± std; returns the written path (PNG)."""
    models = paper_order(models)
    stat = [[summary.get(ds, {}).get(m, {}).get(metric, Stat.of([])) for ds in datasets]
            for m in models]
    means = np.array([[s.mean for s in row] for row in stat])  # (models, datasets)
    stds = np.nan_to_num(np.array([[s.std for s in row] for row in stat]))
    columns = 2 if len(models) > 6 else 1
    legend_width = 1.4 * columns  # inches beside the axes
    bars_width = max(4.5, 1.2 + 0.35 * len(models) * len(datasets))
    # constrained layout makes room for the legend outside the axes and the figure's title
    figure = Figure(figsize=(bars_width + legend_width, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(datasets))
    colours = [colormaps["tab20"](i % 20) for i in range(len(models))]
    for i, model in enumerate(models):
        axes.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(means[i]), width, yerr=stds[i],
                 capsize=2, label=display_name(model), color=colours[i])
    finite = means[np.isfinite(means)]
    if finite.size:
        low = float((finite - stds[np.isfinite(means)]).min())
        high = float((finite + stds[np.isfinite(means)]).max())
        pad = max(0.01, 0.1 * (high - low))
        axes.set_ylim(max(0.0, low - pad), high + pad)
    axes.set_xticks(x, list(datasets))
    axes.set_ylabel(f"{metric.replace('_', ' ')} (mean ± std over seeds)")
    figure.suptitle("Test AUC by dataset and model (axis does not start at 0)")
    axes.legend(fontsize="small", ncol=columns, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(axis="y", alpha=0.3)
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path
