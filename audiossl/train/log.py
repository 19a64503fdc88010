"""What a training run reports as it goes: the per-step log, TensorBoard, read failures, the bar.

``train_log.tsv`` has one line per step (step, loss, lr), buffered and
written at each log window and before each checkpoint; a resumed run cuts it
back to its checkpoint, so it reads as if the run had never stopped. The
metrics stay on the device over a log window (:class:`MetricWindow`) and are
read once at its end.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from audiossl.config import Config
from audiossl.runtime import Distributed
from audiossl.utils.atomic import atomic_write

TRAIN_LOG = "train_log.tsv"
TRAIN_LOG_COLUMNS = ("step", "loss", "lr")


def open_train_log(path: Path, step: int):
    """The per-step log, cut back to ``step`` and opened for appending.

    A resumed run drops the lines its killed predecessor wrote after the
    checkpoint (it trains those steps again), so the log matches an
    uninterrupted run's line for line.
    """
    kept = []
    if path.is_file():
        for line in path.read_text().splitlines()[1:]:
            fields = line.split("\t")
            if len(fields) == len(TRAIN_LOG_COLUMNS) and fields[0].isdigit() and int(fields[0]) <= step:
                kept.append(line)
    text = "".join(f"{line}\n" for line in ["\t".join(TRAIN_LOG_COLUMNS), *kept])
    atomic_write(path, lambda f: f.write(text.encode()), what="step log")
    return open(path, "a")


class MetricWindow:
    """Per-step metrics summed on the device over one log window, read once at its end.

    Sums are float64 and added in the order the per-step ``float()`` path
    added them, so the logged means are the same to the bit; the window's
    steps all come from one objective, so they share the metric names.
    """

    def __init__(self):
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None  # (metrics,) float64, on the device
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, names: list[str], values: torch.Tensor) -> None:
        if self.sums is None:
            self.names, self.sums = names, torch.zeros_like(values)
        assert names == self.names, "metric names changed within a log window"
        self.sums = self.sums + values
        self.steps += 1

    def read(self) -> dict[str, float]:
        """Mean of each metric over the window's steps (one host-device sync)."""
        if self.sums is None:
            return {}
        return {name: total / self.steps for name, total in zip(self.names, self.sums.tolist())}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class RunLog:
    """What the run reports as it goes: the progress bar (shown by rank 0 alone) and rank 0's files.

    Rank 0 writes ``train_log.tsv`` (one line per step, buffered and written
    by :meth:`flush` at each log window and before each checkpoint, so the
    log always reaches the checkpoint's step: resume cuts it back to there),
    the TensorBoard scalars of each log window, and ``read_errors.tsv``.
    """

    def __init__(self, cfg: Config, exp_dir: Path, step: int, dist_info: Distributed, progress: bool):
        self.exp_dir, self.is_main = exp_dir, dist_info.is_main
        self.writer, self.file = None, None
        if self.is_main:
            # purge_step hides what a killed run logged after its last checkpoint.
            self.writer = SummaryWriter(str(exp_dir / "tb"), purge_step=step if step else None)
            self.file = open_train_log(exp_dir / TRAIN_LOG, step)
        self.lines: list[str] = []  # train_log.tsv lines not yet written
        self.warned: set[str] = set()  # files a read-error warning has named
        self.bar = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step",
                        disable=not (progress and self.is_main), dynamic_ncols=True)

    def add_step(self, step: int, loss: float, lr: float) -> None:
        self.bar.update(1)
        self.lines.append(f"{step}\t{loss!r}\t{lr!r}\n")

    def flush(self) -> None:
        """Write the buffered train_log.tsv lines."""
        if self.is_main and self.lines:
            self.file.writelines(self.lines)
            self.file.flush()
        self.lines.clear()

    def read_errors(self, errors: list[tuple[str, str]], step: int) -> None:
        """Append every rank's read failures to read_errors.tsv; warn once per file."""
        if errors and self.is_main:
            with open(self.exp_dir / "read_errors.tsv", "a") as f:
                f.writelines(f"{step}\t{path}\t{reason}\n" for path, reason in errors)
            for path, reason in errors:
                if path not in self.warned:
                    self.warned.add(path)
                    tqdm.write(f"warning: {path}: {reason}; its windows are replaced (see read_errors.tsv)")

    def window(self, metrics: dict[str, float], step: int) -> None:
        """A log window's metrics: TensorBoard scalars (per-prediction-step ones in their own group), the bar."""
        if self.writer is not None:
            for key, value in metrics.items():
                group = "train" if "_k" not in key else key.rsplit("_k", 1)[0] + "_per_step"
                self.writer.add_scalar(f"{group}/{key}", value, step)
        shown = {"loss": f"{metrics.get('loss', float('nan')):.3f}"}
        if "accuracy" in metrics:
            shown["acc"] = f"{metrics['accuracy']:.3f}"
        shown["audio_s_per_s"] = f"{metrics['audio_seconds_per_second']:.1f}"
        self.bar.set_postfix(shown)

    def close(self) -> None:
        self.bar.close()
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.file.close()
