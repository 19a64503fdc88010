"""CPC_audio checkpoints in and out: weights, settings and predictor, exactly.

CPC_audio (Riviere et al. 2020, facebookresearch/CPC_audio) keeps a run in a
training folder written by ``cpc/train.py``:

- ``checkpoint_<epoch>.pt``: ``{"gEncoder": CPCModel state, "cpcCriterion":
  criterion state, "optimizer": Adam state, "best": a CPCModel state or
  None}``; its loaders (``feature_loader.getCheckpointData``) take the highest
  epoch;
- ``checkpoint_args.json``: the run's argparse namespace, read over the
  defaults (:mod:`audiossl.interop.cpc_audio_args` maps it);
- ``checkpoint_logs.json``: per-epoch losses and accuracies.

Its published models (the Libri-light 60k checkpoint) are release files,
``{"config": the namespace as a dict, "weights": CPCModel state}``, read by
its ``hubconf.py`` and by s3prl's ``cpc_local`` upstream. Every one of these
files holds plain dicts of tensors, numbers, strings and lists, so they are
read with ``torch.load(weights_only=True)`` like audiossl's own.

The CPCModel keys and audiossl's:

====================================================  ==========================================
CPC_audio                                             audiossl
====================================================  ==========================================
``gEncoder.conv{i}.weight`` (C, Cin, k), ``.bias``    ``encoder.blocks.{i}.conv.weight``, ``.bias``
``gEncoder.batchNorm{i}.weight``, ``.bias``           ``layerNorm``: ``encoder.blocks.{i}.norm.norm.weight``,
(1, C, 1) of ``ChannelNorm`` or (C,) and the          ``.bias`` (C,); ``batchNorm``:
running statistics of ``BatchNorm1d``                 ``encoder.blocks.{i}.norm.*``
``gAR.baseNet.{weight,bias}_{ih,hh}_l{j}``            ``context.layers.{j}.{weight,bias}_{ih,hh}_l0``
``cpcCriterion.wPrediction.predictors.{k}.weight``    ``objective.weight[k]`` (D_enc, D_ar), divided
(D_enc, D_ar), linear, no bias                        by D_enc: CPC_audio scores with the mean over
                                                      the dims, audiossl with the sum
``...predictors.{k}.0.multihead.W{q,k,v,o}``,         ``objective.predictors.{k}.{query,key,value,
``.Att.Krelpos`` (d_head, positions), ``ln_*``,       out}``, ``.relative`` (the columns reversed:
``ffnetwork.lin{1,2}`` (``--rnnMode transformer``)    CPC_audio indexes them by ``positions - 1 -
                                                      offset``), ``norm_*``, ``ff.{0,3}``; the last
                                                      norm's scale and shift divided by D_enc
====================================================  ==========================================

CPC_audio's multi-layer ``nn.LSTM``/``nn.GRU`` is a stack of single-layer
ones without dropout, which is how audiossl holds it. What is not carried:
the optimizer's moments (the converted run starts a fresh optimizer; the
exported folder holds a fresh Adam state), the training logs, ``best``, and
the settings :mod:`~audiossl.interop.cpc_audio_args` notes.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from audiossl.checkpoint import atomic_save, load_checkpoint, load_data, load_state
from audiossl.config import Config
from audiossl.interop.cpc_audio_args import (
    DOWNSAMPLING,
    ConvertError,
    args_from_config,
    config_from_args,
    merged,
    predictor_carried,
)
from audiossl.models.model import SSLModel, build_model
from audiossl.objectives import build_objective
from audiossl.utils.atomic import atomic_write

ARGS, LOGS = "checkpoint_args.json", "checkpoint_logs.json"
CHECKPOINT = re.compile(r"^checkpoint_(\d+)\.pt$")
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked", ".Att.mask", ".Att.z")
# audiossl CausalPredictorLayer key <- CPC_audio TransformerLayer key (below predictors.{k}.0.)
_TRANSFORMER = {"query.weight": "multihead.Wq.weight", "key.weight": "multihead.Wk.weight",
                "value.weight": "multihead.Wv.weight", "out.weight": "multihead.Wo.weight",
                "relative": "multihead.Att.Krelpos", "norm_attention.weight": "ln_multihead.weight",
                "norm_attention.bias": "ln_multihead.bias", "ff.0.weight": "ffnetwork.lin1.weight",
                "ff.0.bias": "ffnetwork.lin1.bias", "ff.3.weight": "ffnetwork.lin2.weight",
                "ff.3.bias": "ffnetwork.lin2.bias", "norm_ff.weight": "ln_ffnetwork.weight",
                "norm_ff.bias": "ln_ffnetwork.bias"}


# --- reading CPC_audio's files ----------------------------------------------------------------

def run_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the ``checkpoint_<epoch>.pt`` files in ``folder``, by epoch."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_file()]
    return sorted(found)


def _read_args(folder: Path) -> dict[str, Any]:
    path = folder / ARGS
    try:
        args = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConvertError(f"{folder}: no {ARGS} (a CPC_audio training folder holds the run's settings "
                           "there)") from None
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(args, dict):
        raise ConvertError(f"{path}: expected a JSON object of the run's settings")
    return args


def read_cpc_audio(source: str | Path) -> dict[str, Any]:
    """A CPC_audio run folder, ``checkpoint_<epoch>.pt`` or release file, as plain parts.

    Returns:
        ``{"args": settings over the defaults, "model": CPCModel state,
        "criterion": criterion state or None, "path": the file read,
        "epoch": int or None, "notes": [...]}``.
    """
    source = Path(source)
    if source.is_dir():
        found = run_checkpoints(source)
        if not found:
            raise ConvertError(f"{source}: no checkpoint_<epoch>.pt in the folder")
        epoch, path = found[-1]
    elif source.is_file():
        match = CHECKPOINT.match(source.name)
        epoch, path = (int(match.group(1)) if match else None), source
    else:
        raise ConvertError(f"{source}: no such file or folder")
    data = load_data(path)
    notes = []
    if isinstance(data, dict) and "gEncoder" in data:
        args = merged(_read_args(path.parent))
        load = args.get("load")
        if load and (len(load) > 1 or Path(load[0]).parent.name != path.parent.name):
            notes.append(f"--load {' '.join(load)}: CPC_audio builds this model from that run's settings; "
                         f"converted with {path.parent / ARGS}, which must fit the weights' shapes")
        model, criterion = data["gEncoder"], data.get("cpcCriterion")
    elif isinstance(data, dict) and "weights" in data and isinstance(data.get("config"), dict):
        args, model, criterion, epoch = merged(data["config"]), data["weights"], None, None
    else:
        raise ConvertError(f"{path}: not a CPC_audio checkpoint (neither a training checkpoint's 'gEncoder' "
                           "nor a release file's 'config' and 'weights')")
    for name, state in (("model", model), ("criterion", criterion)):
        if state is not None and not (isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values())):
            raise ConvertError(f"{path}: the {name} state is not a dict of tensors")
    return {"args": args, "model": model, "criterion": criterion, "path": path, "epoch": epoch, "notes": notes}


# --- state dicts: CPC_audio -> audiossl -------------------------------------------------------

class _Taker:
    """Reads a peer state dict key by key, checking shapes; then names what was left unread."""

    def __init__(self, state: dict[str, torch.Tensor], where: str, what: str):
        self.state, self.where, self.what, self.taken = state, where, what, set()

    def __call__(self, key: str, shape: tuple[int, ...], peer_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The tensor at ``key``, of ``peer_shape`` (default ``shape``), reshaped to ``shape``."""
        if key not in self.state:
            raise ConvertError(f"{self.where}: the {self.what} has no {key}, which its settings need")
        self.taken.add(key)
        tensor, expected = self.state[key], peer_shape or shape
        if tuple(tensor.shape) != expected:
            raise ConvertError(f"{self.where}: {key} has shape {tuple(tensor.shape)}, its settings make "
                               f"{expected}; the weights are of another architecture")
        return tensor.reshape(shape)

    def finish(self, ignore: tuple[str, ...] = ()) -> None:
        left = sorted(k for k in set(self.state) - self.taken if not k.endswith(ignore))
        if left:
            raise ConvertError(f"{self.where}: the {self.what} holds {', '.join(left[:3])}"
                               f"{' ...' if len(left) > 3 else ''}, which its settings do not explain")


