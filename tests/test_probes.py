"""Tests for the linear probes, their examples and reports, and the extract/probe CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audiossl.cli import main
from audiossl.config import build_config
from audiossl.extract import ExtractOptions, FeatureSet, extract, select_utterances
from audiossl.models.baselines import build_baseline
from audiossl.models.model import build_model
from audiossl.probes import (
    ProbeError,
    ProbeSettings,
    RunOptions,
    format_report,
    phone_probe,
    speaker_probe,
    train_linear_probe,
)
from audiossl.probes.linear import feature_statistics
from audiossl.probes.tasks import default_split, heldout_split, phone_examples, speaker_examples

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
ALIGNMENTS = DEMO / "converted_aligned_phones.txt"
SPLITS = {"train_split": DEMO / "train_split.txt", "test_split": DEMO / "test_split.txt"}
FAST = ProbeSettings(epochs=3, batch_size=256)
NO_FLOORS = RunOptions((), progress=False)
RESULT_KEYS = {"features", "role", "accuracy", "chance", "train_examples", "test_examples", "epochs", "missing"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the machine is shared


@pytest.fixture(scope="module")
def demo_mfcc(tmp_path_factory) -> Path:
    """The demo corpus's MFCC features: an extraction folder with an ``mfcc`` layer."""
    out = tmp_path_factory.mktemp("demo_features")
    utterances, _ = select_utterances(DEMO, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    extract(build_baseline("mfcc"), utterances, out, {"mfcc": "encoder"}, {"baseline": "mfcc"},
            ExtractOptions(progress=False))
    torch.set_num_threads(threads)
    return out


def blobs(num_classes: int, per_class: int, dim: int, seed: int, spread: float = 0.3):
    """Gaussian blobs around random unit-norm centres: linearly separable."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(num_classes), per_class)
    feats = 5.0 + 10.0 * (centres[labels] + spread / np.sqrt(dim) * rng.standard_normal((len(labels), dim)))
    order = rng.permutation(len(labels))
    return feats[order].astype(np.float32), labels[order]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_probe_separates_separable_classes(dtype):
    train_x, train_y = blobs(5, 200, 8, seed=0)
    test_x, test_y = blobs(5, 50, 8, seed=0)
    result = train_linear_probe(train_x.astype(dtype), train_y, test_x.astype(dtype), test_y, 5,
                                ProbeSettings(epochs=20, batch_size=64), progress=False)
    assert result.train_accuracy > 0.97 and result.accuracy > 0.95
    assert (result.dim, result.train_examples, result.heldout_examples, result.test_examples) == (8, 1000, 0, 250)
    # Without held-out examples every epoch runs and the last is kept.
    assert result.epochs == result.best_epoch == 20 and result.heldout_accuracy is None
    assert len(result.history["train_loss"]) == 20 and result.history["heldout_accuracy"] == []
    assert result.history["heldout_loss"] == []


def test_hidden_layer_probe_learns_what_a_linear_one_cannot():
    # XOR of two signs: no linear boundary does better than chance, one ReLU layer does.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1200, 2)).astype(np.float32)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)
    settings = ProbeSettings(epochs=60, batch_size=100, lr=1e-2)
    linear = train_linear_probe(x[:900], y[:900], x[900:], y[900:], 2, settings, progress=False)
    hidden = train_linear_probe(x[:900], y[:900], x[900:], y[900:], 2, dataclasses.replace(settings, hidden=32),
                                progress=False)
    assert linear.accuracy < 0.7
    assert hidden.accuracy > 0.9


def test_probe_is_reproducible_and_cannot_learn_noise():
    rng = np.random.default_rng(3)
    train_x, test_x = rng.standard_normal((600, 4)).astype(np.float32), rng.standard_normal((300, 4)).astype(np.float32)
    train_y, test_y = rng.integers(0, 3, 600), rng.integers(0, 3, 300)
    runs = [train_linear_probe(train_x, train_y, test_x, test_y, 3, FAST, progress=False) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0].accuracy < 0.5  # chance is 1/3


@pytest.mark.parametrize("patience", [0, 2, 4])
@pytest.mark.parametrize("spread", [0.3, 30.0])
def test_early_stopping_keeps_the_best_held_out_epoch(patience, spread):
    train_x, train_y = blobs(4, 100, 6, seed=1, spread=spread)
    held_x, held_y = blobs(4, 30, 6, seed=1, spread=spread)
    test_x, test_y = blobs(4, 30, 6, seed=1, spread=spread)
    settings = ProbeSettings(epochs=12, batch_size=32, patience=patience)
    result = train_linear_probe(train_x, train_y, test_x, test_y, 4, settings, progress=False,
                                heldout_feats=held_x, heldout_labels=held_y)
    curve, losses = result.history["heldout_accuracy"], result.history["heldout_loss"]
    assert len(curve) == len(losses) == len(result.history["train_loss"]) == result.epochs <= 12
    # The first epoch of the highest accuracy, equal accuracies told apart by the lower loss.
    ranked = max(range(len(curve)), key=lambda i: (curve[i], -losses[i], -i))
    assert result.best_epoch == 1 + ranked and result.heldout_accuracy == max(curve)
    if patience:
        # Stopped exactly when patience ran out, or at the last epoch.
        assert result.epochs == min(12, result.best_epoch + patience)
    else:
        assert result.epochs == 12
    # The kept weights are the best epoch's: scoring the held-out set again gives its accuracy.
    again = train_linear_probe(train_x, train_y, held_x, held_y, 4, settings, progress=False,
                               heldout_feats=held_x, heldout_labels=held_y)
    assert again.accuracy == pytest.approx(result.heldout_accuracy)


@pytest.mark.parametrize("count, fraction", [(88, 0.1), (10, 0.1), (3, 0.5), (1, 0.1), (50, 0.0)])
@pytest.mark.parametrize("seed", [1, 2])
def test_heldout_split_sets_aside_a_seeded_fraction(count, fraction, seed):
    ids = [f"u{i:03d}" for i in range(count)]
    fit, held = heldout_split(ids, fraction, seed)
    assert sorted(fit + held) == ids and not set(fit) & set(held)
    assert fit == [u for u in ids if u in fit] and held == [u for u in ids if u in held]  # order kept
    expected = 0 if fraction == 0 or count < 2 else max(1, round(fraction * count))
    assert len(held) == expected
    assert heldout_split(ids, fraction, seed) == (fit, held)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": -1}, {"lr": 0.0}, {"weight_decay": -1.0},
                                 {"patience": -1}, {"heldout_fraction": 1.0}])
def test_probe_settings_are_checked(bad):
    with pytest.raises(ValueError, match="probe settings"):
        ProbeSettings(**bad)


def test_probe_rejects_labels_out_of_range():
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        train_linear_probe(x, np.array([0, 1, 2, 3]), x, np.array([0, 0, 0, 0]), 3, FAST, progress=False)


def test_feature_statistics_match_numpy_and_survive_constant_dims():
    x = np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32) * [1, 5, 0] + [2, -1, 7]
    mean, std = feature_statistics(torch.from_numpy(x.astype(np.float32)), chunk=128)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), atol=1e-4)
    np.testing.assert_allclose(std.numpy()[:2], x.std(0)[:2], rtol=1e-4)
    assert std[2] == 1.0


def test_default_split_holds_out_a_fifth_of_each_speaker():
    speakers = {f"{s}-1-{i:04d}": s for s in ("a", "b") for i in range(10)}
    train, test = default_split(speakers)
    assert not set(train) & set(test) and set(train) | set(test) == set(speakers)
    assert sorted(speakers[u] for u in test) == ["a", "a", "b", "b"]


def test_phone_examples_pair_frames_with_labels(demo_mfcc):
    features = FeatureSet(demo_mfcc / "mfcc")
    ids = list(features.num_frames)[:3]
    labels = {u: np.arange(features.num_frames[u] + 1) % 41 for u in ids}  # one label too many: absorbed
    feats, targets = phone_examples(features, labels, ids)
    assert len(feats) == len(targets) == sum(features.num_frames[u] for u in ids)
    first = features.load(ids[0])
    np.testing.assert_array_equal(feats[: len(first)], first)
    np.testing.assert_array_equal(targets[: len(first)], labels[ids[0]][: len(first)])
    with pytest.raises(ProbeError, match="no phone alignment"):
        phone_examples(features, {}, ids)
    with pytest.raises(ProbeError, match="difference above tolerance"):
        phone_examples(features, {u: np.zeros(10, dtype=np.int64) for u in ids}, ids)


def test_phone_examples_need_100_hz_features(demo_mfcc, tmp_path):
    utterances, _ = select_utterances(DEMO, progress=False)
    cfg = build_config(overrides={"encoder_channels": 8, "context_dim": 8, "encoder_strides": [5, 4, 2, 2, 4]})
    slow = build_model(cfg.model)  # 320 samples per frame: 50 frames/s
    features = extract(slow, utterances[:2], tmp_path, ["encoder"], options=ExtractOptions(progress=False))["encoder"]
    with pytest.raises(ProbeError, match="50 frames/s"):
        phone_examples(features, {}, [utterances[0].id])


def test_speaker_examples_default_to_mean_pooled_utterances(demo_mfcc):
    features = FeatureSet(demo_mfcc / "mfcc")
    ids = list(features.num_frames)[:3]
    feats, labels = speaker_examples(features, ids, {s: 0 for s in features.speakers.values()})
    assert len(feats) == 3
    np.testing.assert_allclose(feats[1], features.load(ids[1]).mean(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window_frames", [0, 50, 128, 1000])
@pytest.mark.parametrize("pool", ["mean", "last"])
def test_speaker_examples_pool_windows(demo_mfcc, window_frames, pool):
    features = FeatureSet(demo_mfcc / "mfcc")
    ids = list(features.num_frames)[:4]
    index = {s: i for i, s in enumerate(sorted(set(features.speakers.values())))}
    feats, labels = speaker_examples(features, ids, index, window_frames, pool)
    sizes = [n if window_frames == 0 or n < window_frames else window_frames
             for n in (features.num_frames[u] for u in ids)]
    assert len(feats) == len(labels) == sum(features.num_frames[u] // size for u, size in zip(ids, sizes))
    first = features.load(ids[0])[: sizes[0]]
    expected = first.mean(0) if pool == "mean" else first[-1]
    np.testing.assert_allclose(feats[0], expected, rtol=1e-5, atol=1e-5)
    assert labels[0] == index[features.speakers[ids[0]]]
    with pytest.raises(ProbeError, match="absent from training"):
        speaker_examples(features, ids, {}, window_frames, pool)


def test_phone_probe_reports_layers_beside_the_floor(demo_mfcc):
    report = phone_probe(demo_mfcc, ALIGNMENTS, layers=["mfcc"], phones=DEMO / "phones.txt", settings=FAST,
                         options=RunOptions(["logmel"], progress=False), **SPLITS)
    assert [(r["features"], r["role"]) for r in report["results"]] == [("mfcc", "baseline"), ("logmel", "baseline")]
    assert FeatureSet(demo_mfcc / "logmel").meta["source"] == {"baseline": "logmel"}
    assert report["num_classes"] == 41 and report["train_utterances"] == 88 and report["test_utterances"] == 24
    assert report["heldout_utterances"] == 9
    for row in report["results"]:
        assert RESULT_KEYS <= set(row) and 0 <= row["chance"] < row["accuracy"] <= 1
        assert row["train_examples"] > 20000 and row["heldout_examples"] > 1000 and row["test_examples"] > 5000
        assert row["missing"] == {"alignments": {"count": 0, "ids": []}, "features": {"count": 0, "ids": []}}
        # Hand-made features separate the demo's phones far better than always answering silence.
        assert row["accuracy"] > row["chance"] + 0.15
        assert 1 <= row["best_epoch"] <= row["epochs"] <= FAST.epochs
    assert (report["accuracy"], report["chance"]) == (report["results"][0]["accuracy"], report["results"][0]["chance"])
    json.dumps(report)


def test_probes_report_split_utterances_they_cannot_use(demo_mfcc, tmp_path):
    """Utterances missing from the alignments or the features are dropped and listed, not silently."""
    train_ids = SPLITS["train_split"].read_text().split()
    alignments = tmp_path / "alignments.txt"
    unaligned = set(train_ids[:3])
    alignments.write_text("".join(line + "\n" for line in ALIGNMENTS.read_text().splitlines()
                                  if line.split()[0] not in unaligned))
    train = tmp_path / "train.txt"
    train.write_text("\n".join([*train_ids, "9-9-0001", "9-9-0002"]) + "\n")  # no audio, no features
    splits = {"train_split": train, "test_split": SPLITS["test_split"]}
    report = phone_probe(demo_mfcc, alignments, layers=["mfcc"], settings=FAST, options=NO_FLOORS, **splits)
    (row,) = report["results"]
    assert row["missing"]["alignments"]["count"] == 5  # the two unknown ids have no alignment either
    assert set(row["missing"]["alignments"]["ids"]) == unaligned | {"9-9-0001", "9-9-0002"}
    assert row["missing"]["features"] == {"count": 0, "ids": []}
    assert "dropped: 5 split utterance(s) without phone alignments" in format_report(report)
    report = speaker_probe(demo_mfcc, layers=["mfcc"], settings=FAST, options=NO_FLOORS, **splits)
    (row,) = report["results"]
    assert "alignments" not in row["missing"]
    assert row["missing"]["features"] == {"count": 2, "ids": ["9-9-0001", "9-9-0002"]}
    assert "dropped from mfcc: 2 split utterance(s) without features" in format_report(report)


def test_metrics_record_the_utterances_scored_beside_those_requested(demo_mfcc, tmp_path):
    """52 split utterances without alignments were dropped, yet metrics.json said 88 / 24 and nothing else."""
    train_ids, test_ids = (SPLITS[s].read_text().split() for s in ("train_split", "test_split"))
    unaligned = set(train_ids[:40] + test_ids[:12])
    alignments = tmp_path / "alignments.txt"
    alignments.write_text("".join(line + "\n" for line in ALIGNMENTS.read_text().splitlines()
                                  if line.split()[0] not in unaligned))
    report = phone_probe(demo_mfcc, alignments, layers=["mfcc"], settings=FAST, options=NO_FLOORS, **SPLITS)
    (row,) = report["results"]
    assert (report["train_utterances"], report["test_utterances"]) == (88, 24)  # requested: the splits
    assert row["missing"]["alignments"]["count"] == 52
    assert (row["train_utterances"] + row["heldout_utterances"], row["test_utterances"]) == (48, 12)  # scored
    assert row["heldout_utterances"] == sum(u not in unaligned for u in heldout_split(train_ids, 0.1, FAST.seed)[1])
    assert f"88 training utterances ({report['heldout_utterances']} held out to choose the epoch) / 24 test; " \
           f"scored 48 ({row['heldout_utterances']}) / 12" in format_report(report)


def test_speaker_probe_on_default_split(demo_mfcc):
    report = speaker_probe(demo_mfcc, layers=["mfcc"], options=NO_FLOORS,
                           settings=ProbeSettings(epochs=30, batch_size=16))
    (row,) = report["results"]
    assert report["unit"] == "utterance (mean)"  # mean-pooled utterances by default
    assert report["num_classes"] == 8 and row["test_examples"] == report["test_utterances"] == 16
    assert row["train_examples"] + row["heldout_examples"] == report["train_utterances"]
    assert row["accuracy"] > 0.8 > row["chance"]


def test_probe_input_errors(demo_mfcc, tmp_path):
    with pytest.raises(ProbeError, match="both"):
        speaker_probe(demo_mfcc, layers=["mfcc"], train_split=SPLITS["train_split"], options=NO_FLOORS)
    split = tmp_path / "test.txt"
    split.write_text("0-0-0000\n")
    with pytest.raises(ProbeError, match="no test utterance has both features and labels"):
        speaker_probe(demo_mfcc, layers=["mfcc"], train_split=SPLITS["train_split"], test_split=split,
                      options=NO_FLOORS)
    with pytest.raises(ProbeError, match="unknown baseline"):
        speaker_probe(demo_mfcc, layers=["mfcc"], options=RunOptions(["wav2vec"], progress=False))


def small_splits(folder: Path, per_speaker: int = 3) -> dict[str, Path]:
    """The demo splits cut to ``per_speaker`` training and one test utterance per speaker."""
    splits = {}
    for name, count in (("train_split", per_speaker), ("test_split", 1)):
        kept: dict[str, list[str]] = {}
        for utt_id in SPLITS[name].read_text().split():
            kept.setdefault(utt_id.split("-")[0], []).append(utt_id)
        splits[name] = folder / f"{name}.txt"
        splits[name].write_text("".join(u + "\n" for ids in kept.values() for u in ids[:count]))
    return splits


def read_curves(tb: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb))
    events.Reload()
    return {tag: [e.value for e in sorted(events.Scalars(tag), key=lambda e: e.step)]
            for tag in events.Tags()["scalars"]}


def test_cli_train_extract_probe(tmp_path, tiny_overrides, capsys):
    exp, feats = tmp_path / "exp", tmp_path / "feats"
    ckpt = str(exp / "checkpoint.pt")
    overrides = [f"{k}={v}" for k, v in tiny_overrides.items()]
    assert main(["train", "--data", str(DEMO), "--exp-dir", str(exp), "--no-progress", *overrides]) == 0
    splits = small_splits(tmp_path)
    split_args = ["--train-split", str(splits["train_split"]), "--test-split", str(splits["test_split"])]
    run = ["--device", "cpu", "--num-workers", "0", "--no-progress"]
    ids = ["--ids", str(splits["train_split"]), "--ids", str(splits["test_split"])]
    assert main(["extract", "--ckpt", ckpt, "--data", str(DEMO), "--out", str(feats), "--layer", "context,encoder",
                 "--format", "npz", "--chunk-seconds", "0.5", *run, *ids]) == 0
    assert main(["extract", "--baseline", "mfcc", "--data", str(DEMO), "--out", str(feats), *run, *ids]) == 0
    assert sorted(FeatureSet(feats / "context").num_frames) == sorted(FeatureSet(feats / "mfcc").num_frames)
    capsys.readouterr()

    # --features: the layers beside the floors; --out gets metrics.json, report.txt and TensorBoard curves.
    out = tmp_path / "probe_phone"
    assert main(["probe", "phone", "--features", str(feats), "--layer", "context,encoder", "--baselines", "mfcc",
                 "--alignments", str(ALIGNMENTS), "--phones", str(DEMO / "phones.txt"), "epochs=3",
                 *split_args, "--out", str(out), *run]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["task"], metrics["num_classes"]) == ("phone", 41)
    assert metrics["scores"] == [{"key": "accuracy", "label": "accuracy", "lower_is_better": False}]
    assert [(r["features"], r["role"]) for r in metrics["results"]] == [
        ("context", "model"), ("encoder", "model"), ("mfcc", "baseline")]
    assert (out / "report.txt").read_text().strip() in printed
    curves = read_curves(out / "tb")
    for row in metrics["results"]:
        assert RESULT_KEYS <= set(row) and 0 <= row["accuracy"] <= 1 and 1 <= row["best_epoch"] <= row["epochs"] <= 3
        assert len(curves[f"{row['features']}/train_loss"]) == row["epochs"]
        assert curves[f"{row['features']}/heldout_accuracy"] == pytest.approx(row["history"]["heldout_accuracy"])

    # --ckpt: extracted into OUT/features first; a second run reuses them.
    out = tmp_path / "probe_speaker"
    argv = ["probe", "speaker", "--checkpoint", ckpt, "--layers", "context", "--data", str(DEMO),  # the aliases
            "--baselines", "none", "epochs=3", *split_args, "--out", str(out), *run]
    assert main(argv) == 0
    cached = FeatureSet(out / "features" / "context")
    stamps = {path: path.stat().st_mtime_ns for path in cached.paths.values()}
    assert len(stamps) == 8 * 4 and cached.meta["source"]["checkpoint"] == str(Path(ckpt).resolve())
    assert main(argv) == 0
    assert {path: path.stat().st_mtime_ns for path in cached.paths.values()} == stamps
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["features"] for r in metrics["results"]] == ["context"] and metrics["unit"] == "utterance (mean)"
    assert metrics["num_classes"] == 8

    # --baseline: the hand-made feature is the main source and brings no other floor.
    out = tmp_path / "probe_phone_mfcc"
    assert main(["probe", "phone", "--baseline", "mfcc", "--data", str(DEMO), "--alignments", str(ALIGNMENTS),
                 "epochs=3", *split_args, "--out", str(out), *run]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [(r["features"], r["role"]) for r in metrics["results"]] == [("mfcc", "baseline")]
    assert metrics["accuracy"] > metrics["chance"]


@pytest.mark.parametrize("argv, message", [
    (["probe", "speaker", "--features", "{tmp}/none"], "not a feature folder"),
    (["extract", "--checkpoint", "{tmp}/missing.pt", "--data", str(DEMO), "--out", "{tmp}/x"], "no such checkpoint"),
    (["probe", "speaker", "--features", "{demo}", "--layers", "mfcc", "epochs=0"], "probe settings"),
    (["probe", "speaker", "--ckpt", "{tmp}/missing.pt"], "--data"),
    (["probe", "phone", "--baseline", "mfcc", "--alignments", str(ALIGNMENTS)], "--data"),
])
def test_cli_user_errors_are_one_line(tmp_path, demo_mfcc, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, demo=demo_mfcc) for a in argv]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
