"""Preemption: SIGTERM, SIGINT and SIGUSR1 during training, in one process and under torchrun, and SIGTERM
during ``extract`` and ``probe phone``.

Each test delivers a real signal in the middle of a step (a batch of files, an
epoch) and checks what a requeue script relies on: the step finishes, the
checkpoint holds it (every rank's RNG state under torchrun; the arrays written,
for extraction), nothing partial is written, one line says so, the exit code
is ``EXIT_SIGNAL`` (distinct from finished and from the time budget's
``EXIT_BUDGET``), and the same command resumes from there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from audiossl.checkpoint import load_checkpoint
from audiossl.cli import main
from audiossl.train import TRAIN_LOG, Pretrainer
from audiossl.utils.stopping import EXIT_BUDGET, EXIT_FINISHED, EXIT_SIGNAL

from conftest import package_env

pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(corpus: Path, exp: Path, overrides: dict) -> list[str]:
    return ["train", "--data", str(corpus), "--exp-dir", str(exp), "--no-progress",
            *(f"{k}={v}" for k, v in overrides.items())]


def logged_steps(exp: Path) -> list[int]:
    return [int(line.split("\t")[0]) for line in (exp / TRAIN_LOG).read_text().splitlines()[1:]]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_signal_finishes_the_step_checkpoints_and_exits_with_its_code(tiny_corpus, tiny_overrides, tmp_path,
                                                                        capsys, monkeypatch, signum):
    exp = tmp_path / "exp"
    overrides = {**tiny_overrides, "max_steps": 50, "ckpt_every": 1000}
    forward, calls, before = Pretrainer.forward, [], signal.getsignal(signum)

    def signalled_in_step_3(self, batch):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)  # delivered now, in the middle of the step
        return forward(self, batch)

    monkeypatch.setattr(Pretrainer, "forward", signalled_in_step_3)
    assert main(train_args(tiny_corpus, exp, overrides)) == EXIT_SIGNAL
    out = capsys.readouterr().out
    assert f"stopping at step 3: received {signum.name}; checkpoint written to {exp / 'checkpoint.pt'}" in out
    assert "Traceback" not in out and "done at step" not in out
    ckpt = load_checkpoint(exp / "checkpoint.pt")
    assert ckpt["step"] == 3 and logged_steps(exp) == [1, 2, 3]  # step 3 finished, nothing after it
    assert not list(exp.glob(".checkpoint.pt.tmp*"))
    assert signal.getsignal(signum) == before  # the handlers are the caller's again

    monkeypatch.undo()
    assert main(train_args(tiny_corpus, exp, {**overrides, "max_steps": 4})) == EXIT_FINISHED
    assert "resuming from" in capsys.readouterr().out and logged_steps(exp) == [1, 2, 3, 4]


def test_exit_codes_tell_finished_budget_and_signal_apart(tiny_corpus, tiny_overrides, tmp_path, capsys):
    assert len({EXIT_FINISHED, EXIT_BUDGET, EXIT_SIGNAL}) == 3
    exp = tmp_path / "exp"
    # A budget already spent after the first step: checkpoint, one line, EXIT_BUDGET.
    assert main(train_args(tiny_corpus, exp, {**tiny_overrides, "max_minutes": 1e-9})) == EXIT_BUDGET
    out = capsys.readouterr().out
    assert "stopping at step 1: the 1e-09-minute budget is spent" in out and f"(exit {EXIT_BUDGET})" in out
    assert load_checkpoint(exp / "checkpoint.pt")["step"] == 1
    assert main(train_args(tiny_corpus, exp, tiny_overrides)) == EXIT_FINISHED


# Under torchrun the agent forwards SIGTERM to both workers; rank 0 announces each
# forward pass in a marker file, and every forward is slow enough to be caught mid-step.
DDP_HARNESS = """
import sys, time
from pathlib import Path
import torch.distributed as dist
from audiossl import train
from audiossl.cli import main

marker = Path(sys.argv[1])
forward = train.Pretrainer.forward

def slow_forward(self, batch):
    if dist.get_rank() == 0:
        marker.write_text(str(int(marker.read_text() or 0) + 1) if marker.exists() else "1")
    time.sleep(0.3)
    return forward(self, batch)

