"""The one training loop, for every objective.

setup (devices, DDP, seeds) -> build (model, objective: config errors surface
here, before the data is touched) -> data -> resume if the experiment folder
has a checkpoint -> loop (lr schedule, accumulate, clip, step, log, checkpoint)
-> teardown.

Under ``torchrun`` (detected through ``RANK``) every process trains one
replica: NCCL on GPUs, gloo on CPUs; rank 0 alone logs and writes. Seeds are
offset by the rank, and rank r reads batches r, r + world, ... of each epoch.

Faults the loop survives (docs/reliability.md lists them with their tests):
files the scan finds unusable are skipped and listed in
``scan_problems.tsv`` (``strict`` makes them an error before training); a
file that fails later has its windows replaced within their batch and is
logged in ``read_errors.tsv``; a step whose loss or gradient is not finite is
dropped, and ``max_nonfinite`` of them in a row stop the run without saving.

The hot loop reads the device once per step (the loss and the gradient norm,
one ``tolist``: the non-finite guard and the log line) and the metrics once
per ``log_every`` window (:class:`MetricWindow`); on a GPU every other read
would stall the host until the queued kernels ran. ``train_log.tsv`` lines
are buffered and written at each log window and before each checkpoint.
A killed run resumes from its last checkpoint with the same optimizer,
scheduler, data position and RNG states, and ``train_log.tsv`` (step, loss,
lr; one line per step, cut back to the checkpoint on resume) then reads as if
the run had never stopped.

On shared clusters: the run holds ``EXP_DIR/.lock`` (:mod:`audiossl.lock`);
SIGTERM, SIGINT, SIGUSR1 and the time budget stop it after the current step
with a checkpoint (:mod:`audiossl.stopping`, which also lists the exit
codes); what a resume may change and what it refuses is :mod:`audiossl.resume`;
a corpus none of whose files can be opened is refused before training, and
``MAX_UNREADABLE_BATCHES`` batches in a row without a readable window stop it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from audiossl.atomic import atomic_write, remove_stale_temps
from audiossl.checkpoint import atomic_save, load_checkpoint, load_state, rng_state, set_rng_state, versions
from audiossl.config import Config, check_window
from audiossl.data.corpus import CorpusError, Problem, drop_unreadable, load_corpus
from audiossl.data.windows import WindowDataset, collate_windows, epoch_batches
from audiossl.lock import FolderLock
from audiossl.models.model import build_model
from audiossl.objectives import build_objective
from audiossl.resume import apply_optimizer_settings, check_resumable, resume_position
from audiossl.runtime import (Distributed, TrainingError, autocast, choose_device, compile_module, seed_everything,
                              setup_distributed)
from audiossl.stopping import StopRequests, ignore_in_worker

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.tsv"
TRAIN_LOG_COLUMNS = ("step", "loss", "lr")
MAX_UNREADABLE_BATCHES = 20  # batches in a row with no readable window before the run stops


class Pretrainer(nn.Module):
    """The model and its objective as one module, so DDP syncs both."""

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.model, batch)


def lr_factor(step: int, warmup: int, total: int, decay: str) -> float:
    """Linear warm-up to 1, then cosine or linear decay to 0 (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_optimizer(cfg: Config, module: nn.Module) -> tuple[torch.optim.Optimizer,
                                                               torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``module``'s parameters and the warm-up/decay schedule of ``cfg``."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.decay))
    return optimizer, scheduler


def initial_checkpoint(cfg: Config, model: nn.Module, objective: nn.Module) -> dict:
    """A step-0 checkpoint of these weights, fresh optimizer and schedule: ``train`` resumes from it as
    from one of its own (``audiossl convert`` writes converted models so)."""
    optimizer, scheduler = build_optimizer(cfg, Pretrainer(model, objective))
    return {"config": cfg.to_dict(), "versions": versions(), "step": 0, "epoch": 0, "position": 0,
            "model": model.state_dict(), "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": [rng_state()], "skipped_steps": 0, "skipped_windows": 0}


def report_problems(problems: list[Problem], exp_dir: Path) -> None:
    path = exp_dir / "scan_problems.tsv"
    if not problems:
        path.unlink(missing_ok=True)
        return
    path.write_text("".join(f"{p.path}\t{p.reason}\n" for p in problems))
    print(f"skipped {len(problems)} unusable file(s), listed in {path}:")
    for p in problems[:10]:
        print(f"  {p.path}: {p.reason}")
    if len(problems) > 10:
        print(f"  ... and {len(problems) - 10} more")


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


class BatchStream:
    """Batches in a deterministic order, resumable at (epoch, position).

    A window whose file fails is replaced within its batch (see
    ``collate_windows``), a batch with no readable window is passed over;
    the failures wait in ``read_errors`` until the loop collects them.
    ``MAX_UNREADABLE_BATCHES`` such batches in a row (the corpus moved or
    unmounted during the run) stop the run with a ``TrainingError`` naming
    the files, instead of passing over batches forever.
    """

    def __init__(self, dataset: WindowDataset, cfg: Config, dist_info: Distributed, epoch: int, position: int):
        self.dataset, self.cfg, self.dist = dataset, cfg, dist_info
        self.epoch, self.position = epoch, position
        self.read_errors: list[tuple[str, str]] = []
        self.unreadable: list[tuple[str, str]] = []  # failures of the current run of unreadable batches
        self.unreadable_batches = 0
        self._iterator = None

    def _open(self) -> None:
        batches = epoch_batches(self.dataset, self.epoch, self.cfg.train.batch_size, self.cfg.data.sampler,
                                self.dist.rank, self.dist.world_size)
        if not batches:
            raise TrainingError(
                f"the corpus gives no full batch of {self.cfg.train.batch_size} windows per process "
                f"({self.cfg.data.sampler} sampler); use a smaller batch_size or more data")
        workers = self.cfg.data.num_workers
        # A DataLoader iterator draws a seed from the global RNG unless given its
        # own generator; a resumed run opens one more iterator than an
        # uninterrupted run and would then sample other CPC negatives.
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        loader = DataLoader(self.dataset, batch_sampler=batches[self.position:], collate_fn=collate_windows,
                            num_workers=workers, persistent_workers=False, pin_memory=torch.cuda.is_available(),
                            prefetch_factor=4 if workers else None, generator=generator,
                            worker_init_fn=ignore_in_worker if workers else None)
        self._iterator = iter(loader)

    def close(self) -> None:
        """Drop the epoch's DataLoader iterator, which stops its worker processes."""
        self._iterator = None

    def next(self) -> dict:
        while True:
            if self._iterator is None:
                self._open()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
                continue
            self.position += 1
            errors = batch.pop("read_errors")
            self.read_errors.extend(errors)
            if batch["wavs"] is not None:
                self.unreadable, self.unreadable_batches = [], 0
                return batch
            self.unreadable.extend(errors[: 10 - len(self.unreadable)])
            self.unreadable_batches += 1
            if self.unreadable_batches >= MAX_UNREADABLE_BATCHES:
                raise TrainingError(unreadable_message(self.unreadable_batches, self.unreadable))


def unreadable_message(batches: int, failures: list[tuple[str, str]]) -> str:
    """Why the run stops: the first files that failed and what most likely happened to them."""
    paths = list(dict.fromkeys(path for path, _ in failures))
    if not any(os.path.exists(p) for p in paths):
        cause = ("the files are gone: the corpus was moved, deleted or unmounted during the run, or the "
                 "manifest's paths do not resolve here (relative ones are read from the manifest's folder)")
    elif not any(os.access(p, os.R_OK) for p in paths if os.path.exists(p)):
        cause = "the files exist but cannot be read: permission denied"
    else:
        cause = "the files cannot be decoded: changed since the scan, or the storage is failing"
    shown = "; ".join(f"{path} ({reason})" for path, reason in dict(failures).items() if path in paths[:3])
    return f"{batches} batches in a row had no readable window, e.g. {shown}; {cause}"


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
        FolderLocked: another run holds ``exp_dir`` (see :mod:`audiossl.lock`).
    """
    with contextlib.ExitStack() as held:  # the folder's lock, the signal handlers: released however the run ends
        if int(os.environ.get("RANK", 0)) == 0:
            held.enter_context(FolderLock(exp_dir, "audiossl train"))
        return _train(cfg, data, exp_dir, progress, strict, held)


def _train(cfg: Config, data: str | Path, exp_dir: str | Path, progress: bool, strict: bool,
           held: contextlib.ExitStack) -> dict:
    # --- setup -------------------------------------------------------------
    dist_info = setup_distributed(cfg.train.device)
    device = choose_device(cfg.train.device, dist_info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = exp_dir / CHECKPOINT
    seed_everything(cfg.train.seed + dist_info.rank)
    if dist_info.is_main:  # what a run killed while saving left behind; the lock keeps out live writers
        remove_stale_temps(exp_dir, owner_may_live=False)

    # --- model and objective: a bad config or checkpoint fails before the scan
    resumed = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if resumed is not None:
        check_resumable(cfg, resumed, ckpt_path)
    model = build_model(cfg.model, cfg.data.sample_rate)
    window_frames = int(model.output_lengths(torch.tensor([cfg.data.window_samples])))
    check_window(cfg, window_frames, model.receptive_field)
    objective = build_objective(cfg, model)

    # --- data: rank 0 scans (or reuses the cached manifest), the others read it
    manifest = exp_dir / "manifest.tsv"
    if dist_info.is_main:
        utterances, problems = load_corpus(data, cache=manifest, speaker_level=cfg.data.speaker_level,
                                           progress=progress)
        utterances, missing = drop_unreadable(utterances, data)  # refuses a corpus none of which is there
        problems = problems + missing
    if dist_info.enabled:  # every rank trains on rank 0's list
        shared = [utterances if dist_info.is_main else None]
        dist.broadcast_object_list(shared, src=0)
        utterances = shared[0]
    try:
        dataset = WindowDataset(utterances, cfg.data.window_samples, cfg.data.sample_rate, seed=cfg.train.seed)
    except ValueError as e:
        raise CorpusError(f"{data}: {e}") from None
    if dist_info.is_main:
        rate, window = cfg.data.sample_rate, cfg.data.window_samples
        problems = problems + [
            Problem(u.path, f"shorter than the training window ({u.samples_at(rate)} < {window} samples at {rate} Hz)")
            for u in dataset.short]
        report_problems(problems, exp_dir)
        resampled = sum(u.sample_rate != rate for u in dataset.utterances)
        if resampled:
            print(f"note: {resampled} file(s) not at {rate} Hz are resampled as they are read")
        if strict and problems:
            raise CorpusError(f"{len(problems)} unusable file(s) and strict mode: fix or remove them "
                              f"(listed in {exp_dir / 'scan_problems.tsv'}), or train without --strict")

    # --- optimizer, resume -------------------------------------------------
    module = Pretrainer(model, objective).to(device)
    optimizer, scheduler = build_optimizer(cfg, module)
    step, epoch, position, skipped, skipped_windows = 0, 0, 0, 0, 0
    if resumed is not None:
        load_state(model, resumed["model"], ckpt_path, "model")
        load_state(objective, resumed["objective"], ckpt_path, "objective")
        load_state(optimizer, resumed["optimizer"], ckpt_path, "optimizer")
        scheduler.load_state_dict(resumed["scheduler"])
        step, epoch = resumed["step"], resumed["epoch"]
        position, moved = resume_position(resumed, dist_info.world_size)
        changes = apply_optimizer_settings(
            cfg, resumed["config"], optimizer, scheduler, step,
            lambda s: lr_factor(s, cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.decay))
        skipped, skipped_windows = resumed.get("skipped_steps", 0), resumed.get("skipped_windows", 0)
        rngs = resumed["rng"]
        if len(rngs) == dist_info.world_size:
            set_rng_state(rngs[dist_info.rank])
        else:  # another number of processes: fresh, distinct seeds
            torch.manual_seed(cfg.train.seed + dist_info.rank + 7919 * step)
        if dist_info.is_main:
            print(f"resuming from {ckpt_path} at step {step}")
            for note in changes + ([moved] if moved else []):
                print(f"note: {note}")
    if dist_info.is_main:
        (exp_dir / "config.yaml").write_text(yaml.safe_dump(cfg.flat(), sort_keys=False))
    ddp_module = module  # what the loop calls; `module` stays the plain one that checkpoints save
    if dist_info.enabled:
        ddp_module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        # Compile around DDP (its optimizer splits the graph at gradient buckets); the
        # compiled wrapper shares the parameters, so state_dicts keep their plain names.
        ddp_module = compile_module(ddp_module)

    stream = BatchStream(dataset, cfg, dist_info, epoch, position)
    writer = None
    if dist_info.is_main:
        # purge_step hides what a killed run logged after its last checkpoint.
        writer = SummaryWriter(str(exp_dir / "tb"), purge_step=step if step else None)
        train_log = open_train_log(exp_dir / TRAIN_LOG, step)
    audio_seconds_per_step = (cfg.train.batch_size * cfg.train.accumulate * dist_info.world_size
                              * cfg.data.window_samples / cfg.data.sample_rate)

    def save() -> None:
        states = [rng_state()]
        if dist_info.enabled:
            states = [None] * dist_info.world_size
            dist.all_gather_object(states, rng_state())
        if dist_info.is_main:
            atomic_save({
                "config": cfg.to_dict(), "versions": versions(), "step": step, "epoch": stream.epoch,
                "position": stream.position, "model": module.model.state_dict(),
                "objective": module.objective.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": states,
                "skipped_steps": skipped, "skipped_windows": skipped_windows,
            }, ckpt_path)

    bad_files: set[str] = set()

    def collect_read_errors() -> int:
        """Gather every rank's read failures; rank 0 logs them. Returns their number."""
        errors, stream.read_errors = stream.read_errors, []
        if dist_info.enabled:
            gathered = [None] * dist_info.world_size
            dist.all_gather_object(gathered, errors)
            errors = [e for rank_errors in gathered for e in rank_errors]
        if errors and dist_info.is_main:
            with open(exp_dir / "read_errors.tsv", "a") as f:
                f.writelines(f"{step}\t{path}\t{reason}\n" for path, reason in errors)
            for path, reason in errors:
                if path not in bad_files:
                    bad_files.add(path)
                    tqdm.write(f"warning: {path}: {reason}; its windows are replaced (see read_errors.tsv)")
        return len(errors)

    # --- loop --------------------------------------------------------------
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step",
               disable=not (progress and dist_info.is_main), dynamic_ncols=True)
    ddp_module.train()
    window = MetricWindow()
    log_lines: list[str] = []  # train_log.tsv lines not yet written (see flush_log)
    nonfinite_run = 0
    stops = held.enter_context(StopRequests(cfg.train.max_minutes, dist_info.enabled))
    last: dict[str, float] = {}
    stop = None

    def flush_log() -> None:
        """Write the buffered train_log.tsv lines: at each log window, and before each checkpoint,
        so the log always reaches the checkpoint's step (resume cuts it back to there)."""
        if dist_info.is_main and log_lines:
            train_log.writelines(log_lines)
            train_log.flush()
        log_lines.clear()

    while step < cfg.train.max_steps:
        # Everything stays on the device until the one read below: on a GPU each
        # float() or bool() of a tensor stalls the host until the queue drains.
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        step_metrics = None
        for micro in range(cfg.train.accumulate):
            batch = stream.next()
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            # Only the last micro-batch all-reduces gradients.
            sync = micro == cfg.train.accumulate - 1 or not dist_info.enabled
            with (contextlib.nullcontext() if sync else ddp_module.no_sync()), autocast(device, cfg.train.precision):
                loss, metrics = ddp_module(batch)
            (loss / cfg.train.accumulate).backward()
            # float64, as the Python floats these sums used to be: the logged values are the same to the bit.
            step_loss = step_loss + loss.detach().double() / cfg.train.accumulate
            values = torch.stack(list(metrics.values())).detach().double() / cfg.train.accumulate
            step_metrics = values if step_metrics is None else step_metrics + values
        if dist_info.enabled:
            # The logged loss is the mean over ranks; a non-finite loss on any rank makes the
            # sum non-finite everywhere, so every rank agrees to skip the step.
            dist.all_reduce(step_loss)
        # Clip (or only measure, max_norm=inf): a finite loss can still give a non-finite gradient.
        # Clipping a step that is then dropped costs nothing: its gradients are discarded.
        max_norm = cfg.train.clip_grad if cfg.train.clip_grad > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
        # The step's one host-device sync: the loss for the log and both halves of the finite test.
        step_loss_value, grad_norm_value = torch.stack([step_loss, grad_norm.detach().double()]).tolist()
        step_loss_value /= dist_info.world_size
        if not (math.isfinite(step_loss_value) and math.isfinite(grad_norm_value)):
            # A non-finite loss or gradient would poison the weights: drop this step's gradients.
            optimizer.zero_grad(set_to_none=True)
            nonfinite_run += 1
            skipped += 1
            if nonfinite_run >= cfg.train.max_nonfinite:
                flush_log()
                raise TrainingError(f"{nonfinite_run} non-finite losses or gradients in a row at step {step + 1}; "
                                    f"stopping without saving (last checkpoint: {ckpt_path})")
            continue
        nonfinite_run = 0
        step_lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        window.add(list(metrics), step_metrics)
        log_lines.append(f"{step}\t{step_loss_value!r}\t{step_lr!r}\n")

        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            flush_log()
            skipped_windows += collect_read_errors()
            last = window.read()  # the window's one read of the metrics
            last["lr"] = scheduler.get_last_lr()[0]
            last["audio_seconds_per_second"] = audio_seconds_per_step * window.steps / window.elapsed()
            last["grad_norm"] = grad_norm_value
            last["skipped_steps"] = skipped
            last["skipped_windows"] = skipped_windows
            if writer is not None:
                for key, value in last.items():
                    group = "train" if "_k" not in key else key.rsplit("_k", 1)[0] + "_per_step"
                    writer.add_scalar(f"{group}/{key}", value, step)
            shown = {"loss": f"{last.get('loss', float('nan')):.3f}"}
            if "accuracy" in last:
                shown["acc"] = f"{last['accuracy']:.3f}"
            shown["audio_s_per_s"] = f"{last['audio_seconds_per_second']:.1f}"
            bar.set_postfix(shown)
            window = MetricWindow()
        # A signal or the time budget ends the run early with a checkpoint; running again resumes.
        stop = stops.check() if step < cfg.train.max_steps else None  # the same on every rank
        if step % cfg.train.ckpt_every == 0 or step == cfg.train.max_steps or stop:
            flush_log()
            save()
        if stop:
            if dist_info.is_main:
                tqdm.write(stops.describe(stop, step, ckpt_path))
            break

    # --- teardown ----------------------------------------------------------
    bar.close()
    flush_log()
    if writer is not None:
        writer.close()
        train_log.close()
    if dist_info.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return {"step": step, "skipped_steps": skipped, "skipped_windows": skipped_windows, "metrics": last,
            "checkpoint": str(ckpt_path), "stopped": stop}
