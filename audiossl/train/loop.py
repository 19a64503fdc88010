"""The one training loop, for every objective.

:func:`train` reads top to bottom: setup (device, DDP, seeds) -> build
(model, objective: config errors surface here, before the data is touched)
-> data -> resume if the experiment folder has a checkpoint -> loop (lr
schedule, accumulate, clip, step, log, checkpoint) -> teardown. A step is
small named helpers: :func:`forward_backward` runs the micro-batches,
:func:`clip_and_read` clips and reads the loss and the gradient norm,
:func:`optimizer_step` steps; :class:`~audiossl.train.log.RunLog` reports,
and :func:`~audiossl.train.state.save_checkpoint` writes the
:class:`~audiossl.train.state.TrainState`, the one object a step changes.

The hot loop reads the device once per step (the loss and the gradient norm,
one ``tolist``: the non-finite guard and the log line) and the metrics once
per ``log_every`` window (:class:`~audiossl.train.log.MetricWindow`); on a
GPU every other read would stall the host until the queued kernels ran.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from audiossl.checkpoint import load_checkpoint
from audiossl.config import Config, check_window
from audiossl.models.model import build_model
from audiossl.objectives import build_objective
from audiossl.runtime import (
    Distributed,
    TrainingError,
    autocast,
    choose_device,
    compile_module,
    resolve_precision,
    seed_everything,
    setup_distributed,
)
from audiossl.train.log import MetricWindow, RunLog
from audiossl.train.resume import check_resumable
from audiossl.train.state import CHECKPOINT, Pretrainer, TrainState, init_model, resume, save_checkpoint
from audiossl.train.stream import BatchStream, load_windows
from audiossl.utils.atomic import remove_stale_temps
from audiossl.utils.lock import FolderLock
from audiossl.utils.stopping import StopRequests


def build_pretrainer(cfg: Config) -> Pretrainer:
    """The model and objective of ``cfg``; a window too short for the model is refused here."""
    model = build_model(cfg.model, cfg.data.sample_rate)
    check_window(cfg, model.window_frames(cfg.data.window_samples), model.receptive_field)
    return Pretrainer(model, build_objective(cfg, model))


def check_corpus(module: Pretrainer, dataset, cfg: Config) -> None:
    """Let an objective that reads per-utterance data (HuBERT's units) refuse the corpus before the first step."""
    check = getattr(module.objective, "check_corpus", None)
    if check is not None:
        samples = torch.tensor([u.samples_at(cfg.data.sample_rate) for u in dataset.utterances])
        frames = module.model.output_lengths(samples).tolist()
        check({u.id: n for u, n in zip(dataset.utterances, frames)})


def wrap_module(module: Pretrainer, cfg: Config, dist_info: Distributed, device: torch.device) -> nn.Module:
    """What the loop calls: ``module`` under DDP and compiled as asked; checkpoints save the plain one."""
    wrapped = module
    if dist_info.enabled:
        wrapped = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        # Compile around DDP (its optimizer splits the graph at gradient buckets); the
        # compiled wrapper shares the parameters, so state_dicts keep their plain names.
        wrapped = compile_module(wrapped)
    return wrapped


def forward_backward(wrapped: nn.Module, stream: BatchStream, cfg: Config, device: torch.device,
                     dist_info: Distributed) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """One step's ``accumulate`` micro-batches, forward and backward.

    Everything stays on the device: on a GPU each float() or bool() of a
    tensor stalls the host until the queue drains.

    Returns:
        The step's loss summed over ranks (a float64 scalar), the metric
        names and the step's metric values ``(metrics,)`` float64.
    """
    step_loss = torch.zeros((), dtype=torch.float64, device=device)
    step_metrics = None
    for micro in range(cfg.train.accumulate):
        batch = stream.next()
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        # Only the last micro-batch all-reduces gradients.
        sync = micro == cfg.train.accumulate - 1 or not dist_info.enabled
        with (contextlib.nullcontext() if sync else wrapped.no_sync()), autocast(device, cfg.train.precision):
            loss, metrics = wrapped(batch)
        (loss / cfg.train.accumulate).backward()
        # float64, as the Python floats these sums used to be: the logged values are the same to the bit.
        step_loss = step_loss + loss.detach().double() / cfg.train.accumulate
        values = torch.stack(list(metrics.values())).detach().double() / cfg.train.accumulate
        step_metrics = values if step_metrics is None else step_metrics + values
    if dist_info.enabled:
        # The logged loss is the mean over ranks; a non-finite loss on any rank makes the
        # sum non-finite everywhere, so every rank agrees to skip the step.
        dist.all_reduce(step_loss)
    return step_loss, list(metrics), step_metrics


def clip_and_read(module: nn.Module, step_loss: torch.Tensor, cfg: Config, world_size: int) -> tuple[float, float]:
    """Clip the gradients; the step's loss (mean over ranks) and gradient norm, in the step's one host-device sync."""
    # Clip (or only measure, max_norm=inf): a finite loss can still give a non-finite gradient.
    # Clipping a step that is then dropped costs nothing: its gradients are discarded.
    max_norm = cfg.train.clip_grad if cfg.train.clip_grad > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    step_loss_value, grad_norm_value = torch.stack([step_loss, grad_norm.detach().double()]).tolist()
    return step_loss_value / world_size, grad_norm_value


def optimizer_step(state: TrainState) -> float:
    """Step the optimizer and the schedule; returns the lr the step used."""
    lr = state.scheduler.get_last_lr()[0]
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return lr


def window_metrics(window: MetricWindow, state: TrainState, grad_norm: float,
                   audio_seconds_per_step: float) -> dict[str, float]:
    """A log window's means, with the lr, the throughput, the last step's gradient norm and the skip counts."""
    last = window.read()  # the window's one read of the metrics
    last["lr"] = state.scheduler.get_last_lr()[0]
    last["audio_seconds_per_second"] = audio_seconds_per_step * window.steps / window.elapsed()
    last["grad_norm"] = grad_norm
    last["skipped_steps"] = state.skipped_steps
    last["skipped_windows"] = state.skipped_windows
    return last


def train(cfg: Config, data: str | Path, exp_dir: str | Path, progress: bool = True, strict: bool = False) -> dict:
    """Pretrain a model with ``cfg``'s objective, resuming from ``exp_dir``.

    Args:
        data: a corpus folder or a manifest TSV.
        exp_dir: the experiment folder: checkpoint, TensorBoard logs, the
            resolved config and the manifest live here.
        strict: refuse to train (``CorpusError``) when any file is unusable
            or shorter than the window, instead of skipping it.

    Returns:
        A summary: the final step, the last logged metrics and why the run
        stopped early (``stopped``: ``"signal"``, ``"budget"`` or None).

    Raises:
        FolderLocked: another run holds ``exp_dir`` (see :mod:`audiossl.utils.lock`).
    """
    with contextlib.ExitStack() as held:  # the folder's lock, the signal handlers: released however the run ends
        if int(os.environ.get("RANK", 0)) == 0:
            held.enter_context(FolderLock(exp_dir, "audiossl train"))
        return _train(cfg, data, exp_dir, progress, strict, held)


def _setup(cfg: Config, exp_dir: Path) -> tuple[Distributed, torch.device]:
    """DDP (under torchrun), the device, the experiment folder, the seeds (offset by rank); what a run killed
    while saving left behind is removed (the lock keeps out live writers)."""
    dist_info = setup_distributed(cfg.train.device)
    device = choose_device(cfg.train.device, dist_info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    exp_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed + dist_info.rank)
    if dist_info.is_main:
        remove_stale_temps(exp_dir)
    return dist_info, device


def _write_resolved_config(cfg: Config, exp_dir: Path, device: torch.device) -> None:
    """``config.yaml``: the flat config this run trains with, headed by the device and precision chosen."""
    precision = resolve_precision(cfg.train.precision, device)
    tqdm.write(precision.describe())
    (exp_dir / "config.yaml").write_text(f"# on {device}: {precision.describe()}\n"
                                         + yaml.safe_dump(cfg.flat(), sort_keys=False))


def _refuse_nonfinite_run(run: int, cfg: Config, state: TrainState, log: RunLog, ckpt_path: Path) -> None:
    """Stop, without saving, once ``max_nonfinite`` steps in a row had a non-finite loss or gradient."""
    if run >= cfg.train.max_nonfinite:
        log.flush()
        kept = f"last checkpoint: {ckpt_path}" if ckpt_path.exists() else "no checkpoint yet"
        raise TrainingError(f"{run} non-finite losses or gradients in a row at step "
                            f"{state.step + 1}; stopping without saving ({kept})")


def _teardown(log: RunLog, dist_info: Distributed) -> None:
    log.close()
    if dist_info.enabled:
        dist.barrier()
        dist.destroy_process_group()


def _train(cfg: Config, data: str | Path, exp_dir: str | Path, progress: bool, strict: bool,
           held: contextlib.ExitStack) -> dict:
    # --- setup -------------------------------------------------------------
    exp_dir = Path(exp_dir)
    dist_info, device = _setup(cfg, exp_dir)
    ckpt_path = exp_dir / CHECKPOINT

    # --- build: a bad config or checkpoint fails before the scan; then the data
    saved = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if saved is not None:
        check_resumable(cfg, saved, ckpt_path)
    module = build_pretrainer(cfg)
    if saved is None and cfg.train.init_from:
        init_model(module, cfg.train.init_from)
    dataset = load_windows(cfg, data, exp_dir, dist_info, progress, strict)
    check_corpus(module, dataset, cfg)

    # --- optimizer, resume -------------------------------------------------
    state = TrainState.fresh(cfg, module.to(device))
    epoch, position = resume(state, saved, ckpt_path, cfg, dist_info) if saved is not None else (0, 0)
    if dist_info.is_main:
        _write_resolved_config(cfg, exp_dir, device)
    wrapped = wrap_module(module, cfg, dist_info, device)
    stream = BatchStream(dataset, cfg, dist_info, epoch, position)
    log = RunLog(cfg, exp_dir, state.step, dist_info, progress)
    audio_seconds_per_step = (cfg.train.batch_size * cfg.train.accumulate * dist_info.world_size
                              * cfg.data.window_samples / cfg.data.sample_rate)

    # --- loop --------------------------------------------------------------
    wrapped.train()
    window = MetricWindow()
    stops = held.enter_context(StopRequests(cfg.train.max_minutes, dist_info.enabled))
    nonfinite_run, last, stop = 0, {}, None
    while state.step < cfg.train.max_steps:
        step_loss, names, step_metrics = forward_backward(wrapped, stream, cfg, device, dist_info)
        loss, grad_norm = clip_and_read(module, step_loss, cfg, dist_info.world_size)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            # A non-finite loss or gradient would poison the weights: drop this step's gradients.
            state.optimizer.zero_grad(set_to_none=True)
            nonfinite_run += 1
            state.skipped_steps += 1
            _refuse_nonfinite_run(nonfinite_run, cfg, state, log, ckpt_path)
            continue
        nonfinite_run = 0
        lr = optimizer_step(state)
        log.add_step(state.step, loss, lr)
        window.add(names, step_metrics)

        if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
            log.flush()
            errors = stream.collect_read_errors()  # every rank's, gathered
            log.read_errors(errors, state.step)
            state.skipped_windows += len(errors)
            last = window_metrics(window, state, grad_norm, audio_seconds_per_step)
            log.window(last, state.step)
            window = MetricWindow()
        # A signal or the time budget ends the run early with a checkpoint; running again resumes.
        stop = stops.check() if state.step < cfg.train.max_steps else None  # the same on every rank
        if state.step % cfg.train.ckpt_every == 0 or state.step == cfg.train.max_steps or stop:
            log.flush()
            save_checkpoint(ckpt_path, cfg, state, stream.epoch, stream.position, dist_info)
        if stop:
            if dist_info.is_main:
                tqdm.write(stops.describe(stop, state.step, ckpt_path))
            break

    # --- teardown ----------------------------------------------------------
    _teardown(log, dist_info)
    return {"step": state.step, "skipped_steps": state.skipped_steps, "skipped_windows": state.skipped_windows,
            "metrics": last, "checkpoint": str(ckpt_path), "stopped": stop}
