"""Bad input: unusable audio files, files that go bad mid-run, bad alignments, bad configs.

Each test plants the fault and checks the outcome: the file is named with its
problem, skipped, and the run trains on the rest (or, with ``--strict``,
refuses before training); a config error is one line on stderr, exit code 2,
and nothing written.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from audiossl.checkpoint import load_checkpoint
from audiossl.cli import main
from audiossl.data.alignments import labels_for_frames, load_alignments
from audiossl.data.audio import read_audio
from audiossl.data.corpus import CorpusError, load_corpus, problems_path, read_manifest, scan_corpus
from audiossl.data.validate import check_audio
from audiossl.data.windows import WindowDataset, collate_windows
from audiossl.train import Pretrainer

from conftest import synth_utterance

RATE = 16000
WINDOW = 3200


def good_audio(num_samples: int = RATE, seed: int = 0) -> np.ndarray:
    return synth_utterance(np.random.default_rng(seed), num_samples)


def good_flac_bytes() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, good_audio(2 * RATE), RATE, format="FLAC")
    return buffer.getvalue()


def plant(folder: Path, fault: str) -> tuple[Path, str]:
    """Write one bad file into ``folder``; returns it and a phrase its problem must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    flac = good_flac_bytes()
    if fault == "empty file":
        path = folder / "empty.flac"
        path.write_bytes(b"")
        return path, "cannot read audio header"
    if fault == "header without samples":
        path = folder / "nothing.wav"
        soundfile.write(str(path), np.zeros(0, np.float32), RATE)
        return path, "empty (0 samples)"
    if fault == "truncated flac":
        path = folder / "cut.flac"
        path.write_bytes(flac[: len(flac) * 6 // 10])
        return path, "corrupt or truncated"
    if fault == "corrupt flac":
        path = folder / "garbled.flac"
        middle = len(flac) // 2
        path.write_bytes(flac[:middle] + bytes(range(256)) * 4 + flac[middle + 1024:])
        return path, "corrupt or truncated"
    if fault == "not audio":
        path = folder / "notes.wav"
        path.write_text("these are my lecture notes, not a recording\n" * 20)
        return path, "cannot read audio header"
    if fault in ("NaN samples", "infinite samples"):
        path = folder / f"{fault.split()[0].lower()}.wav"
        data = good_audio(RATE)
        data[12345] = np.nan if fault == "NaN samples" else np.inf
        soundfile.write(str(path), data, RATE, subtype="FLOAT")
        return path, "NaN or infinite samples (first at sample 12345)"
    raise AssertionError(fault)


FAULTS = ["empty file", "header without samples", "truncated flac", "corrupt flac", "not audio", "NaN samples",
          "infinite samples"]


@pytest.mark.parametrize("fault", FAULTS)
def test_scan_names_and_skips_each_bad_file(tmp_path, fault):
    root = tmp_path / "corpus"
    (root / "spk").mkdir(parents=True)
    soundfile.write(str(root / "spk" / "fine.flac"), good_audio(), RATE)
    bad, phrase = plant(root / "spk", fault)
    utterances, problems = scan_corpus(root, progress=False)
    assert [u.id for u in utterances] == ["spk/fine"]
    assert [p.path for p in problems] == [str(bad)]
    assert phrase in problems[0].reason
    assert check_audio(bad).problem == problems[0].reason


def test_header_only_scan_misses_what_only_a_decode_shows(tmp_path):
    root = tmp_path / "corpus"
    bad, _ = plant(root / "spk", "truncated flac")
    (utt,), problems = scan_corpus(root, progress=False, decode=False)
    assert problems == [] and utt.path == str(bad)
    with pytest.raises(CorpusError, match="no usable audio"):
        scan_corpus(root, progress=False)


@pytest.fixture
def unreadable(tmp_path, monkeypatch):
    """A corpus with one file the process may not read (EACCES), simulated for root."""
    root = tmp_path / "corpus"
    (root / "spk").mkdir(parents=True)
    soundfile.write(str(root / "spk" / "fine.flac"), good_audio(), RATE)
    locked = root / "spk" / "locked.flac"
    soundfile.write(str(locked), good_audio(seed=1), RATE)
    if os.geteuid() == 0:  # root reads a chmod 000 file: refuse it where soundfile opens files
        def deny(real):
            def opener(file, *args, **kwargs):
                if str(file) == str(locked):
                    raise PermissionError(13, "Permission denied", str(file))
                return real(file, *args, **kwargs)
            return opener
        monkeypatch.setattr(soundfile, "info", deny(soundfile.info))
        monkeypatch.setattr(soundfile, "SoundFile", deny(soundfile.SoundFile))
    else:
        locked.chmod(0)
    yield root, locked
    locked.chmod(0o644)


def test_unreadable_file_is_named_and_skipped(unreadable):
    root, locked = unreadable
    utterances, problems = scan_corpus(root, progress=False)
    assert [u.id for u in utterances] == ["spk/fine"]
    assert [p.path for p in problems] == [str(locked)]
    assert "Permission denied" in problems[0].reason


@pytest.fixture
def messy_corpus(tmp_path):
    """Usable files in odd formats, every kind of bad file, and two files too short to train on."""
    root = tmp_path / "messy"
    folder = root / "spk1"
    folder.mkdir(parents=True)
    soundfile.write(str(folder / "mono.flac"), good_audio(RATE, seed=1), RATE)
    stereo = np.stack([good_audio(RATE, seed=2), good_audio(RATE, seed=3)], axis=1)
    soundfile.write(str(folder / "stereo.wav"), stereo, RATE)
    soundfile.write(str(folder / "narrow_8k.wav"), good_audio(8000, seed=4)[:8000], 8000)
    soundfile.write(str(folder / "cd_44k.flac"), good_audio(44100, seed=5), 44100)
    bad = {}
    for fault in FAULTS:
        path, phrase = plant(root / "spk2" / fault.replace(" ", "_"), fault)
        bad[str(path)] = phrase
    below_receptive_field = root / "spk2" / "click.wav"
    soundfile.write(str(below_receptive_field), good_audio(300), RATE)
    below_window = root / "spk2" / "blip.wav"
    soundfile.write(str(below_window), good_audio(WINDOW - 1), RATE)
    bad[str(below_receptive_field)] = "shorter than the training window (300 < 3200"
    bad[str(below_window)] = "shorter than the training window (3199 < 3200"
    return root, bad


def train_args(data, exp_dir, overrides, *extra):
    return ["train", "--data", str(data), "--exp-dir", str(exp_dir), "--no-progress", *extra,
            *(f"{k}={v}" for k, v in overrides.items())]


def test_training_skips_bad_files_and_trains_on_the_rest(messy_corpus, tiny_overrides, tmp_path, capsys):
    root, bad = messy_corpus
    exp = tmp_path / "exp"
    # 4 usable files x 5 windows = 5 batches of 4: the run reads every window once.
    assert main(train_args(root, exp, {**tiny_overrides, "max_steps": 5, "ckpt_every": 5})) == 0
    out = capsys.readouterr().out
    listed = dict(line.split("\t", 1) for line in (exp / "scan_problems.tsv").read_text().splitlines())
    assert listed.keys() == bad.keys()
    for path, phrase in bad.items():
        assert phrase in listed[path], (path, listed[path])
        assert path in out  # the summary names each file
    assert f"skipped {len(bad)} unusable file(s)" in out
    assert "note: 2 file(s) not at 16000 Hz are resampled" in out

    trained_on = {Path(u.path).name for u in read_manifest(exp / "manifest.tsv")}
    assert {"mono.flac", "stereo.wav", "narrow_8k.wav", "cd_44k.flac"} <= trained_on
    ckpt = load_checkpoint(exp / "checkpoint.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["position"], ckpt["skipped_windows"]) == (5, 0, 5, 0)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())

    # A second run reuses the cached scan and still knows what it skipped.
    assert main(train_args(root, exp, {**tiny_overrides, "max_steps": 6, "ckpt_every": 5})) == 0
    assert f"skipped {len(bad)} unusable file(s)" in capsys.readouterr().out


def test_stereo_and_other_rates_are_mixed_down_and_resampled(messy_corpus):
    root, _ = messy_corpus
    utterances, _ = scan_corpus(root, progress=False)
    dataset = WindowDataset(utterances, WINDOW, RATE)
    odd = [u for u in dataset.utterances if Path(u.path).stem in ("stereo", "narrow_8k", "cd_44k")]
    assert len(odd) == 3 and {u.sample_rate for u in odd} == {8000, 16000, 44100}
    for u in odd:
        assert read_audio(u.path, RATE).shape == (u.samples_at(RATE),)
    items = [dataset[w] for w in dataset.windows(0) if dataset.utterances[w.utt_index] in odd]
    batch = collate_windows(items)
    assert batch["wavs"].shape == (len(items), WINDOW) and batch["read_errors"] == []
    assert torch.isfinite(batch["wavs"]).all()


@pytest.mark.parametrize("via", ["train on the folder", "prepare", "train on the prepared manifest"])
def test_strict_refuses_before_training(messy_corpus, tiny_overrides, tmp_path, capsys, via):
    root, bad = messy_corpus
    exp, manifest = tmp_path / "exp", tmp_path / "lists" / "train.tsv"
    if via == "prepare":
        assert main(["prepare", "--data", str(root), "--out", str(manifest), "--strict"]) == 2
        assert not manifest.exists()
    else:
        data = root
        if via == "train on the prepared manifest":
            assert main(["prepare", "--data", str(root), "--out", str(manifest)]) == 0
            assert len(read_manifest(manifest)) == 6 and len(load_corpus(manifest)[1]) == len(FAULTS)
            assert problems_path(manifest).is_file()
            data = manifest
        capsys.readouterr()
        assert main(train_args(data, exp, tiny_overrides, "--strict")) == 2
        assert not (exp / "checkpoint.pt").exists() and not (exp / "tb").exists()
        assert len((exp / "scan_problems.tsv").read_text().splitlines()) == len(bad)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("audiossl")]
    assert len(errors) == 1 and "strict" in errors[0] and "Traceback" not in err


def test_strict_passes_a_clean_corpus(tiny_corpus, tiny_overrides, tmp_path):
    assert main(train_args(tiny_corpus, tmp_path / "exp", {**tiny_overrides, "max_steps": 1}, "--strict")) == 0
    assert not (tmp_path / "exp" / "scan_problems.tsv").exists()


# --- files that go bad after the scan -------------------------------------------

def test_collate_replaces_unreadable_windows_within_the_batch(tiny_corpus, tmp_path):
    utterances, _ = scan_corpus(tiny_corpus, progress=False)
    dataset = WindowDataset(utterances, WINDOW, RATE)
    everything = dataset.windows(0)
    windows = [next(w for w in everything if w.utt_index == i) for i in range(4)]  # 4 files
    gone = dataset.utterances[1]
    Path(gone.path).unlink()
    items = [dataset[w] for w in windows]
    assert items[1]["wav"] is None and items[1]["error"][0] == gone.path
    assert "cannot decode audio" in items[1]["error"][1]
    batch = collate_windows(items)
    assert batch["wavs"].shape == (4, WINDOW) and batch["lengths"].tolist() == [WINDOW] * 4
    assert batch["read_errors"] == [items[1]["error"]]
    assert gone.id not in batch["ids"]
    assert any(torch.equal(batch["wavs"][1], items[i]["wav"]) for i in (0, 2, 3))
    assert collate_windows([items[1]]) == {"wavs": None, "read_errors": [items[1]["error"]]}


def test_files_that_go_bad_during_training_are_skipped_and_counted(tiny_corpus, tiny_overrides, tmp_path, capsys,
                                                                   monkeypatch):
    manifest = tmp_path / "train.tsv"
    assert main(["prepare", "--data", str(tiny_corpus), "--out", str(manifest)]) == 0
    utterances = read_manifest(manifest)
    deleted, truncated = Path(utterances[0].path), Path(utterances[5].path)
    forward = Pretrainer.forward

    def first_step_breaks_two_files(self, batch):  # after the start-up check, during step 1
        if deleted.exists():
            deleted.unlink()
            truncated.write_bytes(truncated.read_bytes()[:200])
        return forward(self, batch)

    monkeypatch.setattr(Pretrainer, "forward", first_step_breaks_two_files)
    exp = tmp_path / "exp"
    # 12 files x 5 windows = 15 batches of 4: one epoch reads every window of both files.
    overrides = {**tiny_overrides, "max_steps": 15, "ckpt_every": 15, "log_every": 5}
    assert main(train_args(manifest, exp, overrides)) == 0
    out = capsys.readouterr().out
    ckpt = load_checkpoint(exp / "checkpoint.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["position"]) == (15, 0, 15)  # no step lost, none added
    logged = [line.split("\t") for line in (exp / "read_errors.tsv").read_text().splitlines()]
    assert {path for _, path, _ in logged} == {str(deleted), str(truncated)}
    # Every window of both files after the first batch: at most 10, at least 10 - 4.
    assert ckpt["skipped_windows"] == len(logged) and 6 <= len(logged) <= 10
    assert f'"skipped_windows": {len(logged)}' in out
    assert len((exp / "train_log.tsv").read_text().splitlines()) == 1 + 15


def test_files_that_go_bad_before_extraction_are_skipped_and_named(tiny_corpus, tmp_path, capsys):
    manifest = tmp_path / "train.tsv"
    assert main(["prepare", "--data", str(tiny_corpus), "--out", str(manifest)]) == 0
    utterances = read_manifest(manifest)
    gone = utterances[3]
    Path(gone.path).unlink()
    out = tmp_path / "features"
    capsys.readouterr()
    assert main(["extract", "--baseline", "mfcc", "--data", str(manifest), "--out", str(out),
                 "--num-workers", "0", "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {gone.id}" in err and "1 of 12 file(s) failed" in err
    index = (out / "mfcc" / "index.tsv").read_text().splitlines()[1:]
    assert len(index) == 11 and not any(line.startswith(gone.id + "\t") for line in index)


# --- alignments -----------------------------------------------------------------

def test_alignment_problems_are_reported_by_id(tmp_path):
    path = tmp_path / "aligned.txt"
    path.write_text("a 1 1 2 2 3\nb 0 0 0 0 0\nc 1 1 1 1 1 1 1 1 1 1\nd 0 40 41 0 0\n")
    with pytest.raises(ValueError, match="'d' has label 41 at frame 2"):
        load_alignments(path, num_classes=41)
    alignments = load_alignments(path)
    with pytest.raises(ValueError, match="utterance 'c': 10 label frames but 5 feature frames"):
        labels_for_frames(alignments["c"], 5, "c")


# --- configuration --------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("colour=blue", "unknown config key 'colour'"),
    ("batch_size=four", "'batch_size': expected an integer"),
    ("lr=-1", "'lr' must be positive"),
    ("window_samples=400", "shorter than the encoder's receptive field"),
    ("cpc_steps=25", "not more than cpc_steps=25"),
    ("cpc_negatives=200", "cpc_negatives=200 but only 79 frames"),
])
def test_bad_config_is_one_line_before_any_work(tiny_corpus, tiny_overrides, tmp_path, capsys, override, message):
    exp = tmp_path / "exp"
    key, value = override.split("=", 1)
    args = train_args(tiny_corpus, exp, {**tiny_overrides, key: value})  # a key given twice is an error of its own
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (exp / "checkpoint.pt").exists()
    assert not (exp / "manifest.tsv").exists()  # the corpus was not even scanned
