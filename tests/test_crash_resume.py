"""Crashes: kill -9 mid-training, a crash while writing, non-finite losses.

Each test injects the fault and checks what is left: the run resumes where it
stopped and matches an uninterrupted run step for step; an interrupted write
leaves the previous file whole and no partial file under the final name; a
non-finite step is dropped, too many in a row stop the run without saving.
"""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from audiossl.checkpoint import CheckpointError, atomic_save, load_checkpoint
from audiossl.cli import main
from audiossl.config import build_config
from audiossl.data.corpus import Problem, Utterance, read_manifest, read_problems, write_manifest, write_problems
from audiossl.objectives.cpc import CPCObjective
from audiossl.train import TRAIN_LOG, train
from audiossl.utils.atomic import DiskFullError

from conftest import package_env

# Runs the real CLI, but the `hang_at`-th forward pass announces itself in a
# marker file and sleeps, so the test can kill -9 the process mid-step at a
# known point instead of racing it.
HANG_HARNESS = """
import sys, time
from pathlib import Path
from audiossl import train
from audiossl.cli import main

hang_at, marker = int(sys.argv[1]), Path(sys.argv[2])
forward, calls = train.Pretrainer.forward, 0

def hanging_forward(self, batch):
    global calls
    calls += 1
    if calls == hang_at:
        marker.write_text("hanging")
        time.sleep(600)
    return forward(self, batch)

train.Pretrainer.forward = hanging_forward
sys.exit(main(sys.argv[3:]))
"""


def cli_args(corpus: Path, exp_dir: Path, overrides: dict, **extra) -> list[str]:
    settings = {**overrides, **extra}
    return ["train", "--data", str(corpus), "--exp-dir", str(exp_dir), "--no-progress",
            *(f"{k}={v}" for k, v in settings.items())]


def subprocess_env() -> dict:
    # One thread: the same float reduction order in every run, and fair on 2 cores.
    return package_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def read_log(exp_dir: Path) -> list[str]:
    return (exp_dir / TRAIN_LOG).read_text().splitlines()


