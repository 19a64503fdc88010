"""The command line: prepare, train, bench, user errors, ``python -m audiossl.cli``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from audiossl.checkpoint import load_checkpoint
from audiossl.cli import main
from audiossl.data.corpus import read_manifest

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


def as_args(overrides: dict) -> list[str]:
    return [f"{k}={v}" for k, v in overrides.items()]


def test_prepare_writes_a_manifest(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "lists" / "train.tsv"
    assert main(["prepare", "--data", str(tiny_corpus), "--out", str(out)]) == 0
    utterances = read_manifest(out)
    assert len(utterances) == 12 and {u.speaker for u in utterances} == {"19", "26", "103"}
    assert "12 utterances, 3 speakers" in capsys.readouterr().out


def test_train_returns_zero(tiny_corpus, tiny_overrides, tmp_path, capsys, one_thread):
    exp = tmp_path / "exp"
    argv = ["train", "--data", str(tiny_corpus), "--exp-dir", str(exp), "--no-progress", *as_args(tiny_overrides)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("# resolved config")
    assert "done at step 4" in out
    assert load_checkpoint(exp / "checkpoint.pt")["step"] == 4


def test_train_with_config_file_and_manifest(tiny_corpus, tiny_overrides, tmp_path, capsys, one_thread):
    conf = tmp_path / "tiny.yaml"
    conf.write_text(yaml.safe_dump({**tiny_overrides, "max_steps": 2}))
    manifest = tmp_path / "train.tsv"
    assert main(["prepare", "--data", str(tiny_corpus), "--out", str(manifest)]) == 0
    argv = ["train", "--config", str(conf), "--data", str(manifest), "--exp-dir", str(tmp_path / "exp"),
            "--no-progress", "max_steps=3"]
    assert main(argv) == 0
    assert "done at step 3" in capsys.readouterr().out


def test_bench_prints_the_split(tiny_overrides, tmp_path, capsys, one_thread):
    conf = tmp_path / "tiny.yaml"
    conf.write_text(yaml.safe_dump(tiny_overrides))
    argv = ["bench", "--config", str(conf), "--steps", "1", "--warmup", "0", "--device", "cpu", "--json",
            "batch_size=2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for part in ("step", "model", "objective", "backward", "optimizer"):
        assert f"  {part} " in out
    assert "batch 2 x 3200 samples" in out


def test_bench_times_the_data_loader(tiny_overrides, tmp_path, capsys, one_thread):
    conf = tmp_path / "tiny.yaml"
    conf.write_text(yaml.safe_dump(tiny_overrides))
    argv = ["bench", "--config", str(conf), "--steps", "1", "--warmup", "0", "--device", "cpu", "--json",
            "--data", str(DEMO), "--workers", "0,1", "--loader-seconds", "0.2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    loader = result["loader"]
    assert loader["utterances"] == 112 and loader["batch_size"] == 4 and loader["window_samples"] == 3200
    assert [row["num_workers"] for row in loader["workers"]] == [0, 1]
    for row in loader["workers"]:
        assert row["batches"] >= 10 and row["windows_per_second"] > 0
        assert row["audio_seconds_per_second"] == pytest.approx(row["windows_per_second"] * 3200 / 16000)
        assert f"  {row['num_workers']} worker(s) " in out
    assert "x the model" in out


@pytest.mark.parametrize("argv, needle", [
    (["train", "--exp-dir", "{tmp}/exp", "no_such_key=1"], "no_such_key"),
    (["train", "--exp-dir", "{tmp}/exp", "context=rnn"], "context"),
    (["train", "--exp-dir", "{tmp}/exp", "lr"], "lr"),
    (["train", "--exp-dir", "{tmp}/exp", "--config", "{tmp}/missing.yaml"], "missing.yaml"),
    (["bench", "cpc_steps=many"], "cpc_steps"),
    (["bench", "--data", "{tmp}/nowhere"], "nowhere"),
    (["train", "--exp-dir", "{tmp}/exp", "device=tpu"], "'tpu' is not one of auto, cpu, cuda, cuda:N"),
    (["extract", "--baseline", "mfcc", "--data", "{tmp}", "--out", "{tmp}/f", "--device", "tpu"],
     "'tpu' is not one of auto, cpu, cuda, cuda:N"),
])
def test_user_errors_are_one_line(argv, needle, tiny_corpus, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "train":
        argv += ["--data", str(tiny_corpus)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith(f"audiossl {argv[0]}: error:") and needle in lines[0]


def test_missing_corpus_is_a_user_error(tmp_path, capsys):
    assert main(["prepare", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.tsv")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err


def test_refused_resume_exits_nonzero(tiny_corpus, tiny_overrides, tmp_path, capsys, one_thread):
    base = ["train", "--data", str(tiny_corpus), "--exp-dir", str(tmp_path / "exp"), "--no-progress"]
    assert main(base + as_args({**tiny_overrides, "max_steps": 1})) == 0
    assert main(base + as_args({**tiny_overrides, "context_dim": 24})) == 2  # a user error: nothing trained
    err = capsys.readouterr().err
    assert "context_dim" in err and "Traceback" not in err


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as error:
        main([])
    assert error.value.code == 2


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "audiossl.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: audiossl" in done.stdout
    for command in ("prepare", "train", "bench"):
        assert command in done.stdout


def exit_code(argv: list[str]) -> int:
    """main's return value, or the code argparse exits with for a bad option."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


