"""The report's figures: plain arrays in, one PNG file out.

Every function draws on its own :class:`matplotlib.figure.Figure` rendered by
the Agg canvas: pyplot is never used, so nothing opens a window, no global
figure state is kept between calls and importing this module does not change
the backend of a notebook that uses it. Files are written to a temporary name
and renamed, so a figure on disk is always complete. The figures of one
utterance over time (spectrograms) are :mod:`audiossl.report.spectrograms`'.

- :func:`plot_training`: loss, learning rate and, for CPC, the accuracy and
  mutual-information bound of each prediction step ``k`` over training (one
  line per ``k``, as in van den Oord et al. 2018, Fig. 2 / CPC_audio's
  ``locAcc_train``/``locLoss_train`` logs).
- :func:`plot_probe_scores`: grouped bars, pretrained model beside the MFCC and
  log-mel floors.
- :func:`plot_confusion`: a row-normalized phone confusion matrix.
- :func:`plot_projection`: a 2-D projection of per-utterance vectors by speaker.
- :func:`plot_unit_quality`: purity, PNMI and ABX of discrete units, model
  beside the floors, for each number of units.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from audiossl.utils.atomic import atomic_write

__all__ = ["Curve", "order_sources", "plot_confusion", "plot_probe_scores", "plot_projection", "plot_training",
           "plot_unit_quality", "save_figure"]

Curve = tuple[np.ndarray, np.ndarray]  # (steps, values), both (points,)
DPI = 120
SOURCE_COLOURS = {"model": "#1f77b4", "mfcc": "#ff7f0e", "logmel": "#2ca02c"}


def order_sources(sources) -> list[str]:
    """The model first, then the MFCC and log-mel floors, then the rest by name."""
    known = list(SOURCE_COLOURS)
    return sorted(sources, key=lambda s: (known.index(s) if s in known else len(known), s))


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to a PNG at ``path``, atomically (the package's one way to write a figure)."""
    FigureCanvasAgg(fig)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"), what="figure")
    return Path(path)


def _step_lines(ax, curves: Mapping[int, Curve], label: str) -> None:
    """One line per prediction step ``k``, coloured from early (dark) to far (light)."""
    cmap = matplotlib.colormaps["viridis"]
    ks = sorted(curves)
    for position, k in enumerate(ks):
        steps, values = curves[k]
        ax.plot(steps, values, color=cmap(position / max(len(ks) - 1, 1)), marker="." if len(steps) < 20 else None,
                label=f"{label}{k}")
    ax.legend(title="prediction step", fontsize="small", ncol=2 if len(ks) > 6 else 1)