def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(tiny_corpus, tiny_overrides, tmp_path, capsys):
    overrides = {**tiny_overrides, "max_steps": 8, "ckpt_every": 3, "warmup_steps": 2}
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    marker, harness = tmp_path / "hanging", tmp_path / "harness.py"
    harness.write_text(HANG_HARNESS)
    # Steps 1..5 run, the checkpoint of step 3 is written, the 6th forward hangs.
    victim = subprocess.Popen([sys.executable, str(harness), "6", str(marker),
                               *cli_args(tiny_corpus, killed_dir, overrides)],
                              env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess: the same float reduction order
    try:
        assert main(cli_args(tiny_corpus, reference_dir, overrides)) == 0  # meanwhile, the uninterrupted run
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert victim.poll() is None, f"the run ended before the kill: {victim.stderr.read()}"
            assert time.monotonic() < deadline, "the run never reached the 6th step"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        victim.stderr.close()
        assert load_checkpoint(killed_dir / "checkpoint.pt")["step"] == 3
        assert [line.split("\t")[0] for line in read_log(killed_dir)[1:]] == ["1", "2", "3", "4", "5"]

        capsys.readouterr()
        assert main(cli_args(tiny_corpus, killed_dir, overrides)) == 0  # the same command again
        assert "resuming from" in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
        if victim.poll() is None:
            victim.kill()

    # Same steps, same losses to the last bit, same learning rates.
    assert read_log(killed_dir) == read_log(reference_dir)
    assert len(read_log(reference_dir)) == 1 + 8
    a, b = load_checkpoint(killed_dir / "checkpoint.pt"), load_checkpoint(reference_dir / "checkpoint.pt")
    assert (a["step"], a["epoch"], a["position"]) == (b["step"], b["epoch"], b["position"]) == (8, 0, 8)
    for name, tensor in b["model"].items():
        assert torch.equal(a["model"][name], tensor), name
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg_sq"], b["optimizer"]["state"][0]["exp_avg_sq"])
    assert not list(killed_dir.glob(".checkpoint.pt.tmp*"))


def _partial_torch_save(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a zip")
    raise OSError(28, "No space left on device")


def _failing_replace(src, dst):
    raise OSError(5, "Input/output error")


def _utterance(num_samples):
    return Utterance("u1", "/a.flac", "spk", num_samples, 16000)


WRITERS = {
    "checkpoint": (lambda value, path: atomic_save({"value": value}, path),
                   lambda path: torch.load(path, weights_only=True)["value"]),
    "manifest": (lambda value, path: write_manifest([_utterance(value)], path),
                 lambda path: read_manifest(path)[0].num_samples),
    "problems": (lambda value, path: write_problems([Problem("/a.flac", f"reason {value}")], path),
                 lambda path: int(read_problems(path)[0].reason.split()[-1])),
}


@pytest.mark.parametrize("writer, fault", [
    ("checkpoint", "torch.save fails midway"),
    ("checkpoint", "rename fails"),
    ("manifest", "rename fails"),
    ("problems", "rename fails"),
])
def test_crash_while_writing_keeps_the_previous_file(tmp_path, monkeypatch, writer, fault):
    write, read = WRITERS[writer]
    path = tmp_path / "out" / "file"
    write(1, path)
    before = path.read_bytes()
    if fault == "rename fails":
        monkeypatch.setattr(os, "replace", _failing_replace)
    else:
        monkeypatch.setattr(torch, "save", _partial_torch_save)
    with pytest.raises(OSError):
        write(2, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read(path) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["file"]  # no temporary file left behind


def test_crash_while_saving_during_training_resumes_from_the_previous_checkpoint(
        tiny_corpus, tiny_overrides, tmp_path, monkeypatch):
    cfg = build_config(overrides={**tiny_overrides, "max_steps": 6, "ckpt_every": 2})
    exp = tmp_path / "exp"
    real_save, saves = torch.save, []

    def second_save_fails(obj, f, *args, **kwargs):
        saves.append(obj["step"])
        if len(saves) == 2:
            f.write(b"PK\x03\x04 truncated")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", second_save_fails)
    with pytest.raises(DiskFullError, match="no space left on device writing .*checkpoint.pt; the previous "
                       "checkpoint is intact"):
        train(cfg, tiny_corpus, exp, progress=False)
    monkeypatch.undo()
    assert saves == [2, 4]
    assert load_checkpoint(exp / "checkpoint.pt")["step"] == 2
    assert not list(exp.glob(".checkpoint.pt.tmp*"))

    summary = train(cfg, tiny_corpus, exp, progress=False)
    assert summary["step"] == 6
    assert [line.split("\t")[0] for line in read_log(exp)[1:]] == [str(s) for s in range(1, 7)]


def _half_a_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"config": {}, "model": {"weight": torch.zeros(100)}}, buffer)
    return buffer.getvalue()[:300]


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", _half_a_checkpoint()],
                         ids=["empty", "garbage", "truncated"])
