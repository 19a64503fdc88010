"""The report's figures: plain arrays in, one PNG file out.

Every function draws on its own :class:`matplotlib.figure.Figure` rendered by
the Agg canvas: pyplot is never used, so nothing opens a window, no global
figure state is kept between calls and importing this module does not change
the backend of a notebook that uses it (``librosa.display``, which draws the
spectrograms with frequencies in Hz and times in seconds, imports pyplot; it is
loaded only when a spectrogram is drawn, and only its ``specshow`` on an
existing axis is called). Files are written to a temporary name and renamed,
so a figure on disk is always complete.

- :func:`plot_training`: loss, learning rate and, for CPC, the accuracy and
  mutual-information bound of each prediction step ``k`` over training (one
  line per ``k``, as in van den Oord et al. 2018, Fig. 2 / CPC_audio's
  ``locAcc_train``/``locLoss_train`` logs).
- :func:`plot_probe_scores`: grouped bars, pretrained model beside the MFCC and
  log-mel floors.
- :func:`plot_confusion`: a row-normalized phone confusion matrix.
- :func:`plot_projection`: a 2-D projection of per-utterance vectors by speaker.
- :func:`plot_utterance`: log-mel spectrogram above the learned features on a
  shared time axis, with phone segments on top.
- :func:`plot_unit_quality`: purity, PNMI and ABX of discrete units, model
  beside the floors, for each number of units.
- :func:`plot_units_utterance`: one utterance's spectrogram with its discrete
  units over it and its phones on top.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["Curve", "order_sources", "plot_confusion", "plot_probe_scores", "plot_projection", "plot_training",
           "plot_unit_quality", "plot_units_utterance", "plot_utterance"]

Curve = tuple[np.ndarray, np.ndarray]  # (steps, values), both (points,)
DPI = 120
SOURCE_COLOURS = {"model": "#1f77b4", "mfcc": "#ff7f0e", "logmel": "#2ca02c"}


def order_sources(sources) -> list[str]:
    """The model first, then the MFCC and log-mel floors, then the rest by name."""
    known = list(SOURCE_COLOURS)
    return sorted(sources, key=lambda s: (known.index(s) if s in known else len(known), s))


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` to a PNG at ``path`` (written to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


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
                  mi_bound_per_step: Mapping[int, Curve] | None = None, title: str = "training") -> Path:
    """Training curves, one panel per quantity given.

    Args:
        path: the PNG to write.
        loss: the training loss per logged step.
        lr: the learning rate per logged step.
        accuracy: the objective's overall accuracy (CPC: mean over ``k``).
        accuracy_per_step: ``{k: curve}``, CPC's accuracy of predicting ``z_{t+k}``.
        mi_bound_per_step: ``{k: curve}``, ``log(N + 1) - L_k`` in nats.
        title: the figure's title.

    Raises:
        ValueError: if no curve is given.
    """
    panels = []
    if loss is not None:
        panels.append(("loss", "training loss"))
    if accuracy_per_step or accuracy is not None:
        panels.append(("accuracy", "accuracy (positive ranked first)"))
    if mi_bound_per_step:
        panels.append(("mi", "mutual-information bound (nats)"))
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
                        label="mean over k" if accuracy_per_step else "accuracy")
                ax.legend(title="prediction step" if accuracy_per_step else None, fontsize="small",
                          ncol=2 if accuracy_per_step and len(accuracy_per_step) > 6 else 1)
            ax.set_title("accuracy per prediction step" if accuracy_per_step else "accuracy")
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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


def _spectrogram(ax, logmel: np.ndarray, logmel_rate: float, sample_rate: int):
    """Draw (frames, mel bins) log power with ``librosa.display.specshow``: seconds across, Hz up (HTK mel scale)."""
    from librosa.display import specshow  # imports pyplot: loaded only when a spectrogram is drawn

    return specshow(logmel.T, sr=sample_rate, hop_length=round(sample_rate / logmel_rate), x_axis="s",
                    y_axis="mel", fmin=0.0, fmax=sample_rate / 2, htk=True, cmap="magma", ax=ax)


def plot_utterance(path: str | Path, logmel: np.ndarray, logmel_rate: float, feats: np.ndarray, feat_rate: float,
                   segments: Sequence[tuple[float, float, str]] | None = None, title: str = "utterance",
                   feats_label: str = "learned features", sample_rate: int = 16000) -> Path:
    """Log-mel spectrogram above the learned features, on one time axis in seconds.

    Args:
        path: the PNG to write.
        logmel: (frames, mel bins) log power, HTK mel bins from 0 Hz to
            ``sample_rate / 2`` (:class:`~audiossl.models.frontends.LogMelFrontend`).
        logmel_rate: spectrogram frames per second.
        feats: (frames, dim) features; each dimension is standardized over
            time for display.
        feat_rate: feature frames per second.
        segments: ``(start s, end s, phone)`` shown in a strip on top.
        title: the figure's title.
        feats_label: names the features on their axis.
        sample_rate: of the audio the spectrogram comes from.
    """
    if logmel.ndim != 2 or feats.ndim != 2:
        raise ValueError(f"expected (frames, bins) and (frames, dim) arrays, got {logmel.shape} and {feats.shape}")
    feats = feats.astype(np.float32)
    shown = (feats - feats.mean(0)) / np.maximum(feats.std(0), 1e-6)  # (T, D)
    rows = [0.35] if segments else []
    fig = Figure(figsize=(11, 6.5 if segments else 6), layout="constrained")
    grid = fig.add_gridspec(len(rows) + 2, 2, height_ratios=rows + [1, 1], width_ratios=[40, 1])
    spec_ax = fig.add_subplot(grid[len(rows), 0])
    feat_ax = fig.add_subplot(grid[len(rows) + 1, 0], sharex=spec_ax)
    duration = max(len(logmel) / logmel_rate, len(feats) / feat_rate)
    image = _spectrogram(spec_ax, logmel, logmel_rate, sample_rate)
    fig.colorbar(image, cax=fig.add_subplot(grid[len(rows), 1]), label="log power")
    spec_ax.set_ylabel("frequency (Hz)")
    spec_ax.set_xlabel("")
    spec_ax.set_title("log-mel spectrogram")
    spec_ax.tick_params(labelbottom=False)
    limit = float(np.percentile(np.abs(shown), 99)) if shown.size else 1.0
    image = feat_ax.imshow(shown.T, origin="lower", aspect="auto", cmap="RdBu_r", interpolation="nearest",
                           vmin=-limit, vmax=limit, extent=(0, len(feats) / feat_rate, 0, feats.shape[1]))
    fig.colorbar(image, cax=fig.add_subplot(grid[len(rows) + 1, 1]), label="value (standardized per dim)")
    feat_ax.set_ylabel("dimension")
    feat_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    feat_ax.set_xlabel("time (s)")
    feat_ax.set_title(f"{feats_label} ({feats.shape[1]} dims, {feat_rate:g} frames/s)")
    feat_ax.set_xlim(0, duration)
    if segments:
        strip = fig.add_subplot(grid[0, 0], sharex=spec_ax)
        for index, (start, end, name) in enumerate(segments):
            strip.axvspan(start, end, color="0.85" if index % 2 else "0.95")
            if end - start >= duration / 90:  # label only segments wide enough to read
                strip.text((start + end) / 2, 0.5, name, ha="center", va="center", fontsize="x-small")
        strip.set_yticks([])
        strip.set_ylabel("phones", rotation=0, ha="right", va="center")
        strip.tick_params(labelbottom=False)
    fig.suptitle(title)
    return _save(fig, path)


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
    return _save(fig, path)


def plot_units_utterance(path: str | Path, logmel: np.ndarray, logmel_rate: float, units: np.ndarray,
                         unit_rate: float, num_units: int, segments: Sequence[tuple[float, float, str]] | None = None,
                         title: str = "utterance", sample_rate: int = 16000) -> Path:
    """Log-mel spectrogram with the boundaries of the unit runs drawn over it and the units in a strip below.

    Args:
        path: the PNG to write.
        logmel: (frames, mel bins) log power.
        logmel_rate: spectrogram frames per second.
        units: (frames,) unit indices.
        unit_rate: unit frames per second.
        num_units: k, for the colours and the axis label.
        segments: ``(start s, end s, phone)`` shown in a strip on top.
        title: the figure's title.
        sample_rate: of the audio the spectrogram comes from.
    """
    units = np.asarray(units)
    if logmel.ndim != 2 or units.ndim != 1:
        raise ValueError(f"expected (frames, bins) log-mel and (frames,) units, got {logmel.shape} and {units.shape}")
    duration = max(len(logmel) / logmel_rate, len(units) / unit_rate)
    change = np.flatnonzero(np.diff(units)) + 1
    starts, ends = np.r_[0, change] / unit_rate, np.r_[change, len(units)] / unit_rate
    runs = units[np.r_[0, change]] if len(units) else units
    heights = ([0.35] if segments else []) + [1, 0.35]
    fig = Figure(figsize=(11, 2.2 + 3.2 * sum(heights) / 1.7), layout="constrained")
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights)
    spec_ax = fig.add_subplot(grid[len(heights) - 2, 0])
    _spectrogram(spec_ax, logmel, logmel_rate, sample_rate)
    spec_ax.vlines(starts[1:], 0, sample_rate / 2, colors="white", linewidth=0.5, alpha=0.6)
    spec_ax.set_ylabel("frequency (Hz)")
    spec_ax.set_xlabel("")
    spec_ax.set_title(f"log-mel spectrogram; lines: where the unit changes ({len(runs)} runs of {len(units)} frames)")
    spec_ax.tick_params(labelbottom=False)
    spec_ax.set_xlim(0, duration)
    unit_ax = fig.add_subplot(grid[len(heights) - 1, 0], sharex=spec_ax)
    cmap = matplotlib.colormaps["tab20"]
    for start, end, unit in zip(starts, ends, runs):
        unit_ax.axvspan(start, end, color=cmap(int(unit) % cmap.N), alpha=0.8)
        if end - start >= duration / 120:  # label only runs wide enough to read
            unit_ax.text((start + end) / 2, 0.5, str(int(unit)), ha="center", va="center", fontsize="xx-small")
    unit_ax.set_yticks([])
    unit_ax.set_ylabel(f"unit (k = {num_units})", rotation=0, ha="right", va="center")
    unit_ax.set_xlabel("time (s)")
    if segments:
        strip = fig.add_subplot(grid[0, 0], sharex=spec_ax)
        for index, (start, end, name) in enumerate(segments):
            strip.axvspan(start, end, color="0.85" if index % 2 else "0.95")
            if end - start >= duration / 90:
                strip.text((start + end) / 2, 0.5, name, ha="center", va="center", fontsize="x-small")
        strip.set_yticks([])
        strip.set_ylabel("phones", rotation=0, ha="right", va="center")
        strip.tick_params(labelbottom=False)
    fig.suptitle(title)
    return _save(fig, path)
