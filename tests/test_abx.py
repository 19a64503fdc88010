"""Tests for the ABX phone discriminability probe: items, triples, batched DTW, error rates."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from audiossl.cli import main
from audiossl.probes.abx.dtw import dtw_mean_cost, pair_distances
from audiossl.probes.abx.items import find_items
from audiossl.probes.abx.labels import CONDITIONS, ABXSettings, abx_score, sample_triples

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the machine is shared


def naive_dtw(cost: np.ndarray) -> float:
    """ABXpy's normalized DTW for one matrix: sum along the best path, backtracked, over its length."""
    rows, cols = cost.shape
    acc = np.full((rows, cols), math.inf)
    for i in range(rows):
        for j in range(cols):
            if i == 0 and j == 0:
                acc[i, j] = cost[0, 0]
                continue
            before = [acc[i - 1, j - 1] if i and j else math.inf, acc[i - 1, j] if i else math.inf,
                      acc[i, j - 1] if j else math.inf]
            acc[i, j] = cost[i, j] + min(before)
    i, j, length = rows - 1, cols - 1, 1
    while i or j:
        before = [acc[i - 1, j - 1] if i and j else math.inf, acc[i - 1, j] if i else math.inf,
                  acc[i, j - 1] if j else math.inf]
        step = int(np.argmin(before))  # first minimum: diagonal, then above, then left
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
        length += 1
    return acc[-1, -1] / length


def random_utterances(num_speakers: int, per_speaker: int, num_runs: int, num_phones: int, seed: int):
    """Labels made of runs (2-6 frames) of phones 1..num_phones, with silence (0) at both ends."""
    rng = np.random.default_rng(seed)
    labels, speakers = {}, {}
    for s, u in itertools.product(range(num_speakers), range(per_speaker)):
        phones = rng.integers(1, num_phones + 1, num_runs)
        runs = [0] + [p for i, p in enumerate(phones) if i == 0 or p != phones[i - 1]] + [0]
        labels[f"{s}-1-{u}"] = np.repeat(runs, rng.integers(2, 7, len(runs))).astype(np.int64)
        speakers[f"{s}-1-{u}"] = str(s)
    return labels, speakers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_dtw_equals_naive_dp(seed):
    rng = np.random.default_rng(seed)
    batch, max_rows, max_cols = 12, 7, 9
    cost = rng.random((batch, max_rows, max_cols)).astype(np.float32)
    rows, cols = rng.integers(1, max_rows + 1, batch), rng.integers(1, max_cols + 1, batch)
    rows[0], cols[0] = 1, 1  # one-frame items
    got = dtw_mean_cost(torch.from_numpy(cost), torch.from_numpy(rows), torch.from_numpy(cols)).numpy()
    expected = [naive_dtw(cost[b, : rows[b], : cols[b]]) for b in range(batch)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("distance", ["angular", "cosine"])
def test_pair_distances_equal_one_pair_at_a_time(distance):
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 12, 10)
    frames = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((lengths.sum(), 5))).float(), dim=1)
    offsets = np.cumsum(lengths) - lengths
    pairs = np.array([(a, b) for a in range(10) for b in range(10) if a != b])
    got = pair_distances(frames, torch.from_numpy(offsets), torch.from_numpy(lengths), torch.from_numpy(pairs),
                         distance).numpy()
    for (a, b), value in zip(pairs, got):
        x, y = (frames[o: o + n].numpy() for o, n in ((offsets[a], lengths[a]), (offsets[b], lengths[b])))
        similarity = np.clip(x @ y.T, -1, 1)
        cost = np.arccos(similarity) / np.pi if distance == "angular" else 1 - similarity
        assert value == pytest.approx(naive_dtw(cost), rel=1e-4, abs=1e-5)


def test_items_are_non_silent_runs_with_both_neighbours():
    items = find_items({"1-1-1": np.array([0, 0, 1, 1, 2, 0, 3, 3, 0]), "2-1-1": np.array([4, 4, 4])},
                       {"1-1-1": "1", "2-1-1": "2"})
    assert items.centre.tolist() == [1, 2, 3]
    assert items.left.tolist() == [0, 1, 0] and items.right.tolist() == [2, 0, 0]
    assert items.start.tolist() == [2, 4, 6] and items.end.tolist() == [4, 5, 8]
    assert items.utterance.tolist() == [0, 0, 0] and items.speakers == ["1", "2"]
    with_silence = find_items({"1-1-1": np.array([0, 0, 1, 1, 2, 0, 3, 3, 0])}, {"1-1-1": "1"}, silence=None)
    assert with_silence.centre.tolist() == [1, 2, 0, 3]


