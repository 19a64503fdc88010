"""Tests for ``audiossl report``: figures and report.md from an experiment folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from audiossl.cli import main
from audiossl.report.analysis import linear_confusion, pca_2d
from audiossl.report.experiment import read_probe_scores
from audiossl.report.page import SECTIONS, make_report

FIGURES = [filename for _, filename, _ in SECTIONS]
UNIT_FIGURES = {"units_quality.png", "units_utterance.png"}  # need audiossl units fit and probe units
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PHONES = ["SIL", "AA", "B", "K"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the machine is shared


def write_labels(corpus: Path) -> list[str]:
    """CPC-style alignments (one label per 160 samples), phones.txt and splits for ``tiny_corpus``."""
    import soundfile

    rng = np.random.default_rng(0)
    ids, lines = [], []
    for path in sorted(corpus.rglob("*.flac")):
        frames = soundfile.info(str(path)).frames // 160
        runs = rng.integers(5, 15, size=frames)
        labels = np.repeat(rng.integers(0, len(PHONES), size=frames), runs)[:frames]
        ids.append(path.stem)
        lines.append(" ".join([path.stem, *map(str, labels)]))
    (corpus / "converted_aligned_phones.txt").write_text("\n".join(lines) + "\n")
    (corpus / "phones.txt").write_text("".join(f"{i} {p}\n" for i, p in enumerate(PHONES)))
    test = [u for u in ids if u.endswith("0003")]  # one utterance of each speaker
    (corpus / "train_split.txt").write_text("".join(f"{u}\n" for u in ids if u not in test))
    (corpus / "test_split.txt").write_text("".join(f"{u}\n" for u in test))
    return test


def write_probe_metrics(exp: Path) -> None:
    """Small metrics.json files as audiossl probe writes them, plus a flat and an unreadable one."""
    def rows(values, extra):
        return [{"features": name, "role": "baseline" if name in ("mfcc", "logmel") else "model",
                 "chance": 0.2, **extra(v)}
                for name, v in values.items()]

    accuracy = [{"key": "accuracy", "label": "accuracy", "lower_is_better": False}]
    files = {
        "probe_phone_model": {"task": "phone", "scores": accuracy, "results": rows(
            {"context": 0.45, "mfcc": 0.38, "logmel": 0.33}, extra=lambda v: {"accuracy": v})},
        "probe_speaker_model": {"task": "speaker", "scores": accuracy, "results": rows(
            {"context": 0.9, "mfcc": 0.6, "logmel": 0.7}, extra=lambda v: {"accuracy": v})},
        "probe_ctc-phone_model": {"task": "ctc-phone", "scores": [{"key": "per", "label": "PER",
                                                                   "lower_is_better": True}], "results": rows(
            {"context": 0.7, "mfcc": 0.8}, extra=lambda v: {"per": v})},
        "probe_abx_model": {"task": "abx", "scores": [  # rows as audiossl probe abx writes them
            {"key": c, "label": f"{c}-speaker error", "lower_is_better": True} for c in ("within", "across")],
            "results": rows({"context": 0.2, "mfcc": 0.25}, extra=lambda v: {"within": v, "across": None})},
        "probe_speaker_extra": {"accuracy": 0.5, "chance": 0.34},
    }
    for name, metrics in files.items():
        (exp / name).mkdir(parents=True)
        (exp / name / "metrics.json").write_text(json.dumps(metrics))
    (exp / "probe_phone_broken").mkdir()
    (exp / "probe_phone_broken" / "metrics.json").write_text("{not json")


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, path  # a drawn figure, not an empty canvas


def linked(report: str) -> set[str]:
    return set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report))


@pytest.mark.parametrize("layout", ["recipe", "bare"])
def test_report_of_a_trained_experiment(tmp_path, tiny_corpus, tiny_overrides, capsys, layout):
    exp = tmp_path / "exp"
    train_dir = exp / "pretrain" if layout == "recipe" else exp
    overrides = [f"{k}={v}" for k, v in tiny_overrides.items()]
    assert main(["train", "--data", str(tiny_corpus), "--exp-dir", str(train_dir), "--no-progress", *overrides]) == 0
    if layout == "recipe":  # labels beside the corpus, probe results and an extraction, as run.sh leaves them
        test_ids = write_labels(tiny_corpus)
        write_probe_metrics(exp)
        assert main(["extract", "--ckpt", str(train_dir / "checkpoint.pt"), "--data", str(tiny_corpus),
                     "--out", str(exp / "features_context"), "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()

    assert main(["report", str(exp), "--device", "cpu"]) == 0
    out = exp / "report"
    report = (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    made = {"recipe": set(FIGURES) - UNIT_FIGURES,
            "bare": set(FIGURES) - {"probe_scores.png", "phone_confusion.png"} - UNIT_FIGURES}[layout]
    for name in made:
        check_png(out / name)
    assert linked(report) == made
    for name in set(FIGURES) - made:  # no probes, no alignments: said so, nothing drawn
        assert not (out / name).exists()
        assert f"{name}: not available (missing" in printed
    assert report.count("Figure not available (missing") == len(FIGURES) - len(made)
    assert "| 3 |" in report  # per prediction step table: cpc_steps=3
    if layout == "recipe":
        assert "features_context" in report  # features read from the extraction folder
        assert test_ids[0] in report  # the utterance drawn is the first of the test split
        assert "| phone accuracy (higher is better) | 45.0 | 38.0 | 33.0 | - | 20.0 |" in report
        assert "probe_phone_broken" in report and "unreadable" in report
    else:
        assert "checkpoint.pt" in report


def test_report_shows_discrete_units(tmp_path, tiny_corpus, capsys):
    write_labels(tiny_corpus)
    exp, labels = tmp_path / "exp", {name: str(tiny_corpus / f"{name}.txt") for name in
                                     ("converted_aligned_phones", "phones", "train_split", "test_split")}
    quiet = ["--device", "cpu", "--no-progress"]
    assert main(["extract", "--baseline", "mfcc", "--data", str(tiny_corpus), "--out", str(exp / "features"),
                 "--num-workers", "0", *quiet]) == 0
    assert main(["units", "fit", "--features", str(exp / "features"), "--layer", "mfcc", "--k", "6", "--split",
                 labels["train_split"], "--out", str(exp / "units_k6"), *quiet]) == 0
    assert main(["probe", "units", "--units", str(exp / "units_k6"), "--features", str(exp / "features"),
                 "--alignments", labels["converted_aligned_phones"], "--phones", labels["phones"], "--split",
                 labels["test_split"], "--baselines", "logmel", "context=none", "--num-workers", "0",
                 "--out", str(exp / "probe_units_k6"), *quiet]) == 0
    metrics = json.loads((exp / "probe_units_k6" / "metrics.json").read_text())
    capsys.readouterr()
    outcome = make_report(exp, data=tiny_corpus)
    assert outcome["units_quality.png"] == outcome["units_utterance.png"] == "written"
    for name in UNIT_FIGURES:
        check_png(exp / "report" / name)
    page = (exp / "report" / "report.md").read_text()
    mfcc, logmel = metrics["results"]
    assert f"| 6 | mfcc | {mfcc['units_used']} | {100 * mfcc['phone_purity']:.1f} |" in page
    assert f"| 6 | logmel (floor) | {logmel['units_used']} |" in page and f"{logmel['pnmi']:.3f}" in page
    assert "| units k=6 across-speaker error (lower is better) |" in page  # the one-hot ABX, in the probe table
    assert "Utterance `103-1031-0003`: the 6 k-means units of" in page  # the first test utterance


def test_report_chooses_utterance_and_output(tmp_path, tiny_corpus, tiny_overrides):
    exp = tmp_path / "exp"
    overrides = [f"{k}={v}" for k, v in {**tiny_overrides, "max_steps": 2}.items()]
    assert main(["train", "--data", str(tiny_corpus), "--exp-dir", str(exp), "--no-progress", *overrides]) == 0
    out = tmp_path / "elsewhere"
    outcome = make_report(exp, out, utterance="26-261-0002", data=tiny_corpus)
    assert outcome["utterance.png"] == "written"
    assert "`26-261-0002`" in (out / "report.md").read_text()
    outcome = make_report(exp, out, utterance="no-such-utterance")
    assert outcome["utterance.png"].startswith("missing utterance 'no-such-utterance'")
    assert not (out / "utterance.png").exists()  # a stale figure is not left behind
    assert outcome["training_curves.png"] == "written"


def test_missing_inputs_are_reported_not_raised(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--device", "cpu"]) == 0
    report = (empty / "report" / "report.md").read_text()
    assert report.count("Figure not available (missing") == len(FIGURES)
    assert not list((empty / "report").glob("*.png"))
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "no such experiment folder" in capsys.readouterr().err


def test_training_curves_from_the_step_log_without_tensorboard(tmp_path):
    exp = tmp_path / "exp"
    (exp / "tb").mkdir(parents=True)  # no event files in it
    steps = np.arange(1, 11)
    (exp / "train_log.tsv").write_text("step\tloss\tlr\n" + "".join(f"{s}\t{5 / s}\t{1e-3}\n" for s in steps))
    outcome = make_report(exp)
    assert outcome["training_curves.png"] == "written"
    check_png(exp / "report" / "training_curves.png")
    assert "| loss | 10 | 0.5 |" in (exp / "report" / "report.md").read_text()


def test_probe_scores_read_every_format(tmp_path):
    write_probe_metrics(tmp_path)
    scores, notes = read_probe_scores(tmp_path)
    table = {(s.group, s.source): (s.value, s.lower_is_better) for s in scores}
    assert table[("phone accuracy", "model")] == (0.45, False)
    assert table[("speaker accuracy", "logmel")] == (0.7, False)
    assert table[("ctc-phone PER", "mfcc")] == (0.8, True)
    assert table[("abx within-speaker error", "model")] == (0.2, True)
    assert ("abx across-speaker error", "model") not in table  # no triples: no score
    assert table[("speaker accuracy", "extra")] == (0.5, False)
    assert len(notes) == 1 and "probe_phone_broken" in notes[0]


def test_linear_confusion_recovers_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 4
    train_y, test_y = rng.integers(0, 4, 400), rng.integers(0, 4, 100)
    train_x = (centres[train_y] + rng.normal(size=(400, 8))).astype(np.float32)
    test_x = (centres[test_y] + rng.normal(size=(100, 8))).astype(np.float32)
    counts = linear_confusion(train_x, train_y, test_x, test_y, num_classes=5)
    assert counts.shape == (5, 5) and counts.sum() == 100
    assert np.array_equal(counts.sum(1)[:4], np.bincount(test_y, minlength=4))
    assert np.trace(counts) >= 95


@pytest.mark.parametrize("dim", [1, 2, 16])
def test_pca_separates_the_main_direction(dim):
    rng = np.random.default_rng(0)
    groups = np.repeat([-1.0, 1.0], 15)  # two clusters along one direction shared by every dimension
    vectors = np.outer(groups, rng.uniform(1, 3, size=dim)) + 0.05 * rng.normal(size=(30, dim)) + 7
    points, explained = pca_2d(vectors)
    assert points.shape == (30, 2) and explained.shape == (2,)
    assert 0.9 < explained[0] <= 1 and 0 <= explained[1] <= 1 - explained[0] + 1e-9
    assert np.all(np.sign(points[:15, 0]) == -np.sign(points[15:, 0]))


def test_spectrogram_axes_are_hertz_and_seconds(tmp_path, monkeypatch):
    from audiossl.report import spectrograms as figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or Path(path))
    logmel = np.random.default_rng(0).standard_normal((250, 80)).astype(np.float32)  # 2.5 s at 100 frames/s
    feats = np.random.default_rng(1).standard_normal((250, 16)).astype(np.float32)
    figures.plot_utterance(tmp_path / "u.png", logmel, 100.0, feats, 100.0, sample_rate=16000)
    figures.plot_units_utterance(tmp_path / "v.png", logmel, 100.0, np.arange(250) // 25, 100.0, 10,
                                 sample_rate=16000)
    for fig in drawn:
        spec = next(ax for ax in fig.axes if ax.get_ylabel() == "frequency (Hz)")
        assert spec.get_ylim()[0] == pytest.approx(0.0, abs=50) and spec.get_ylim()[1] == pytest.approx(8000, rel=0.02)
        assert spec.get_xlim()[1] == pytest.approx(2.5, rel=0.01)  # seconds, not frames
        assert type(spec.xaxis.get_major_formatter()).__name__ == "TimeFormatter"  # librosa's, in seconds


def test_masked_training_curves_draw_both_accuracies_and_the_perplexity(tmp_path):
    from audiossl.report.figures import plot_training

    steps = np.arange(1.0, 11.0)
    curve = (steps, 1 - 1 / steps)
    drawn = plot_training(tmp_path / "masked.png", loss=(steps, 5 / steps), accuracy=curve,
                          unmasked_accuracy=(steps, curve[1] / 2), perplexity=(steps, 10 * steps))
    check_png(drawn)
    drawn = plot_training(tmp_path / "unmasked_only.png", unmasked_accuracy=curve)  # no masked curve logged
    check_png(drawn)
