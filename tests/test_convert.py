"""``audiossl convert``: CPC_audio checkpoints in and out.

Three kinds of evidence:

- ``tests/data/cpc_audio/``, written by ``tools/cpc_audio_fixture.py`` with
  CPC_audio's own code: tiny training folders and CPC_audio's outputs on a
  short signal; converted, they must give those outputs to 2e-6 (6.0e-7 measured, the LSTM run's encoder).
- Hand-built CPC_audio-format state dicts for more settings: the converted
  model equals CPC_audio's forward written out here from its definition, and
  ``--from`` then ``--to`` gives back every tensor and setting.
- With ``CPC_AUDIO_DIR`` set to a CPC_audio checkout, the exports are loaded
  back with CPC_audio's own loaders (skipped otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from audiossl.checkpoint import atomic_save, load_checkpoint, load_model
from audiossl.cli import main
from audiossl.config import Config, build_config
from audiossl.interop.cpc_audio import from_cpc_audio
from audiossl.interop.cpc_audio_args import ConvertError
from audiossl.models.encoders import ChannelNorm, ConvBlock
from audiossl.models.model import build_model
from audiossl.objectives import build_objective
from audiossl.train import initial_checkpoint

from conftest import package_env

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "data" / "cpc_audio"
TOOL = REPO / "tools" / "cpc_audio_fixture.py"
PEER = os.environ.get("CPC_AUDIO_DIR")
KERNELS, STRIDES, PADDINGS = (10, 8, 4, 4, 4), (5, 4, 2, 2, 2), (3, 2, 1, 1, 1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads cost more than they give


def outputs(path: Path, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    """An audiossl checkpoint's encoder and context features, and its CPC scores of the positives z_{t+k}."""
    model = load_model(path)
    ckpt = load_checkpoint(path)
    objective = build_objective(Config.from_dict(ckpt["config"]), model)
    objective.load_state_dict(ckpt["objective"])
    with torch.no_grad():
        z, c, _ = model(audio, torch.tensor([audio.shape[1]]))
        steps, window = objective.num_steps, z.shape[1] - objective.num_steps
        preds = objective.eval().predict(c).view(steps, window, -1)
        scores = torch.stack([(preds[k] * z[0, k + 1:k + 1 + window]).sum(-1) for k in range(steps)])
    return {"encoder": z[0], "context": c[0], "scores": scores}


def largest(a: dict, b: dict) -> dict[str, float]:
    return {k: float((a[k] - b[k]).abs().max()) for k in a if k in b}


def convert(*argv: str) -> int:
    return main(["convert", *map(str, argv)])


# --- the channel norm CPC_audio needs -------------------------------------------------------------

def test_unbiased_channel_norm_is_cpc_audios_and_keeps_its_keys():
    torch.manual_seed(0)
    norm = ChannelNorm(8, unbiased=True)
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 1.5)
        norm.norm.bias.normal_()
    x = torch.randn(2, 30, 8).relu()
    xc = x.transpose(1, 2)  # CPC_audio's ChannelNorm on (batch, channels, frames)
    ref = (xc - xc.mean(1, keepdim=True)) * torch.rsqrt(xc.var(1, keepdim=True) + 1e-5)
    ref = ref * norm.norm.weight.view(1, -1, 1) + norm.norm.bias.view(1, -1, 1)
    assert torch.allclose(norm(x), ref.transpose(1, 2), atol=1e-5)
    biased = ChannelNorm(8)
    biased.load_state_dict(norm.state_dict())
    assert (biased(x) - norm(x)).abs().max() > 1e-2  # with 8 channels the two differ by 7 %
    blocks = [ConvBlock(1, 8, 10, 5, 3, kind) for kind in ("channel", "channel_unbiased")]
    assert list(blocks[0].state_dict()) == list(blocks[1].state_dict()) == [
        "conv.weight", "conv.bias", "norm.norm.weight", "norm.norm.bias"]
    assert build_config(overrides={"encoder_norm": "channel_unbiased"}).model.encoder_norm == "channel_unbiased"


# --- CPC_audio's own outputs (the committed fixtures) --------------------------------------------

# The largest difference from CPC_audio's outputs on the fixtures is 6.0e-7 (float32 sums in another
# order); the bound leaves room for other CPUs' kernels. README and docs/interop.md quote both.
EXACT = 2e-6