def test_unreadable_checkpoint_is_a_clear_error(tiny_corpus, tiny_overrides, tmp_path, capsys, content):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "checkpoint.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="checkpoint.pt: cannot read checkpoint"):
        load_checkpoint(exp / "checkpoint.pt")
    assert main(cli_args(tiny_corpus, exp, tiny_overrides)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read checkpoint" in err
    assert (exp / "checkpoint.pt").read_bytes() == content  # left for the user to look at


def _inject_nonfinite(monkeypatch, bad_calls, kind):
    """Make the objective's ``bad_calls``-th forward passes non-finite (loss or gradient)."""
    forward, calls = CPCObjective.forward, []

    def poisoned(self, model, batch):
        loss, metrics = forward(self, model, batch)
        calls.append(len(calls) + 1)
        if not bad_calls(len(calls)):
            return loss, metrics
        if kind == "nan_loss":
            return loss * float("nan"), metrics
        # A finite loss whose gradient is NaN: d/dw sqrt(0 * w) is infinite, times 0.
        weight = next(model.parameters())
        return loss + 0.0 * torch.sqrt(0.0 * weight.sum()), metrics

    monkeypatch.setattr(CPCObjective, "forward", poisoned)
    return calls


@pytest.mark.parametrize("kind", ["nan_loss", "nan_grad"])
def test_nonfinite_steps_are_skipped_and_counted(tiny_corpus, tiny_overrides, tmp_path, monkeypatch, kind):
    cfg = build_config(overrides={**tiny_overrides, "max_steps": 4, "max_nonfinite": 3})
    _inject_nonfinite(monkeypatch, lambda call: call in (2, 3), kind)
    summary = train(cfg, tiny_corpus, tmp_path / "exp", progress=False)
    assert summary["step"] == 4 and summary["skipped_steps"] == 2
    ckpt = load_checkpoint(tmp_path / "exp" / "checkpoint.pt")
    assert ckpt["skipped_steps"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    losses = [float(line.split("\t")[1]) for line in read_log(tmp_path / "exp")[1:]]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)


def test_too_many_nonfinite_steps_stop_without_saving(tiny_corpus, tiny_overrides, tmp_path, monkeypatch, capsys):
    exp = tmp_path / "exp"
    overrides = {**tiny_overrides, "max_steps": 6, "ckpt_every": 2, "max_nonfinite": 3}
    _inject_nonfinite(monkeypatch, lambda call: call >= 3, "nan_loss")
    assert main(cli_args(tiny_corpus, exp, overrides)) == 1
    err = capsys.readouterr().err
    assert "3 non-finite" in err and "at step 3" in err
    ckpt = load_checkpoint(exp / "checkpoint.pt")
    assert ckpt["step"] == 2  # the last good one, not overwritten by a poisoned model
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_nonfinite_stop_before_any_checkpoint_names_none(tiny_corpus, tiny_overrides, tmp_path, monkeypatch, capsys):
    """The stop named exp/checkpoint.pt as "last checkpoint" when none had been written (lr=inf did that)."""
    exp = tmp_path / "exp"
    _inject_nonfinite(monkeypatch, lambda call: True, "nan_loss")
    assert main(cli_args(tiny_corpus, exp, {**tiny_overrides, "max_nonfinite": 2})) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("2 non-finite losses or gradients in a row at step 1; stopping without saving "
                         "(no checkpoint yet)"), line
    assert not (exp / "checkpoint.pt").exists()


def test_crash_while_writing_features_leaves_no_partial_array(tiny_corpus, tmp_path, monkeypatch, capsys):
    import numpy as np

    out = tmp_path / "features"
    args = ["extract", "--baseline", "mfcc", "--data", str(tiny_corpus), "--out", str(out),
            "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--no-progress"]
    real_save, calls = np.save, []

    def save_fails_on_the_fifth(file, array, *a, **k):
        calls.append(1)
        if len(calls) == 5:
            file.write(b"\x93NUMPY half an array")
            raise OSError(28, "No space left on device")
        return real_save(file, array, *a, **k)

    monkeypatch.setattr(np, "save", save_fails_on_the_fifth)
    assert main(args) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("audiossl extract: error: no space left on device writing ")
    folder = out / "mfcc"
    arrays = sorted(folder.rglob("*.npy"))
    assert len(arrays) == 4 and not (folder / "index.tsv").exists()  # marked unfinished
    assert not [p for p in folder.rglob(".*")]  # no temporary file left
    first = {p: np.load(p) for p in arrays}  # every array under its final name is whole
    assert main(args) == 0  # the re-run finishes the job
    assert len(list(folder.rglob("*.npy"))) == 12 and (folder / "index.tsv").is_file()
    assert all(np.array_equal(np.load(path), array) for path, array in first.items())