def brute_force_triples(items, condition: str, context: str) -> set[tuple[int, int, int]]:
    found = set()
    for a, b, x in itertools.product(range(len(items)), repeat=3):
        same_context = context == "none" or (items.left[a], items.right[a]) == (items.left[b], items.right[b]) \
            == (items.left[x], items.right[x])
        speakers = (items.speaker[a], items.speaker[b], items.speaker[x])
        by_speaker = (speakers[0] == speakers[1] == speakers[2] if condition == "within"
                      else speakers[0] == speakers[1] != speakers[2])
        if (a != x and items.centre[a] == items.centre[x] != items.centre[b] and same_context and by_speaker):
            found.add((a, b, x))
    return found


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("context", ["triphone", "none"])
def test_triples_follow_the_abx_conditions(condition, context):
    labels, speakers = random_utterances(3, 2, 12, 3, seed=4)
    items = find_items(labels, speakers)
    expected = brute_force_triples(items, condition, context)
    assert expected  # the toy corpus has triples of every kind
    every = sample_triples(items, condition, context, max_per_item=0)
    assert len(every) == len(expected) and set(map(tuple, every.tolist())) == expected


@pytest.mark.parametrize("condition", CONDITIONS)
def test_triple_cap_is_seeded(condition):
    labels, speakers = random_utterances(3, 2, 12, 3, seed=5)
    items = find_items(labels, speakers)
    every = set(map(tuple, sample_triples(items, condition, "none", 0).tolist()))
    capped = sample_triples(items, condition, "none", max_per_item=4, seed=7)
    assert set(map(tuple, capped.tolist())) <= every
    assert len(set(map(tuple, capped.tolist()))) == len(capped)  # drawn without replacement
    per_x = np.bincount(capped[:, 2], minlength=len(items))
    full_per_x = np.bincount(np.array(sorted(every))[:, 2], minlength=len(items))
    np.testing.assert_array_equal(per_x, np.minimum(full_per_x, 4))
    np.testing.assert_array_equal(capped, sample_triples(items, condition, "none", max_per_item=4, seed=7))
    assert not np.array_equal(capped, sample_triples(items, condition, "none", max_per_item=4, seed=8))


def features_for(labels, kind: str, seed: int, dim: int = 16):
    rng = np.random.default_rng(seed)
    if kind == "one-hot":
        return {u: np.eye(dim, dtype=np.float32)[lab] + 0.01 * rng.standard_normal((len(lab), dim)).astype(np.float32)
                for u, lab in labels.items()}
    return {u: rng.standard_normal((len(lab), dim)).astype(np.float32) for u, lab in labels.items()}


@pytest.mark.parametrize("context", ["triphone", "none"])
def test_abx_is_zero_on_phone_features_and_chance_on_noise(context):
    labels, speakers = random_utterances(4, 3, 40, 4, seed=6)
    settings = ABXSettings(context=context, max_triples_per_item=10)
    perfect = abx_score(features_for(labels, "one-hot", 0), labels, speakers, settings)
    noise = abx_score(features_for(labels, "noise", 1), labels, speakers, settings)
    for condition in CONDITIONS:
        assert perfect[condition]["num_triples"] > 100
        assert perfect[condition]["error"] == 0.0
        assert 0.4 < noise[condition]["error"] < 0.6


def test_abx_error_averages_per_speaker_cell_before_pooling():
    # Speaker 0: three items of phone 1 and one of phone 2, six triples, no error. Speaker 1: two items of
    # phone 1 and one of phone 2, but its last phone-1 item looks like phone 2: one triple ties (0.5), the
    # other errs (1). Cells are averaged first: (0 + 0.75) / 2, not (0 * 6 + 1.5) / 8.
    labels = {"0-1-0": np.array([0, 1, 1, 0, 2, 2, 0, 1, 1, 0, 1, 1, 0]),
              "1-1-0": np.array([0, 1, 1, 0, 2, 2, 0, 1, 1, 0])}
    speakers = {u: u[0] for u in labels}
    feats = {u: np.eye(4, dtype=np.float32)[lab] for u, lab in labels.items()}
    feats["1-1-0"][7:9] = np.eye(4, dtype=np.float32)[2]
    result = abx_score(feats, labels, speakers, ABXSettings(context="none", max_triples_per_item=0))
    assert result["within"]["num_triples"] == 8
    assert result["within"]["error"] == pytest.approx(0.375)


def test_cli_scores_the_demo_corpus(tmp_path, capsys):
    out = tmp_path / "abx"
    args = ["probe", "abx", "--baseline", "mfcc", "--data", str(DEMO), "--alignments",
            str(DEMO / "converted_aligned_phones.txt"), "--phones", str(DEMO / "phones.txt"), "--split",
            str(DEMO / "test_split.txt"), "context=none", "max_triples_per_item=5", "--out", str(out),
            "--no-progress", "--device", "cpu", "--num-workers", "0"]
    assert main(args) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert (report["utterances"], report["speakers"], report["silence"]) == (24, 8, 0)
    (row,) = report["results"]
    assert row["features"] == "mfcc" and row["role"] == "baseline"
    for condition in CONDITIONS:
        assert 0 < row["conditions"][condition]["num_triples"] <= 5 * row["num_items"]
        assert 0.0 <= row[condition] < 0.3  # MFCC separate the demo's synthetic phones well
    assert (out / "report.txt").read_text() in capsys.readouterr().out
    assert main([*args, "max_triples_per_item=-1"]) == 2
    assert "max_triples_per_item" in capsys.readouterr().err
