"""The s3prl upstream: audiossl.interop.s3prl.UpstreamExpert, hubconf.py, and the real s3prl package on both.

The tests marked ``needs_s3prl`` run against s3prl from PyPI (``pip install
-e .[s3prl]``, which tools/setup.sh does) and are skipped only where it is
not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from audiossl.checkpoint import atomic_save, load_model
from audiossl.cli import main
from audiossl.config import build_config
from audiossl.interop.s3prl import UpstreamExpert
from audiossl.models.model import SSLModel, build_model
from audiossl.objectives import build_objective
from audiossl.train import initial_checkpoint

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "data" / "cpc_audio"
needs_s3prl = pytest.mark.skipif(importlib.util.find_spec("s3prl") is None,
                                 reason="s3prl is not installed (pip install -e .[s3prl])")
LOGMEL = {"frontend": "logmel", "n_mels": 16, "cmvn": True, "encoder_kernels": [], "encoder_strides": [],
          "encoder_paddings": [], "context_dim": 24}
MODELS = {  # settings, and the layers the expert gives as hidden states
    "cpc": ({"encoder_channels": 16, "context_dim": 16, "context_layers": 2},
            ["encoder", "context_1", "context_2"]),
    "cpc_wide_context": ({"encoder_channels": 16, "context_dim": 24, "context": "lstm"}, ["context_1"]),
    "cpc_no_context": ({"encoder_channels": 16, "context_dim": 16, "context": "none"}, ["context_1"]),
    "apc": ({**LOGMEL, "objective": "apc", "context": "gru", "context_layers": 3, "context_residual": True},
            ["context_1", "context_2", "context_3"]),
    "apc_16": ({**LOGMEL, "objective": "apc", "context_dim": 16, "context": "gru", "context_layers": 2},
               ["encoder", "context_1", "context_2"]),  # 16 log-mel bins, as wide as the context
    "mpc": ({**LOGMEL, "objective": "mpc", "context": "transformer", "context_causal": False, "context_layers": 2,
             "context_heads": 2, "context_ff_dim": 32}, ["context_1", "context_2"]),
    "npc": ({**LOGMEL, "objective": "npc", "context": "npc", "context_layers": 4, "context_residual": True,
             "context_dropout": 0.0}, ["context_1", "context_2", "context_3", "context_4", "context"]),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads cost more than they give


def checkpoint(tmp_path: Path, settings: dict) -> Path:
    torch.manual_seed(0)
    cfg = build_config(overrides=settings)
    model = build_model(cfg.model)
    path = tmp_path / "checkpoint.pt"
    atomic_save(initial_checkpoint(cfg, model, build_objective(cfg, model)), path)
    return path


def waves(*lengths: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [0.1 * torch.randn(n, generator=g) for n in lengths]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_expert_gives_every_layer_of_one_size(name, tmp_path):
    settings, layers = MODELS[name]
    path = checkpoint(tmp_path, settings)
    expert = UpstreamExpert(str(path)).eval()
    assert expert.layers == tuple(layers) and expert.get_downsample_rates("hidden_states") == 160
    wavs = waves(16000, 12345)
    with torch.no_grad():
        out = expert(wavs)
    model = load_model(path)
    frames = model.output_lengths(torch.tensor([16000, 12345]))
    assert len(out["hidden_states"]) == len(layers)
    assert all(out[layer] is hidden for layer, hidden in zip(layers, out["hidden_states"]))
    dims = {h.shape[-1] for h in out["hidden_states"]}
    assert len(dims) == 1 and all(h.shape[:2] == (2, frames[0]) for h in out["hidden_states"])
    assert out["last_hidden_state"] is out["hidden_states"][-1]
    with torch.no_grad():  # each utterance alone gives the batch's rows; the padding is zero
        for i, wav in enumerate(wavs):
            alone, _ = model.extract_features(wav[None], torch.tensor([len(wav)]), tuple(layers))
            for name_, hidden in zip(layers, out["hidden_states"]):
                assert torch.allclose(hidden[i, :frames[i]], alone[name_][0][0], atol=1e-5), name_
                assert not hidden[i, frames[i]:].any()
        context, _ = model.extract_features(wavs[0][None], torch.tensor([16000]), ("context",))
        assert torch.allclose(out["last_hidden_state"][0], context["context"][0][0], atol=1e-5)


def test_expert_refuses_what_is_not_a_list_of_waveforms(tmp_path):
    expert = UpstreamExpert(str(checkpoint(tmp_path, MODELS["cpc"][0])))
    with pytest.raises(ValueError, match="expected a list of 1-D waveforms"):
        expert([torch.zeros(2, 16000)])


def test_the_registered_name_audiossl_s3prl_still_imports():
    import audiossl.s3prl

    assert audiossl.s3prl.UpstreamExpert is UpstreamExpert
    assert audiossl.s3prl.audiossl_local.__module__ == "audiossl.interop.s3prl"


def test_hubconf_entry_loads_the_expert(tmp_path):
    path = checkpoint(tmp_path, MODELS["cpc"][0])
    expert = torch.hub.load(str(REPO), "audiossl_local", source="local", ckpt=str(path), trust_repo=True)
    assert isinstance(expert, UpstreamExpert) and expert.layers == ("encoder", "context_1", "context_2")


@needs_s3prl
@pytest.mark.parametrize("name", ["cpc", "apc", "npc"])
def test_s3prl_featurizer_runs_on_the_expert(name, tmp_path):
    from s3prl.upstream.interfaces import Featurizer

    expert = UpstreamExpert(str(checkpoint(tmp_path, MODELS[name][0])))
    featurizer = Featurizer(expert, upstream_device="cpu")
    assert featurizer.layer_num == len(MODELS[name][1]) and featurizer.downsample_rate == 160
    wavs = waves(16000, 12300, 8080)
    with torch.no_grad():
        feats = featurizer(wavs, expert(wavs))  # its tolerance check on the frame count passes inside
    assert [f.shape for f in feats] == [(round(len(w) / 160), featurizer.output_dim) for w in wavs]


@needs_s3prl
@pytest.mark.parametrize("run", ["bn_gru", "ln_lstm"])
def test_cpc_audio_release_loads_in_s3prls_cpc_local(run, tmp_path):
    from s3prl.upstream.cpc.hubconf import cpc_local

    model_path, release = tmp_path / "model.pt", tmp_path / "release.pt"
    assert main(["convert", "--from", "cpc_audio", str(FIXTURES / run), "--out", str(model_path)]) == 0
    assert main(["convert", "--to", "cpc_audio-release", str(model_path), "--out", str(release)]) == 0
    theirs, ours = cpc_local(str(release)).eval(), UpstreamExpert(str(model_path)).eval()
    model = load_model(model_path)
    wavs = waves(16000, 16000)  # one length: CPC_audio's padded frames are not zeroed
    with torch.no_grad():
        hidden = theirs(wavs)["hidden_states"]  # (gEncoder, gAR)
        mine, _ = model.extract_features(torch.stack(wavs), torch.tensor([16000, 16000]), ("encoder", "context"))
        expert = ours(wavs)
    assert len(hidden) == 2
    assert (hidden[0] - mine["encoder"][0]).abs().max() < 1e-4
    assert (hidden[1] - mine["context"][0]).abs().max() < 1e-4
    assert (hidden[1] - expert["last_hidden_state"]).abs().max() < 1e-4


@pytest.mark.parametrize("name", sorted(MODELS))
def test_expert_reads_its_layers_from_the_model_without_running_it(name, tmp_path, monkeypatch):
    settings, layers = MODELS[name]
    path = checkpoint(tmp_path, settings)

    def no_forward(*args, **kwargs):
        raise AssertionError("the expert ran the model to find its layers")

    monkeypatch.setattr(SSLModel, "encode", no_forward)
    expert = UpstreamExpert(str(path))
    assert expert.layers == tuple(layers)
    declared = expert.model.named_outputs()
    assert list(declared) == expert.model.layer_names and {declared[layer] for layer in layers} == {
        expert.model.context_dim}
