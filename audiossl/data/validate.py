"""Checks that catch what a file header hides, run once when a corpus is scanned.

Lengths come from headers (``soundfile.info``), but a header cannot reveal a
truncated or corrupt FLAC (it still promises every sample; decoding fails
near the cut with "lost sync") nor NaN or infinite samples in a float WAV.
Only a decode shows those, so :func:`check_audio` decodes the whole file once,
in blocks, and the scan caches the verdict: usable files go to the manifest,
the others to the problems list beside it, and neither is decoded again.
Decoding is cheap next to training: the demo corpus (112 FLAC files, 5.6 min
of audio) decodes in 0.13 s on one idle core, about 2,500 times real time
(0.35 s for the whole scan on two busy cores, against 0.04 s for headers
alone), so LibriSpeech's 100 h take one to a few minutes, once.

What is not a problem: stereo files are mixed down and other sample rates
resampled when read (:func:`audiossl.data.audio.read_audio`). Files shorter than
the training window are a training-time matter (the window is a config
value): :class:`audiossl.data.windows.WindowDataset` drops them and the
training run lists them.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile
from tqdm import tqdm

BLOCK_FRAMES = 1 << 16  # decode in blocks: memory stays small for hour-long files
# Sample rates audio can sensibly have: below, a broken header (a WAV saying 1 Hz lasts hours and would be
# resampled 16000-fold, a gigabyte from 32 KB); above, no recorder. 0 would divide by zero.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000


def rate_problem(rate: int) -> str | None:
    """Why ``rate`` (Hz) cannot be a file's sample rate; None when it can."""
    if MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        return None
    return f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz (a broken header?)"


@dataclass(frozen=True)
class AudioCheck:
    path: str
    num_samples: int  # from the header, at the file's own rate
    sample_rate: int
    channels: int
    problem: str | None  # why the file cannot be used; None when it can


def _reason(e: Exception) -> str:
    """libsndfile's last line, without the "Error opening '<path>': " the Problem already names."""
    text = str(e).strip().splitlines()
    return re.sub(r"^Error opening '.*': ", "", text[-1]).rstrip(".") if text else type(e).__name__


def check_audio(path: str | Path, decode: bool = True) -> AudioCheck:
    """Read a file's header and (with ``decode``) every sample once.

    Args:
        path: an audio file.
        decode: also decode the samples, which catches truncated or corrupt
            streams and NaN/inf samples; without it only the header is read.

    Returns:
        The header values and the problem found, if any: unreadable (missing,
        permission, not audio), a sample rate outside ``MIN_SAMPLE_RATE``..
        ``MAX_SAMPLE_RATE``, empty, corrupt or truncated, non-finite.
    """
    path = str(path)
    try:
        info = soundfile.info(path)
    except Exception as e:  # LibsndfileError, RuntimeError, PermissionError...
        return AudioCheck(path, 0, 0, 0, f"cannot read audio header ({_reason(e)})")
    frames, rate, channels = info.frames, info.samplerate, info.channels
    if rate_problem(rate):
        return AudioCheck(path, frames, rate, channels, rate_problem(rate))
    if frames <= 0:
        return AudioCheck(path, 0, rate, channels, "empty (0 samples)")
    if not decode:
        return AudioCheck(path, frames, rate, channels, None)
    decoded, problem = 0, None
    try:
        with soundfile.SoundFile(path) as f:
            while True:
                block = f.read(BLOCK_FRAMES, dtype="float32")
                if len(block) == 0:
                    break
                finite = np.isfinite(block)
                if not finite.all():
                    first = decoded + int(np.argmin(finite.all(axis=1) if block.ndim > 1 else finite))
                    problem = f"NaN or infinite samples (first at sample {first})"
                    break
                decoded += len(block)
    except Exception as e:
        problem = f"corrupt or truncated: the header promises {frames} samples, decoding fails ({_reason(e)})"
    if problem is None and decoded < frames:
        problem = f"truncated: the header promises {frames} samples, {decoded} decode"
    return AudioCheck(path, frames, rate, channels, problem)


def check_files(paths: Iterable[str | Path], decode: bool = True, progress: bool = True,
                desc: str = "check audio") -> list[AudioCheck]:
    """:func:`check_audio` on many files, in threads (libsndfile releases the GIL).

    Returns:
        One :class:`AudioCheck` per path, in the order given.
    """
    paths = list(paths)
    workers = min(4, os.cpu_count() or 1) if decode else 1
    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(lambda p: check_audio(p, decode), paths), total=len(paths), desc=desc,
                         unit="file", disable=not progress, leave=False))
