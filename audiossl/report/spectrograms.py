"""The report's figures of one utterance over time: its log-mel spectrogram with the learned features or
the discrete units.

Drawn as :mod:`audiossl.report.figures` draws (its own Agg figure, written
through a temporary file). ``librosa.display``, which draws the spectrograms
with frequencies in Hz and times in seconds, imports pyplot; it is loaded only
when a spectrogram is drawn, and only its ``specshow`` on an existing axis is
called, so importing this module does not change a notebook's backend either.

- :func:`plot_utterance`: log-mel spectrogram above the learned features on a
  shared time axis, with phone segments on top.
- :func:`plot_units_utterance`: one utterance's spectrogram with its discrete
  units over it and its phones on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from audiossl.report.figures import save_figure

__all__ = ["plot_units_utterance", "plot_utterance"]


def _spectrogram(ax, logmel: np.ndarray, logmel_rate: float, sample_rate: int):
    """Draw (frames, mel bins) log power with ``librosa.display.specshow``: seconds across, Hz up (HTK mel scale)."""
    from librosa.display import specshow  # imports pyplot: loaded only when a spectrogram is drawn

    return specshow(logmel.T, sr=sample_rate, hop_length=round(sample_rate / logmel_rate), x_axis="s",
                    y_axis="mel", fmin=0.0, fmax=sample_rate / 2, htk=True, cmap="magma", ax=ax)


def _phone_strip(strip, segments: Sequence[tuple[float, float, str]], duration: float) -> None:
    """The phones of ``segments`` as alternating grey spans, named where wide enough to read."""
    for index, (start, end, name) in enumerate(segments):
        strip.axvspan(start, end, color="0.85" if index % 2 else "0.95")
        if end - start >= duration / 90:
            strip.text((start + end) / 2, 0.5, name, ha="center", va="center", fontsize="x-small")
    strip.set_yticks([])
    strip.set_ylabel("phones", rotation=0, ha="right", va="center")
    strip.tick_params(labelbottom=False)


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
        _phone_strip(fig.add_subplot(grid[0, 0], sharex=spec_ax), segments, duration)
    fig.suptitle(title)
    return save_figure(fig, path)


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
        _phone_strip(fig.add_subplot(grid[0, 0], sharex=spec_ax), segments, duration)
    fig.suptitle(title)
    return save_figure(fig, path)
