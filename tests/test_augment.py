"""Augmentation in pretraining (``augment: none | past | both``, audiossl.data.augment).

Off by default and then bit for bit today's batches and losses; ``past`` keeps CPC's targets (the clean
``z``) and the reconstruction objectives' targets (the clean log-mel frames) while the context reads
augmented audio; the chain runs on the DataLoader's workers, is seeded by each window (reproducible,
independent of workers and of resumes), keeps lengths and timing, and adds noise at the drawn SNR.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys

import numpy as np
import pytest
import torch

from audiossl.checkpoint import load_checkpoint
from audiossl.cli import main
from audiossl.config import ConfigError, build_config
from audiossl.data.augment import (
    AUGMENTED,
    NOISE_KINDS,
    AugmentConfig,
    Augmenter,
    apply_augmentation,
    build_collate,
    draw_augmentation,
)
from audiossl.data.channel_dsp import reverberate, room_impulse_response, shift_pitch
from audiossl.data.corpus import scan_corpus
from audiossl.data.windows import WindowDataset, collate_windows, epoch_batches
from audiossl.interop.cpc_audio_args import args_from_config
from audiossl.objectives import cpc
from audiossl.runtime import Distributed
from audiossl.train import TRAIN_LOG, BatchStream, train
from audiossl.train.bench import benchmark, format_loader, format_result, loader_benchmark
from audiossl.train.loop import build_pretrainer

from conftest import import_reference, synth_utterance

# The pitch change is python-stretch's (setup.cfg installs it): without it these tests skip, or fail under CI.
import_reference("python_stretch", "pip install python-stretch")

SCORE_CANDIDATES = cpc.score_candidates  # the real one, whatever a test patches
RECONSTRUCTION = {
    "apc": {"preset": "apc_paper", "context_dim": 16, "context_layers": 1},
    "mpc": {"preset": "mpc_paper", "context_dim": 16, "context_layers": 1, "context_heads": 2, "context_ff_dim": 32},
    "npc": {"preset": "npc_paper", "context_dim": 16, "context_layers": 2},
    "apc_waveform": {"objective": "apc"},  # the CPC encoder's frames in, log-mel targets computed by the objective
}


def stream(cfg, corpus) -> BatchStream:
    utterances, _ = scan_corpus(corpus, progress=False)
    dataset = WindowDataset(utterances, cfg.data.window_samples, cfg.data.sample_rate, seed=cfg.train.seed)
    return BatchStream(dataset, cfg, Distributed(), epoch=0, position=0)


def first_batches(cfg, corpus, count: int = 1) -> list[dict]:
    batches = stream(cfg, corpus)
    try:
        return [batches.next() for _ in range(count)]
    finally:
        batches.close()


def config(tiny_overrides, **overrides):
    return build_config(overrides={**tiny_overrides, **overrides})


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], key


# --- off by default: today's batches and losses ------------------------------------------------------------

def test_off_by_default_gives_todays_batches(tiny_corpus, tiny_overrides):
    cfg = config(tiny_overrides)
    assert cfg.augment.augment == "none"
    assert build_collate(cfg.augment, 16000) is collate_windows  # the loader's collate, unchanged
    utterances, _ = scan_corpus(tiny_corpus, progress=False)
    dataset = WindowDataset(utterances, 3200, 16000, seed=cfg.train.seed)
    expected = collate_windows([dataset[w] for w in epoch_batches(dataset, 0, 4, "uniform")[0]])
    (batch,) = first_batches(cfg, tiny_corpus)
    assert set(batch) == {"wavs", "lengths", "speakers", "ids", "starts"}  # read_errors is the stream's
    assert_batches_equal(batch, {k: v for k, v in expected.items() if k != "read_errors"})


def test_identity_augmentation_under_past_gives_todays_loss(tiny_corpus, tiny_overrides):
    """``past`` changes only what the context reads: with the augmentation the identity the loss is today's."""
    cfg = config(tiny_overrides)
    (batch,) = first_batches(cfg, tiny_corpus)
    module = build_pretrainer(cfg).train()
    torch.manual_seed(0)
    today, _ = module(batch)
    torch.manual_seed(0)
    identity, _ = module({**batch, AUGMENTED: batch["wavs"].clone()})
    assert torch.equal(today, identity)


