"""Where and how a run executes: the device, autocast, the process group, seeds, compilation.

The training loop, ``audiossl bench`` and the CLI's ``--device`` options share
these. Under ``torchrun`` (detected through ``RANK``, as nanoGPT does) every
process joins one group: NCCL on GPUs, gloo on CPUs; seeds are offset by the
rank.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import random
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from audiossl.errors import UserError


class TrainingError(RuntimeError):
    """The run cannot go on; the message says why and where."""


class DeviceError(UserError, RuntimeError):
    """A device asked for that is not a device, or not on this machine."""


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
        DeviceError: for any other name, or CUDA where there is none.
    """
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r} asked for, but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def seed_everything(seed: int) -> None:
    """Seed torch's and Python's global generators (callers offset ``seed`` by the rank)."""
    torch.manual_seed(seed)
    random.seed(seed)


def _onednn_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@functools.lru_cache(maxsize=None)
def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and what tells: PyTorch's and oneDNN's own checks.

    Native means the instructions that multiply bf16 (AVX512-BF16 or AMX on
    x86; on other CPUs, oneDNN's bf16 check, which asks for the Arm BF16
    extension). Without them oneDNN still runs bf16, emulated: on an AVX2-only
    AMD EPYC (Zen 3) a waveform CPC step took 16.7 s in bf16 against 0.54 s in
    fp32. ``ONEDNN_MAX_CPU_ISA`` set below the bf16 instruction sets counts as
    no native bf16, since oneDNN then will not use them.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if not _onednn_bf16():
        return False, f"oneDNN has no bf16 on this CPU (PyTorch's capability {capability})"
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        units = [name for name, has in (("AMX", torch.cpu._is_amx_tile_supported()),
                                        ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported())) if has]
        if not units:
            return False, f"no AVX512-BF16 or AMX on this CPU (PyTorch's capability {capability})"
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
        if cap not in ("ALL", "DEFAULT") and not any(word in cap for word in ("BF16", "AMX", "FP16", "AVX10")):
            return False, f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off this CPU's {' and '.join(units)}"
        return True, f"this CPU has {' and '.join(units)}"
    return True, "oneDNN's bf16 check passes on this CPU"


class Precision(NamedTuple):
    """What a run computes in, and why."""

    name: str  # fp32 | bf16
    reason: str  # what chose it, for the log and config.yaml
    slow: bool = False  # bf16 asked for on a CPU that only emulates it: callers warn

    def describe(self) -> str:
        return f"{'warning: ' if self.slow else ''}precision {self.name} ({self.reason})"


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """What ``precision`` (``auto``, ``fp32``, ``bf16``) runs as on ``device``.

    ``auto`` is bf16 on CUDA and on CPUs with native bf16 (:func:`cpu_bf16`),
    fp32 elsewhere. An explicit ``bf16`` on a CPU without it runs as asked,
    marked ``slow``.
    """
    if precision == "fp32":
        return Precision("fp32", "precision=fp32 in the config")
    if device.type == "cuda":
        return Precision("bf16", f"{'precision=bf16 in the config' if precision == 'bf16' else 'auto'}: CUDA")
    native, why = cpu_bf16()
    if precision == "bf16":
        if native:
            return Precision("bf16", f"precision=bf16 in the config; {why}")
        return Precision("bf16", f"precision=bf16 in the config, but {why}: oneDNN emulates bf16 and a step "
                                 f"can run 30x slower than in fp32 (precision=auto chooses fp32 here)", slow=True)
    return Precision("bf16" if native else "fp32", f"auto: {why}")


def autocast(device: torch.device, precision: str = "auto"):
    """The forward's autocast for ``precision`` on ``device`` (see :func:`resolve_precision`).

    bf16 runs the convolutions and matrix products in bf16 (on the CPU:
    oneDNN, about 2.5x fp32's rate with AVX512-BF16 or AMX), the norms, the
    recurrent layers and the losses in fp32, as CUDA's autocast does.
    """
    if resolve_precision(precision, device).name == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_machine(device: torch.device | None = None) -> str:
    """One line naming what a time figure was measured on: the CPU (or GPU), its capability, threads, allocator."""
    from audiossl.utils import allocator

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    native, _ = cpu_bf16()
    line = (f"CPU {cpu}, capability {torch.backends.cpu.get_cpu_capability()}, native bf16 "
            f"{'yes' if native else 'no'}, {torch.get_num_threads()} threads, "
            f"allocator {'tcmalloc' if allocator.loaded() else 'system'}")
    if device is not None and device.type == "cuda":
        line = f"GPU {torch.cuda.get_device_name(device)}; {line}"
    return line


def compile_module(module: nn.Module) -> nn.Module:
    """``torch.compile(module)``, random ops drawn as in eager mode.

    Inductor would otherwise generate its own random numbers for CPC's
    negative sampling and MPC's masks: other draws than eager mode's from the
    same seed, so a compiled run would not repeat an eager one, nor follow
    its own checkpointed RNG state on resume.
    """
    return torch.compile(module, options={"fallback_random": True})
