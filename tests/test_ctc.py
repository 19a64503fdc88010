"""Tests for the CTC recognition probes: decoding, edit distance, units, heads and a toy task."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audiossl.cli import main
from audiossl.probes.ctc.head import (
    CTCHead,
    edit_distance,
    error_rate,
    greedy_decode,
    min_ctc_frames,
    reverse_padded,
    train_ctc_head,
    transcribe,
)
from audiossl.probes.ctc.probe import CTCSettings
from audiossl.probes.ctc.targets import load_transcripts, normalize_text, phone_sequence, silence_class, train_units
from audiossl.probes.tasks import ProbeError

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the machine is shared


def full_table_edit_distance(ref, hyp) -> int:
    table = np.zeros((len(ref) + 1, len(hyp) + 1), dtype=int)
    table[:, 0], table[0, :] = np.arange(len(ref) + 1), np.arange(len(hyp) + 1)
    for i, j in itertools.product(range(1, len(ref) + 1), range(1, len(hyp) + 1)):
        table[i, j] = min(table[i - 1, j] + 1, table[i, j - 1] + 1, table[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    return int(table[-1, -1])


@pytest.mark.parametrize("ref, hyp, distance", [
    ("kitten", "sitting", 3),
    ("flaw", "lawn", 2),
    ("", "abc", 3),
    ("abc", "", 3),
    ("same", "same", 0),
    (["the", "cat", "sat"], ["the", "bat", "sat", "down"], 2),
    (np.array([1, 2, 3]), np.array([3, 2, 1]), 2),
    (np.array([5, 5, 5]), np.array([5]), 2),
])
def test_edit_distance_hand_examples(ref, hyp, distance):
    assert edit_distance(ref, hyp) == distance


@pytest.mark.parametrize("seed", range(4))
def test_edit_distance_equals_the_full_table(seed):
    rng = np.random.default_rng(seed)
    ref, hyp = rng.integers(0, 4, rng.integers(0, 15)), rng.integers(0, 4, rng.integers(0, 15))
    assert edit_distance(ref, hyp) == full_table_edit_distance(ref.tolist(), hyp.tolist())


def test_error_rate_pools_edits_over_reference_length():
    assert error_rate([("abcd", "abcd"), ("ab", "xyz")]) == pytest.approx(3 / 6)


def test_greedy_decoding_collapses_repeats_and_drops_blanks():
    paths = torch.tensor([[0, 1, 1, 0, 1, 2, 2, 0, 3], [2, 2, 0, 2, 3, 3, 1, 1, 1]])
    logits = torch.nn.functional.one_hot(paths, 4).float()  # (B, T, C)
    decoded = greedy_decode(logits, torch.tensor([9, 5]))
    assert decoded[0].tolist() == [1, 1, 2, 3]
    assert decoded[1].tolist() == [2, 2, 3]  # frames past the length are ignored


def test_ctc_frame_requirement_counts_repeats():
    assert min_ctc_frames(np.array([1, 1, 2, 2, 2, 3])) == 9
    assert min_ctc_frames(np.array([], dtype=np.int64)) == 0


def test_phone_sequences_merge_runs_and_drop_silence():
    labels = np.array([0, 0, 3, 3, 5, 0, 5, 5, 0])
    assert phone_sequence(labels, silence=0).tolist() == [3, 5, 5]
    assert phone_sequence(labels, silence=None).tolist() == [0, 3, 5, 0, 5, 0]
    assert silence_class(DEMO / "phones.txt") == 0 and silence_class(None) == 0


def test_bilstm_head_on_a_padded_batch_equals_single_runs():
    torch.manual_seed(0)
    head = CTCHead(5, 7, "bilstm", hidden=6, layers=2).eval()
    lengths = torch.tensor([9, 4, 6])
    feats = torch.randn(3, 9, 5)
    x = torch.arange(9).view(1, 9, 1).expand(3, 9, 1)
    assert reverse_padded(x, lengths)[1, :, 0].tolist() == [3, 2, 1, 0, 4, 5, 6, 7, 8]
    batched = head(feats, lengths)
    for row, length in enumerate(lengths.tolist()):
        single = head(feats[row: row + 1, :length], lengths[row: row + 1])
        torch.testing.assert_close(batched[row: row + 1, :length], single, atol=1e-5, rtol=1e-5)


def toy_utterances(count: int, seed: int, num_phones: int = 5):
    """Frame labels: runs (2-5 frames) of phones 1..num_phones, sometimes silence (0); one-hot features + noise."""
    rng = np.random.default_rng(seed)
    feats, targets = [], []
    for _ in range(count):
        runs = rng.integers(0, num_phones + 1, rng.integers(4, 10))
        labels = np.repeat(runs, rng.integers(2, 6, len(runs)))
        feats.append(np.eye(num_phones + 1, dtype=np.float32)[labels]
                     + 0.1 * rng.standard_normal((len(labels), num_phones + 1)).astype(np.float32))
        targets.append(phone_sequence(labels, silence=0) + 1)  # class k + 1; 0 is the blank
    return feats, targets


@pytest.mark.parametrize("head", ["linear", "bilstm"])
def test_ctc_head_learns_a_toy_phone_mapping(head):
    train_feats, train_targets = toy_utterances(48, seed=0)
    test_feats, test_targets = toy_utterances(16, seed=1)
    settings = CTCSettings(head=head, hidden=16, epochs=25, batch_size=8, lr=0.05 if head == "linear" else 0.02)
    trained = train_ctc_head(train_feats, train_targets, 7, settings, progress=False,
                             heldout_feats=test_feats[:4], heldout_targets=test_targets[:4])
    hyps, loss = transcribe(trained.head, trained.mean, trained.std, test_feats, test_targets)
    assert error_rate(list(zip(test_targets, hyps))) < 0.05
    assert loss < 0.5
    assert trained.history["train_loss"][-1] < trained.history["train_loss"][0]
    assert 1 <= trained.best_epoch <= trained.epochs == len(trained.history["train_loss"])


def test_transcripts_are_read_and_normalized(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1-2.trans.txt").write_text("1-2-0000 HELLO  WORLD\n1-2-0001 it's  fine \n")
    assert load_transcripts([tmp_path]) == {"1-2-0000": "HELLO WORLD", "1-2-0001": "IT'S FINE"}
    assert normalize_text("  a\tb  c ") == "A B C"
    with pytest.raises(ProbeError, match="second transcript"):
        load_transcripts([tmp_path, tmp_path / "a" / "1-2.trans.txt"])


@pytest.mark.parametrize("sp_type", ["unigram", "bpe"])
def test_sentencepiece_units_round_trip_and_are_reused(tmp_path, sp_type):
    texts = list(load_transcripts([DEMO]).values())
    assert len(texts) == 112
    path = tmp_path / "units.model"
    units = train_units(texts, path, vocab_size=60, model_type=sp_type)
    assert 2 < units.size <= 60
    for text in texts:
        ids = units.encode(text)
        assert 0 not in ids  # no unknown piece in the training text
        assert units.decode(ids) == normalize_text(text)
    modified = path.stat().st_mtime_ns
    again = train_units(texts, path, vocab_size=60, model_type=sp_type)
    assert path.stat().st_mtime_ns == modified and again.encode(texts[0]) == units.encode(texts[0])
    with pytest.raises(ProbeError, match="vocab_size"):
        train_units(texts, path, vocab_size=80, model_type=sp_type)


def test_cli_runs_both_ctc_probes_on_the_demo_corpus(tmp_path, capsys):
    out = tmp_path / "ctc"
    common = ["--baseline", "mfcc", "--data", str(DEMO), "--train-split", str(DEMO / "train_split.txt"),
              "--test-split", str(DEMO / "test_split.txt"), "epochs=3", "--out", str(out), "--no-progress",
              "--device", "cpu", "--num-workers", "0"]
    assert main(["probe", "ctc-phone", *common, "--alignments", str(DEMO / "converted_aligned_phones.txt"),
                 "--phones", str(DEMO / "phones.txt")]) == 0
    report = json.loads((out / "metrics.json").read_text())
    (row,) = report["results"]
    assert report["num_units"] == 40 and report["silence"] == 0  # SIL dropped
    assert (row["features"], row["test_utterances"], row["missing"]["too_short"]["count"]) == ("mfcc", 24, 0)
    assert row["per"] > 0 and row["epochs"] <= 3 and (out / "tb").is_dir()

    subword = ["probe", "ctc-subword", *common, "--vocab-size", "40", "--sp-type", "bpe"]
    assert main(subword) == 0
    (row,) = json.loads((out / "metrics.json").read_text())["results"]
    assert row["cer"] > 0 and row["wer"] > 0 and len(row["examples"]) == 3
    units = out / "units.model"
    made = units.stat().st_mtime_ns
    assert main(subword) == 0 and units.stat().st_mtime_ns == made  # reused
    capsys.readouterr()
    assert main([*subword[:-4], "--vocab-size", "50", "--sp-type", "bpe"]) == 2
    assert "units.model was made with other settings" in capsys.readouterr().err
