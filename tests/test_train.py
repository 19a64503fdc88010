"""The training loop: outputs, resume (in-process and after SIGKILL), refusals, accumulation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import audiossl
from audiossl.checkpoint import load_checkpoint, load_model
from audiossl.config import Config, build_config
from audiossl.resume import ResumeError
from audiossl.train import TrainingError, train

from conftest import package_env


def optimizer_steps(ckpt: dict) -> set[int]:
    """Adam's per-parameter step counts stored in a checkpoint."""
    return {int(state["step"]) for state in ckpt["optimizer"]["state"].values()}


def test_train_writes_checkpoint_config_and_logs(tiny_corpus, tiny_overrides, tmp_path, one_thread):
    cfg = build_config(overrides=tiny_overrides)
    exp = tmp_path / "exp"
    summary = train(cfg, tiny_corpus, exp, progress=False)

    assert summary["step"] == 4 and summary["skipped_steps"] == 0
    assert summary["checkpoint"] == str(exp / "checkpoint.pt")
    metrics = summary["metrics"]
    for key in ("loss", "accuracy", "lr", "grad_norm", "audio_seconds_per_second", "loss_k1", "mi_bound_k3"):
        assert key in metrics
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())

    ckpt = load_checkpoint(exp / "checkpoint.pt")
    assert ckpt["step"] == 4
    assert (ckpt["epoch"], ckpt["position"]) == (0, 4)
    assert Config.from_dict(ckpt["config"]) == cfg
    assert optimizer_steps(ckpt) == {4}
    assert ckpt["versions"]["audiossl"] == audiossl.__version__
    assert yaml.safe_load((exp / "config.yaml").read_text()) == cfg.flat()
    assert len((exp / "manifest.tsv").read_text().splitlines()) == 1 + 12
    assert list((exp / "tb").glob("events.out.tfevents.*"))
    assert not list(exp.glob(".*.tmp*"))  # no temporary checkpoint left behind


def test_resume_continues_from_the_saved_step(tiny_corpus, tiny_overrides, tmp_path, capsys, one_thread):
    exp = tmp_path / "exp"
    train(build_config(overrides=tiny_overrides), tiny_corpus, exp, progress=False)
    first = load_checkpoint(exp / "checkpoint.pt")
    assert "resuming" not in capsys.readouterr().out

    summary = train(build_config(overrides={**tiny_overrides, "max_steps": 7}), tiny_corpus, exp, progress=False)
    assert f"resuming from {exp / 'checkpoint.pt'} at step 4" in capsys.readouterr().out
    assert summary["step"] == 7
    ckpt = load_checkpoint(exp / "checkpoint.pt")
    assert ckpt["step"] == 7 and ckpt["position"] == 7
    assert optimizer_steps(ckpt) == {7}  # Adam's moments came from the checkpoint
    assert ckpt["scheduler"]["last_epoch"] == 7
    changed = [k for k, v in ckpt["model"].items() if not torch.equal(v, first["model"][k])]
    assert changed

    # A finished run re-run is a no-op that still reports its step.
    again = train(build_config(overrides={**tiny_overrides, "max_steps": 7}), tiny_corpus, exp, progress=False)
    assert again["step"] == 7
    assert torch.equal(load_checkpoint(exp / "checkpoint.pt")["model"]["encoder.blocks.0.conv.weight"],
                       ckpt["model"]["encoder.blocks.0.conv.weight"])


def test_resume_after_sigkill(tiny_corpus, tiny_overrides, tmp_path):
    exp = tmp_path / "exp"
    settings = {**tiny_overrides, "max_steps": 30, "ckpt_every": 2, "log_every": 10}
    command = [sys.executable, "-m", "audiossl.cli", "train", "--data", str(tiny_corpus), "--exp-dir", str(exp),
               "--no-progress", *(f"{k}={v}" for k, v in settings.items())]
    env = package_env(OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    ckpt_path = exp / "checkpoint.pt"
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not ckpt_path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    saved = load_checkpoint(ckpt_path)["step"]
    assert 2 <= saved < 30 and saved % 2 == 0

    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at step {saved}" in done.stdout and "resuming from" in done.stdout
    assert "done at step 30" in done.stdout
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["step"] == 30
    assert optimizer_steps(ckpt) == {30}


def test_resume_with_other_model_settings_is_refused(tiny_corpus, tiny_overrides, tmp_path, one_thread):
    exp = tmp_path / "exp"
    train(build_config(overrides={**tiny_overrides, "max_steps": 1}), tiny_corpus, exp, progress=False)
    for change in ({"context_dim": 24}, {"cpc_steps": 4}):
        cfg = build_config(overrides={**tiny_overrides, **change})
        with pytest.raises(ResumeError) as error:
            train(cfg, tiny_corpus, exp, progress=False)
        message = str(error.value)
        assert next(iter(change)) in message and str(exp / "checkpoint.pt") in message
    assert load_checkpoint(exp / "checkpoint.pt")["step"] == 1


def test_gradient_accumulation(tiny_corpus, tiny_overrides, tmp_path, one_thread):
    cfg = build_config(overrides={**tiny_overrides, "accumulate": 2, "max_steps": 2})
    summary = train(cfg, tiny_corpus, tmp_path / "exp", progress=False)
    assert summary["step"] == 2
    ckpt = load_checkpoint(tmp_path / "exp" / "checkpoint.pt")
    assert ckpt["position"] == 4  # two micro-batches per optimizer step
    assert optimizer_steps(ckpt) == {2}
    assert torch.isfinite(torch.tensor(summary["metrics"]["loss"]))


def test_load_model_returns_eval_model_with_saved_weights(tiny_corpus, tiny_overrides, tmp_path, one_thread):
    cfg = build_config(overrides={**tiny_overrides, "max_steps": 1, "context": "lstm"})
    train(cfg, tiny_corpus, tmp_path / "exp", progress=False)
    path = tmp_path / "exp" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    for loader in (load_model, audiossl.load_model):
        model = loader(path)
        assert not model.training and all(not m.training for m in model.modules())
        assert model.config == cfg
        state = model.state_dict()
        assert state.keys() == ckpt["model"].keys()
        assert all(torch.equal(state[k], ckpt["model"][k]) for k in state)
        z, c, lengths = model(torch.randn(1, 3200), torch.tensor([3200]))
        assert c.shape == (1, 20, 16)