def model_state_from(state: dict[str, torch.Tensor], model: SSLModel, where: str) -> dict[str, torch.Tensor]:
    """audiossl's model state from a CPCModel state (``gEncoder.*``, ``gAR.*``)."""
    own, take = model.state_dict(), _Taker(state, where, "model")
    out = {}
    for key, tensor in own.items():
        parts = key.split(".")
        shape, peer_shape = tuple(tensor.shape), None
        if parts[0] == "encoder":  # encoder.blocks.{i}.conv.{p} | .norm.norm.{p} (ChannelNorm) | .norm.{p}
            i, layer, name = parts[2], parts[3], parts[-1]
            peer = f"gEncoder.conv{i}.{name}" if layer == "conv" else f"gEncoder.batchNorm{i}.{name}"
            if len(parts) == 6:
                peer_shape = (1, *shape, 1)  # CPC_audio's ChannelNorm holds (1, C, 1)
        elif parts[0] == "context":  # context.layers.{j}.{p}_l0
            peer = f"gAR.baseNet.{parts[3][:-len('_l0')]}_l{parts[2]}"
        else:
            raise ConvertError(f"{where}: audiossl's {key} has no CPC_audio counterpart")
        out[key] = take(peer, shape, peer_shape).to(tensor.dtype)
    take.finish()
    return out


