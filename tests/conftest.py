"""Shared fixtures: a tiny synthetic LibriSpeech-layout corpus and a tiny CPC config.

Other test modules import these by name; keep the names stable.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import audiossl

SAMPLE_RATE = 16000


def package_env(**extra: str) -> dict:
    """The environment for a subprocess that must import this audiossl (a worktree's, not the installed one)."""
    root = str(Path(audiossl.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def import_reference(module: str, install: str):
    """Import a peer's package that a test checks audiossl against; skip without it, but fail under CI.

    CI runs ``tools/setup.sh``, which installs every reference: a missing one
    there is a broken setup, and a skip would hide that nothing was compared.
    """
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        try:
            return importlib.import_module(module)
        except ImportError as e:
            pytest.fail(f"CI: the reference {module} is missing ({e}); tools/setup.sh installs it ({install})")
    return pytest.importorskip(module, reason=f"the reference: {install}")


def synth_utterance(rng: np.random.Generator, num_samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A harmonic tone with a drifting pitch plus a little noise, float32 in [-1, 1]."""
    t = np.arange(num_samples) / sample_rate
    f0 = rng.uniform(100, 300) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wav = sum(np.sin(h * phase) / h for h in range(1, 5))
    wav = 0.3 * wav / np.abs(wav).max() + 0.02 * rng.standard_normal(num_samples)
    return wav.astype(np.float32)


def build_tiny(overrides: dict):
    """(config, model, objective) of ``overrides``, the weights seeded by 0."""
    from audiossl.config import build_config
    from audiossl.models.model import build_model
    from audiossl.objectives import build_objective

    torch.manual_seed(0)
    cfg = build_config(overrides=overrides)
    model = build_model(cfg.model, cfg.data.sample_rate)
    return cfg, model, build_objective(cfg, model)


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """``<root>/train-clean-100/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``.

    3 speakers x 4 utterances of about 1 s at 16 kHz; returns the root.
    """
    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    for speaker in ("19", "26", "103"):
        chapter = f"{int(speaker) * 10 + 1}"
        folder = root / "train-clean-100" / speaker / chapter
        folder.mkdir(parents=True)
        for utt in range(4):
            num_samples = SAMPLE_RATE + int(rng.integers(0, 1600))
            path = folder / f"{speaker}-{chapter}-{utt:04d}.flac"
            soundfile.write(str(path), synth_utterance(rng, num_samples), SAMPLE_RATE)
    return root


@pytest.fixture
def tiny_overrides() -> dict:
    """Config overrides for a tiny CPC model and run on the CPU (scalars only,
    so ``[f"{k}={v}" for k, v in tiny_overrides.items()]`` works on a command line).

    3200-sample windows give 20 frames; 4 windows per batch; fp32 whatever the CPU.
    """
    return {
        "window_samples": 3200,
        "num_workers": 0,
        "encoder_channels": 16,
        "context_dim": 16,
        "cpc_steps": 3,
        "cpc_negatives": 8,
        "batch_size": 4,
        "max_steps": 4,
        "lr": 1e-3,
        "warmup_steps": 0,
        "log_every": 1,
        "ckpt_every": 2,
        "device": "cpu",
        "precision": "fp32",  # the same numbers on every CPU: auto would take bf16 where the CPU has it
    }


@pytest.fixture
def mfcc_features(tiny_corpus, tmp_path) -> Path:
    """MFCC of the tiny corpus (12 utterances, about 100 frames each) as an extraction folder."""
    from audiossl.extract import ExtractOptions, extract, select_utterances
    from audiossl.models.baselines import build_baseline

    utterances, _ = select_utterances(tiny_corpus, progress=False)
    out = tmp_path / "features"
    extract(build_baseline("mfcc"), utterances, out, {"mfcc": "encoder"}, {"baseline": "mfcc"},
            ExtractOptions(progress=False))
    return out


@pytest.fixture
def one_thread():
    """Run a compute-heavy test on one torch thread (the machine is shared), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