@pytest.mark.parametrize("run", ["ln_lstm", "bn_gru", "id_noar"])
def test_converted_run_gives_cpc_audios_outputs(run, tmp_path):
    out = tmp_path / "model.pt"
    assert convert("--from", "cpc_audio", FIXTURES / run, "--out", out) == 0
    reference = torch.load(FIXTURES / f"reference_{run}.pt", weights_only=True)
    diffs = largest(outputs(out, reference["audio"]), reference)
    assert set(diffs) == {"encoder", "context", "scores"}
    assert max(diffs.values()) < EXACT, diffs
    epochs = {"ln_lstm": 1, "bn_gru": 0, "id_noar": 0}  # the folder's highest, as getCheckpointData takes
    assert load_checkpoint(out)["converted_from"]["epoch"] == epochs[run]


def test_checkpoint_file_and_release_file(tmp_path):
    reference = torch.load(FIXTURES / "reference_ln_lstm.pt", weights_only=True)
    assert convert("--from", "cpc_audio", FIXTURES / "ln_lstm" / "checkpoint_0.pt", "--out", tmp_path / "e0.pt") == 0
    assert load_checkpoint(tmp_path / "e0.pt")["converted_from"]["epoch"] == 0
    assert max(largest(outputs(tmp_path / "e0.pt", reference["audio"]), reference).values()) > 1e-4  # epoch 0's
    # A release file as the published ones: {"config": the settings, "weights": the CPCModel state}, in the
    # zip format and in torch's legacy one (files written before torch 1.6).
    args = json.loads((FIXTURES / "ln_lstm" / "checkpoint_args.json").read_text())
    weights = torch.load(FIXTURES / "ln_lstm" / "checkpoint_1.pt", weights_only=True)["gEncoder"]
    for legacy in (False, True):
        release = tmp_path / f"release_{legacy}.pt"
        torch.save({"config": args, "weights": weights}, release, _use_new_zipfile_serialization=not legacy)
        ckpt, notes = from_cpc_audio(release)
        atomic_save(ckpt, tmp_path / "model.pt")
        diffs = largest(outputs(tmp_path / "model.pt", reference["audio"]), reference)
        assert max(diffs["encoder"], diffs["context"]) < EXACT
        assert any("release file holds no criterion" in note for note in notes)


def test_export_has_cpc_audios_layout(tmp_path):
    """Keys, shapes, settings and optimizer of the export against the fixture CPC_audio itself wrote."""
    assert convert("--from", "cpc_audio", FIXTURES / "ln_lstm", "--out", tmp_path / "model.pt") == 0
    assert convert("--to", "cpc_audio", tmp_path / "model.pt", "--out", tmp_path / "run") == 0
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint_0.pt", "checkpoint_args.json", "checkpoint_logs.json"]
    theirs = torch.load(FIXTURES / "ln_lstm" / "checkpoint_1.pt", weights_only=True)
    ours = torch.load(tmp_path / "run" / "checkpoint_0.pt", weights_only=True)
    assert set(ours) == {"gEncoder", "cpcCriterion", "optimizer", "best"} and ours["best"] is None
    for part in ("gEncoder", "cpcCriterion"):
        assert {k: v.shape for k, v in ours[part].items()} == {k: v.shape for k, v in theirs[part].items()}
        for key, tensor in theirs[part].items():
            assert torch.allclose(ours[part][key], tensor, atol=1e-7), key
    assert ours["optimizer"]["param_groups"][0]["params"] == theirs["optimizer"]["param_groups"][0]["params"]
    assert ours["optimizer"]["state"] == {}
    args = json.loads((tmp_path / "run" / "checkpoint_args.json").read_text())
    fixture_args = json.loads((FIXTURES / "ln_lstm" / "checkpoint_args.json").read_text())
    for key in ("hiddenEncoder", "hiddenGar", "normMode", "arMode", "nLevelsGRU", "nPredicts", "negativeSamplingExt",
                "rnnMode", "sizeWindow", "samplingType", "learningRate", "random_seed", "encoder_type", "cpc_mode"):
        assert args[key] == fixture_args[key], key
    assert args["load"] is None and args["supervised"] is False
    assert json.loads((tmp_path / "run" / "checkpoint_logs.json").read_text())["epoch"] == [0]
    assert convert("--to", "cpc_audio-release", tmp_path / "model.pt", "--out", tmp_path / "release.pt") == 0
    release = torch.load(tmp_path / "release.pt", weights_only=True)
    assert set(release) == {"config", "weights"} and release["config"] == args
    assert release["weights"].keys() == theirs["gEncoder"].keys()