def plot_training(path: str | Path, loss: Curve | None = None, lr: Curve | None = None,
                  accuracy: Curve | None = None, accuracy_per_step: Mapping[int, Curve] | None = None,
                  mi_bound_per_step: Mapping[int, Curve] | None = None, title: str = "training",
                  perplexity: Curve | None = None, unmasked_accuracy: Curve | None = None) -> Path:
    """Training curves, one panel per quantity given.

    Args:
        path: the PNG to write.
        loss: the training loss per logged step.
        lr: the learning rate per logged step.
        accuracy: the objective's overall accuracy (CPC: mean over ``k``).
        accuracy_per_step: ``{k: curve}``, CPC's accuracy of predicting ``z_{t+k}``.
        mi_bound_per_step: ``{k: curve}``, ``log(N + 1) - L_k`` in nats.
        title: the figure's title.
        perplexity: wav2vec 2.0's codebook perplexity (summed over groups).
        unmasked_accuracy: HuBERT's unit accuracy on the unmasked frames (``accuracy`` is the masked ones').

    Raises:
        ValueError: if no curve is given.
    """
    panels = []
    if loss is not None:
        panels.append(("loss", "training loss"))
    if accuracy_per_step or accuracy is not None or unmasked_accuracy is not None:
        panels.append(("accuracy", "accuracy (positive ranked first)"))
    if mi_bound_per_step:
        panels.append(("mi", "mutual-information bound (nats)"))
    if perplexity is not None:
        panels.append(("perplexity", "codebook perplexity"))
    if lr is not None:
        panels.append(("lr", "learning rate"))
    if not panels:
        raise ValueError("no training curve to draw")
    columns = 1 if len(panels) == 1 else 2
    rows = (len(panels) + 1) // 2 if columns == 2 else 1
    fig = Figure(figsize=(6.0 * columns, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (name, ylabel) in zip(axes, panels):
        if name == "loss":
            ax.plot(*loss, color="black", marker="." if len(loss[0]) < 20 else None)
            ax.set_title("loss")
        elif name == "accuracy":
            if accuracy_per_step:
                _step_lines(ax, accuracy_per_step, "k=")
            if accuracy is not None:
                ax.plot(*accuracy, color="black", linestyle="--",
                        label="mean over k" if accuracy_per_step else
                        "masked frames" if unmasked_accuracy is not None else "accuracy")
            if unmasked_accuracy is not None:
                ax.plot(*unmasked_accuracy, color="tab:blue", linestyle=":", label="unmasked frames")
            if accuracy is not None or unmasked_accuracy is not None:
                ax.legend(title="prediction step" if accuracy_per_step else None, fontsize="small",
                          ncol=2 if accuracy_per_step and len(accuracy_per_step) > 6 else 1)
            ax.set_title("accuracy per prediction step" if accuracy_per_step else "accuracy")
        elif name == "perplexity":
            ax.plot(*perplexity, color="tab:green")
            ax.set_title("codebook perplexity (sum over groups)")
        elif name == "mi":
            _step_lines(ax, mi_bound_per_step, "k=")
            ax.set_title(r"InfoNCE bound on $I(x_{t+k};\, c_t)$")
        else:
            ax.plot(*lr, color="tab:red")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            ax.set_title("learning rate")
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_probe_scores(path: str | Path, table: Mapping[str, Mapping[str, float]],
                      lower_is_better: Sequence[str] = (), chance: Mapping[str, float] | None = None,
                      title: str = "probes: pretrained model against hand-made features") -> Path:
    """Grouped bars: one group per probe metric, one bar per feature source.

    Args:
        path: the PNG to write.
        table: ``{group: {source: value}}``, values as fractions (0.646 for
            64.6 %); groups such as ``"phone accuracy"``, sources such as
            ``model``, ``mfcc``, ``logmel``.
        lower_is_better: the groups that are error rates (PER, ABX error);
            drawn in a panel of their own.
        chance: ``{group: value}`` drawn as a dashed line over the group
            (the majority-class accuracy).
        title: the figure's title.

    Raises:
        ValueError: if the table is empty.
    """
    if not any(table.values()):
        raise ValueError("no probe score to draw")
    chance = chance or {}
    sources = order_sources({s for scores in table.values() for s in scores})
    others = matplotlib.colormaps["tab10"]
    colours = {s: SOURCE_COLOURS.get(s, others(3 + i % 7)) for i, s in enumerate(sources)}
    groups = sorted((g for g in table if table[g]), key=lambda g: (g in lower_is_better, g))
    panels = [(desc, [g for g in groups if (g in lower_is_better) == lower])
              for lower, desc in ((False, "higher is better"), (True, "lower is better"))]
    panels = [(desc, chosen) for desc, chosen in panels if chosen]
    widths = [len(chosen) for _, chosen in panels]
    fig = Figure(figsize=(2.5 + 1.1 * max(len(sources), 2) * sum(widths) / 2, 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, gridspec_kw={"width_ratios": widths}).ravel()
    handles = {}
    for ax, (desc, chosen) in zip(axes, panels):
        for i, group in enumerate(chosen):
            present = [s for s in sources if s in table[group]]  # bars centred on the group's own sources
            width = 0.8 / len(present)
            for position, source in enumerate(present):
                bars = ax.bar(i + (position - (len(present) - 1) / 2) * width, 100 * table[group][source],
                              width=width, color=colours[source], label=source)
                ax.bar_label(bars, fmt="%.1f", fontsize="small", padding=2)
                handles.setdefault(source, bars)
            if group in chance:
                line = ax.hlines(100 * chance[group], i - 0.45, i + 0.45, colors="black", linestyles="--")
                handles.setdefault("majority class", line)
        ax.set_xticks(range(len(chosen)), [textwrap.fill(group, 16) for group in chosen])  # long names wrap
        ax.set_xlim(-0.5, len(chosen) - 0.5)
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
        ax.set_title(desc)
        ax.grid(axis="y", alpha=0.3)
    names = [s for s in [*sources, "majority class"] if s in handles]
    fig.legend([handles[n] for n in names], names, loc="outside right upper", fontsize="small")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion(path: str | Path, counts: np.ndarray, names: Sequence[str], title: str = "phone confusion") -> Path:
    """A confusion matrix, each row divided by its total (the recall of each true class).

    Args:
        path: the PNG to write.
        counts: (classes, classes) counts, rows the true class, columns the prediction.
        names: one label per class.
        title: the figure's title.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(names):
        raise ValueError(f"expected ({len(names)}, {len(names)}) confusion counts, got {counts.shape}")
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.22 * len(names), 14)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fontsize = "small" if len(names) <= 20 else "x-small"
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(names)), names, fontsize=fontsize)
    ax.set_xlabel("predicted phone")
    ax.set_ylabel("true phone")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true phone's frames")
    return save_figure(fig, path)


def plot_projection(path: str | Path, points: np.ndarray, speakers: Sequence[str],
                    explained: Sequence[float] | None = None, title: str = "utterances by speaker") -> Path:
    """A scatter plot of 2-D points, one colour per speaker.

    Args:
        path: the PNG to write.
        points: (utterances, 2).
        speakers: the speaker of each point.
        explained: the fraction of variance each axis explains, for the axis labels.
        title: the figure's title.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(speakers):
        raise ValueError(f"expected ({len(speakers)}, 2) points, got {points.shape}")
    names = sorted(set(speakers), key=lambda s: (len(s), s))
    cmap = matplotlib.colormaps["tab20" if len(names) > 10 else "tab10"]
    markers = "o^sDv<>P*X"
    fig = Figure(figsize=(7.5 if len(names) <= 20 else 6.0, 6.0), layout="constrained")
    ax = fig.subplots()
    labels = np.array(speakers)
    for index, name in enumerate(names):
        chosen = points[labels == name]
        ax.scatter(chosen[:, 0], chosen[:, 1], s=28, color=cmap(index % cmap.N), alpha=0.85,
                   marker=markers[(index // cmap.N) % len(markers)], label=name, edgecolors="none")
    for axis, setter in enumerate((ax.set_xlabel, ax.set_ylabel)):
        share = f" ({100 * explained[axis]:.1f} % of variance)" if explained is not None else ""
        setter(f"principal component {axis + 1}{share}")
    if len(names) <= 20:
        ax.legend(title="speaker", fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"{title} ({len(points)} utterances, {len(names)} speakers)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_unit_quality(path: str | Path, table: Mapping[int, Mapping[str, Mapping[str, float | None]]],
                      title: str = "discrete units: model against k-means on the floors") -> Path:
    """One panel per figure of merit, bars grouped by the number of units, one bar per feature source.

    Args:
        path: the PNG to write.
        table: ``{k: {source: {metric: value}}}``, values as fractions;
            metrics such as ``PNMI``, ``phone purity``, ``cluster purity``
            (higher is better) and ``ABX across`` (an error rate); None is
            not drawn.
        title: the figure's title.

    Raises:
        ValueError: if the table is empty.
    """
    ks = sorted(table)
    sources = order_sources({s for k in ks for s in table[k]})
    metrics = list(dict.fromkeys(m for k in ks for s in table[k] for m in table[k][s]))
    if not metrics:
        raise ValueError("no unit figures to draw")
    others = matplotlib.colormaps["tab10"]
    colours = {s: SOURCE_COLOURS.get(s, others(3 + i % 7)) for i, s in enumerate(sources)}
    fig = Figure(figsize=(2.2 + 2.6 * len(metrics), 4.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False).ravel()
    handles = {}
    width = 0.8 / len(sources)
    for ax, metric in zip(axes, metrics):
        for i, k in enumerate(ks):
            for position, source in enumerate(sources):
                value = table[k].get(source, {}).get(metric)
                if value is None:
                    continue
                bars = ax.bar(i + (position - (len(sources) - 1) / 2) * width, value * (1 if metric == "PNMI" else 100),
                              width=width, color=colours[source], label=source)
                ax.bar_label(bars, fmt="%.2f" if metric == "PNMI" else "%.1f", fontsize="x-small", padding=2)
                handles.setdefault(source, bars)
        ax.set_xticks(range(len(ks)), [f"k = {k}" for k in ks])
        lower = metric.startswith("ABX")
        ax.set_title(f"{metric} ({'lower' if lower else 'higher'} is better)", fontsize="medium")
        ax.set_ylabel("" if metric == "PNMI" else "%")
        ax.set_ylim(0, 1.1 if metric == "PNMI" else 105)
        ax.grid(axis="y", alpha=0.3)
    fig.legend([handles[s] for s in sources if s in handles], [s for s in sources if s in handles],
               loc="outside right upper", fontsize="small")
    fig.suptitle(title)
    return save_figure(fig, path)
