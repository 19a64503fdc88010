"""Waveform augmentation in pretraining, on the DataLoader's workers.

Kharitonov, Rivière, Synnaeve, Wolf, Mazaré, Douze and Dupoux 2020, "Data Augmenting Contrastive Learning
of Speech Representations in the Time Domain" (WavAugment): pitch change, additive noise and reverberation
applied to the past context only made CPC's representations markedly better on ABX; band-reject filtering
helped too. ``augment`` says where the augmented audio goes:

- ``none`` (the default): no augmentation; the batches are exactly what they were before it existed.
- ``past``: the batch carries the clean windows (``wavs``) and the augmented ones (``augmented_wavs``,
  :data:`AUGMENTED`). CPC encodes both: the context network reads the augmented audio's encoding, the
  positives and negatives are the clean audio's ``z`` (the paper's best). APC, MPC and NPC read the
  augmented audio and predict or reconstruct the clean audio's log-mel frames. wav2vec 2.0 and HuBERT mask
  and contextualize the augmented audio's encoding; their targets are the clean audio's.
- ``both``: the model sees only augmented audio, targets included (``wavs`` is augmented).

The chain, per window, in this order (each step drawn on its own, every value drawn whether used or not):
pitch change (``augment_pitch_semitones``; Signalsmith Stretch, which keeps the duration and the timing),
reverberation by a statistical room impulse response (``augment_reverb_*``; direct path at sample 0, cut
to the window, so frames stay aligned with the clean audio's), a random equalizer of RBJ biquads
(``augment_eq_*``), a band-reject notch (``augment_band_reject_prob``) and additive noise at a drawn SNR
against the window's power after the steps before (``augment_noise_*``): white, pink, or babble (3 to 6
other windows of the same batch, clean, each scaled to unit RMS, shifted cyclically by a drawn start, and
summed; under ``sampler: same_speaker`` they are the same speaker's). The effects are
:mod:`audiossl.data.channel_dsp`'s, which the corpus builder's channel variation uses too.

Every draw comes from a generator seeded by the window's key (training seed, epoch, the window's place in
the epoch's list), so a window's augmentation depends neither on the worker that reads it, nor on the
number of workers or processes, nor on a resume: a resumed run augments every window as the uninterrupted
run did. The augmentation runs in the DataLoader's ``collate_fn`` (:class:`Augmenter`), on its worker
processes (``num_workers`` of them; in the main process when ``num_workers: 0``).

WavAugment itself needs ``torchaudio.sox_effects``, which torchaudio 2.11 no longer has; torch-audiomentations
and audiomentations draw their parameters from the global random generators (numpy's, Python's, torch's),
which a per-window seed would have to reseed, and the main process's would then change training's own
draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from audiossl.data.channel_dsp import (
    Biquad,
    band_reject,
    draw_biquad,
    equalize,
    log_uniform,
    pink_noise,
    reverberate,
    rms,
    room_impulse_response,
    shift_pitch,
)
from audiossl.data.windows import collate_windows, fill_failed
from audiossl.settings import ConfigError, check_choices

NOISE_KINDS = ("white", "pink", "babble")
AUGMENTED = "augmented_wavs"  # the batch's key for the augmented windows under augment: past
MAX_SEMITONES = 12.0  # an octave
MAX_RT60_S = 3.0
EQ_FILTERS = (2, 4)  # biquads per equalized window, inclusive
BABBLE_TALKERS = (3, 6)  # other windows summed into babble (fewer when the batch has fewer), inclusive
BAND_REJECT_HZ = (150.0, 5000.0)  # notch centre, drawn log-uniformly
BAND_REJECT_Q = (1.0, 4.0)  # notch quality, drawn log-uniformly
STREAM = 3  # the augmentation's word in a window's seed (windows.py draws offsets and orders with 1 and 2)


@dataclass
class AugmentConfig:
    # past: the context or input reads augmented audio, the targets clean; both: everything augmented
    augment: Literal["none", "past", "both"] = "none"
    augment_pitch_semitones: float = 3.0  # pitch change uniform in +-this many semitones, duration kept (0: off)
    augment_reverb_prob: float = 0.5  # probability that a window is reverberated (0: off)
    augment_reverb_rt60: list[float] = field(default_factory=lambda: [0.2, 0.8])  # RT60 range, seconds
    augment_reverb_drr_db: list[float] = field(default_factory=lambda: [0.0, 10.0])  # direct-to-reverberant, dB
    augment_eq_prob: float = 0.0  # probability of 2-4 random RBJ biquads (peaking, low/high shelf) (0: off)
    augment_eq_gain_db: float = 9.0  # each biquad's gain is uniform in +-this many dB
    augment_band_reject_prob: float = 0.0  # probability of a band-reject notch (WavAugment's band reject) (0: off)
    augment_noise_kinds: list[str] = field(default_factory=lambda: list(NOISE_KINDS))  # white|pink|babble ([]: off)
    augment_noise_snr_db: list[float] = field(default_factory=lambda: [5.0, 20.0])  # additive noise's SNR range, dB

    def check(self) -> None:
        """Refuse impossible values, one line each; checked whatever ``augment`` is."""
        check_choices(self)
        if not 0.0 <= self.augment_pitch_semitones <= MAX_SEMITONES:
            raise ConfigError(f"config key 'augment_pitch_semitones' must be in [0, {MAX_SEMITONES:g}], "
                              f"got {self.augment_pitch_semitones}")
        for key in ("augment_reverb_prob", "augment_eq_prob", "augment_band_reject_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"config key {key!r} is a probability in [0, 1], got {getattr(self, key)}")
        if self.augment_eq_gain_db < 0:
            raise ConfigError(f"config key 'augment_eq_gain_db' must not be negative, got {self.augment_eq_gain_db}")
        for key in ("augment_reverb_rt60", "augment_reverb_drr_db", "augment_noise_snr_db"):
            value = getattr(self, key)
            if len(value) != 2 or value[0] > value[1]:
                raise ConfigError(f"config key {key!r} is a range [low, high] with low <= high, got {value}")
        low, high = self.augment_reverb_rt60
        if not 0.0 < low <= high <= MAX_RT60_S:
            raise ConfigError(f"config key 'augment_reverb_rt60' must lie in (0, {MAX_RT60_S:g}] seconds, "
                              f"got {self.augment_reverb_rt60}")
        unknown = [kind for kind in self.augment_noise_kinds if kind not in NOISE_KINDS]
        if unknown or len(set(self.augment_noise_kinds)) != len(self.augment_noise_kinds):
            raise ConfigError(f"config key 'augment_noise_kinds' takes each of {', '.join(NOISE_KINDS)} at most "
                              f"once, got {self.augment_noise_kinds}")
        if self.augment != "none" and self.augment_pitch_semitones > 0:
            try:
                import python_stretch  # noqa: F401
            except ImportError:
                raise ConfigError("augment_pitch_semitones needs the python-stretch package (pip install "
                                  "python-stretch), or augment_pitch_semitones: 0") from None


@dataclass(frozen=True)
class AugmentDraw:
    """Everything drawn for one window; a step that is off has its neutral value."""

    semitones: float  # 0: no pitch change
    rt60_s: float  # 0: dry
    drr_db: float
    eq: tuple[Biquad, ...]  # empty: no equalizer
    notch: tuple[float, float] | None  # band reject (centre Hz, Q), or None
    noise: str  # white | pink | babble, or "" for none
    snr_db: float
    noise_seed: int  # seeds the reverberant tail and the white or pink noise
    babble: tuple[tuple[int, int], ...]  # (another window's place in the batch, its start sample)


def draw_augmentation(rng: np.random.Generator, settings: AugmentConfig, slot: int, batch_size: int,
                      num_samples: int) -> AugmentDraw:
    """Draw one window's augmentation.

    Args:
        rng: the window's own generator.
        slot: the window's place in its batch (babble comes from the other places).
        batch_size: windows in the batch.
        num_samples: samples per window.
    """
    s = settings
    semitones = float(rng.uniform(-s.augment_pitch_semitones, s.augment_pitch_semitones))
    reverberant = bool(rng.random() < s.augment_reverb_prob)
    rt60 = float(rng.uniform(*s.augment_reverb_rt60))
    drr = float(rng.uniform(*s.augment_reverb_drr_db))
    equalized = bool(rng.random() < s.augment_eq_prob)
    eq = tuple(draw_biquad(rng, s.augment_eq_gain_db) for _ in range(int(rng.integers(EQ_FILTERS[0],
                                                                                       EQ_FILTERS[1] + 1))))
    notched = bool(rng.random() < s.augment_band_reject_prob)
    notch = (log_uniform(rng, *BAND_REJECT_HZ), log_uniform(rng, *BAND_REJECT_Q))
    kinds = [k for k in s.augment_noise_kinds if k != "babble" or batch_size > 1]  # babble needs other windows
    pick = int(rng.integers(len(kinds))) if kinds else -1
    snr = float(rng.uniform(*s.augment_noise_snr_db))
    noise_seed = int(rng.integers(2**31))
    others = [j for j in range(batch_size) if j != slot]
    talkers = min(int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1)), len(others))
    chosen = sorted(int(j) for j in rng.choice(others, talkers, replace=False)) if talkers else []
    starts = [int(x) for x in rng.integers(num_samples, size=len(chosen))]
    noise = kinds[pick] if pick >= 0 else ""
    return AugmentDraw(
        semitones=semitones, rt60_s=rt60 if reverberant else 0.0, drr_db=drr if reverberant else 0.0,
        eq=eq if equalized else (), notch=notch if notched else None, noise=noise, snr_db=snr,
        noise_seed=noise_seed, babble=tuple(zip(chosen, starts)) if noise == "babble" else ())


def make_noise(draw: AugmentDraw, length: int, batch: np.ndarray) -> np.ndarray:
    """The draw's noise before it is scaled to the SNR (zeros where it has none).

    Args:
        batch: the batch's clean windows (batch, samples), where babble comes from.
    """
    rng = np.random.default_rng([draw.noise_seed, 1])
    if draw.noise == "white":
        return rng.standard_normal(length)
    if draw.noise == "pink":
        return pink_noise(rng, length)
    noise = np.zeros(length)
    for slot, start in draw.babble if draw.noise == "babble" else ():
        talker = batch[slot]
        if rms(talker) > 0:
            noise += np.roll(talker, -start)[:length] / rms(talker)
    return noise


def apply_augmentation(wav: np.ndarray, draw: AugmentDraw, batch: np.ndarray,
                       sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Augment one window; the output is ``speech + noise``, as long as ``wav``.

    Args:
        wav: the clean window (samples,), float64.
        draw: its augmentation.
        batch: the batch's clean windows (batch, samples), the babble's sources.

    Returns:
        The processed speech and the scaled noise, whose power ratio is ``draw.snr_db`` (no noise where the
        speech or the noise is silent).
    """
    speech = shift_pitch(wav, draw.semitones, sample_rate)
    if draw.rt60_s > 0:
        response = room_impulse_response(draw.rt60_s, draw.drr_db, np.random.default_rng([draw.noise_seed, 0]),
                                         sample_rate)
        speech = reverberate(speech, response)
    if draw.eq:
        speech = equalize(speech, draw.eq, sample_rate)
    if draw.notch is not None:
        speech = band_reject(speech, *draw.notch, sample_rate)
    noise = make_noise(draw, len(speech), batch)
    if rms(noise) > 0 and rms(speech) > 0:
        noise *= rms(speech) / (rms(noise) * 10.0 ** (draw.snr_db / 20.0))
    else:
        noise[:] = 0.0
    return speech, noise


