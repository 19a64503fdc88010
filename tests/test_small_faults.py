"""Smaller faults: odd file names, split ids with spaces, bad checkpoints, the command line, symlinks in --out.

Each test injects one and checks that the toolkit either does the right thing
or refuses in one line that names the file and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from audiossl.checkpoint import CheckpointError, load_checkpoint, load_model
from audiossl.cli import main
from audiossl.config import build_config
from audiossl.data.corpus import read_manifest, scan_corpus
from audiossl.extract import FeatureSet

from conftest import synth_utterance

pytestmark = pytest.mark.usefixtures("one_thread")
RATE = 16000


def write_audio(path: Path, seconds: float = 1.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), synth_utterance(np.random.default_rng(seed), int(seconds * RATE)), RATE)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def extract_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--baseline", "mfcc", "--data", str(data), "--out", str(out), "--num-workers", "0",
            "--device", "cpu", "--no-progress", *extra]


def test_quotes_and_spaces_in_names_survive_the_feature_folder(tmp_path):
    corpus = tmp_path / "corpus"
    write_audio(corpus / "alice" / 'say "hi".flac', seed=1)
    write_audio(corpus / "alice" / "take 1.flac", seed=2)
    write_audio(corpus / "bob" / "plain.flac", seed=3)
    write_audio(corpus / "bob" / "tab\there.flac", seed=4)
    utterances, problems = scan_corpus(corpus, progress=False)
    assert [p.reason for p in problems] == ["its name holds a tab or a line break, which a manifest line cannot hold"]
    split = tmp_path / "split.txt"
    split.write_text('alice/say "hi"\n  alice/take 1  \n')  # ids with a quote and a space, one per line
    out = tmp_path / "features"
    assert main(extract_args(corpus, out, "--ids", str(split))) == 0
    features = FeatureSet(out / "mfcc")
    assert sorted(features.num_frames) == ['alice/say "hi"', "alice/take 1"]
    assert features.load('alice/say "hi"').shape == (100, features.dim)
    assert 'alice/say "hi"\t' in (out / "mfcc" / "utterances.tsv").read_text()  # no CSV quoting
    assert {u.id for u in read_manifest(out / "mfcc" / "utterances.tsv")} == set(features.num_frames)


def test_random_bytes_as_a_checkpoint_are_not_called_code(tiny_corpus, tmp_path, capsys):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(CheckpointError, match="cannot read checkpoint, truncated or not a checkpoint") as error:
        load_checkpoint(path)
    assert "run code" not in str(error.value)
    assert main(["extract", "--ckpt", str(path), "--data", str(tiny_corpus), "--out", str(tmp_path / "f")]) == 2
    assert "not a checkpoint" in one_error_line(capsys)


@pytest.fixture
def trained(tiny_corpus, tiny_overrides, tmp_path) -> Path:
    exp = tmp_path / "exp"
    assert main(["train", "--data", str(tiny_corpus), "--exp-dir", str(exp), "--no-progress",
                 *(f"{k}={v}" for k, v in {**tiny_overrides, "max_steps": 1}.items())]) == 0
    return exp


def test_a_checkpoint_with_tensors_of_other_shapes_is_one_line(trained, tiny_corpus, tiny_overrides, capsys):
    ckpt = load_checkpoint(trained / "checkpoint.pt")
    name = next(k for k in ckpt["model"] if k.endswith("conv.weight"))
    wrong = ckpt["model"][name]
    ckpt["model"][name] = torch.zeros(wrong.shape[0] + 1, *wrong.shape[1:])
    torch.save(ckpt, trained / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=rf"model tensor '{name}' has shape \({wrong.shape[0] + 1}, "):
        load_model(trained / "checkpoint.pt")
    capsys.readouterr()
    assert main(["train", "--data", str(tiny_corpus), "--exp-dir", str(trained), "--no-progress",
                 *(f"{k}={v}" for k, v in tiny_overrides.items())]) == 2
    line = one_error_line(capsys)
    assert name in line and "another architecture" in line and "size mismatch" not in line


def test_overrides_may_stand_anywhere_among_the_options(tiny_corpus, tiny_overrides, tmp_path):
    exp = tmp_path / "exp"
    settings = {k: v for k, v in tiny_overrides.items() if k != "lr"}  # lr comes last, once: twice is refused
    first, *rest = [f"{k}={v}" for k, v in {**settings, "max_steps": 2}.items()]
    assert main(["train", first, "--data", str(tiny_corpus), *rest[:3], "--exp-dir", str(exp), *rest[3:],
                 "--no-progress", "lr=5e-4"]) == 0
    assert load_checkpoint(exp / "checkpoint.pt")["config"]["train"]["lr"] == 5e-4
    assert main(["train", "--data", str(tiny_corpus), "--exp-dir", str(exp), "max_steps=2", "oops"]) == 2  # refused
    with pytest.raises(SystemExit):  # so is one among the options
        main(["train", "--data", str(tiny_corpus), "max_steps=2", "--exp-dir", str(exp), "--no-progress", "oops"])


@pytest.mark.parametrize("text, value", [("[2,1]", [2, 1]), ("[2, 1]", [2, 1]), ("2,1", [2, 1]), ("2 1", [2, 1]),
                                         ("[]", [])])
def test_list_values_on_the_command_line(text, value):
    cfg = build_config(overrides={"encoder_strides": text, "encoder_kernels": text, "encoder_paddings": text,
                                  "frontend": "logmel"})
    assert cfg.model.encoder_strides == cfg.model.encoder_kernels == value


@pytest.mark.parametrize("command", ["extract", "probe"])
def test_layer_with_baseline_is_refused(tiny_corpus, tmp_path, capsys, command):
    args = (extract_args(tiny_corpus, tmp_path / "f", "--layer", "encoder") if command == "extract" else
            ["probe", "speaker", "--baseline", "mfcc", "--data", str(tiny_corpus), "--layer", "context",
             "--device", "cpu", "--no-progress"])
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "--layer" in line and "--baseline mfcc has one layer, named mfcc" in line
    assert not (tmp_path / "f").exists()


def test_a_directory_symlink_inside_out_is_not_followed_outside(tiny_corpus, tmp_path, capsys):
    out, elsewhere = tmp_path / "features", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "mfcc").mkdir(parents=True)
    os.symlink(elsewhere, out / "mfcc" / "train-clean-100")  # where the arrays of the whole tree would go
    assert main(extract_args(tiny_corpus, out)) == 2
    line = one_error_line(capsys)
    assert f"leads to {elsewhere}" in line and f"outside {out / 'mfcc'}; refused" in line
    assert list(elsewhere.iterdir()) == []
    (out / "mfcc" / "train-clean-100").unlink()
    os.symlink(elsewhere, out / "logmel")  # a layer folder that is a link out of --out
    capsys.readouterr()
    assert main(["extract", "--baseline", "logmel", *extract_args(tiny_corpus, out)[3:]]) == 2
    assert "outside" in one_error_line(capsys) and list(elsewhere.iterdir()) == []