train.Pretrainer.forward = slow_forward
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_under_torchrun_checkpoints_every_rank_at_one_step(tiny_corpus, tiny_overrides, tmp_path):
    harness, marker, exp = tmp_path / "harness.py", tmp_path / "forwards", tmp_path / "ddp"
    harness.write_text(DDP_HARNESS)
    settings = {**tiny_overrides, "max_steps": 200, "ckpt_every": 1000, "batch_size": 2, "cpc_negatives": 4}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(harness), str(marker), *train_args(tiny_corpus, exp, settings)]
    launcher = subprocess.Popen(command, env=package_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # six Python processes start: 11 s idle, minutes under another job
        while not (marker.exists() and marker.read_text().strip() not in ("", "1", "2")):  # in step 3 or later
            assert launcher.poll() is None, launcher.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the workers never reached step 3"
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    # torchrun exits non-zero after a signal (it reports its own SignalException); the workers' work is on disk.
    assert out.count("stopping at step") == 1, err[-3000:]  # rank 0 alone speaks
    assert "received SIGTERM" in out and f"(exit {EXIT_SIGNAL})" in out
    ckpt = load_checkpoint(exp / "checkpoint.pt")
    assert 3 <= ckpt["step"] < 200 and len(ckpt["rng"]) == 2  # both ranks, one step
    assert f"stopping at step {ckpt['step']}:" in out
    assert logged_steps(exp) == list(range(1, ckpt["step"] + 1))
    assert not list(exp.glob(".checkpoint.pt.tmp*"))


DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def test_sigterm_stops_extract_after_the_current_batch(tiny_corpus, tmp_path, capsys, monkeypatch):
    """extract died at once on SIGTERM (exit 143, no message); now it finishes the batch, as training its step."""
    import audiossl.extract

    out, before = tmp_path / "features", signal.getsignal(signal.SIGTERM)
    argv = ["extract", "--baseline", "mfcc", "--data", str(tiny_corpus), "--out", str(out), "--batch-size", "2",
            "--num-workers", "0", "--no-progress"]
    forward, calls = audiossl.extract.forward_chunked, []

    def signalled_in_batch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(*args, **kwargs)

    monkeypatch.setattr(audiossl.extract, "forward_chunked", signalled_in_batch_2)
    assert main(argv) == EXIT_SIGNAL
    out_text = capsys.readouterr().out
    assert ("stopping after 4 of 12 utterances (no index.tsv yet): received SIGTERM; the arrays written are kept "
            f"and the same command resumes from them (exit {EXIT_SIGNAL})") in out_text
    assert len(calls) == 2 and len(list((out / "mfcc").rglob("*.npy"))) == 4  # batch 2 finished, nothing after
    assert not (out / "mfcc" / "index.tsv").exists() and not list(out.rglob(".*.tmp*"))
    assert signal.getsignal(signal.SIGTERM) == before

    monkeypatch.undo()
    assert main(argv) == EXIT_FINISHED
    assert "4 array set(s) reused, 8 added" in capsys.readouterr().out
    assert (out / "mfcc" / "index.tsv").exists()


def test_sigterm_stops_probe_phone_after_the_current_epoch(tmp_path, capsys, monkeypatch):
    """probe phone died at once on SIGTERM; now the epoch finishes, no result is written, and exit 4."""
    splits = {}
    for name, count in (("train", 10), ("test", 4)):
        splits[name] = tmp_path / f"{name}.txt"
        splits[name].write_text("\n".join((DEMO / f"{name}_split.txt").read_text().split()[:count]) + "\n")
    out = tmp_path / "probe"
    argv = ["probe", "phone", "--baseline", "mfcc", "--data", str(DEMO), "--alignments",
            str(DEMO / "converted_aligned_phones.txt"), "--train-split", str(splits["train"]), "--test-split",
            str(splits["test"]), "--baselines", "none", "--out", str(out), "--num-workers", "0", "--no-progress",
            "epochs=3", "batch_size=256"]
    cross_entropy, calls = torch.nn.functional.cross_entropy, []

    def signalled_in_epoch_1(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", signalled_in_epoch_1)
    assert main(argv) == EXIT_SIGNAL
    assert ("stopping before epoch 2 of the phone probe mfcc: received SIGTERM; no result is written; the same "
            f"command runs the probe again, reusing the features extracted so far (exit {EXIT_SIGNAL})"
            ) in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["features"]  # no metrics.json, report.txt or tb/
    assert (out / "features" / "mfcc" / "index.tsv").exists()

    monkeypatch.undo()
    assert main(argv) == EXIT_FINISHED
    assert "14 array set(s) reused, 0 added" in capsys.readouterr().out
    assert (out / "metrics.json").exists()
