"""``precision: auto``: bf16 where the hardware computes it (CUDA, a CPU with AVX512-BF16 or AMX), fp32 elsewhere."""

from __future__ import annotations

import pytest
import torch
import yaml

from audiossl import runtime
from audiossl.cli import main
from audiossl.config import build_config
from audiossl.runtime import autocast, cpu_bf16, resolve_precision
from audiossl.train import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def fake_cpu(monkeypatch):
    """``fake_cpu(onednn=..., amx=..., avx512_bf16=..., machine=...)``: what the capability checks report."""

    def fake(onednn=True, amx=False, avx512_bf16=False, machine="x86_64", isa=None):
        monkeypatch.setattr(runtime, "_onednn_bf16", lambda: onednn)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
        if isa is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        cpu_bf16.cache_clear()

    yield fake
    cpu_bf16.cache_clear()


@pytest.mark.parametrize("features, native", [
    ({"amx": True}, True),
    ({"avx512_bf16": True}, True),
    ({"onednn": False}, False),  # AVX2 only (AMD Zen 3): oneDNN itself says no
    ({}, False),  # AVX-512 without BF16: oneDNN would emulate
    ({"avx512_bf16": True, "isa": "AVX2"}, False),  # oneDNN capped below its bf16 kernels
    ({"avx512_bf16": True, "isa": "AVX512_CORE_BF16"}, True),
    ({"machine": "aarch64"}, True),  # elsewhere oneDNN's own check decides
    ({"machine": "aarch64", "onednn": False}, False),
])
def test_native_bf16_follows_the_capability_checks(fake_cpu, features, native):
    fake_cpu(**features)
    assert cpu_bf16()[0] is native


def test_auto_is_bf16_with_native_bf16_and_fp32_without(fake_cpu):
    fake_cpu(amx=True)
    chosen = resolve_precision("auto", CPU)
    assert (chosen.name, chosen.slow) == ("bf16", False)
    assert "auto: this CPU has AMX" in chosen.reason
    assert isinstance(autocast(CPU, "auto"), torch.autocast)

    fake_cpu(onednn=False)
    chosen = resolve_precision("auto", CPU)
    assert (chosen.name, chosen.slow) == ("fp32", False)
    assert chosen.reason.startswith("auto: oneDNN has no bf16")
    assert not isinstance(autocast(CPU, "auto"), torch.autocast)


def test_explicit_settings_are_kept_and_slow_bf16_warns(fake_cpu):
    fake_cpu(onednn=False)
    assert resolve_precision("fp32", CUDA).name == "fp32"
    assert resolve_precision("auto", CUDA).name == "bf16"  # CUDA does not ask the CPU
    slow = resolve_precision("bf16", CPU)
    assert (slow.name, slow.slow) == ("bf16", True)
    assert slow.describe().startswith("warning: precision bf16 (precision=bf16 in the config, but oneDNN has no")
    assert "30x slower" in slow.describe()
    fake_cpu(avx512_bf16=True)
    assert resolve_precision("bf16", CPU) == ("bf16", "precision=bf16 in the config; this CPU has AVX512-BF16", False)


def test_training_logs_and_records_the_precision(fake_cpu, tiny_corpus, tiny_overrides, tmp_path, capsys, one_thread):
    fake_cpu(onednn=False)
    exp = tmp_path / "exp"
    train(build_config(overrides={**tiny_overrides, "max_steps": 1, "precision": "auto"}), tiny_corpus, exp,
          progress=False)
    line = "precision fp32 (auto: oneDNN has no bf16 on this CPU"
    assert line in capsys.readouterr().out
    text = (exp / "config.yaml").read_text()
    assert text.startswith(f"# on cpu: {line}")
    assert yaml.safe_load(text)["precision"] == "auto"  # the setting itself: a resume elsewhere chooses again


def test_bench_names_the_machine_and_the_precision(fake_cpu, tiny_overrides, tmp_path, capsys, one_thread):
    fake_cpu(amx=True)
    conf = tmp_path / "tiny.yaml"
    conf.write_text(yaml.safe_dump({**tiny_overrides, "precision": "auto"}))
    assert main(["bench", "--config", str(conf), "--steps", "1", "--warmup", "0", "--device", "cpu",
                 "batch_size=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("machine: CPU ")
    assert f"capability {torch.backends.cpu.get_cpu_capability()}, native bf16 yes, " in out[0]
    assert " threads, allocator " in out[0]
    assert out[1] == "precision bf16 (auto: this CPU has AMX)"
