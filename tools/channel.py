"""Per-utterance channel variation for ``tools/make_corpus.py --channel vary`` (issue 26).

The clean flite corpus is one recording condition throughout, on which the
spectral floors (MFCC, log-mel) score high. This module degrades every
utterance with its own channel, in this order:

1. Reverberation (a fraction ``--reverb-fraction`` of utterances, all by
   default): convolution with a simulated room impulse response. The response is
   the standard simple statistical model rather than a room simulation: a unit
   direct path at sample 0 followed, after ``TAIL_ONSET_S``, by Gaussian noise
   under the envelope ``10 ** (-3 t / RT60)`` (the amplitude falls 60 dB in RT60
   seconds), scaled so that the direct-to-reverberant energy ratio is the drawn
   ``drr_db``. The direct path sits at sample 0 and the output is cut to the
   input's length, so nothing moves in time and the phone alignments stay valid.
   pyroomacoustics installs here, but it would be a new dependency for one tool,
   it needs a room, a source and a microphone drawn per utterance, and its
   image-source response took 0.7 s at RT60 0.8 s (order 106) on a 2-core
   machine; the benchmark needs the decay and the direct-to-reverberant ratio,
   which this model sets exactly. The response, the equalizer and the pink
   noise are ``audiossl.data.channel_dsp``'s, which the training augmentation
   (``augment: past | both``) uses too.
2. Equalization: 2-4 RBJ biquads (peaking, low shelf, high shelf) with
   log-uniform frequency and Q and a uniform gain within +-``--eq-gain-db``,
   run through ``torchaudio.functional`` (``equalizer_biquad``, ``bass_biquad``,
   ``treble_biquad``).
3. A gain in dB.
4. Additive noise at the drawn SNR, measured against the power of the
   processed speech over the whole utterance (pauses included): white
   (Gaussian), pink (white shaped by ``1/sqrt(f)`` in the frequency domain, so
   the power falls as ``1/f``) or babble (3-6 clean utterances of other
   speakers, each scaled to unit RMS, cyclically shifted by a drawn start and
   repeated to the length, then summed).
5. If the mixture's peak exceeds -1 dBFS, speech and noise are scaled down
   together (``limiter_db`` in the sidecar), which keeps the SNR.

Every draw comes from a generator seeded by ``(seed, utterance id)``, so an
utterance's channel depends neither on worker scheduling nor on the other
utterances. Drawn values are rounded when drawn, so the sidecar
``<out>/channel.tsv`` holds exactly what was applied: together with the clean
corpus (the same command with ``--channel none``) it reproduces every file.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import multiprocessing.pool
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

# The signal processing is the package's, shared with the training augmentation (one implementation);
# the names stay importable from here.
from audiossl.data.channel_dsp import (  # noqa: F401
    EQ_HEADROOM,
    SAMPLE_RATE,
    TAIL_ONSET_S,
    Biquad,
    draw_biquad,
    equalize,
    log_uniform,
    pink_noise,
    reverberate,
    rms,
    room_impulse_response,
)

NOISE_KINDS = ("white", "pink", "babble")
PEAK_LIMIT = 10.0 ** (-1.0 / 20.0)  # -1 dBFS
SIDECAR_COLUMNS = (
    "utt_id", "rt60_s", "drr_db", "eq", "gain_db", "noise", "snr_db", "babble",
    "noise_seed", "limiter_db",
)


@dataclasses.dataclass(frozen=True)
class ChannelConfig:
    """The ranges every utterance's channel is drawn from (inclusive)."""

    snr_db: tuple[float, float] = (5.0, 30.0)  # noise against processed speech power
    noise_kinds: tuple[str, ...] = NOISE_KINDS  # drawn uniformly
    babble_talkers: tuple[int, int] = (3, 6)  # fewer when fewer other utterances exist
    gain_db: tuple[float, float] = (-12.0, 3.0)  # applied to the speech before the noise
    eq_filters: tuple[int, int] = (2, 4)  # number of biquads
    eq_gain_db: float = 9.0  # each biquad's gain is uniform in [-eq_gain_db, eq_gain_db]
    rt60_s: tuple[float, float] = (0.2, 0.8)  # reverberation time
    drr_db: tuple[float, float] = (0.0, 10.0)  # direct-to-reverberant energy ratio
    reverb_fraction: float = 1.0  # probability that an utterance is reverberant


@dataclasses.dataclass(frozen=True)
class ChannelDraw:
    """Everything drawn for one utterance; ``rt60_s == 0`` means no reverberation."""

    utt_id: str
    rt60_s: float
    drr_db: float
    eq: tuple[Biquad, ...]
    gain_db: float
    noise: str
    snr_db: float
    babble: tuple[tuple[str, int], ...]  # (source utterance id, start sample)
    noise_seed: int  # seeds the reverberant tail and the white/pink noise