# --- past: the targets stay clean ----------------------------------------------------------------------------

def capture_cpc(module, batch, monkeypatch) -> tuple[torch.Tensor, dict]:
    captured = {}

    def spy(predictions, z, *args, **kwargs):
        captured.update(predictions=predictions.detach().clone(), z=z.detach().clone())
        return SCORE_CANDIDATES(predictions, z, *args, **kwargs)

    monkeypatch.setattr(cpc, "score_candidates", spy)
    torch.manual_seed(0)  # the same negatives
    loss, _ = module(batch)
    return loss.detach(), captured


@pytest.mark.parametrize("norm", ["channel", "batch"])
def test_past_keeps_cpcs_z_and_changes_what_the_context_reads(tiny_corpus, tiny_overrides, monkeypatch, norm):
    (augmented,) = first_batches(config(tiny_overrides, augment="past"), tiny_corpus)
    (clean,) = first_batches(config(tiny_overrides), tiny_corpus)
    assert_batches_equal({k: v for k, v in augmented.items() if k != AUGMENTED}, clean)
    assert augmented[AUGMENTED].shape == clean["wavs"].shape
    assert not torch.equal(augmented[AUGMENTED], clean["wavs"])
    module = build_pretrainer(config(tiny_overrides, encoder_norm=norm)).train()
    loss_clean, without = capture_cpc(module, clean, monkeypatch)
    loss_past, past = capture_cpc(module, augmented, monkeypatch)
    assert torch.equal(past["z"], without["z"])  # positives and negatives: the clean encoding
    assert not torch.allclose(past["predictions"], without["predictions"])  # the context read other audio
    assert loss_past != loss_clean


def test_both_feeds_only_augmented_audio(tiny_corpus, tiny_overrides):
    (past,) = first_batches(config(tiny_overrides, augment="past"), tiny_corpus)
    (both,) = first_batches(config(tiny_overrides, augment="both"), tiny_corpus)
    assert AUGMENTED not in both
    assert torch.equal(both["wavs"], past[AUGMENTED])  # the same windows, augmented alike


@pytest.mark.parametrize("name", list(RECONSTRUCTION))
def test_past_keeps_the_reconstruction_targets_clean(name, tiny_corpus, tiny_overrides, monkeypatch):
    overrides = RECONSTRUCTION[name]
    cfg = config(tiny_overrides, **overrides)
    module = build_pretrainer(cfg).train()
    objective = importlib.import_module(f"audiossl.objectives.{cfg.objective.objective}")
    captured = []
    real = objective.masked_l1
    monkeypatch.setattr(objective, "masked_l1", lambda p, t, m: captured.append(t) or real(p, t, m))
    (augmented,) = first_batches(config(tiny_overrides, augment="past", **overrides), tiny_corpus)
    (clean,) = first_batches(cfg, tiny_corpus)
    losses = []
    for batch in (clean, augmented):
        torch.manual_seed(0)  # MPC's masks
        losses.append(module(batch)[0].detach())
    assert torch.equal(captured[0], captured[1])  # the targets: the clean audio's log-mel frames
    assert losses[0] != losses[1]  # the input: the augmented audio


# --- on the workers, reproducible, resumable ----------------------------------------------------------------

