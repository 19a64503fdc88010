"""Channel effects on one signal: room reverberation, equalizer biquads, pink noise and pitch change.

One implementation for the two places that degrade audio: the corpus builder's channel variation
(``tools/channel.py``, numpy float64, whose output must stay byte for byte what it was) and the training
augmentation (:mod:`audiossl.data.augment`, on the DataLoader's workers).

- Reverberation (:func:`room_impulse_response`, :func:`reverberate`): the standard simple statistical
  model rather than a room simulation: a unit direct path at sample 0 followed, after ``TAIL_ONSET_S``, by
  Gaussian noise under the envelope ``10 ** (-3 t / RT60)`` (the amplitude falls 60 dB in RT60 seconds),
  scaled so that the direct-to-reverberant energy ratio is ``drr_db``. The output is cut to the input's
  length, so nothing moves in time. pyroomacoustics' image-source response took 0.7 s at RT60 0.8 s
  (order 106) on a 2-core machine, far more than a training window's budget; this model sets the decay and
  the direct-to-reverberant ratio exactly.
- Equalization (:func:`equalize`, :func:`band_reject`): RBJ biquads run through ``torchaudio.functional``.
- Pink noise (:func:`pink_noise`): white noise shaped by ``1/sqrt(f)`` in the frequency domain.
- Pitch (:func:`shift_pitch`): Signalsmith Stretch (the ``python-stretch`` package, the engine of
  audiomentations' ``PitchShift``), which keeps the duration and the timing. torchaudio's ``pitch_shift``
  took 1.5 to 10 s per 1.28 s window (it resamples by the exact ratio of two large co-prime rates), and
  the phase vocoder it and librosa share lost 2 to 5 dB of a speech window's energy (phases of one partial
  drift apart across bins) where Signalsmith lost 0.1 to 0.2 dB, in 7 ms.

torch and python-stretch are imported where used: the clean corpus builder needs neither.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

SAMPLE_RATE = 16000
FILTER_KINDS = ("peak", "low", "high")
# Frequency (Hz) and Q ranges per filter kind, both drawn log-uniformly. Shelf
# corners stay in the band each shelf is meant to tilt; Q 0.5-1.0 keeps the
# shelves free of a large bump at the corner.
FREQ_RANGES = {"peak": (100.0, 6000.0), "low": (60.0, 500.0), "high": (1500.0, 6000.0)}
Q_RANGES = {"peak": (0.5, 4.0), "low": (0.5, 1.0), "high": (0.5, 1.0)}
TAIL_ONSET_S = 0.0025  # delay of the reverberant tail after the direct path
# torchaudio's biquads clamp every stage to [-1, 1] (lfilter's clamp=True);
# the cascade is linear, so it runs on a copy scaled to this peak and is scaled back.
EQ_HEADROOM = 1e-4

__all__ = ["Biquad", "band_reject", "draw_biquad", "equalize", "log_uniform", "pink_noise", "reverberate", "rms",
           "room_impulse_response", "shift_pitch"]


@dataclasses.dataclass(frozen=True)
class Biquad:
    """One equalizer stage; ``kind`` is ``peak``, ``low`` (shelf) or ``high`` (shelf)."""

    kind: str
    freq_hz: float
    q: float
    gain_db: float


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Draw from ``[low, high]`` uniformly on a log scale."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def draw_biquad(rng: np.random.Generator, max_gain_db: float) -> Biquad:
    """Draw one equalizer stage (values rounded as drawn, so a record of them reproduces the filter)."""
    kind = str(rng.choice(FILTER_KINDS))
    return Biquad(
        kind=kind,
        freq_hz=round(log_uniform(rng, *FREQ_RANGES[kind]), 1),
        q=round(log_uniform(rng, *Q_RANGES[kind]), 3),
        gain_db=round(float(rng.uniform(-max_gain_db, max_gain_db)), 2),
    )


def room_impulse_response(rt60_s: float, drr_db: float, rng: np.random.Generator,
                          sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The statistical room model of the module docstring, ``(samples,)``, direct path first."""
    onset = int(round(TAIL_ONSET_S * sample_rate))
    length = max(int(round(rt60_s * sample_rate)), onset + 1)
    times = np.arange(onset, length) / sample_rate
    tail = rng.standard_normal(length - onset) * 10.0 ** (-3.0 * times / rt60_s)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail**2))
    response = np.zeros(length)
    response[0] = 1.0
    response[onset:] = tail
    return response


def reverberate(audio: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Convolve and cut to the input length (the direct path adds no delay)."""
    import torch
    import torchaudio.functional as AF

    wet = AF.fftconvolve(torch.from_numpy(audio), torch.from_numpy(response))
    return wet[: len(audio)].numpy()


def _run_biquads(audio: np.ndarray, stages: list) -> np.ndarray:
    """``stages`` (functions of a float64 tensor) in order, on a copy scaled to ``EQ_HEADROOM`` and back."""
    import torch

    peak = float(np.max(np.abs(audio)))
    if not stages or peak == 0.0:
        return audio.copy()
    scale = EQ_HEADROOM / peak
    signal = torch.from_numpy(audio * scale)
    for stage in stages:
        signal = stage(signal)
    return signal.numpy() / scale


def equalize(audio: np.ndarray, filters: tuple[Biquad, ...], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Run the biquads in order with torchaudio (see ``EQ_HEADROOM``)."""
    import torchaudio.functional as AF

    kinds = {
        "peak": lambda x, f: AF.equalizer_biquad(x, sample_rate, f.freq_hz, f.gain_db, f.q),
        "low": lambda x, f: AF.bass_biquad(x, sample_rate, f.gain_db, f.freq_hz, f.q),
        "high": lambda x, f: AF.treble_biquad(x, sample_rate, f.gain_db, f.freq_hz, f.q),
    }
    return _run_biquads(audio, [functools.partial(kinds[f.kind], f=f) for f in filters])


def band_reject(audio: np.ndarray, freq_hz: float, q: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A notch: torchaudio's RBJ band-reject biquad at ``freq_hz`` with quality ``q``."""
    import torchaudio.functional as AF

    return _run_biquads(audio, [lambda x: AF.bandreject_biquad(x, sample_rate, freq_hz, q)])


def rms(audio: np.ndarray) -> float:
    """Root mean square over the whole signal."""
    return float(np.sqrt(np.mean(np.square(audio))))


def pink_noise(rng: np.random.Generator, length: int) -> np.ndarray:
    """Gaussian noise with a ``1/f`` power spectrum (no DC), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    frequencies = np.fft.rfftfreq(length)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(frequencies[1:])
    noise = np.fft.irfft(spectrum, length)
    return noise / rms(noise)


@functools.cache
def _stretcher(sample_rate: int):
    """One Signalsmith Stretch per process and rate (reset before every use, so calls do not interact)."""
    import python_stretch

    stretch = python_stretch.Signalsmith.Stretch()
    stretch.preset(1, float(sample_rate))
    return stretch


def shift_pitch(audio: np.ndarray, semitones: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Transpose by ``semitones`` keeping the length and the timing; float64 in, float64 out.

    Raises:
        ImportError: python-stretch is not installed.
    """
    if semitones == 0.0:
        return audio.copy()
    stretch = _stretcher(sample_rate)
    stretch.reset()
    stretch.setTransposeSemitones(float(semitones))
    out = stretch.process(np.ascontiguousarray(audio, dtype=np.float32)[None])[0]
    return out.astype(np.float64)