def objective_state_from(state: dict[str, torch.Tensor], objective: torch.nn.Module, cfg: Config,
                         where: str) -> dict[str, torch.Tensor]:
    """audiossl's CPC objective state from CPC_audio's criterion state (``wPrediction.*``)."""
    dim = cfg.model.encoder_channels
    own, take = objective.state_dict(), _Taker(state, where, "criterion")
    out = {}
    if cfg.objective.cpc_predictor == "bilinear":
        steps, enc, ctx = own["weight"].shape
        out["weight"] = torch.stack([take(f"wPrediction.predictors.{k}.weight", (enc, ctx))
                                     for k in range(steps)]) / dim
    else:
        for key, tensor in own.items():
            k, rest = key.split(".", 2)[1:]
            peer = take(f"wPrediction.predictors.{k}.0.{_TRANSFORMER[rest]}", tuple(tensor.shape))
            if rest == "relative":
                peer = peer.flip(-1)
            elif rest.startswith("norm_ff."):
                peer = peer / dim
            out[key] = peer
    take.finish(ignore=_BUFFERS)
    return out


def from_cpc_audio(source: str | Path) -> tuple[dict[str, Any], list[str]]:
    """An audiossl checkpoint (step 0, resumable by ``audiossl train``) from a CPC_audio one.

    Returns:
        The checkpoint and notes on what was not carried.
    """
    from audiossl.train import initial_checkpoint  # the training loop is only needed here

    run = read_cpc_audio(source)
    where = str(run["path"])
    cfg, notes = config_from_args(run["args"], where)
    model = build_model(cfg.model, cfg.data.sample_rate)
    load_state(model, model_state_from(run["model"], model, where), where, "model")
    objective = build_objective(cfg, model)
    if predictor_carried(run["args"]) is None:
        if run["criterion"] is None:
            notes.append("a release file holds no criterion: the converted objective starts fresh")
        else:
            load_state(objective, objective_state_from(run["criterion"], objective, cfg, where), where, "objective")
    ckpt = initial_checkpoint(cfg, model, objective)
    notes = run["notes"] + notes
    ckpt["converted_from"] = {"format": "cpc_audio", "path": str(Path(where).resolve()), "epoch": run["epoch"],
                              "notes": notes}
    return ckpt, notes


# --- audiossl -> CPC_audio -----------------------------------------------------------------------

def _open_audiossl(path: str | Path) -> tuple[Config, SSLModel, torch.nn.Module | None, int]:
    """An audiossl checkpoint's config, model, CPC objective (None for another objective) and step."""
    ckpt = load_checkpoint(path)
    try:
        cfg = Config.from_dict(ckpt["config"])
    except ValueError as e:
        raise ConvertError(f"{path}: its config does not fit this version of audiossl ({e})") from None
    model = build_model(cfg.model, cfg.data.sample_rate)
    load_state(model, ckpt["model"], path, "model")
    objective = None
    if "objective" in ckpt and cfg.objective.objective == "cpc":
        objective = build_objective(cfg, model)
        load_state(objective, ckpt["objective"], path, "objective")
    return cfg, model.eval(), objective, int(ckpt.get("step", 0))


def model_state_to(model: SSLModel, cfg: Config) -> dict[str, torch.Tensor]:
    """The CPCModel state (``gEncoder.*``, ``gAR.*``) of an audiossl model."""
    out = {}
    channels = cfg.model.encoder_channels
    for key, tensor in model.state_dict().items():
        parts, tensor = key.split("."), tensor.detach().clone()
        if parts[0] == "encoder":
            i, layer, name = parts[2], parts[3], parts[-1]
            if layer == "conv":
                out[f"gEncoder.conv{i}.{name}"] = tensor
                continue
            if cfg.model.encoder_norm.startswith("channel"):  # ChannelNorm holds (1, C, 1)
                if cfg.model.encoder_norm == "channel" and name == "weight":
                    tensor = tensor * math.sqrt(channels / (channels - 1))  # biased std -> unbiased
                tensor = tensor.view(1, -1, 1)
            out[f"gEncoder.batchNorm{i}.{name}"] = tensor
        else:
            out[f"gAR.baseNet.{parts[3][:-len('_l0')]}_l{parts[2]}"] = tensor
    return out