LATIN1, TWICE = "latin1.yaml", "twice.yaml"


BAD_SETTINGS = {
    "lr=inf": (["train", "lr=inf"], "config key 'lr': expected a finite number, got 'inf'"),
    "lr=1e400": (["train", "lr=1e400"], "config key 'lr': expected a finite number, got '1e400'"),
    "lr=nan": (["train", "lr=nan"], "config key 'lr': expected a finite number"),
    "weight_decay=nan": (["train", "weight_decay=nan"], "config key 'weight_decay': expected a finite number"),
    "clip_grad=nan": (["train", "clip_grad=nan"], "config key 'clip_grad': expected a finite number"),
    "seed=-1": (["train", "seed=-1"], "config key 'seed' must be a seed in [0, 4294967295], got -1"),
    "lr twice": (["train", "lr=0.1", "lr=0.3"], "override 'lr' is given twice (lr=0.1 and lr=0.3)"),
    "yaml key twice": (["train", "--config", "{tmp}/" + TWICE], "twice.yaml: key 'lr' is given twice (lines 1 and 2)"),
    "non-utf8 config": (["train", "--config", "{tmp}/" + LATIN1], "latin1.yaml: not a UTF-8 text file (byte 0xe9"),
    "probe phone seed=-1": (["probe", "phone", "--alignments", "{tmp}/a.txt", "seed=-1"],
                            "config key 'seed' must be a seed"),
    "extract --chunk-seconds nan": (["extract", "--chunk-seconds", "nan"],
                                    "argument --chunk-seconds: expected a number of at least 0, got 'nan'"),
    "extract --num-workers -1": (["extract", "--num-workers", "-1"],
                                 "argument --num-workers: expected an integer of at least 0, got '-1'"),
}


@pytest.mark.parametrize("argv, needle", BAD_SETTINGS.values(), ids=BAD_SETTINGS)
def test_bad_settings_are_one_line_before_anything_is_written(argv, needle, tiny_corpus, tmp_path, capsys):
    """Each was a traceback, or silently accepted, or failed after config.yaml, tb/ and train_log.tsv were written."""
    (tmp_path / TWICE).write_text("lr: 0.1\nlr: 0.2\n")
    (tmp_path / LATIN1).write_bytes(b"# caf\xe9\nlr: 0.1\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    where = {"train": ["--data", str(tiny_corpus), "--exp-dir", str(tmp_path / "exp"), "--no-progress"],
             "probe": ["--baseline", "mfcc", "--data", str(tiny_corpus), "--out", str(tmp_path / "out"),
                       "--no-progress"],
             "extract": ["--baseline", "mfcc", "--data", str(tiny_corpus), "--out", str(tmp_path / "out"),
                         "--no-progress"]}[argv[0]]
    before = tree(tmp_path)
    assert exit_code(argv[:2] + where + argv[2:] if argv[0] == "probe" else argv[:1] + where + argv[1:]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"audiossl {argv[0]}") and needle in lines[0], lines[0]
    assert captured.out == "" and tree(tmp_path) == before  # nothing printed, scanned or written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_where_there_is_none_is_a_user_error(tiny_corpus, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_corpus), "--exp-dir", str(tmp_path / "exp"), "device=cuda"]
    assert main(argv) == 2  # a user error (it was 1, "the run failed", after the folder was made)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["audiossl train: error: device 'cuda' asked for, but CUDA is not available"]
    assert not (tmp_path / "exp").exists()


def test_every_user_error_is_one_userror_type():
    """The CLI catches one type; each module's own user error derives from it and keeps its built-in base."""
    from audiossl.checkpoint import CheckpointError
    from audiossl.cli.app import USER_ERRORS
    from audiossl.config import ConfigError
    from audiossl.data.audio import AudioError
    from audiossl.data.corpus import CorpusError
    from audiossl.errors import UserError
    from audiossl.features import FeatureError
    from audiossl.interop.cpc_audio_args import ConvertError
    from audiossl.probes.abx.items import ItemFileError
    from audiossl.probes.tasks import ProbeError
    from audiossl.runtime import DeviceError
    from audiossl.train.resume import ResumeError
    from audiossl.units.fit import UnitsError
    from audiossl.utils.lock import FolderLocked

    assert USER_ERRORS == (UserError, FileNotFoundError)
    for error in (AudioError, CheckpointError, ConfigError, ConvertError, CorpusError, UnitsError, FeatureError,
                  ItemFileError, ProbeError, ResumeError):
        assert issubclass(error, UserError) and issubclass(error, ValueError), error
    assert issubclass(FolderLocked, RuntimeError) and issubclass(DeviceError, RuntimeError)
    assert issubclass(FolderLocked, UserError) and issubclass(DeviceError, UserError)


def test_an_unknown_device_is_a_user_error(tiny_corpus, tmp_path, capsys):
    argv = ["extract", "--baseline", "mfcc", "--data", str(tiny_corpus), "--out", str(tmp_path / "feat"),
            "--device", "tpu", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["audiossl extract: error: device 'tpu' is not one of auto, cpu, cuda, cuda:N"]
    assert not (tmp_path / "feat").exists()
