"""tools/make_corpus.py end to end (needs Debian's flite and sox) and its channel variation, tools/channel.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiossl.data.alignments import load_alignments, load_phone_inventory, load_split

TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_corpus.py"
CHANNEL = TOOL.with_name("channel.py")
SUBSET = "train-clean-100"
ARGS = ["--speakers", "2", "--utterances", "2", "--seed", "3"]
TOOLS_MISSING = shutil.which("flite") is None or shutil.which("sox") is None


def run_tool(out: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run the tool; skips the calling test (or fixture) where flite or sox is missing."""
    if TOOLS_MISSING:
        pytest.skip("flite and sox are needed (apt-get install flite sox)")
    return subprocess.run(
        [sys.executable, str(TOOL), "--out", str(out), *ARGS, *extra],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "out"
    result = run_tool(out)
    assert result.returncode == 0, result.stderr
    return out


def flac_files(corpus: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted((corpus / SUBSET).glob("*/*/*.flac"))}


def test_layout_and_names(corpus):
    flacs = flac_files(corpus)
    assert len(flacs) == 4
    speakers = set()
    for utt_id, path in flacs.items():
        match = re.fullmatch(r"(\d+)-(\d+)-(\d{4})", utt_id)
        assert match, utt_id
        speaker, chapter, _ = match.groups()
        speakers.add(speaker)
        assert path.parent == corpus / SUBSET / speaker / chapter
        assert (path.parent / f"{speaker}-{chapter}.trans.txt").is_file()
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (
            16000, 1, "FLAC", "PCM_16"
        )
    assert len(speakers) == 2
    for name in ("README.md", "phones.txt", "converted_aligned_phones.txt"):
        assert (corpus / name).is_file()
    assert not list(corpus.rglob("*.tmp"))


def test_transcripts(corpus):
    flacs = flac_files(corpus)
    lines = {}
    for trans in (corpus / SUBSET).glob("*/*/*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            assert trans.name == "-".join(utt_id.split("-")[:2]) + ".trans.txt"
            lines[utt_id] = text
    assert set(lines) == set(flacs)
    for text in lines.values():
        assert re.fullmatch(r"[A-Z' ]+", text), text
        assert 6 <= len(text.split()) <= 14


def test_inventory(corpus):
    phones = load_phone_inventory(corpus / "phones.txt")
    assert len(phones) == 41
    assert phones[0] == "SIL" and phones[-1] == "SPN"
    assert phones[1:-1] == sorted(phones[1:-1])


def test_alignments_match_audio(corpus):
    alignments = load_alignments(corpus / "converted_aligned_phones.txt", num_classes=41)
    flacs = flac_files(corpus)
    assert set(alignments) == set(flacs)
    for utt_id, path in flacs.items():
        labels = alignments[utt_id]
        assert len(labels) == sf.info(str(path)).frames // 160
        assert labels[0] == 0 and labels[-1] == 0
        assert len(set(labels.tolist())) > 5


def test_splits(corpus):
    train = load_split(corpus / "train_split.txt")
    test = load_split(corpus / "test_split.txt")
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(flac_files(corpus))
    speakers = [{utt_id.split("-")[0] for utt_id in ids} for ids in (train, test)]
    assert speakers[0] == speakers[1] == {u.split("-")[0] for u in flac_files(corpus)}


def test_silence_labels_follow_energy(corpus):
    """Frames labelled SIL are quiet and phone frames are loud: the timing is real."""
    alignments = load_alignments(corpus / "converted_aligned_phones.txt")
    for utt_id, path in flac_files(corpus).items():
        audio, _ = sf.read(str(path))
        labels = alignments[utt_id]
        frames = audio[: len(labels) * 160].reshape(len(labels), 160)
        rms = np.sqrt(np.mean(frames**2, axis=1)) + 1e-9
        median = np.median(rms)
        lead = int(np.argmax(labels != 0))
        assert lead >= 3
        assert rms[:lead].max() < 0.1 * median, utt_id
        speech = labels != 0
        assert np.median(rms[speech]) > 10 * np.median(rms[~speech]), utt_id
        onset = int(np.argmax(rms > 0.1 * median))
        assert abs(onset - lead) <= 10, (utt_id, onset, lead)


def test_deterministic_and_refuses_existing(corpus, tmp_path):
    result = run_tool(corpus)
    assert result.returncode == 2
    assert "--overwrite" in result.stderr
    again = tmp_path / "again"
    assert run_tool(again).returncode == 0
    for name in ("converted_aligned_phones.txt", "train_split.txt", "test_split.txt"):
        assert (again / name).read_text() == (corpus / name).read_text()
    for utt_id, path in flac_files(corpus).items():
        assert flac_files(again)[utt_id].read_bytes() == path.read_bytes()
    result = run_tool(again, "--overwrite")
    assert result.returncode == 0, result.stderr


# Channel variation (issue 26): the tool with --channel vary, then tools/channel.py's pure functions.


@pytest.fixture(scope="module")
def channel():
    spec = importlib.util.spec_from_file_location("channel", CHANNEL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("varied") / "out"
    result = run_tool(out, "--channel", "vary", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    return out


def sidecar_rows(corpus: Path) -> list[str]:
    lines = (corpus / "channel.tsv").read_text().splitlines()
    assert lines[0].split("\t")[0] == "utt_id"
    return lines[1:]


def test_channel_none_is_the_default(corpus, tmp_path):
    out = tmp_path / "none"
    assert run_tool(out, "--channel", "none").returncode == 0
    assert not (out / "channel.tsv").exists() and not (corpus / "channel.tsv").exists()
    for utt_id, path in flac_files(corpus).items():
        assert flac_files(out)[utt_id].read_bytes() == path.read_bytes()


def test_channel_vary_keeps_labels_and_lengths(corpus, varied):
    for name in ("converted_aligned_phones.txt", "phones.txt", "train_split.txt", "test_split.txt"):
        assert (varied / name).read_text() == (corpus / name).read_text()
    clean, noisy = flac_files(corpus), flac_files(varied)
    assert set(noisy) == set(clean)
    for utt_id, path in noisy.items():
        assert sf.info(str(path)).frames == sf.info(str(clean[utt_id])).frames
        assert path.read_bytes() != clean[utt_id].read_bytes()
        trans = f"{'-'.join(utt_id.split('-')[:2])}.trans.txt"
        assert (path.parent / trans).read_text() == (clean[utt_id].parent / trans).read_text()
    assert [row.split("\t")[0] for row in sidecar_rows(varied)] == sorted(noisy)
    assert "channel.tsv" in (varied / "README.md").read_text()
    assert not list(varied.rglob("*.tmp")) and not list(varied.glob(".clean-*"))


def test_channel_vary_reproducible_across_jobs_and_seeded(varied, tmp_path):
    again = tmp_path / "again"
    assert run_tool(again, "--channel", "vary", "--jobs", "2").returncode == 0
    assert (again / "channel.tsv").read_bytes() == (varied / "channel.tsv").read_bytes()
    for utt_id, path in flac_files(varied).items():
        assert flac_files(again)[utt_id].read_bytes() == path.read_bytes()
    other = tmp_path / "other"
    assert run_tool(other, "--channel", "vary", "--channel-seed", "4").returncode == 0
    assert (other / "converted_aligned_phones.txt").read_text() == (varied / "converted_aligned_phones.txt").read_text()
    for row, other_row in zip(sidecar_rows(varied), sidecar_rows(other)):
        assert row.split("\t")[0] == other_row.split("\t")[0] and row != other_row
    for utt_id, path in flac_files(varied).items():
        assert flac_files(other)[utt_id].read_bytes() != path.read_bytes()


def test_sidecar_reproduces_output_and_its_snr(channel, corpus, varied, one_thread):
    """Rebuilt from the clean corpus and the sidecar row, each output's SNR is the recorded one."""
    clean = {utt_id: sf.read(str(path))[0] for utt_id, path in flac_files(corpus).items()}
    noisy = flac_files(varied)
    for row in sidecar_rows(varied):
        draw = channel.parse_row(row)
        speech, noise, limiter_db = channel.apply_channel(
            clean[draw.utt_id], draw, [clean[source] for source, _ in draw.babble]
        )
        assert f"{limiter_db:.2f}" == row.split("\t")[-1]
        output = sf.read(str(noisy[draw.utt_id]))[0]
        assert np.max(np.abs(output - (speech + noise))) <= 1.01 / 32768  # 16-bit rounding only
        measured = 10 * np.log10(np.mean(speech**2) / np.mean((output - speech) ** 2))
        assert abs(measured - draw.snr_db) < 1.0, (draw.utt_id, measured, draw.snr_db)


def bursts(seed: int, length: int = 16000) -> np.ndarray:
    """Speech-like test signal: tone bursts between silences."""
    rng = np.random.default_rng(seed)
    signal = np.zeros(length)
    for start in range(1600, length - 3200, 4000):
        times = np.arange(2400) / 16000
        signal[start:start + 2400] = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * times)
    return signal


@pytest.mark.parametrize("noise", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr_db,gain_db", [(5.0, -20.0), (30.0, -12.0), (17.5, 20.0)])
def test_apply_channel_meets_the_snr(channel, one_thread, noise, snr_db, gain_db):
    eq = (channel.Biquad("peak", 1000.0, 1.0, 9.0), channel.Biquad("low", 200.0, 0.7, -6.0))
    babble = (("a", 100), ("b", 5000), ("c", 0)) if noise == "babble" else ()
    draw = channel.ChannelDraw("u", 0.4, 3.0, eq, gain_db, noise, snr_db, babble, 7)
    speech, noise_part, limiter_db = channel.apply_channel(bursts(0), draw, [bursts(k) for k in (1, 2, 3)])
    assert speech.shape == noise_part.shape == (16000,)
    measured = 10 * np.log10(np.mean(speech**2) / np.mean(noise_part**2))
    assert abs(measured - snr_db) < 0.01
    assert np.max(np.abs(speech + noise_part)) <= channel.PEAK_LIMIT + 1e-12
    assert (limiter_db < 0) == (gain_db == 20.0)  # only the +20 dB gain overloads


def test_draws_depend_only_on_seed_and_utterance(channel):
    config = channel.ChannelConfig()
    lengths = {f"{speaker}-1-{n:04d}": 16000 + n for speaker in (11, 22, 33) for n in range(3)}
    draws = channel.plan_channels(lengths, 5, config)
    assert draws == channel.plan_channels(dict(reversed(lengths.items())), 5, config)
    assert [d.utt_id for d in draws] == sorted(lengths)
    alone = channel.draw_channel(channel.utterance_rng(5, draws[4].utt_id), draws[4].utt_id, config,
                                 {u: n for u, n in lengths.items() if not u.startswith("22-")})
    assert alone == draws[4]
    reseeded = channel.plan_channels(lengths, 6, config)
    assert all(a != b for a, b in zip(draws, reseeded))
    for draw in draws:
        assert config.snr_db[0] <= draw.snr_db <= config.snr_db[1]
        assert config.eq_filters[0] <= len(draw.eq) <= config.eq_filters[1]
        speakers = {source.split("-")[0] for source, _ in draw.babble}
        assert draw.utt_id.split("-")[0] not in speakers
        assert all(0 <= start < lengths[source] for source, start in draw.babble)


def test_sidecar_row_round_trip(channel):
    config = channel.ChannelConfig(reverb_fraction=0.5)
    lengths = {f"{speaker}-1-{n:04d}": 16000 for speaker in (11, 22) for n in range(8)}
    draws = channel.plan_channels(lengths, 0, config)
    assert {d.noise for d in draws} == {"white", "pink", "babble"} and any(d.rt60_s == 0 for d in draws)
    text = channel.sidecar_text(draws, [0.0] * len(draws))
    assert [channel.parse_row(line) for line in text.splitlines()[1:]] == draws
    dry = dataclasses.replace(draws[0], eq=(), babble=())
    assert channel.parse_row(channel.format_row(dry, -1.5)) == dry


def test_room_response_timing_rt60_and_drr(channel, one_thread):
    response = channel.room_impulse_response(0.5, 6.0, np.random.default_rng(0))
    onset = int(channel.TAIL_ONSET_S * 16000)
    assert response[0] == 1.0 and not response[1:onset].any()
    assert abs(10 * np.log10(1.0 / np.sum(response[1:] ** 2)) - 6.0) < 1e-9
    decay = np.cumsum(response[onset:][::-1] ** 2)[::-1]  # Schroeder's backward integral
    decay_db = 10 * np.log10(decay / decay[0])
    times = np.arange(len(decay_db)) / 16000
    fit = (decay_db <= -5) & (decay_db >= -25)
    slope = np.polyfit(times[fit], decay_db[fit], 1)[0]
    assert abs(-60 / slope - 0.5) < 0.05
    click = np.zeros(8000)
    click[1000] = 0.5
    wet = channel.reverberate(click, response)
    assert wet.shape == click.shape and int(np.argmax(np.abs(wet))) == 1000


def test_pink_noise_falls_3_db_per_octave(channel):
    noise = channel.pink_noise(np.random.default_rng(0), 1 << 16)
    power = np.abs(np.fft.rfft(noise)) ** 2
    frequencies = np.fft.rfftfreq(len(noise), 1 / 16000)
    band = (frequencies > 50) & (frequencies < 7000)
    slope = np.polyfit(np.log10(frequencies[band]), np.log10(power[band]), 1)[0]
    assert abs(slope + 1.0) < 0.05 and abs(np.sqrt(np.mean(noise**2)) - 1.0) < 1e-9


def test_equalizer_boost_is_not_clipped(channel, one_thread):
    """torchaudio's biquads clamp to [-1, 1]; a +9 dB boost of a loud tone must still come out whole."""
    tone = 0.9 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    boosted = channel.equalize(tone, (channel.Biquad("peak", 1000.0, 1.0, 9.0),))
    gain_db = 20 * np.log10(np.max(np.abs(boosted[8000:])) / 0.9)
    assert abs(gain_db - 9.0) < 0.1