def test_augmentation_runs_on_the_loaders_workers(tiny_corpus, tiny_overrides, tmp_path, monkeypatch):
    record = tmp_path / "pids"
    real = Augmenter.augment

    def recording(self, wavs, keys):
        with open(record, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(self, wavs, keys)

    monkeypatch.setattr(Augmenter, "augment", recording)  # forked workers inherit the patch
    on_worker = first_batches(config(tiny_overrides, augment="past", num_workers=1), tiny_corpus, count=2)
    pids = set(record.read_text().split())
    assert pids and str(os.getpid()) not in pids
    record.unlink()
    in_main = first_batches(config(tiny_overrides, augment="past", num_workers=0), tiny_corpus, count=2)
    assert set(record.read_text().split()) == {str(os.getpid())}
    for a, b in zip(on_worker, in_main):  # the same augmentation wherever it runs
        assert_batches_equal(a, b)


def test_reproducible_per_seed_and_per_window(tiny_corpus, tiny_overrides):
    again = first_batches(config(tiny_overrides, augment="past"), tiny_corpus, count=2)
    assert all(torch.equal(a[AUGMENTED], b[AUGMENTED])
               for a, b in zip(again, first_batches(config(tiny_overrides, augment="past"), tiny_corpus, count=2)))
    other = first_batches(config(tiny_overrides, augment="past", seed=2), tiny_corpus)[0]
    assert not torch.equal(other[AUGMENTED], again[0][AUGMENTED])
    # Without babble a window's augmentation is its own: the same wherever it sits in whichever batch.
    augmenter = Augmenter(AugmentConfig(augment="past", augment_noise_kinds=["white", "pink"]), 16000)
    wavs, keys = again[0]["wavs"], [(1, 0, i) for i in range(4)]
    order = [2, 0, 3, 1]
    assert torch.equal(augmenter.augment(wavs, keys)[order], augmenter.augment(wavs[order], [keys[i] for i in order]))
    assert torch.equal(augmenter.augment(wavs[:1], keys[:1]), augmenter.augment(wavs, keys)[:1])


def read_log(exp_dir):
    return (exp_dir / TRAIN_LOG).read_text().splitlines()


def test_resume_with_augmentation_is_exact(tiny_corpus, tiny_overrides, tmp_path, one_thread):
    overrides = {**tiny_overrides, "augment": "past", "num_workers": 1, "decay": "constant", "max_steps": 4}
    train(build_config(overrides=overrides), tiny_corpus, tmp_path / "straight", progress=False)
    train(build_config(overrides={**overrides, "max_steps": 2}), tiny_corpus, tmp_path / "resumed", progress=False)
    train(build_config(overrides=overrides), tiny_corpus, tmp_path / "resumed", progress=False)
    assert read_log(tmp_path / "resumed") == read_log(tmp_path / "straight")
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("resumed", "straight"))
    assert a["step"] == b["step"] == 4
    for name, tensor in b["model"].items():
        assert torch.equal(a["model"][name], tensor), name


# --- the chain: lengths, timing, SNR ---------------------------------------------------------------------------

def test_pitch_change_keeps_length_and_timing():
    t = np.arange(16000) / 16000
    up = shift_pitch(0.3 * np.sin(2 * np.pi * 200.0 * t), 2.0)
    assert up.shape == (16000,)
    segment = up[4000:12000] * np.hanning(8000)
    peak_hz = np.argmax(np.abs(np.fft.rfft(segment))) * 16000 / 8000
    assert peak_hz == pytest.approx(200.0 * 2 ** (2 / 12), abs=2.0)
    click = np.zeros(16000)
    click[5000] = 1.0
    assert abs(int(np.argmax(np.abs(shift_pitch(click, -2.5)))) - 5000) <= 16  # measured: 0


def test_reverb_keeps_the_direct_path_at_sample_0():
    response = room_impulse_response(0.6, 3.0, np.random.default_rng(0))
    assert response[0] == 1.0 and len(response) == round(0.6 * 16000)
    click = np.zeros(8000)
    click[1000] = 1.0
    wet = reverberate(click, response)
    assert wet.shape == (8000,) and np.abs(wet[:1000]).max() < 1e-9
    assert wet[1000] == pytest.approx(1.0) and np.abs(wet).argmax() == 1000


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_is_added_at_the_drawn_snr(kind):
    rng = np.random.default_rng(0)
    batch = np.stack([synth_utterance(rng, 8000).astype(np.float64) for _ in range(4)])
    settings = AugmentConfig(augment="past", augment_noise_kinds=[kind], augment_reverb_prob=1.0,
                             augment_eq_prob=1.0, augment_band_reject_prob=1.0)
    for seed in range(4):
        draw = draw_augmentation(np.random.default_rng(seed), settings, 0, 4, 8000)
        assert draw.noise == kind and 5.0 <= draw.snr_db <= 20.0
        total = sum(apply_augmentation(batch[0], draw, batch, 16000))
        speech, silence = apply_augmentation(batch[0], dataclasses.replace(draw, noise=""), batch, 16000)
        assert not silence.any() and total.shape == speech.shape == (8000,)
        snr = 10 * np.log10(np.mean(speech**2) / np.mean((total - speech) ** 2))
        assert abs(snr - draw.snr_db) < 1.0, (snr, draw.snr_db)
    if kind == "babble":  # from the other windows of the batch only
        assert {slot for slot, _ in draw.babble} <= {1, 2, 3} and len(draw.babble) == 3


