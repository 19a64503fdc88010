"""The mini recipe's stages end to end on the embedded demo corpus, with tiny settings.

Runs ``recipes/mini/run.sh`` (the LibriSpeech recipe on ``data/demo``) as a
user would, into a temporary experiment folder: every stage's output must be
there and hold real results, a second run must keep what the first made, and
missing inputs must be named.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import package_env

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "recipes" / "mini" / "run.sh"
TINY_TRAINING = ("max_steps=3 ckpt_every=3 log_every=1 num_workers=0 batch_size=4 window_samples=3200 "
                 "encoder_channels=16 context_dim=16 cpc_steps=3 cpc_negatives=8")


def run_recipe(*args: str) -> subprocess.CompletedProcess:
    env = package_env(OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", str(MINI), *args], env=env, capture_output=True, text=True, timeout=600)


def metrics(run: Path, kind: str) -> dict:
    return json.loads((run / f"probe_{kind}" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    exp = tmp_path_factory.mktemp("recipe") / "exp"
    done = run_recipe("--exp", str(exp), "--train-overrides", TINY_TRAINING,
                      "--probe-overrides", "epochs=2", "--ctc-overrides", "epochs=2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return exp / "cpc", done


def test_every_stage_leaves_its_results(finished):
    run, done = finished
    for stage in range(11):
        assert f"stage {stage}:" in done.stdout
    assert (run / "manifest.tsv").read_text().count("\n") == 1 + 112  # header + the demo's utterances
    assert (run / "pretrain" / "checkpoint.pt").is_file()
    assert (run / "pretrain" / "train_log.tsv").read_text().splitlines()[-1].split("\t")[0] == "3"
    index = (run / "features" / "context" / "index.tsv").read_text().splitlines()
    assert len(index) == 1 + 112
    scored = {"phone": ["accuracy"], "speaker": ["accuracy"], "abx": ["within", "across"], "ctc-phone": ["per"],
              "ctc-subword": ["cer", "wer"], "units_k50": ["pnmi", "phone_purity", "cluster_purity", "within",
                                                         "across"]}
    for kind, keys in scored.items():  # one result format: the scores named, in every row, the floors beside
        report = metrics(run, kind)
        assert [s["key"] for s in report["scores"]] == keys, kind
        assert [(row["features"], row["role"]) for row in report["results"]] == [
            ("context", "model"), ("mfcc", "baseline"), ("logmel", "baseline")], kind
        assert all(isinstance(row[key], float) for row in report["results"] for key in keys), kind
    phone = {row["features"]: row for row in metrics(run, "phone")["results"]}
    assert phone["mfcc"]["accuracy"] > phone["mfcc"]["chance"]  # 2 epochs on MFCC already beat the majority class
    abx = {row["features"]: row for row in metrics(run, "abx")["results"]}
    assert abx["mfcc"]["within"] < 0.3 and abx["mfcc"]["across"] < 0.4  # the demo's phones are separable by MFCC
    assert (run / "probe_ctc-subword" / "units.model").is_file()  # the sentencepiece units, kept for reuse
    kmeans = json.loads((run / "units_k50" / "kmeans.json").read_text())
    assert (kmeans["k"], kmeans["layer"], kmeans["fit"]["utterances"]) == (50, "context", 88)  # the training split
    assert (run / "units_k50" / "assign" / "quantized_outputs.txt").read_text().count("\n") == 112
    units = metrics(run, "units_k50")
    assert [row["features"] for row in units["results"]] == ["context", "mfcc", "logmel"]
    pnmi = {row["features"]: row["pnmi"] for row in units["results"]}
    assert pnmi["mfcc"] > 0.3 and pnmi["logmel"] > 0.3, pnmi  # 0.41 and 0.45 at k = 50 in the full demo
    assert 0.0 < pnmi["context"] < 1.0  # two training steps: a model's units are real but carry little
    page = (run / "report" / "report.md").read_text()
    for score in ("phone accuracy", "speaker accuracy", "abx within-speaker error", "abx across-speaker error",
                  "ctc-phone PER", "ctc-subword CER", "ctc-subword WER", "units k=50 across-speaker error"):
        assert f"| {score} (" in page  # every probe's result is in the report's table
    assert "no known metric" not in page
    for figure in ("training_curves.png", "probe_scores.png", "phone_confusion.png", "speaker_pca.png",
                   "units_quality.png", "units_utterance.png"):
        assert figure in page and (run / "report" / figure).stat().st_size > 0


def test_rerun_keeps_finished_stages(finished):
    run, _ = finished
    probes = sorted(run.glob("probe_*/metrics.json"))
    assert len(probes) == 6  # phone, speaker, abx, ctc-phone, ctc-subword and the units (stage 9)
    before = {p: p.stat().st_mtime_ns for p in probes}
    done = run_recipe("--exp", str(run.parent), "--train-overrides", TINY_TRAINING, "--stop-stage", "8")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "manifest exists, kept" in done.stdout
    assert done.stdout.count("done before, kept") == 5
    assert {p: p.stat().st_mtime_ns for p in probes} == before
    assert (run / "pretrain" / "train_log.tsv").read_text().splitlines()[-1].split("\t")[0] == "3"  # no new steps


def test_missing_labels_are_named(tmp_path):
    done = run_recipe("--exp", str(tmp_path / "exp"), "--cpc-labels", str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert f"missing CPC label file: {tmp_path / 'nowhere' / 'converted_aligned_phones.txt'}" in done.stderr
    assert "LibriSpeech100_labels_split" in done.stderr  # where the files come from
    assert not (tmp_path / "exp" / "cpc" / "manifest.tsv").exists()


def test_unknown_option_is_refused(tmp_path):
    done = run_recipe("--exp", str(tmp_path / "exp"), "--stages", "3")
    assert done.returncode == 2
    assert "unknown option --stages" in done.stderr
    done = run_recipe("--exp", str(tmp_path / "exp"), "--hubert-init", "warm")
    assert done.returncode == 2 and "--hubert-init is scratch or it1, not 'warm'" in done.stderr


MASKED_TRAINING = ("max_steps=2 ckpt_every=2 log_every=1 num_workers=0 batch_size=4 window_samples=3200 "
                   "encoder_channels=16 context_dim=16 context_heads=2 context_ff_dim=32 hubert_final_dim=8 "
                   "w2v2_codebook_entries=8 w2v2_final_dim=8 w2v2_negatives=5")


@pytest.mark.parametrize("objective", ["hubert", "w2v2"])
def test_masked_objectives_run_their_stages_and_extract(objective, tmp_path):
    # HuBERT's stage 2 makes its own targets: MFCC units, then units of the iteration-1 model's middle layer.
    exp = tmp_path / "exp"
    done = run_recipe("--objective", objective, "--exp", str(exp), "--stop-stage", "3", "--hubert-k1", "8",
                      "--hubert-k2", "8", "--hubert-init", "it1", "--train-overrides", MASKED_TRAINING)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = exp / objective
    assert (run / "pretrain" / "checkpoint.pt").is_file() and any((run / "features").rglob("*.npy"))
    if objective == "hubert":
        for iteration in ("hubert_it1", "hubert_it2"):
            assert (run / iteration / "units" / "assign" / "quantized_outputs.txt").stat().st_size > 0
        # --hubert-init it1: iteration 2 starts from iteration 1's model.
        init = yaml.safe_load((run / "pretrain" / "config.yaml").read_text())["init_from"]
        assert init == str(run / "hubert_it1" / "pretrain" / "checkpoint.pt")