# --- hand-built CPC_audio-format state dicts ------------------------------------------------------

SETTINGS = {
    "layerNorm_lstm2_linear": {"hiddenEncoder": 8, "hiddenGar": 6, "normMode": "layerNorm", "arMode": "LSTM",
                               "nLevelsGRU": 2, "rnnMode": "linear", "nPredicts": 3},
    "batchNorm_gru_transformer": {"hiddenEncoder": 8, "hiddenGar": 8, "normMode": "batchNorm", "arMode": "GRU",
                                  "rnnMode": "transformer", "nPredicts": 2, "samplingType": "samesequence"},
    "ID_noar_linear": {"hiddenEncoder": 8, "hiddenGar": 8, "normMode": "ID", "arMode": "no_ar", "rnnMode": "linear",
                       "nPredicts": 2, "samplingType": "uniform"},
}


def cpc_audio_run(folder: Path, settings: dict, seed: int = 0, epoch: int = 3) -> dict:
    """A CPC_audio training folder of random weights, laid out as its CPCModel and criterion hold them."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3):
        return scale * torch.randn(*shape, generator=g)

    args = {"sizeWindow": 3200, "negativeSamplingExt": 4, "learningRate": 1e-3, "random_seed": 5,
            "batchSizeGPU": 2, "nGPU": 2, "supervised": False, "load": None, **settings}
    enc, gar, steps = args["hiddenEncoder"], args["hiddenGar"], args["nPredicts"]
    model, channels = {}, 1
    for i, kernel in enumerate(KERNELS):
        model[f"gEncoder.conv{i}.weight"], model[f"gEncoder.conv{i}.bias"] = rand(enc, channels, kernel), rand(enc)
        channels = enc
        norm = f"gEncoder.batchNorm{i}."
        if args["normMode"] == "layerNorm":
            model[norm + "weight"], model[norm + "bias"] = 1 + rand(1, enc, 1), rand(1, enc, 1)
        elif args["normMode"] == "batchNorm":
            model.update({norm + "weight": 1 + rand(enc), norm + "bias": rand(enc), norm + "running_mean": rand(enc),
                          norm + "running_var": 0.5 + rand(enc).abs(), norm + "num_batches_tracked": torch.tensor(9)})
    gates = {"LSTM": 4, "GRU": 3}.get(args["arMode"])
    for j in range(args.get("nLevelsGRU", 1) if gates else 0):
        model.update({f"gAR.baseNet.weight_ih_l{j}": rand(gates * gar, enc if j == 0 else gar),
                      f"gAR.baseNet.weight_hh_l{j}": rand(gates * gar, gar),
                      f"gAR.baseNet.bias_ih_l{j}": rand(gates * gar), f"gAR.baseNet.bias_hh_l{j}": rand(gates * gar)})
    criterion = {}
    for k in range(steps):
        if args["rnnMode"] == "linear":
            criterion[f"wPrediction.predictors.{k}.weight"] = rand(enc, gar)
            continue
        p, positions = f"wPrediction.predictors.{k}.0.", args["sizeWindow"] // 160 - steps
        criterion.update({p + f"multihead.W{w}.weight": rand(enc, enc) for w in "okqv"})
        criterion.update({p + "multihead.Att.Krelpos": rand(enc // 8, positions),
                          p + "multihead.Att.mask": torch.full((positions, positions), -torch.inf).triu(1)[None],
                          p + "multihead.Att.z": torch.zeros(1, positions, 1),
                          p + "ln_multihead.weight": 1 + rand(enc), p + "ln_multihead.bias": rand(enc),
                          p + "ffnetwork.lin1.weight": rand(2048, enc), p + "ffnetwork.lin1.bias": rand(2048),
                          p + "ffnetwork.lin2.weight": rand(enc, 2048, scale=0.02),
                          p + "ffnetwork.lin2.bias": rand(enc),
                          p + "ln_ffnetwork.weight": 1 + rand(enc), p + "ln_ffnetwork.bias": rand(enc)})
    folder.mkdir(parents=True)
    (folder / "checkpoint_args.json").write_text(json.dumps(args))
    (folder / "checkpoint_logs.json").write_text(json.dumps({"epoch": list(range(epoch + 1))}))
    torch.save({"gEncoder": model, "cpcCriterion": criterion, "optimizer": {}, "best": None},
               folder / f"checkpoint_{epoch}.pt")
    return {"args": args, "model": model, "criterion": criterion}


def cpc_audio_forward(run: dict, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CPCModel.forward written out from CPC_audio's definition: z, c of shape (frames, dim)."""
    args, state = run["args"], run["model"]
    x = audio.view(1, 1, -1)
    for i, (stride, padding) in enumerate(zip(STRIDES, PADDINGS)):
        x = F.conv1d(x, state[f"gEncoder.conv{i}.weight"], state[f"gEncoder.conv{i}.bias"], stride, padding)
        norm = f"gEncoder.batchNorm{i}."
        if args["normMode"] == "layerNorm":  # ChannelNorm: mean and unbiased variance over channels
            x = (x - x.mean(1, keepdim=True)) * torch.rsqrt(x.var(1, keepdim=True) + 1e-5)
            x = x * state[norm + "weight"] + state[norm + "bias"]
        elif args["normMode"] == "batchNorm":
            x = F.batch_norm(x, state[norm + "running_mean"], state[norm + "running_var"], state[norm + "weight"],
                             state[norm + "bias"], training=False, eps=1e-5)
        x = F.relu(x)
    z = x.transpose(1, 2)
    if args["arMode"] == "no_ar":
        return z[0], z[0]
    rnn = {"LSTM": nn.LSTM, "GRU": nn.GRU}[args["arMode"]](args["hiddenEncoder"], args["hiddenGar"],
                                                           num_layers=args.get("nLevelsGRU", 1), batch_first=True)
    rnn.load_state_dict({k[len("gAR.baseNet."):]: v for k, v in state.items() if k.startswith("gAR.")})
    return z[0], rnn(z)[0][0]


