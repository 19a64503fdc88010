"""Self-describing checkpoints, written atomically and loaded as data.

A checkpoint is a dict of plain values and tensors: the full config, the
versions that wrote it, the step and the data position, the model, objective,
optimizer and scheduler states, and the RNG states. It is written to a
temporary file beside the target, flushed to disk and renamed, so a crash
leaves the previous checkpoint intact (and a full disk says so in one line,
see :mod:`audiossl.utils.atomic`). It is read with
``torch.load(weights_only=True)``: loading never runs code. States are loaded
into modules by :func:`load_state`, which names the first tensor whose shape
differs instead of torch's ``size mismatch`` traceback.
"""

from __future__ import annotations

import pickle
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from audiossl.config import Config
from audiossl.errors import UserError
from audiossl.models.model import SSLModel, build_model
from audiossl.utils.atomic import atomic_write
from audiossl.version import __version__


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path`` via a temporary file, fsync and a rename.

    Raises:
        DiskFullError: ``no space left on device writing <path>; the previous
            checkpoint is intact``.
    """
    atomic_write(path, lambda f: torch.save(obj, f), fsync=True, what="checkpoint")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def versions() -> dict[str, str]:
    return {"audiossl": __version__, "torch": str(torch.__version__)}


def _first_sentence(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0].split(". ")[0].strip("'") if lines else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _unpickler_complaint(e: Exception) -> str:
    """The line of torch's weights-only message that says what the unpickler met."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if "WeightsUnpickler error" in line]
    return after[0] if after else "not a pickle"


def load_state(target: Any, state: dict, path: str | Path, what: str) -> None:
    """``target.load_state_dict(state)``, a mismatch reported in one line naming ``path``.

    Args:
        target: a module or an optimizer.
        what: names the part (``model``, ``objective``, ``optimizer``).

    Raises:
        CheckpointError: naming the first tensor of another shape, or the
            missing and unexpected keys.
    """
    if isinstance(target, torch.nn.Module):
        own = target.state_dict()
        for key, tensor in state.items():
            if key in own and torch.is_tensor(tensor) and tensor.shape != own[key].shape:
                raise CheckpointError(f"{path}: {what} tensor {key!r} has shape {tuple(tensor.shape)}, this "
                                      f"{what} needs {tuple(own[key].shape)}; the checkpoint is of another "
                                      "architecture")
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(f"{path}: the {what} state does not fit (missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}); the checkpoint is of another architecture")
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot load the {what} state ({_first_sentence(e)})") from None


def load_data(path: str | Path, map_location: str | torch.device = "cpu", allowed: Sequence = ()) -> Any:
    """``torch.load(path, weights_only=True)``: any torch file read as data, each failure one line naming it.

    Also reads the peers' files (CPC_audio's checkpoints hold plain dicts of
    tensors, numbers and strings, see :mod:`audiossl.interop.cpc_audio`; fairseq's,
    see :mod:`audiossl.interop.fairseq`).

    Args:
        allowed: plain-data globals admitted besides torch's own (as
            ``torch.serialization.safe_globals`` takes them).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{path}: cannot read checkpoint ({_first_sentence(e)})") from None
        # torch's message suggests allowlisting the global; for a checkpoint that is never right.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # random bytes, a text file: the unpickler choked, no code was asked for
            raise CheckpointError(f"{path}: cannot read checkpoint, truncated or not a checkpoint "
                                  f"({_unpickler_complaint(e)})") from None
        detail = f"it names {found.group(1)}"
        raise CheckpointError(f"{path}: refused: loading it would need to run code ({detail}); "
                              "checkpoints are loaded as data only") from None
    except Exception as e:  # a bad zip (RuntimeError), an empty file (EOFError), garbage (KeyError)...
        raise CheckpointError(f"{path}: cannot read checkpoint, truncated or not a checkpoint "
                              f"({_first_sentence(e)})") from None
    return ckpt


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint as data; anything that would run code is refused."""
    ckpt = load_data(path, map_location)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: not an audiossl checkpoint (no config or model state)")
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SSLModel:
    """A ready model (eval mode) from a checkpoint, for other programs.

    The architecture comes from the checkpoint's own config; the returned
    model carries it as ``model.config``.
    """
    return model_from_checkpoint(load_checkpoint(path, map_location="cpu"), path, device)


def model_from_checkpoint(ckpt: dict, path: str | Path, device: str | torch.device = "cpu") -> SSLModel:
    """The model of a checkpoint already read (:func:`load_checkpoint`), as :func:`load_model` gives it."""
    try:
        cfg = Config.from_dict(ckpt["config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: its config does not fit this version of audiossl ({e})") from None
    model = build_model(cfg.model, cfg.data.sample_rate)
    load_state(model, ckpt["model"], path, "model")
    model.config = cfg
    return model.to(device).eval()