def criterion_state_to(objective: torch.nn.Module, cfg: Config) -> dict[str, torch.Tensor]:
    """CPC_audio's criterion state (``wPrediction.predictors.*``) of an audiossl CPC objective."""
    dim = cfg.model.encoder_channels
    own = {k: v.detach().clone() for k, v in objective.state_dict().items()}
    if cfg.objective.cpc_predictor == "bilinear":
        return {f"wPrediction.predictors.{k}.weight": w * dim for k, w in enumerate(own["weight"])}
    out = {}
    peer_of = {v: k for k, v in _TRANSFORMER.items()}
    for k in range(cfg.objective.cpc_steps):
        prefix = f"wPrediction.predictors.{k}.0."
        for peer, ours in peer_of.items():
            tensor = own[f"predictors.{k}.{ours}"]
            if ours == "relative":
                tensor = tensor.flip(-1)
            elif ours.startswith("norm_ff."):
                tensor = tensor * dim
            out[prefix + peer] = tensor
        positions = own[f"predictors.{k}.relative"].shape[1]
        out[prefix + "multihead.Att.mask"] = torch.full((positions, positions), -math.inf).triu(1).unsqueeze(0)
        out[prefix + "multihead.Att.z"] = torch.zeros(1, positions, 1)
    return out


def _fresh_adam(args: dict[str, Any], model: dict, criterion: dict) -> dict:
    """The state of CPC_audio's Adam before its first step, over ``criterion + model`` parameters."""
    params = [k for state in (criterion, model) for k in state if not k.endswith(_BUFFERS)]
    return {"state": {}, "param_groups": [{"lr": args["learningRate"], "betas": (args["beta1"], args["beta2"]),
                                           "eps": args["epsilon"], "weight_decay": 0, "amsgrad": False,
                                           "params": list(range(len(params)))}]}


def _check_frames(cfg: Config, model: SSLModel, where: str) -> None:
    """CPC_audio sizes its Transformer predictor by ``sizeWindow // 160`` frames; audiossl by the conv arithmetic."""
    frames = model.window_frames(cfg.data.window_samples)
    if cfg.objective.cpc_predictor == "transformer" and frames != cfg.data.window_samples // DOWNSAMPLING:
        expected = cfg.data.window_samples // DOWNSAMPLING
        raise ConvertError(f"{where}: window_samples {cfg.data.window_samples} gives {frames} frames, CPC_audio's "
                           f"Transformer predictor expects sizeWindow // {DOWNSAMPLING} = {expected}")


def to_cpc_audio(source: str | Path, out: str | Path) -> list[str]:
    """Write an audiossl CPC checkpoint as a CPC_audio training folder (``checkpoint_0.pt``, args, logs).

    Returns:
        Notes on what was not carried.
    """
    out = Path(out)
    cfg, model, objective, step = _open_audiossl(source)
    args, notes = args_from_config(cfg, str(source), objective=True)
    if objective is None:
        raise ConvertError(f"{source}: holds no CPC objective state to export as CPC_audio's criterion")
    _check_frames(cfg, model, str(source))
    if out.is_file():
        raise ConvertError(f"{out}: is a file; --to cpc_audio writes a training folder")
    if out.is_dir() and run_checkpoints(out):
        raise ConvertError(f"{out}: already holds CPC_audio checkpoints ({run_checkpoints(out)[-1][1].name}); "
                           "CPC_audio would read the highest epoch, so write into an empty folder")
    weights, criterion = model_state_to(model, cfg), criterion_state_to(objective, cfg)
    logs = {"epoch": [0], "iter": [step], "saveStep": 5, "logging_step": 1000}
    atomic_write(out / ARGS, lambda f: f.write(json.dumps(args, indent=2).encode()))
    atomic_write(out / LOGS, lambda f: f.write(json.dumps(logs, indent=2).encode()))
    atomic_save({"gEncoder": weights, "cpcCriterion": criterion, "optimizer": _fresh_adam(args, weights, criterion),
                 "best": None}, out / "checkpoint_0.pt")
    notes.append("the optimizer's moments are not carried: checkpoint_0.pt holds a fresh Adam state")
    return notes


def to_cpc_audio_release(source: str | Path, out: str | Path) -> list[str]:
    """Write an audiossl model as a CPC_audio release file ``{"config", "weights"}``.

    Returns:
        Notes on what was not carried.
    """
    cfg, model, _, _ = _open_audiossl(source)
    args, notes = args_from_config(cfg, str(source), objective=False)
    atomic_save({"config": args, "weights": model_state_to(model, cfg)}, out)
    return notes
