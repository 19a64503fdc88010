"""Training throughput: the step on random audio, and the data loader on real files.

The step's split: ``model`` is the time inside the frontend, encoder and
context network forward calls (timed by forward hooks), ``objective`` the rest
of the forward pass (heads, negative sampling, scores, loss), then
``backward`` and ``optimizer`` (gradient clipping with the step's one read of
the loss and gradient norm, AdamW and the schedule). The model, objective,
optimizer and step are built and run by the training loop's own functions,
so the bench times the step ``train`` runs. Figures are medians over the
timed steps. With ``augment: past`` the batch also holds a second random
window per row, as the augmented audio, so the step pays the encoder's
second pass (its augmentation is the loader's, timed below).
Compiled (``compile: true``), the forward is one graph and is timed whole:
hooks inside it would split the graph and time its tracing, not its run.

The loader's rate (:func:`loader_benchmark`) is what ``train``'s own
``BatchStream`` (``WindowDataset`` windows, ``epoch_batches``,
``collate_windows``, a ``DataLoader`` per epoch) delivers from a corpus with
no model behind it, per worker count, the augmentation included when
``augment`` is on (it runs in the loader's workers): set beside the step's
audio seconds per second, it says whether the loader or the model bounds
training.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import torch

from audiossl.config import Config
from audiossl.data.augment import AUGMENTED
from audiossl.data.corpus import CorpusError, load_corpus
from audiossl.data.windows import WindowDataset
from audiossl.runtime import (
    Distributed,
    TrainingError,
    autocast,
    choose_device,
    compile_module,
    describe_machine,
    resolve_precision,
)
from audiossl.train import BatchStream
from audiossl.train.loop import build_pretrainer, clip_and_read, optimizer_step
from audiossl.train.state import TrainState


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_batch(cfg: Config, dev: torch.device) -> dict[str, torch.Tensor]:
    """A training batch of random audio; with ``augment: past`` a second window per row as the augmented one."""
    batch_size, window = cfg.train.batch_size, cfg.data.window_samples
    batch = {
        "wavs": 0.1 * torch.randn(batch_size, window, device=dev),
        "lengths": torch.full((batch_size,), window, device=dev),
        "speakers": torch.zeros(batch_size, dtype=torch.long, device=dev),
    }
    if cfg.augment.augment == "past":  # the step encodes the clean and the augmented windows
        batch[AUGMENTED] = 0.1 * torch.randn(batch_size, window, device=dev)
    return batch


class _ModelTimer:
    """Seconds spent inside the frontend, encoder and context forward calls, by forward hooks; ``seconds``
    is zeroed by :meth:`reset` before each step."""

    def __init__(self, model: torch.nn.Module, dev: torch.device, enabled: bool):
        self.dev, self.seconds = dev, 0.0
        self.starts: dict[int, float] = {}
        self.hooks = []
        for part in (model.frontend, model.encoder, model.context) if enabled else ():
            self.hooks.append(part.register_forward_pre_hook(self.before))
            self.hooks.append(part.register_forward_hook(self.after))

    def before(self, mod, args) -> None:
        _sync(self.dev)
        self.starts[id(mod)] = time.perf_counter()

    def after(self, mod, args, out) -> None:
        _sync(self.dev)
        self.seconds += time.perf_counter() - self.starts.pop(id(mod))

    def reset(self) -> None:
        self.seconds = 0.0

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _timed_step(run, module, state: TrainState, batch: dict, cfg: Config, dev: torch.device) -> tuple[float, ...]:
    """One training step, as ``train`` runs it; the times before the forward, backward, optimizer and after."""
    _sync(dev)
    t0 = time.perf_counter()
    with autocast(dev, cfg.train.precision):
        loss, _ = run(batch)
    _sync(dev)
    t1 = time.perf_counter()
    loss.backward()
    _sync(dev)
    t2 = time.perf_counter()
    clip_and_read(module, loss.detach().double(), cfg, 1)  # clipping and the step's one read of the device
    optimizer_step(state)
    _sync(dev)
    return t0, t1, t2, time.perf_counter()


def benchmark(cfg: Config, steps: int = 10, warmup: int = 3, device: str = "auto") -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones (``cfg.train.compile``: compiled).

    Returns:
        Medians in seconds (``step``, ``forward``, ``backward``,
        ``optimizer``, and uncompiled ``model`` and ``objective``),
        ``first_step`` (the first warm-up step: compilation, when compiled),
        ``audio_seconds_per_second``, the setting, the ``machine`` (CPU
        model, capability, native bf16, threads, allocator; the GPU) and
        the ``precision`` chosen, with why.
    """
    dev = choose_device(device if device != "auto" else cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    # Built and stepped by the training loop's own functions: the same model, objective, AdamW (weight decay),
    # schedule and clipping as `train` runs.
    module = build_pretrainer(cfg).to(dev).train()
    state = TrainState.fresh(cfg, module)
    compiled = cfg.train.compile
    run = compile_module(module) if compiled else module
    batch = _random_batch(cfg, dev)
    timer = _ModelTimer(module.model, dev, enabled=not compiled)

    parts = ("step", "forward", "backward", "optimizer") + (("model", "objective") if not compiled else ())
    times: dict[str, list[float]] = {k: [] for k in parts}
    first_step = 0.0
    for i in range(warmup + steps):
        timer.reset()
        t0, t1, t2, t3 = _timed_step(run, module, state, batch, cfg, dev)
        if i == 0:
            first_step = t3 - t0
        if i >= warmup:
            times["step"].append(t3 - t0)
            times["forward"].append(t1 - t0)
            times["backward"].append(t2 - t1)
            times["optimizer"].append(t3 - t2)
            if not compiled:
                times["model"].append(timer.seconds)
                times["objective"].append(t1 - t0 - timer.seconds)
    timer.remove()
    batch_size, window = cfg.train.batch_size, cfg.data.window_samples
    result = {k: statistics.median(v) for k, v in times.items()}
    result["audio_seconds_per_second"] = batch_size * window / cfg.data.sample_rate / result["step"]
    result.update(first_step=first_step, compiled=compiled, device=str(dev), threads=torch.get_num_threads(),
                  machine=describe_machine(dev), precision=resolve_precision(cfg.train.precision, dev).describe(),
                  batch_size=batch_size, window_samples=window, objective_name=cfg.objective.objective,
                  augment=cfg.augment.augment, steps=steps, parameters=sum(p.numel() for p in module.parameters()))
    return result


def format_result(result: dict) -> str:
    lines = [
        f"machine: {result['machine']}",
        result["precision"],
        f"objective {result['objective_name']}{augment_label(result.get('augment', 'none'))}  "
        f"device {result['device']}  threads {result['threads']}  "
        f"batch {result['batch_size']} x {result['window_samples']} samples  "
        f"parameters {result['parameters']:,}  {'compiled  ' if result['compiled'] else ''}"
        f"median of {result['steps']} steps",
        f"  step        {result['step']:8.4f} s   ({result['audio_seconds_per_second']:.1f} audio-s/s)",
    ]
    parts = ("model", "objective") if "model" in result else ("forward",)
    for part in (*parts, "backward", "optimizer"):
        share = 100 * result[part] / result["step"] if result["step"] else 0.0
        lines.append(f"  {part:<11} {result[part]:8.4f} s   ({share:4.1f} %)")
    if result["compiled"]:
        lines.append(f"  first step  {result['first_step']:8.4f} s   (compilation)")
    return "\n".join(lines)


def loader_benchmark(cfg: Config, data: str | Path, workers: list[int], seconds: float = 5.0,
                     min_batches: int = 10) -> dict:
    """Windows and audio seconds per second that training's data path delivers, per worker count.

    Each worker count opens a fresh ``BatchStream`` at the start of epoch 0
    (``cfg.data`` and ``cfg.train.batch_size`` as training uses them), waits
    for its first batch (``startup``: worker start and the first reads), then
    counts batches for ``seconds`` (at least ``min_batches``), crossing into
    the next epoch if the corpus runs out.

    Args:
        data: a corpus folder or a manifest TSV, as ``audiossl train --data``.

    Returns:
        ``workers`` (one dict per count: ``num_workers``, ``batches``,
        ``seconds``, ``startup``, ``windows_per_second``,
        ``audio_seconds_per_second``), ``utterances`` and the setting.
    """
    if not workers or any(w < 0 for w in workers):
        raise ValueError(f"worker counts must be 0 or more, got {workers}")
    utterances, _ = load_corpus(data, speaker_level=cfg.data.speaker_level, progress=False)
    try:
        dataset = WindowDataset(utterances, cfg.data.window_samples, cfg.data.sample_rate, seed=cfg.train.seed)
    except ValueError as e:
        raise CorpusError(f"{data}: {e}") from None
    window_seconds = cfg.data.window_samples / cfg.data.sample_rate
    rows = []
    for count in workers:
        run_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=count))
        stream = BatchStream(dataset, run_cfg, Distributed(), epoch=0, position=0)
        start = time.perf_counter()
        try:
            stream.next()
        except TrainingError as e:
            raise CorpusError(f"{data}: {e}") from None
        first = time.perf_counter()
        batches = 0
        while batches < min_batches or time.perf_counter() - first < seconds:
            stream.next()
            batches += 1
        elapsed = time.perf_counter() - first
        stream.close()
        windows_per_second = batches * cfg.train.batch_size / elapsed
        rows.append({"num_workers": count, "batches": batches, "seconds": elapsed, "startup": first - start,
                     "windows_per_second": windows_per_second,
                     "audio_seconds_per_second": windows_per_second * window_seconds})
    return {"workers": rows, "utterances": len(dataset.utterances), "data": str(data),
            "batch_size": cfg.train.batch_size, "window_samples": cfg.data.window_samples,
            "sampler": cfg.data.sampler, "augment": cfg.augment.augment}


def augment_label(mode: str) -> str:
    """``", augment: past"`` for a line that names the setting, nothing when augmentation is off."""
    return "" if mode == "none" else f", augment: {mode}"


def format_loader(result: dict, model_rate: float | None = None) -> str:
    """One line per worker count; with ``model_rate`` (the step's audio-s/s), how many times it that is."""
    lines = [f"loader {result['data']}: {result['utterances']} utterances, {result['sampler']} sampler, "
             f"batch {result['batch_size']} x {result['window_samples']} samples"
             f"{augment_label(result.get('augment', 'none'))}"]
    for row in result["workers"]:
        line = (f"  {row['num_workers']} worker(s)  {row['windows_per_second']:9.1f} windows/s  "
                f"{row['audio_seconds_per_second']:9.1f} audio-s/s  ({row['batches']} batches in "
                f"{row['seconds']:.1f} s, first after {row['startup']:.2f} s)")
        if model_rate:
            line += f"  {row['audio_seconds_per_second'] / model_rate:.1f}x the model"
        lines.append(line)
    return "\n".join(lines)
