"""Tests for audio reading, corpus scanning, manifests, windows and samplers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import soundfile
import torch

from audiossl.data.audio import AudioError, read_audio
from audiossl.data.corpus import MANIFEST_COLUMNS, CorpusError, load_corpus, read_manifest, scan_corpus, write_manifest
from audiossl.data.windows import WindowDataset, collate_windows, epoch_batches


def noise(num_samples, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    data = 0.1 * rng.standard_normal((num_samples, channels))
    return data.astype(np.float32) if channels > 1 else data[:, 0].astype(np.float32)


# --- scanning -----------------------------------------------------------------

def test_scan_librispeech_layout(tiny_corpus):
    utterances, problems = scan_corpus(tiny_corpus, progress=False)
    assert problems == []
    assert len(utterances) == 12
    assert [u.id for u in utterances] == sorted(u.id for u in utterances)
    for u in utterances:
        speaker, chapter, _ = u.id.split("-")
        assert u.speaker == speaker
        assert u.path.endswith(f"{speaker}/{chapter}/{u.id}.flac")
        assert u.sample_rate == 16000
        assert u.num_samples == soundfile.info(u.path).frames >= 16000
    assert {u.speaker for u in utterances} == {"19", "26", "103"}


def test_scan_generic_folder_speaker_level(tmp_path):
    root = tmp_path / "generic"
    for rel in ("alice/day1/a.wav", "alice/day2/b.wav", "bob/day1/c.flac"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(root / rel), noise(800), 16000)
    (root / "bob/day1/broken.wav").write_text("not audio")
    (root / "bob/day1/notes.txt").write_text("ignored")

    utterances, problems = scan_corpus(root, speaker_level=0, progress=False)
    assert {u.id: u.speaker for u in utterances} == {"alice/day1/a": "alice", "alice/day2/b": "alice",
                                                     "bob/day1/c": "bob"}
    assert [p.path for p in problems] == [str(root / "bob/day1/broken.wav")]

    parent_level, _ = scan_corpus(root, progress=False)
    assert {u.speaker for u in parent_level} == {"day1", "day2"}


def test_scan_refuses_folder_without_audio(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="empty"):
        scan_corpus(tmp_path / "empty", progress=False)


# --- manifests ----------------------------------------------------------------

def test_manifest_round_trip(tiny_corpus, tmp_path):
    utterances, _ = scan_corpus(tiny_corpus, progress=False)
    path = tmp_path / "lists" / "train.tsv"
    write_manifest(utterances, path)
    assert path.read_text().splitlines()[0].split("\t") == list(MANIFEST_COLUMNS)
    assert read_manifest(path) == utterances
    assert load_corpus(path) == (utterances, [])


def test_load_corpus_caches_the_scan(tiny_corpus, tmp_path):
    cache = tmp_path / "manifest.tsv"
    scanned, _ = load_corpus(tiny_corpus, cache=cache, progress=False)
    assert read_manifest(cache) == scanned
    again, _ = load_corpus(tiny_corpus, cache=cache, progress=False)
    assert again == scanned


def test_manifest_relative_paths(tmp_path):
    soundfile.write(str(tmp_path / "a.wav"), noise(800), 16000)
    path = tmp_path / "m.tsv"
    path.write_text("\t".join(MANIFEST_COLUMNS) + "\nu1\ta.wav\tspk\t800\t16000\n")
    (utt,) = read_manifest(path)
    assert utt.path == str(tmp_path / "a.wav")
    assert read_audio(utt.path).numel() == 800


HEADER = "\t".join(MANIFEST_COLUMNS) + "\n"


@pytest.mark.parametrize("text, where", [
    ("id\tpath\n", ":"),
    (HEADER + "u1\t/a.wav\tspk\t100\t16000\nu2\t/b.wav\tspk\t100\n", ":3:"),
    (HEADER + "u1\t/a.wav\tspk\tlong\t16000\n", ":2:"),
    (HEADER + "u1\t/a.wav\tspk\t100\t16000\n\nu1\t/b.wav\tspk\t100\t16000\n", ":4:"),
    (HEADER, ":"),
])
def test_manifest_errors_name_file_and_line(tmp_path, text, where):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(CorpusError) as error:
        read_manifest(path)
    assert f"{path}{where}" in str(error.value)


# --- audio --------------------------------------------------------------------

def test_read_segment_equals_slice(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(str(path), noise(16000), 16000, subtype="FLOAT")
    whole = read_audio(path)
    assert whole.dtype == torch.float32 and whole.shape == (16000,)
    assert torch.equal(read_audio(path, start=1234, num_samples=3200), whole[1234:4434])
    assert torch.equal(read_audio(path, start=15000), whole[15000:])
    with pytest.raises(AudioError, match="a.wav"):
        read_audio(path, start=15000, num_samples=3200)


def test_stereo_is_mixed_down(tmp_path):
    path = tmp_path / "stereo.wav"
    data = noise(4000, channels=2)
    soundfile.write(str(path), data, 16000, subtype="FLOAT")
    np.testing.assert_allclose(read_audio(path).numpy(), data.mean(axis=1), atol=1e-7)


def test_resampled_file_has_the_right_length(tmp_path):
    path = tmp_path / "narrow.wav"
    t = np.arange(8000) / 8000
    soundfile.write(str(path), (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    wav = read_audio(path, sample_rate=16000)
    assert wav.shape == (16000,)
    # A 440 Hz tone stays a 440 Hz tone: its spectrum peaks at 440 Hz.
    spectrum = torch.fft.rfft(wav).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1
    segment = read_audio(path, sample_rate=16000, start=4000, num_samples=8000)
    assert segment.shape == (8000,)
    torch.testing.assert_close(segment[100:-100], wav[4100:11900], atol=2e-2, rtol=0)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 48000])
@pytest.mark.parametrize("start", [0, 1, 1235, "last"])
def test_resampled_segment_equals_slice(tmp_path, rate, start):
    path = tmp_path / f"tone{rate}.wav"
    num_samples = rate + 7
    t = np.arange(num_samples) / rate
    soundfile.write(str(path), (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, subtype="FLOAT")
    whole = read_audio(path, sample_rate=16000)
    total = num_samples * 16000 // rate  # Utterance.samples_at
    start = total - 3200 if start == "last" else start
    segment = read_audio(path, sample_rate=16000, start=start, num_samples=3200)
    assert segment.shape == (3200,)
    # The same samples as the whole file's resampling (a one-sample shift differs by 0.06).
    torch.testing.assert_close(segment, whole[start:start + 3200], atol=1e-4, rtol=0)


def test_unreadable_audio_names_the_file(tmp_path):
    path = tmp_path / "junk.flac"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(AudioError, match="junk.flac"):
        read_audio(path)


# --- windows and samplers -----------------------------------------------------

@pytest.fixture
def dataset(tiny_corpus):
    utterances, _ = scan_corpus(tiny_corpus, progress=False)
    return WindowDataset(utterances, window_samples=3200, sample_rate=16000, seed=3)


def test_windows_deterministic_per_seed_and_epoch(dataset):
    same = WindowDataset(dataset.utterances, 3200, 16000, seed=3)
    other_seed = WindowDataset(dataset.utterances, 3200, 16000, seed=4)
    assert dataset.windows(0) == same.windows(0)
    assert dataset.windows(0) != dataset.windows(1)
    assert dataset.windows(0) != other_seed.windows(0)
    for epoch in range(2):
        assert epoch_batches(dataset, epoch, 4, "uniform") == epoch_batches(same, epoch, 4, "uniform")
    assert epoch_batches(dataset, 0, 4, "uniform") != epoch_batches(dataset, 1, 4, "uniform")


def test_windows_cover_each_utterance_and_stay_inside(dataset):
    windows = dataset.windows(0)
    counts = Counter(w.utt_index for w in windows)
    for i, n in enumerate(dataset.lengths):
        assert counts[i] == n // 3200
    assert all(0 <= w.start <= dataset.lengths[w.utt_index] - 3200 for w in windows)


def test_short_utterances_are_dropped(tiny_corpus):
    utterances, _ = scan_corpus(tiny_corpus, progress=False)
    ds = WindowDataset(utterances, window_samples=16800, sample_rate=16000)
    assert ds.too_short + len(ds) == len(utterances)
    assert all(n >= 16800 for n in ds.lengths)
    with pytest.raises(ValueError, match="window_samples"):
        WindowDataset(utterances, window_samples=10 ** 6)


def test_items_and_collate(dataset):
    window = dataset.windows(0)[5]
    item = dataset[window]
    utt = dataset.utterances[window.utt_index]
    assert torch.equal(item["wav"], read_audio(utt.path)[window.start:window.start + 3200])
    batch = collate_windows([dataset[w] for w in dataset.windows(0)[:3]])
    assert batch["wavs"].shape == (3, 3200)
    assert batch["lengths"].tolist() == [3200] * 3
    assert batch["speakers"].dtype == torch.long and len(batch["ids"]) == 3


def test_uniform_batches_are_full(dataset):
    batches = epoch_batches(dataset, 0, 5, "uniform")
    assert len(batches) == len(dataset.windows(0)) // 5
    assert all(len(b) == 5 for b in batches)
    assert len({w.utt_index for b in batches for w in b}) == len(dataset)


def test_same_speaker_batches_hold_one_speaker(dataset):
    batches = epoch_batches(dataset, 0, 4, "same_speaker")
    assert batches and all(len(b) == 4 for b in batches)
    speakers = [{dataset.utterances[w.utt_index].speaker for w in b} for b in batches]
    assert all(len(s) == 1 for s in speakers)
    assert len(set.union(*speakers)) == 3


@pytest.mark.parametrize("sampler", ["uniform", "same_speaker"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_slices_are_disjoint(dataset, sampler, world_size):
    everything = epoch_batches(dataset, 0, 2, sampler)
    per_rank = [epoch_batches(dataset, 0, 2, sampler, rank, world_size) for rank in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
    for rank, batches in enumerate(per_rank):
        assert batches == everything[rank::world_size][:len(batches)]
    taken = Counter(w for batches in per_rank for b in batches for w in b)
    assert not taken - Counter(w for b in everything for w in b)  # no window read twice


def test_unknown_sampler(dataset):
    with pytest.raises(ValueError, match="sampler"):
        epoch_batches(dataset, 0, 4, "shuffled")