def test_a_silent_window_stays_silent():
    augmenter = Augmenter(AugmentConfig(augment="both", augment_reverb_prob=1.0, augment_eq_prob=1.0,
                                        augment_band_reject_prob=1.0), 16000)
    wavs = torch.zeros(3, 3200)
    wavs[1] = 0.1  # babble from a window that is not silent is still no noise: the SNR is against silence
    out = augmenter.augment(wavs, [(1, 0, i) for i in range(3)])
    assert out.dtype == torch.float32 and torch.equal(out[0], wavs[0]) and torch.equal(out[2], wavs[2])


# --- settings and the bench -------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("augment", "sideways"), ("augment_pitch_semitones", "13"), ("augment_reverb_prob", "1.5"),
    ("augment_reverb_rt60", "0.8,0.2"), ("augment_reverb_rt60", "0,0.5"), ("augment_reverb_drr_db", "3"),
    ("augment_noise_snr_db", "5,10,20"), ("augment_noise_kinds", "white,red"), ("augment_noise_kinds", "pink,pink"),
    ("augment_eq_gain_db", "-3"), ("augment_band_reject_prob", "-0.1"), ("augment_eq_prob", "yes"),
])
def test_bad_settings_are_refused_in_one_line(key, value):
    with pytest.raises(ConfigError) as refused:
        build_config(overrides={key: value})
    message = str(refused.value)
    assert key in message and "\n" not in message


def test_a_bad_setting_stops_train_before_any_work(tiny_corpus, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_corpus), "--exp-dir", str(tmp_path / "exp"), "augment=sideways"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "augment" in lines[0] and not (tmp_path / "exp").exists()


def test_pitch_without_python_stretch_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "python_stretch", None)  # import fails
    with pytest.raises(ConfigError, match="python-stretch"):
        build_config(overrides={"augment": "past"})
    build_config(overrides={"augment": "past", "augment_pitch_semitones": 0})  # the rest needs nothing more
    build_config()  # nor does augment: none


def test_bench_times_the_augmenting_loader_and_the_double_encoding(tiny_corpus, tiny_overrides, one_thread):
    cfg = config(tiny_overrides, augment="past")
    loader = loader_benchmark(cfg, tiny_corpus, [0], seconds=0.1, min_batches=2)
    assert loader["augment"] == "past" and loader["workers"][0]["windows_per_second"] > 0
    step = benchmark(cfg, steps=1, warmup=0, device="cpu")
    assert step["augment"] == "past"
    assert "augment: past" in format_loader(loader, step["audio_seconds_per_second"])
    assert "augment: past" in format_result(step)


def test_every_window_has_its_own_key(tiny_corpus):
    utterances, _ = scan_corpus(tiny_corpus, progress=False)
    dataset = WindowDataset(utterances, 3200, 16000, seed=5)
    keys = [dataset[w]["key"] for epoch in (0, 1) for w in dataset.windows(epoch)]
    assert len(set(keys)) == len(keys) and keys[0] == (5, 0, 0)


def test_export_to_cpc_audio_says_the_augmentation_is_not_carried():
    _, notes = args_from_config(build_config(overrides={"augment": "past"}), "run", objective=True)
    assert any(note.startswith("augment: past is not carried") for note in notes)
    _, notes = args_from_config(build_config(), "run", objective=True)
    assert not any("augment" in note for note in notes)
