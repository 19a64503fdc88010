"""Audio reading through soundfile: mono mixdown, resampling, clear errors.

torchaudio's own file I/O now needs torchcodec, so files are read with
soundfile and only torchaudio's resampler is used.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from audiossl.data.validate import rate_problem
from audiossl.errors import UserError


class AudioError(UserError, ValueError):
    """A file that cannot be used as audio; the message names the file."""


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def read_audio(path: str | Path, sample_rate: int = 16000, start: int = 0,
               num_samples: int | None = None) -> torch.Tensor:
    """Read (a segment of) a file as mono float32 at ``sample_rate``.

    Args:
        path: any format libsndfile reads (wav, flac, ogg, ...).
        sample_rate: target rate; files at another rate are resampled.
        start: first sample to return, counted at the target rate.
        num_samples: samples to return at the target rate (None: to the end).
            A segment that runs past the end is an error, not silently short.

    Returns:
        A (samples,) float32 tensor.
    """
    try:
        with soundfile.SoundFile(str(path)) as f:
            file_rate, total = f.samplerate, f.frames
            ratio = file_rate / sample_rate
            src_start, skip, margin = start, 0, 0
            if file_rate != sample_rate:
                # Begin on a source sample that is also a target sample (every
                # `grid` source samples), with room for the resampling filter,
                # then drop the `skip` target samples before `start`: the
                # segment is then the slice of the whole file's resampling.
                grid = file_rate // math.gcd(file_rate, sample_rate)
                margin = math.ceil(16 * max(1.0, ratio))
                src_start = max(0, int(math.floor(start * ratio)) - margin) // grid * grid
                skip = start - src_start * sample_rate // file_rate
            src_count = (total - src_start if num_samples is None
                         else int(math.ceil((skip + num_samples) * ratio)) + 1 + margin)
            src_count = max(0, min(src_count, total - src_start))
            f.seek(src_start)
            data = f.read(src_count, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: cannot decode audio ({_reason(e)})") from None
    if rate_problem(file_rate):  # the header changed since the scan, or a manifest lies: no 16000-fold resampling
        raise AudioError(f"{path}: {rate_problem(file_rate)}")
    if data.shape[1] > 1:
        data = data.mean(axis=1, keepdims=True)
    wav = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    if file_rate != sample_rate:
        wav = AF.resample(wav, file_rate, sample_rate)[skip:]
    if num_samples is not None:
        if wav.numel() < num_samples:
            if wav.numel() < num_samples - 2:  # resampling may lose a sample or two at the edge
                raise AudioError(f"{path}: asked for {num_samples} samples from {start}, the file has fewer")
            wav = torch.nn.functional.pad(wav, (0, num_samples - wav.numel()))
        wav = wav[:num_samples]
    if not torch.isfinite(wav).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return wav
