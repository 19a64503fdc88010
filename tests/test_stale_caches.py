"""Caches that must follow the corpus, and extraction batches bounded by audio length.

A re-run after audio files changed or appeared redoes exactly those (features
and the training manifest, keyed on each file's size and modification time)
and says what it reused, added and redid; temporary files a ``kill -9`` left
are removed; extraction batches hold at most ``batch_seconds`` of padded audio.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from audiossl.cli import main
from audiossl.data.corpus import read_manifest
from audiossl.data.utterance_batches import length_batches
from audiossl.extract import FeatureSet

from conftest import synth_utterance

pytestmark = pytest.mark.usefixtures("one_thread")
RATE = 16000


def extract_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--baseline", "mfcc", "--data", str(data), "--out", str(out), "--num-workers", "0",
            "--device", "cpu", "--no-progress", *extra]


def rewrite(path: Path, seconds: float, seed: int) -> None:
    """New audio of another length under the same name, with a later modification time."""
    soundfile.write(str(path), synth_utterance(np.random.default_rng(seed), int(seconds * RATE)), RATE)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_extract_redoes_changed_audio_adds_new_and_reuses_the_rest(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "features"
    assert main(extract_args(tiny_corpus, out)) == 0
    first = FeatureSet(out / "mfcc")
    changed = sorted(tiny_corpus.rglob("*.flac"))[4]
    changed_id = changed.stem
    kept = {u: first.load(u) for u in first.num_frames if u != changed_id}
    rewrite(changed, 2.5, seed=7)
    added = changed.with_name(changed.stem[:-4] + "0009.flac")
    rewrite(added, 1.2, seed=8)
    capsys.readouterr()

    assert main(extract_args(tiny_corpus, out)) == 0
    out_text = capsys.readouterr().out
    assert "11 array set(s) reused, 1 added, 1 redone" in out_text and changed_id in out_text
    second = FeatureSet(out / "mfcc")
    assert second.num_frames[changed_id] == 250 and second.load(changed_id).shape[0] == 250  # the new 2.5 s
    assert added.stem in second.num_frames
    assert all(np.array_equal(second.load(u), array) for u, array in kept.items())
    utterances = {u.id: u for u in second.utterances}
    assert utterances[changed_id].num_samples == int(2.5 * RATE)  # utterances.tsv and the array agree


def test_extract_removes_the_temporary_files_of_a_killed_run(tiny_corpus, tmp_path):
    out = tmp_path / "features"
    assert main(extract_args(tiny_corpus, out)) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited: what kill -9 leaves is named like its files
    leftovers = [out / "mfcc" / "train-clean-100" / "19" / "191" / f".19-191-0000.npy.tmp{pid}",
                 out / "mfcc" / f".index.tsv.tmp{pid}"]
    for path in leftovers:
        path.write_bytes(b"\x93NUMPY half")
    assert main(extract_args(tiny_corpus, out)) == 0
    assert not any(path.exists() for path in leftovers)
    assert not [p for p in (out / "mfcc").rglob(".*")]


def test_training_manifest_follows_added_changed_and_removed_files(tiny_corpus, tiny_overrides, tmp_path, capsys):
    exp = tmp_path / "exp"
    def args(steps: int) -> list[str]:
        return ["train", "--data", str(tiny_corpus), "--exp-dir", str(exp), "--no-progress",
                *(f"{k}={v}" for k, v in {**tiny_overrides, "max_steps": steps}.items())]

    assert main(args(1)) == 0
    files = sorted(tiny_corpus.rglob("*.flac"))
    rewrite(files[0], 2.0, seed=3)
    files[1].unlink()
    new = files[2].with_name(files[2].stem[:-4] + "0007.flac")
    rewrite(new, 1.5, seed=4)
    capsys.readouterr()
    assert main(args(2)) == 0
    out = capsys.readouterr().out
    assert "10 files reused, 1 added, 1 changed and scanned again, 1 gone" in out
    manifest = {u.id: u for u in read_manifest(exp / "manifest.tsv")}
    assert len(manifest) == 12 and files[1].stem not in manifest and new.stem in manifest
    assert manifest[files[0].stem].num_samples == 2 * RATE
    capsys.readouterr()
    assert main(args(3)) == 0
    assert "reused the scan of all 12 files" in capsys.readouterr().out


def test_extraction_batches_are_bounded_by_padded_seconds():
    seconds = [1200.0, 40.0, 30.0, 20.0, 20.0, 10.0, 5.0, 5.0, 5.0, 5.0, 5.0, 3.0]  # sorted longest first
    batches = length_batches(seconds, batch_size=8, batch_seconds=60)
    assert batches[0] == [0]  # the 20-minute file alone
    assert sorted(i for batch in batches for i in batch) == list(range(len(seconds)))
    for batch in batches:
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * seconds[batch[0]] <= 60  # padded to its longest
    assert [len(b) for b in length_batches([2.0] * 20, batch_size=8, batch_seconds=160)] == [8, 8, 4]


def test_bounded_batches_give_the_same_features(tiny_corpus, tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    assert main(extract_args(tiny_corpus, one, "--batch-seconds", "0.5")) == 0  # every file alone
    assert main(extract_args(tiny_corpus, many, "--batch-size", "12")) == 0
    a, b = FeatureSet(one / "mfcc"), FeatureSet(many / "mfcc")
    for utt in a.num_frames:
        np.testing.assert_allclose(a.load(utt), b.load(utt), atol=1e-4, rtol=1e-4)
