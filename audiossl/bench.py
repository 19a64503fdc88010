"""Training-step throughput on random audio, with the step time split.

The split: ``model`` is the time inside the frontend, encoder and context
network forward calls (timed by forward hooks), ``objective`` the rest of the
forward pass (heads, negative sampling, scores, loss), then ``backward`` and
``optimizer``. Figures are medians over the timed steps.
"""

from __future__ import annotations

import statistics
import time

import torch

from audiossl.config import Config, check_window
from audiossl.models.model import build_model
from audiossl.objectives import build_objective
from audiossl.train import Pretrainer, autocast, choose_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(cfg: Config, steps: int = 10, warmup: int = 3, device: str = "auto") -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones.

    Returns:
        Medians in seconds (``step``, ``model``, ``objective``, ``backward``,
        ``optimizer``), ``audio_seconds_per_second``, and the setting.
    """
    dev = choose_device(device if device != "auto" else cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.data.sample_rate)
    check_window(cfg, int(model.output_lengths(torch.tensor([cfg.data.window_samples]))), model.receptive_field)
    module = Pretrainer(model, build_objective(cfg, model)).to(dev).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.train.lr)
    batch_size, window = cfg.train.batch_size, cfg.data.window_samples
    batch = {
        "wavs": 0.1 * torch.randn(batch_size, window, device=dev),
        "lengths": torch.full((batch_size,), window, device=dev),
        "speakers": torch.zeros(batch_size, dtype=torch.long, device=dev),
    }

    model_time = [0.0]
    starts: dict[int, float] = {}

    def before(mod, args):
        _sync(dev)
        starts[id(mod)] = time.perf_counter()

    def after(mod, args, out):
        _sync(dev)
        model_time[0] += time.perf_counter() - starts.pop(id(mod))

    hooks = []
    for part in (model.frontend, model.encoder, model.context):
        hooks.append(part.register_forward_pre_hook(before))
        hooks.append(part.register_forward_hook(after))

    times: dict[str, list[float]] = {k: [] for k in ("step", "model", "objective", "backward", "optimizer")}
    for i in range(warmup + steps):
        model_time[0] = 0.0
        _sync(dev)
        t0 = time.perf_counter()
        with autocast(dev):
            loss, _ = module(batch)
        _sync(dev)
        t1 = time.perf_counter()
        loss.backward()
        _sync(dev)
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(dev)
        t3 = time.perf_counter()
        if i >= warmup:
            times["step"].append(t3 - t0)
            times["model"].append(model_time[0])
            times["objective"].append(t1 - t0 - model_time[0])
            times["backward"].append(t2 - t1)
            times["optimizer"].append(t3 - t2)
    for h in hooks:
        h.remove()
    result = {k: statistics.median(v) for k, v in times.items()}
    result["audio_seconds_per_second"] = batch_size * window / cfg.data.sample_rate / result["step"]
    result.update(device=str(dev), threads=torch.get_num_threads(), batch_size=batch_size,
                  window_samples=window, objective_name=cfg.objective.objective, steps=steps,
                  parameters=sum(p.numel() for p in module.parameters()))
    return result


def format_result(result: dict) -> str:
    lines = [
        f"objective {result['objective_name']}  device {result['device']}  threads {result['threads']}  "
        f"batch {result['batch_size']} x {result['window_samples']} samples  "
        f"parameters {result['parameters']:,}  median of {result['steps']} steps",
        f"  step        {result['step']:8.4f} s   ({result['audio_seconds_per_second']:.1f} audio-s/s)",
    ]
    for part in ("model", "objective", "backward", "optimizer"):
        share = 100 * result[part] / result["step"] if result["step"] else 0.0
        lines.append(f"  {part:<11} {result[part]:8.4f} s   ({share:4.1f} %)")
    return "\n".join(lines)
