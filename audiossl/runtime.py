"""Where and how a run executes: the device, autocast, the process group, seeds, compilation.

The training loop, ``audiossl bench`` and the CLI's ``--device`` options share
these. Under ``torchrun`` (detected through ``RANK``, as nanoGPT does) every
process joins one group: NCCL on GPUs, gloo on CPUs; seeds are offset by the
rank.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


class TrainingError(RuntimeError):
    """The run cannot go on; the message says why and where."""


@dataclass
class Distributed:
    """This process's place in the run (one process, rank 0, without torchrun)."""

    rank: int = 0  # this process's index among all of them
    world_size: int = 1  # the number of processes
    local_rank: int = 0  # this process's index on its node: its GPU

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_spec: str) -> Distributed:
    """Join the process group when launched by torchrun (``RANK`` is set)."""
    if "RANK" not in os.environ:
        return Distributed()
    dist_info = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                            int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist_info


def choose_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` (this rank's GPU, else the CPU), ``cpu``, ``cuda`` (this rank's) or ``cuda:N``.

    Raises:
        TrainingError: for any other name, or CUDA where there is none.
    """
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise TrainingError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {spec!r} asked for, but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def seed_everything(seed: int) -> None:
    """Seed torch's and Python's global generators (callers offset ``seed`` by the rank)."""
    torch.manual_seed(seed)
    random.seed(seed)


def autocast(device: torch.device, precision: str = "auto"):
    """The forward's autocast: ``precision`` ``auto`` is bf16 on CUDA and full fp32 on the CPU.

    ``bf16`` on the CPU runs the convolutions and matrix products in bf16
    (oneDNN; about 2.5x fp32's rate on CPUs with AVX512-BF16 or AMX), the
    norms, the recurrent layers and the losses in fp32, as CUDA's autocast does.
    """
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_module(module: nn.Module) -> nn.Module:
    """``torch.compile(module)``, random ops drawn as in eager mode.

    Inductor would otherwise generate its own random numbers for CPC's
    negative sampling and MPC's masks: other draws than eager mode's from the
    same seed, so a compiled run would not repeat an eager one, nor follow
    its own checkpointed RNG state on resume.
    """
    return torch.compile(module, options={"fallback_random": True})
