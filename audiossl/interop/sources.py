"""What a ``--ckpt`` path is, opened as a feature model: an audiossl checkpoint, a Hugging Face folder, a fairseq file.

- a **folder** with ``config.json``: a Hugging Face model
  (:mod:`audiossl.interop.hf`);
- a **file** read as data (``torch.load(weights_only=True)``, the plain-data
  globals of fairseq's pickles admitted, see
  :data:`audiossl.interop.fairseq.DATA_GLOBALS`): with ``config`` and
  ``model``, an audiossl checkpoint (:func:`audiossl.checkpoint.load_model`);
  with ``model`` and ``cfg`` or ``args``, a fairseq wav2vec 2.0 / HuBERT
  checkpoint (:mod:`audiossl.interop.fairseq`).

Every source is recorded the same way in an extraction's ``meta.json``:
``{"checkpoint": its absolute path, "sha256": the digest of its files}``,
with ``format`` and ``model_type`` added for the other libraries' models.
The digest makes a re-run into the folder with other weights an error
instead of a mix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from audiossl.checkpoint import CheckpointError, load_data, model_from_checkpoint
from audiossl.interop.fairseq import DATA_GLOBALS, is_fairseq, read_fairseq

__all__ = ["digest", "open_model"]


def digest(paths: Sequence[Path]) -> str:
    """The first 16 hex digits of the sha256 of the files' bytes, in order."""
    hashed = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                hashed.update(block)
    return hashed.hexdigest()[:16]


def open_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The feature model at ``path`` (eval mode, on ``device``) and the source record for ``meta.json``.

    Returns:
        An :class:`~audiossl.models.model.SSLModel` or a
        :class:`~audiossl.interop.wav2vec2.Wav2Vec2Family`, and its record.

    Raises:
        CheckpointError: no such file, a file that is no model of these
            kinds, or one that would need code to load; HFModelError or
            FairseqError for a model that cannot be carried, named.
    """
    path = Path(path)
    if path.is_dir():
        from audiossl.interop.hf import CONFIG, PREPROCESSOR, load_hf_model, weight_files

        model = load_hf_model(path)
        files = [path / CONFIG, *([path / PREPROCESSOR] if (path / PREPROCESSOR).is_file() else []),
                 *weight_files(path)]
        record = {"checkpoint": str(path.resolve()), "sha256": digest(files), "format": "huggingface",
                  "model_type": model.model_type}
        return model.to(device).eval(), record
    ckpt = load_data(path, "cpu", allowed=DATA_GLOBALS)
    record = {"checkpoint": str(path.resolve()), "sha256": digest([path])}
    if isinstance(ckpt, dict) and "config" in ckpt and "model" in ckpt:
        return model_from_checkpoint(ckpt, path, device), record
    if is_fairseq(ckpt):
        model = read_fairseq(ckpt, path)
        return model.to(device).eval(), {**record, "format": "fairseq", "model_type": model.model_type}
    raise CheckpointError(f"{path}: not an audiossl checkpoint (no config or model state), nor a fairseq one (no "
                          "cfg and model), nor a Hugging Face model folder (a folder with config.json)")