def cpc_audio_scores(run: dict, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor | None:
    """CPC_audio's linear predictor's scores of the positives: the mean over dims of z_{t+k} * (W_k c_t)."""
    if run["args"]["rnnMode"] != "linear":
        return None
    steps = run["args"]["nPredicts"]
    window = z.shape[0] - steps
    return torch.stack([(z[k + 1:k + 1 + window] * (c[:window] @ run["criterion"][
        f"wPrediction.predictors.{k}.weight"].T)).mean(-1) for k in range(steps)])


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_hand_built_run_converts_exactly_and_back(name, tmp_path):
    run = cpc_audio_run(tmp_path / "run", SETTINGS[name])
    assert convert("--from", "cpc_audio", tmp_path / "run", "--out", tmp_path / "model.pt") == 0
    audio = 0.3 * torch.sin(torch.arange(3200) * 0.05).unsqueeze(0) + 0.05 * torch.randn(1, 3200)
    with torch.no_grad():
        z, c = cpc_audio_forward(run, audio)
        ours = outputs(tmp_path / "model.pt", audio)
        scores = cpc_audio_scores(run, z, c)
    assert torch.allclose(ours["encoder"], z, atol=1e-5) and torch.allclose(ours["context"], c, atol=1e-5)
    if scores is not None:
        assert torch.allclose(ours["scores"], scores, atol=1e-5)
    cfg = Config.from_dict(load_checkpoint(tmp_path / "model.pt")["config"])
    assert (cfg.data.window_samples, cfg.train.batch_size, cfg.train.seed, cfg.train.lr) == (3200, 4, 5, 1e-3)
    policy = "sequence" if SETTINGS[name].get("samplingType") == "samesequence" else "batch"
    assert cfg.objective.cpc_negative_policy == policy

    assert convert("--to", "cpc_audio", tmp_path / "model.pt", "--out", tmp_path / "back") == 0
    back = torch.load(tmp_path / "back" / "checkpoint_0.pt", weights_only=True)
    for part, original in (("gEncoder", run["model"]), ("cpcCriterion", run["criterion"])):
        assert back[part].keys() == original.keys()
        for key, tensor in original.items():
            assert back[part][key].shape == tensor.shape and torch.allclose(back[part][key], tensor, atol=1e-6), key
    parameters = [k for state in (run["criterion"], run["model"]) for k in state
                  if not k.endswith(("running_mean", "running_var", "num_batches_tracked", ".mask", ".z"))]
    assert back["optimizer"]["param_groups"][0]["params"] == list(range(len(parameters)))
    args = json.loads((tmp_path / "back" / "checkpoint_args.json").read_text())
    for key, value in run["args"].items():
        if key not in ("nGPU", "batchSizeGPU"):
            assert args[key] == value, key
    assert args["batchSizeGPU"] * args["nGPU"] == 4


# --- refusals and notes ----------------------------------------------------------------------------

def _run_with(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(FIXTURES / "ln_lstm", folder)
    args = json.loads((folder / "checkpoint_args.json").read_text())
    (folder / "checkpoint_args.json").write_text(json.dumps({**args, **changes}))
    return folder


@pytest.mark.parametrize("flag,value", [("encoder_type", "mfcc"), ("encoder_type", "lfb"), ("normMode", "instanceNorm"),
                                        ("arMode", "transformer"), ("arMode", "RNN"), ("cpc_mode", "reverse")])
def test_unconvertible_setting_is_refused_in_one_line(flag, value, tmp_path, capsys):
    folder = _run_with(tmp_path, **{flag: value})
    assert convert("--from", "cpc_audio", folder, "--out", tmp_path / "model.pt") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--{flag} {value} cannot be converted" in err and str(folder) in err
    assert not (tmp_path / "model.pt").exists()


def test_what_is_not_carried_is_said(tmp_path, capsys):
    folder = _run_with(tmp_path, rnnMode="ffd", dropout=True, schedulerStep=10)
    assert convert("--from", "cpc_audio", folder, "--out", tmp_path / "model.pt") == 0
    out = capsys.readouterr().out
    assert "the prediction network is not carried (--rnnMode ffd" in out
    assert "--dropout" in out and "--schedulerStep" in out
    reference = torch.load(FIXTURES / "reference_ln_lstm.pt", weights_only=True)
    diffs = largest(outputs(tmp_path / "model.pt", reference["audio"]), reference)
    assert max(diffs["encoder"], diffs["context"]) < EXACT and diffs["scores"] > 1e-3  # a fresh predictor


@pytest.mark.parametrize("problem,expected", [
    ("no_checkpoints", "no checkpoint_<epoch>.pt in the folder"),
    ("no_args", "no checkpoint_args.json"),
    ("bad_args", "not readable JSON"),
    ("audiossl_checkpoint", "not a CPC_audio checkpoint"),
    ("other_shapes", "gEncoder.conv0.weight has shape (8, 1, 10), its settings make (16, 1, 10)"),
    ("extra_key", "holds gEncoder.extra"),
])
def test_bad_sources_are_named_in_one_line(problem, expected, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(FIXTURES / "bn_gru", folder)
    source = folder
    if problem == "no_checkpoints":
        (folder / "checkpoint_0.pt").unlink()
    elif problem == "no_args":
        (folder / "checkpoint_args.json").unlink()
    elif problem == "bad_args":
        (folder / "checkpoint_args.json").write_text("{not json")
    elif problem == "audiossl_checkpoint":
        cfg = build_config(overrides={"encoder_channels": 8, "context_dim": 8})
        model = build_model(cfg.model)
        source = tmp_path / "audiossl.pt"
        atomic_save(initial_checkpoint(cfg, model, build_objective(cfg, model)), source)
    elif problem == "other_shapes":
        args = json.loads((folder / "checkpoint_args.json").read_text())
        (folder / "checkpoint_args.json").write_text(json.dumps({**args, "hiddenEncoder": 16, "hiddenGar": 16}))
    else:
        ckpt = torch.load(folder / "checkpoint_0.pt", weights_only=True)
        ckpt["gEncoder"]["gEncoder.extra"] = torch.zeros(1)
        torch.save(ckpt, folder / "checkpoint_0.pt")
    assert convert("--from", "cpc_audio", source, "--out", tmp_path / "model.pt") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def _audiossl_checkpoint(tmp_path: Path, **overrides) -> Path:
    cfg = build_config(overrides={"encoder_channels": 8, "context_dim": 8, "cpc_steps": 2, "cpc_negatives": 4,
                                  "window_samples": 3200, **overrides})
    model = build_model(cfg.model)
    path = tmp_path / "audiossl.pt"
    atomic_save(initial_checkpoint(cfg, model, build_objective(cfg, model)), path)
    return path


LOGMEL = {"frontend": "logmel", "n_mels": 16, "encoder_kernels": [], "encoder_strides": [], "encoder_paddings": []}


@pytest.mark.parametrize("overrides,expected", [
    (LOGMEL, "frontend: logmel"),
    ({"cmvn": True}, "cmvn: True"),
    ({"encoder_kernels": [400, 8, 4, 4, 4], "encoder_paddings": [198, 2, 1, 1, 1]}, "encoder_kernels: [400"),
    ({"context": "transformer", "context_heads": 2}, "context: transformer"),
    ({"context_layers": 2, "context_residual": True}, "context_residual: True"),
    ({**LOGMEL, "objective": "apc", "context_residual": False}, "frontend: logmel"),
    ({"cpc_score": "cosine"}, "cpc_score: cosine"),
    ({"cpc_loss": "nce"}, "cpc_loss: nce"),
])
def test_export_refuses_what_cpc_audio_cannot_reproduce(overrides, expected, tmp_path, capsys):
    source = _audiossl_checkpoint(tmp_path, **overrides)
    assert convert("--to", "cpc_audio", source, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "cannot be exported to CPC_audio" in err, err
    assert not (tmp_path / "run").exists()


def test_release_exports_the_model_of_any_objective_and_biased_norms(tmp_path, capsys):
    source = _audiossl_checkpoint(tmp_path, cpc_score="cosine", encoder_norm="channel")
    assert convert("--to", "cpc_audio-release", source, "--out", tmp_path / "release.pt") == 0
    out = capsys.readouterr().out
    assert "cpc_score: cosine has no CPC_audio counterpart" in out and "sqrt(C / (C - 1))" in out
    release = torch.load(tmp_path / "release.pt", weights_only=True)
    model = load_model(source)
    # The biased channel norm becomes CPC_audio's unbiased one with scales times sqrt(C / (C - 1)).
    assert torch.allclose(release["weights"]["gEncoder.batchNorm2.weight"].flatten(),
                          model.encoder.blocks[2].norm.norm.weight * (8 / 7) ** 0.5)
    assert release["config"]["normMode"] == "layerNorm" and release["config"]["rnnMode"] == "transformer"


def test_export_refuses_a_folder_holding_checkpoints(tmp_path, capsys):
    source = _audiossl_checkpoint(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint_5.pt").write_bytes(b"")
    assert convert("--to", "cpc_audio", source, "--out", tmp_path / "run") == 2
    assert "already holds CPC_audio checkpoints (checkpoint_5.pt)" in capsys.readouterr().err


def test_config_out_goes_with_from(tmp_path, capsys):
    source = _audiossl_checkpoint(tmp_path)
    assert convert("--to", "cpc_audio", source, "--out", tmp_path / "run", "--config-out", tmp_path / "c.yaml") == 2
    assert "--config-out goes with --from" in capsys.readouterr().err
    with pytest.raises(ConvertError, match="not a CPC_audio checkpoint"):
        from_cpc_audio(source)


# --- training on from a converted run -------------------------------------------------------------

def test_converted_run_continues_training(tiny_corpus, tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    assert convert("--from", "cpc_audio", FIXTURES / "ln_lstm", "--out", exp / "checkpoint.pt",
                   "--config-out", tmp_path / "cpc_audio.yaml") == 0
    converted = load_checkpoint(exp / "checkpoint.pt")
    assert main(["train", "--config", str(tmp_path / "cpc_audio.yaml"), "--data", str(tiny_corpus), "--exp-dir",
                 str(exp), "--no-progress", "max_steps=2", "num_workers=0", "device=cpu", "ckpt_every=2"]) == 0
    assert f"resuming from {exp / 'checkpoint.pt'} at step 0" in capsys.readouterr().out
    trained = load_checkpoint(exp / "checkpoint.pt")
    assert trained["step"] == 2
    for part in ("model", "objective"):
        for key, tensor in converted[part].items():
            if tensor.is_floating_point():  # moved by two steps of lr 2e-4 from the converted weights
                assert (trained[part][key] - tensor).abs().max() < 1e-2, key
    assert (trained["objective"]["weight"] - converted["objective"]["weight"]).abs().max() > 0


# --- CPC_audio's own loaders (a checkout in CPC_AUDIO_DIR) ----------------------------------------

@pytest.mark.skipif(not PEER, reason="CPC_AUDIO_DIR (a facebookresearch/CPC_audio checkout) is not set")
def test_exports_load_back_in_cpc_audio_with_the_same_outputs():
    """The fixtures both ways, a Transformer-predictor run and two audiossl-born models, through CPC_audio's code."""
    result = subprocess.run([sys.executable, str(TOOL), "--peer", PEER, "check", "--fixtures", str(FIXTURES)],
                            capture_output=True, text=True, env=package_env(), timeout=900)
    table = [line for line in result.stdout.splitlines() if "->" in line]
    print("\n".join(table))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(table) == 16 and "within 1e-4" in result.stdout