@dataclasses.dataclass(frozen=True)
class ChannelJob:
    """One utterance for a worker: the draw, where to read and where to write."""

    draw: ChannelDraw
    clean_path: str
    out_path: str
    babble_paths: tuple[str, ...]


def utterance_rng(seed: int, utt_id: str) -> np.random.Generator:
    """A generator that depends only on the seed and the utterance id."""
    digest = int.from_bytes(hashlib.sha256(utt_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def draw_channel(
    rng: np.random.Generator, utt_id: str, config: ChannelConfig, sources: dict[str, int]
) -> ChannelDraw:
    """Draw one utterance's channel.

    Args:
        rng: the utterance's own generator (``utterance_rng``).
        utt_id: the utterance.
        config: the ranges.
        sources: babble candidates (other speakers' utterances) and their lengths
            in samples; the chosen ones start at a drawn sample.
    """
    # Every value is drawn whether used or not, so the stream does not shift.
    reverberant = bool(rng.random() < config.reverb_fraction)
    rt60 = round(float(rng.uniform(*config.rt60_s)), 3)
    drr = round(float(rng.uniform(*config.drr_db)), 2)
    num_filters = int(rng.integers(config.eq_filters[0], config.eq_filters[1] + 1))
    eq = tuple(draw_biquad(rng, config.eq_gain_db) for _ in range(num_filters))
    gain = round(float(rng.uniform(*config.gain_db)), 2)
    noise = str(rng.choice(config.noise_kinds))
    snr = round(float(rng.uniform(*config.snr_db)), 2)
    noise_seed = int(rng.integers(2**31))
    babble: tuple[tuple[str, int], ...] = ()
    if noise == "babble":
        if not sources:
            raise ValueError(f"no babble sources for {utt_id}")
        ids = sorted(sources)
        talkers = int(rng.integers(config.babble_talkers[0], config.babble_talkers[1] + 1))
        chosen = sorted(rng.choice(len(ids), min(talkers, len(ids)), replace=False))
        babble = tuple((ids[i], int(rng.integers(sources[ids[i]]))) for i in chosen)
    return ChannelDraw(
        utt_id, rt60 if reverberant else 0.0, drr if reverberant else 0.0, eq, gain,
        noise, snr, babble, noise_seed,
    )


def plan_channels(lengths: dict[str, int], seed: int, config: ChannelConfig) -> list[ChannelDraw]:
    """Draw every utterance's channel, sorted by utterance id.

    Babble comes from other speakers (the first field of a LibriSpeech id); a
    one-speaker corpus falls back to the speaker's other utterances.
    """
    draws = []
    for utt_id in sorted(lengths):
        speaker = utt_id.split("-")[0]
        sources = {u: n for u, n in lengths.items() if u.split("-")[0] != speaker}
        if not sources:
            sources = {u: n for u, n in lengths.items() if u != utt_id}
        draws.append(draw_channel(utterance_rng(seed, utt_id), utt_id, config, sources))
    return draws


def babble_noise(sources: list[np.ndarray], starts: list[int], length: int) -> np.ndarray:
    """Sum of unit-RMS talkers, each starting at its sample and repeated to ``length``."""
    noise = np.zeros(length)
    for source, start in zip(sources, starts):
        noise += np.resize(np.roll(source, -start), length) / rms(source)
    return noise


def make_noise(draw: ChannelDraw, length: int, babble: list[np.ndarray]) -> np.ndarray:
    """The draw's noise before it is scaled to the SNR."""
    rng = np.random.default_rng([draw.noise_seed, 1])
    if draw.noise == "white":
        return rng.standard_normal(length)
    if draw.noise == "pink":
        return pink_noise(rng, length)
    if draw.noise == "babble":
        return babble_noise(babble, [start for _, start in draw.babble], length)
    raise ValueError(f"unknown noise kind {draw.noise!r} for {draw.utt_id}")


def apply_channel(
    clean: np.ndarray, draw: ChannelDraw, babble: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Degrade one utterance; the output is ``speech + noise``.

    Args:
        clean: the clean utterance, ``(samples,)``.
        draw: its channel.
        babble: the clean audio of ``draw.babble``'s sources, in that order.

    Returns:
        The processed speech and the scaled noise, both ``(samples,)``, whose
        power ratio is ``draw.snr_db``, and the limiter's gain in dB (0 or less).
    """
    speech = np.asarray(clean, dtype=np.float64)
    if rms(speech) == 0.0:
        raise ValueError(f"{draw.utt_id} is silent; cannot set an SNR against it")
    if draw.rt60_s > 0:
        rir_rng = np.random.default_rng([draw.noise_seed, 0])
        speech = reverberate(speech, room_impulse_response(draw.rt60_s, draw.drr_db, rir_rng))
    speech = equalize(speech, draw.eq) * 10.0 ** (draw.gain_db / 20.0)
    noise = make_noise(draw, len(speech), babble)
    noise *= rms(speech) / (rms(noise) * 10.0 ** (draw.snr_db / 20.0))
    peak = float(np.max(np.abs(speech + noise)))
    limiter = min(1.0, PEAK_LIMIT / peak)
    return speech * limiter, noise * limiter, float(20.0 * np.log10(limiter))


def format_row(draw: ChannelDraw, limiter_db: float) -> str:
    """One sidecar line (no newline), columns as in ``SIDECAR_COLUMNS``."""
    eq = ",".join(f"{f.kind}:{f.freq_hz:.1f}:{f.q:.3f}:{f.gain_db:+.2f}" for f in draw.eq)
    babble = ",".join(f"{source}@{start}" for source, start in draw.babble) or "-"
    fields = [
        draw.utt_id, f"{draw.rt60_s:.3f}", f"{draw.drr_db:.2f}", eq or "-",
        f"{draw.gain_db:+.2f}", draw.noise, f"{draw.snr_db:.2f}", babble,
        str(draw.noise_seed), f"{limiter_db:.2f}",
    ]
    return "\t".join(fields)


def parse_row(line: str) -> ChannelDraw:
    """Read a sidecar line back into the draw it records (the limiter is derived)."""
    fields = dict(zip(SIDECAR_COLUMNS, line.rstrip("\n").split("\t")))
    eq = tuple(
        Biquad(kind, float(freq), float(q), float(gain))
        for kind, freq, q, gain in (item.split(":") for item in fields["eq"].split(",") if item != "-")
    )
    babble = tuple(
        (source, int(start))
        for source, start in (item.split("@") for item in fields["babble"].split(",") if item != "-")
    )
    return ChannelDraw(
        fields["utt_id"], float(fields["rt60_s"]), float(fields["drr_db"]), eq,
        float(fields["gain_db"]), fields["noise"], float(fields["snr_db"]), babble,
        int(fields["noise_seed"]),
    )


def sidecar_text(draws: list[ChannelDraw], limiters_db: list[float]) -> str:
    """The whole ``channel.tsv``: a header line, then one row per utterance."""
    rows = [format_row(draw, limiter) for draw, limiter in zip(draws, limiters_db)]
    return "\t".join(SIDECAR_COLUMNS) + "\n" + "".join(row + "\n" for row in rows)


def run_job(job: ChannelJob) -> float:
    """Worker: read the clean audio, apply the channel, write the FLAC; returns the limiter dB."""
    import torch  # deferred: the clean corpus never needs torch

    torch.set_num_threads(1)  # the pool already runs one worker per core
    clean, _ = sf.read(job.clean_path, dtype="float64")
    babble = [sf.read(path, dtype="float64")[0] for path in job.babble_paths]
    speech, noise, limiter_db = apply_channel(clean, job.draw, babble)
    out_path = Path(job.out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    sf.write(tmp, speech + noise, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, out_path)
    return limiter_db


def vary(
    pool: multiprocessing.pool.Pool, lengths: dict[str, int], clean: dict[str, str],
    final: dict[str, str], seed: int, config: ChannelConfig,
) -> tuple[list[ChannelDraw], list[float]]:
    """Draw every channel and apply it in the pool.

    Args:
        pool: worker processes.
        lengths: utterance id to length in samples.
        clean: utterance id to its clean FLAC; every one must exist (babble reads them).
        final: utterance id to where its degraded FLAC goes.
        seed: the channel seed.
        config: the ranges.

    Returns:
        Every draw, sorted by utterance id, and its limiter gain in dB.
    """
    draws = plan_channels(lengths, seed, config)
    jobs = [
        ChannelJob(d, clean[d.utt_id], final[d.utt_id], tuple(clean[s] for s, _ in d.babble))
        for d in draws
    ]
    limiters = []
    for count, limiter in enumerate(pool.imap(run_job, jobs, chunksize=4), start=1):
        limiters.append(limiter)
        if count % 10 == 0 or count == len(jobs):
            print(f"applied the channel to {count}/{len(jobs)} utterances", file=sys.stderr, flush=True)
    return draws, limiters


def describe(config: ChannelConfig, seed: int, draws: list[ChannelDraw], limiters: list[float]) -> str:
    """The corpus README's section on the channel: the ranges and what was drawn."""
    kinds = collections.Counter(draw.noise for draw in draws)
    kinds_text = ", ".join(f"{kind} {kinds[kind]}" for kind in config.noise_kinds)
    snrs = [draw.snr_db for draw in draws]
    reverberant = sum(draw.rt60_s > 0 for draw in draws)
    limited = sum(limiter < 0 for limiter in limiters)
    c = config
    rt60, drr = f"{c.rt60_s[0]:g}-{c.rt60_s[1]:g} s", f"{c.drr_db[0]:g}-{c.drr_db[1]:g} dB"
    eq = f"{c.eq_filters[0]}-{c.eq_filters[1]} EQ biquads"
    snr, talkers = f"{c.snr_db[0]:g}-{c.snr_db[1]:g} dB", f"{c.babble_talkers[0]}-{c.babble_talkers[1]}"
    return f"""
## Channel variation (`--channel vary`, channel seed {seed})

Every utterance has its own channel, drawn from a generator seeded by (channel seed,
utterance id) and applied in this order (details in `tools/channel.py`):

1. reverberation by a simulated room impulse response (probability {c.reverb_fraction:g}):
   RT60 {rt60}, direct-to-reverberant ratio {drr}, direct path at sample 0, so the
   alignments are the clean audio's
2. {eq} (peaking, low shelf, high shelf), gains within +-{c.eq_gain_db:g} dB
3. a gain of {c.gain_db[0]:g} to {c.gain_db[1]:g} dB
4. noise at {snr} SNR against the processed speech's power over the whole utterance:
   {", ".join(c.noise_kinds)}; babble is {talkers} clean utterances of other speakers
5. speech and noise scaled down together where the mix would peak above -1 dBFS (keeps the SNR)

Drawn: {reverberant} of {len(draws)} utterances reverberant; noise {kinds_text}; SNR
{min(snrs):.1f}-{max(snrs):.1f} dB (mean {np.mean(snrs):.1f}); {limited} scaled down by step 5.

`channel.tsv` records every drawn value, one row per utterance after a header line
(`eq` is `kind:freq_hz:q:gain_db,...`, `babble` is `utt_id@start_sample,...`, RT60 0
means dry). With the clean audio (the same command with `--channel none`) it
reproduces every file.
"""


def float_pair(text: str) -> tuple[float, float]:
    """Parse ``LOW,HIGH`` for argparse."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    if low > high:
        raise argparse.ArgumentTypeError(f"LOW must not exceed HIGH in {text!r}")
    return low, high


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the channel options (defaults from ``ChannelConfig``) to the tool's parser."""
    default = ChannelConfig()
    group = parser.add_argument_group(
        "channel variation", "negative ranges need the = form, e.g. --gain-db=-12,3"
    )
    group.add_argument("--channel", choices=("none", "vary"), default="none",
                       help="none: clean audio as before; vary: a drawn channel per utterance, "
                            "recorded in channel.tsv")
    group.add_argument("--channel-seed", type=int, default=None,
                       help="seed of the channel draws (default: --seed)")
    pairs = [("--snr-db", default.snr_db, "noise SNR range in dB"),
             ("--gain-db", default.gain_db, "speech gain range in dB"),
             ("--eq-filters", default.eq_filters, "number of EQ biquads"),
             ("--rt60", default.rt60_s, "reverberation time range in seconds")]
    for flag, value, text in pairs:
        group.add_argument(flag, type=float_pair, default=value, metavar="LOW,HIGH",
                           help=f"{text} (default: {value[0]:g},{value[1]:g})")
    group.add_argument("--noise-kinds", default=",".join(default.noise_kinds),
                       help=f"comma-separated subset of {','.join(NOISE_KINDS)} (default: all)")
    group.add_argument("--eq-gain-db", type=float, default=default.eq_gain_db,
                       help=f"largest absolute gain of one EQ biquad in dB (default: {default.eq_gain_db:g})")
    group.add_argument("--reverb-fraction", type=float, default=default.reverb_fraction,
                       help=f"probability that an utterance is reverberated (default: {default.reverb_fraction:g})")


def config_from_args(args: argparse.Namespace) -> ChannelConfig:
    """Build and check the config; raises ValueError naming the bad option."""
    kinds = tuple(kind for kind in args.noise_kinds.split(",") if kind)
    if not kinds or set(kinds) - set(NOISE_KINDS):
        raise ValueError(f"--noise-kinds must be a subset of {','.join(NOISE_KINDS)}, got {args.noise_kinds}")
    low, high = args.eq_filters
    if low < 0 or low != int(low) or high != int(high):
        raise ValueError(f"--eq-filters must be whole numbers >= 0, got {low:g},{high:g}")
    if not 0.0 <= args.reverb_fraction <= 1.0:
        raise ValueError("--reverb-fraction must be between 0 and 1")
    if args.rt60[0] <= 0 or args.eq_gain_db < 0:
        raise ValueError("--rt60 must be positive and --eq-gain-db not negative")
    return ChannelConfig(
        snr_db=args.snr_db, noise_kinds=kinds, gain_db=args.gain_db,
        eq_filters=(int(low), int(high)), eq_gain_db=args.eq_gain_db, rt60_s=args.rt60,
        reverb_fraction=args.reverb_fraction,
    )