class Augmenter:
    """The DataLoader's ``collate_fn`` when ``augment`` is on: :func:`collate_windows`, then the chain.

    ``past``: the batch gains :data:`AUGMENTED`; ``both``: ``wavs`` is replaced by the augmented windows.
    Each window's draw is seeded by its item's ``key`` (see the module docstring).
    """

    def __init__(self, settings: AugmentConfig, sample_rate: int):
        if settings.augment not in ("past", "both"):
            raise ValueError(f"Augmenter needs augment: past or both, got {settings.augment!r}")
        self.settings, self.sample_rate = settings, sample_rate

    def __call__(self, items: list[dict]) -> dict:
        batch = collate_windows(items)
        if batch["wavs"] is None:
            return batch
        filled, _ = fill_failed(items)  # the items behind the batch's rows, failed slots filled as collate did
        augmented = self.augment(batch["wavs"], [it["key"] for it in filled])
        if self.settings.augment == "both":
            batch["wavs"] = augmented
        else:
            batch[AUGMENTED] = augmented
        return batch

    def augment(self, wavs: torch.Tensor, keys: list[tuple[int, ...]]) -> torch.Tensor:
        """(batch, samples) clean windows and their keys -> the augmented windows, float32."""
        clean = wavs.double().numpy()
        out = np.empty_like(clean)
        for slot, key in enumerate(keys):
            rng = np.random.default_rng([*key, STREAM])
            draw = draw_augmentation(rng, self.settings, slot, len(keys), clean.shape[1])
            speech, noise = apply_augmentation(clean[slot], draw, clean, self.sample_rate)
            out[slot] = speech + noise
        return torch.from_numpy(out).to(wavs.dtype)


def build_collate(settings: AugmentConfig, sample_rate: int):
    """The ``collate_fn`` for training's DataLoader: :func:`collate_windows` itself when ``augment: none``."""
    return collate_windows if settings.augment == "none" else Augmenter(settings, sample_rate)
