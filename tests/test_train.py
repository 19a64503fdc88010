"""The training loop: outputs, resume (in-process and after SIGKILL), refusals, accumulation, logged values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import audiossl
from audiossl.checkpoint import load_checkpoint, load_model
from audiossl.config import Config, build_config
from audiossl.report.experiment import read_scalars
from audiossl.train import TRAIN_LOG, Pretrainer, train
from audiossl.train.resume import ResumeError


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


@pytest.mark.parametrize("accumulate", [1, 2])
def test_logged_values_equal_the_per_step_float_path(tiny_corpus, tiny_overrides, tmp_path, monkeypatch,
                                                     one_thread, accumulate):
    """The loop keeps metrics on the device and reads them once per log window; what it logs must be
    what reading every value with float() at every micro-batch gave (windows of 3 steps and 1 here)."""
    forward, calls = Pretrainer.forward, []

    def recording_forward(self, batch):
        loss, metrics = forward(self, batch)
        calls.append((float(loss.detach()), {k: float(v) for k, v in metrics.items()}))
        return loss, metrics

    monkeypatch.setattr(Pretrainer, "forward", recording_forward)
    cfg = build_config(overrides={**tiny_overrides, "accumulate": accumulate, "log_every": 3, "ckpt_every": 3})
    exp = tmp_path / "exp"
    summary = train(cfg, tiny_corpus, exp, progress=False)
    assert len(calls) == 4 * accumulate

    # The old path: Python floats, divided by `accumulate` and summed in the same order.
    step_losses, step_metrics = [], []
    for step in range(4):
        micro = calls[step * accumulate:(step + 1) * accumulate]
        loss, metrics = 0.0, {}
        for micro_loss, micro_metrics in micro:
            loss += micro_loss / accumulate
            for key, value in micro_metrics.items():
                metrics[key] = metrics.get(key, 0.0) + value / accumulate
        step_losses.append(loss)
        step_metrics.append(metrics)
    windows = {3: step_metrics[:3], 4: step_metrics[3:]}
    expected = {}
    for end, steps in windows.items():
        sums = {}
        for metrics in steps:
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
        expected[end] = {key: value / len(steps) for key, value in sums.items()}

    log = [line.split("\t") for line in (exp / TRAIN_LOG).read_text().splitlines()[1:]]
    assert [row[0] for row in log] == ["1", "2", "3", "4"]
    assert [row[1] for row in log] == [repr(x) for x in step_losses]
    for key, value in expected[4].items():
        assert summary["metrics"][key] == value, key
    scalars = read_scalars(exp / "tb")
    for end, metrics in expected.items():
        for key, value in metrics.items():
            group = "train" if "_k" not in key else key.rsplit("_k", 1)[0] + "_per_step"
            steps, values = scalars[f"{group}/{key}"]
            assert list(steps) == [3, 4]
            assert values[list(steps).index(end)] == np.float32(value), (key, end)  # TensorBoard keeps float32


@pytest.mark.parametrize("objective", [
    "apc",
    "cpc",
])
def test_compiled_training_follows_the_eager_loss_curve(tiny_corpus, tiny_overrides, tmp_path, monkeypatch,
                                                        one_thread, objective):
    """``compile: true`` trains the same model: same losses step for step, within float tolerance.

    The graphs go through dynamo and AOT autograd (where the captured forward
    and its gradients are decided) but not inductor's C++ code generation,
    which took 1.5 to 2.5 minutes for these tiny models on two shared cores;
    ``audiossl bench --compile`` runs the whole path.
    """
    import audiossl.train.loop as loop_module

    monkeypatch.setattr(loop_module, "compile_module", lambda m: torch.compile(m, backend="aot_eager"))
    overrides = {**tiny_overrides, "max_steps": 4, "ckpt_every": 4}
    if objective == "apc":
        overrides.update(preset="apc_paper", context_dim=16, context_layers=1)
    curves = {}
    for compiled in (False, True):
        exp = tmp_path / f"compile_{compiled}"
        train(build_config(overrides={**overrides, "compile": compiled}), tiny_corpus, exp, progress=False)
        curves[compiled] = [float(line.split("\t")[1]) for line in (exp / TRAIN_LOG).read_text().splitlines()[1:]]
        saved = load_checkpoint(exp / "checkpoint.pt")
        assert not any("_orig_mod" in key for part in ("model", "objective") for key in saved[part])
    assert len(curves[True]) == 4
    np.testing.assert_allclose(curves[True], curves[False], rtol=1e-4)


def test_bf16_on_the_cpu_follows_the_fp32_loss_curve(tiny_corpus, tiny_overrides, tmp_path, one_thread):
    """``precision: bf16`` autocasts the CPU forward: the same model trains, the losses within bf16's rounding.

    The log-envelope first block is part of the model: its power, pooling and
    log stay fp32 under autocast.
    """
    overrides = {**tiny_overrides, "max_steps": 4, "ckpt_every": 4, "encoder_first": "log_envelope",
                 "encoder_envelope_pool": 3}
    curves = {}
    for precision in ("fp32", "bf16"):
        exp = tmp_path / precision
        train(build_config(overrides={**overrides, "precision": precision}), tiny_corpus, exp, progress=False)
        curves[precision] = [float(line.split("\t")[1]) for line in (exp / TRAIN_LOG).read_text().splitlines()[1:]]
    assert len(curves["bf16"]) == 4
    assert curves["bf16"] != curves["fp32"]  # bf16 did run
    np.testing.assert_allclose(curves["bf16"], curves["fp32"], rtol=2e-2)


def test_bf16_autocast_keeps_the_log_envelope_in_fp32():
    from audiossl.models.encoders import ConvEncoder
    from audiossl.runtime import autocast

    encoder = ConvEncoder(1, [(8, 64, 5, 30), (16, 4, 2, 1)], init="filterbank", first="log_envelope",
                          envelope_pool=3)
    wavs = torch.randn(2, 1600, 1)
    lengths = torch.tensor([1600, 1000])
    with autocast(torch.device("cpu"), "bf16"):
        envelope, _ = encoder.blocks[0](wavs, lengths)
        out, _ = encoder(wavs, lengths)
    assert envelope.dtype == torch.float32
    with torch.no_grad():
        reference, _ = encoder(wavs, lengths)
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)
    assert autocast(torch.device("cpu"), "fp32").__class__.__name__ == "nullcontext"
