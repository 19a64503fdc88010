"""CPC_audio's command-line settings <-> audiossl's config, both ways.

A CPC_audio run (facebookresearch/CPC_audio, ``cpc/train.py``) is described
by its argparse namespace, saved as ``checkpoint_args.json`` beside the
checkpoints (and as the ``config`` dict of a release file).
``feature_loader.getCheckpointData`` reads it over the defaults of
``cpc_default_config.get_default_cpc_config()``, which :data:`DEFAULTS`
lists. The flags that fix the model and its objective map onto audiossl's
keys as follows (refused values raise :class:`ConvertError` naming them):

=========================  =========================================================
CPC_audio                  audiossl
=========================  =========================================================
``--encoder_type cpc``     ``frontend: waveform``, CPC_audio's five convs (kernels
                           10 8 4 4 4, strides 5 4 2 2 2, paddings 3 2 1 1 1);
                           ``mfcc`` and ``lfb`` are refused
``--hiddenEncoder``        ``encoder_channels``
``--normMode``             ``layerNorm`` -> ``encoder_norm: channel_unbiased``,
                           ``batchNorm`` -> ``batch``, ``ID`` -> ``none``;
                           ``instanceNorm`` is refused
``--arMode``               ``LSTM`` -> ``context: lstm``, ``GRU`` -> ``gru``,
                           ``no_ar`` -> ``none``; ``RNN`` and ``transformer`` are
                           refused
``--nLevelsGRU``           ``context_layers``
``--hiddenGar``            ``context_dim``
``--cpc_mode reverse``     refused (audiossl predicts the future only)
``--nPredicts``            ``cpc_steps``
``--negativeSamplingExt``  ``cpc_negatives``
``--rnnMode``              ``linear`` -> ``cpc_predictor: bilinear``,
                           ``transformer`` -> ``transformer`` (both carried);
                           others: a fresh bilinear predictor, said in a note
``--samplingType``         ``samespeaker`` -> ``sampler: same_speaker``,
                           ``uniform`` -> ``uniform``, ``samesequence`` ->
                           ``cpc_negative_policy: sequence``
``--sizeWindow``           ``window_samples``
``--learningRate``         ``lr``, constant (``warmup_steps: 0``, ``decay:
                           constant``) and unclipped (``clip_grad: 0``), as
                           CPC_audio's Adam without a scheduler
``--batchSizeGPU x nGPU``  ``batch_size``
``--random_seed``          ``seed``
=========================  =========================================================

What only changes training and has no audiossl counterpart (``--dropout``,
``--schedulerStep``, ``--schedulerRamp``, Adam's ``--beta1/--beta2/--epsilon``
when not the defaults, ``--samplingType sequential``) is dropped with a note.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from audiossl.checkpoint import CheckpointError
from audiossl.config import Config, ConfigError, ModelConfig, build_config

# get_default_cpc_config() of CPC_audio's cpc/cpc_default_config.py: the values a run's
# checkpoint_args.json is read over.
DEFAULTS: dict[str, Any] = {
    "hiddenEncoder": 256, "hiddenGar": 256, "nPredicts": 12, "negativeSamplingExt": 128,
    "learningRate": 2e-4, "schedulerStep": -1, "schedulerRamp": None, "beta1": 0.9, "beta2": 0.999,
    "epsilon": 1e-8, "sizeWindow": 20480, "nEpoch": 200, "samplingType": "samespeaker", "nLevelsPhone": 1,
    "cpc_mode": None, "encoder_type": "cpc", "normMode": "layerNorm", "onEncoder": False, "random_seed": None,
    "speakerEmbedding": 0, "arMode": "LSTM", "nLevelsGRU": 1, "rnnMode": "transformer", "dropout": False,
    "abspos": False,
}
# CPCEncoder's fixed conv stack (cpc/model.py).
KERNELS, STRIDES, PADDINGS = [10, 8, 4, 4, 4], [5, 4, 2, 2, 2], [3, 2, 1, 1, 1]
DOWNSAMPLING = 160
SAMPLE_RATE = 16000

_NORMS = {"layerNorm": "channel_unbiased", "batchNorm": "batch", "ID": "none"}
_CONTEXTS = {"LSTM": "lstm", "GRU": "gru", "no_ar": "none"}
_PREDICTORS = {"linear": "bilinear", "transformer": "transformer"}


class ConvertError(CheckpointError):
    """A checkpoint that cannot be converted; the message names the file and the setting."""


def merged(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` over CPC_audio's defaults, as ``getCheckpointData`` reads them."""
    return {**DEFAULTS, **args}


def predictor_carried(args: dict[str, Any]) -> str | None:
    """Why the prediction network of a run with ``args`` cannot be carried over, or None if it can."""
    if args.get("supervised"):
        return "the run is --supervised: its criterion is a classifier, not CPC's predictor"
    if args["cpc_mode"] == "none":
        return "--cpc_mode none: the run has no CPC criterion"
    if args["speakerEmbedding"]:
        return f"--speakerEmbedding {args['speakerEmbedding']}: its predictor also reads speaker embeddings"
    if args["rnnMode"] not in _PREDICTORS:
        return f"--rnnMode {args['rnnMode']} has no audiossl counterpart (linear and transformer have)"
    if args["rnnMode"] == "transformer" and args["abspos"]:
        return "--abspos: audiossl's Transformer predictor has relative positions only"
    return None


def config_from_args(args: dict[str, Any], where: str) -> tuple[Config, list[str]]:
    """The audiossl config of a CPC_audio run, and notes on what it does not carry.

    Args:
        args: the run's settings, already merged over :data:`DEFAULTS`.
        where: the file they came from, for messages.

    Raises:
        ConvertError: a setting that changes the features and has no
            audiossl counterpart.
    """
    def refuse(flag: str, why: str) -> None:
        raise ConvertError(f"{where}: --{flag} {args[flag]} cannot be converted ({why})")

    if args["encoder_type"] != "cpc":
        refuse("encoder_type", "audiossl has the strided conv encoder only")
    if args["normMode"] not in _NORMS:
        refuse("normMode", "audiossl's encoder norms are channel, batch and none")
    if args["arMode"] not in _CONTEXTS:
        refuse("arMode", "audiossl's recurrent contexts are LSTM and GRU")
    if args["cpc_mode"] == "reverse":
        refuse("cpc_mode", "audiossl predicts the future only")
    no_ar = args["arMode"] == "no_ar"
    settings: dict[str, Any] = {
        "sample_rate": SAMPLE_RATE, "window_samples": args["sizeWindow"],
        "sampler": "same_speaker" if args["samplingType"] == "samespeaker" else "uniform",
        "frontend": "waveform", "cmvn": False, "encoder_channels": args["hiddenEncoder"],
        "encoder_kernels": KERNELS, "encoder_strides": STRIDES, "encoder_paddings": PADDINGS,
        "encoder_norm": _NORMS[args["normMode"]], "encoder_init": "default",
        "context": _CONTEXTS[args["arMode"]],
        "context_dim": args["hiddenEncoder"] if no_ar else args["hiddenGar"],
        "context_layers": 1 if no_ar else args["nLevelsGRU"], "context_residual": False, "context_dropout": 0.0,
        "objective": "cpc", "cpc_steps": args["nPredicts"], "cpc_negatives": args["negativeSamplingExt"],
        "cpc_negative_policy": "sequence" if args["samplingType"] == "samesequence" else "batch",
        "cpc_predictor": "transformer" if args["rnnMode"] == "transformer" else "bilinear",
        "cpc_score": "bilinear", "cpc_loss": "infonce",
        "lr": args["learningRate"], "warmup_steps": 0, "decay": "constant", "weight_decay": 0.0, "clip_grad": 0.0,
    }
    if isinstance(args.get("batchSizeGPU"), int):
        settings["batch_size"] = args["batchSizeGPU"] * max(1, int(args.get("nGPU") or 1))
    if isinstance(args["random_seed"], int):
        settings["seed"] = args["random_seed"]
    try:
        cfg = build_config(overrides=settings)
    except ConfigError as e:
        raise ConvertError(f"{where}: its settings make no audiossl config ({e})") from None

    notes = []
    why = predictor_carried(args)
    if why:
        notes.append(f"the prediction network is not carried ({why}); the converted objective starts fresh")
    if args["dropout"]:
        notes.append("--dropout (dropout 0.5 on the predictions) has no audiossl counterpart; dropped")
    if args["samplingType"] == "sequential":
        notes.append("--samplingType sequential (windows in order, the recurrent state kept across batches) "
                     "has no audiossl counterpart; the converted run samples windows uniformly")
    if args["schedulerStep"] > 0 or args["schedulerRamp"] is not None:
        notes.append("--schedulerStep/--schedulerRamp count epochs; the converted run has a constant lr "
                     "(set warmup_steps and decay to schedule it)")
    if (args["beta1"], args["beta2"], args["epsilon"]) != (0.9, 0.999, 1e-8):
        notes.append(f"Adam's betas ({args['beta1']}, {args['beta2']}) and eps {args['epsilon']} are not "
                     "carried; audiossl uses (0.9, 0.999) and 1e-8")
    return cfg, notes


# ModelConfig keys export reads; any other key away from its default is refused (a setting added later).
_EXPORT_READS = {"frontend", "cmvn", "encoder_channels", "encoder_kernels", "encoder_strides", "encoder_paddings",
                 "encoder_norm", "context", "context_dim", "context_layers", "context_residual", "context_dropout"}
# Keys that do not change the features of a waveform conv encoder and a recurrent context
# (encoder_init only sets the starting weights).
_EXPORT_IGNORES = {"encoder_init", "n_mels", "context_causal", "context_heads", "context_ff_dim",
                   "context_max_frames"}


# audiossl's encoder norms and contexts -> CPC_audio's --normMode and --arMode.
_EXPORT_NORMS = {"channel_unbiased": "layerNorm", "channel": "layerNorm", "batch": "batchNorm", "none": "ID"}
_EXPORT_CONTEXTS = {"lstm": "LSTM", "gru": "GRU", "none": "no_ar"}


def _refuse(where: str, key: str, value: Any, why: str) -> None:
    raise ConvertError(f"{where}: {key}: {value} cannot be exported to CPC_audio ({why})")


def _check_exportable_model(cfg: Config, where: str) -> None:
    """Refuse a model CPC_audio's ``CPCEncoder`` and recurrent context cannot reproduce."""
    m, d = cfg.model, cfg.data
    defaults = ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        if f.name not in _EXPORT_READS | _EXPORT_IGNORES and getattr(m, f.name) != getattr(defaults, f.name):
            _refuse(where, f.name, getattr(m, f.name), "CPC_audio has no such setting")
    if d.sample_rate != SAMPLE_RATE:
        _refuse(where, "sample_rate", d.sample_rate, "CPC_audio reads 16 kHz audio")
    if m.frontend != "waveform":
        _refuse(where, "frontend", m.frontend, "CPC_audio's encoder reads the waveform")
    if m.cmvn:
        _refuse(where, "cmvn", m.cmvn, "CPC_audio reads raw samples")
    for key, value, theirs in (("encoder_kernels", m.encoder_kernels, KERNELS),
                               ("encoder_strides", m.encoder_strides, STRIDES),
                               ("encoder_paddings", m.encoder_paddings, PADDINGS)):
        if list(value) != theirs:
            _refuse(where, key, value, f"CPC_audio's encoder is fixed at {theirs}")
    if m.encoder_norm not in _EXPORT_NORMS:
        _refuse(where, "encoder_norm", m.encoder_norm, f"CPC_audio's norms are {', '.join(_EXPORT_NORMS)}")
    if m.context not in _EXPORT_CONTEXTS:
        _refuse(where, "context", m.context, "CPC_audio's recurrent contexts are LSTM and GRU (and no_ar)")
    if m.context_residual:
        _refuse(where, "context_residual", m.context_residual,
                "CPC_audio's recurrent layers have no residual connections")


def _model_args(cfg: Config) -> dict[str, Any]:
    """CPC_audio's model, window, optimizer and loader flags for an exportable ``cfg``."""
    m = cfg.model
    return {
        "hiddenEncoder": m.encoder_channels, "normMode": _EXPORT_NORMS[m.encoder_norm],
        "arMode": _EXPORT_CONTEXTS[m.context],
        "hiddenGar": m.encoder_channels if m.context == "none" else m.context_dim,
        "nLevelsGRU": m.context_layers if m.context != "none" else 1, "sizeWindow": cfg.data.window_samples,
        "learningRate": cfg.train.lr, "random_seed": cfg.train.seed,
        # cpc/train.py's own flags that its loaders read back.
        "batchSizeGPU": cfg.train.batch_size, "nGPU": 1, "supervised": False, "load": None,
    }


def _model_notes(cfg: Config) -> list[str]:
    """What the exported model's settings carry only approximately, or not at all."""
    m = cfg.model
    notes = []
    if m.encoder_norm == "channel":
        notes.append("encoder_norm: channel divides by the biased std; the exported scales are multiplied by "
                     "sqrt(C / (C - 1)) for CPC_audio's unbiased one: the same features but for its eps, "
                     "effectively 1e-5 (C - 1) / C instead of 1e-5")
    if m.context_dropout and m.context_layers > 1 and m.context != "none":
        notes.append(f"context_dropout {m.context_dropout} (between recurrent layers, training only) is dropped")
    if cfg.augment.augment != "none":
        notes.append(f"augment: {cfg.augment.augment} is not carried: CPC_audio trains on the audio as it is")
    return notes


def _objective_args(cfg: Config) -> dict[str, Any]:
    """CPC_audio's criterion flags for a CPC objective it reproduces."""
    o = cfg.objective
    if o.cpc_negative_policy == "sequence":
        sampling = "samesequence"
    else:
        sampling = "samespeaker" if cfg.data.sampler == "same_speaker" else "uniform"
    return {"nPredicts": o.cpc_steps, "negativeSamplingExt": o.cpc_negatives, "samplingType": sampling,
            "rnnMode": "linear" if o.cpc_predictor == "bilinear" else "transformer", "cpc_mode": None}


def _schedule_notes(cfg: Config) -> list[str]:
    """The schedule, weight decay and clipping CPC_audio's constant-lr Adam does not carry."""
    t = cfg.train
    dropped = [f"{key} {value}" for key, value, theirs in (
        ("warmup_steps", t.warmup_steps, 0), ("decay", t.decay, "constant"), ("weight_decay", t.weight_decay, 0),
        ("clip_grad", t.clip_grad, 0)) if value != theirs]
    if not dropped:
        return []
    return [f"{', '.join(dropped)} not carried: CPC_audio's Adam runs at a constant lr, without weight "
            "decay or clipping (unless given --schedulerStep/--schedulerRamp)"]


def args_from_config(cfg: Config, where: str, objective: bool) -> tuple[dict[str, Any], list[str]]:
    """CPC_audio's settings for an audiossl model, and notes on what they do not carry.

    Args:
        where: the checkpoint, for messages.
        objective: the objective is exported too (a training folder), so it
            must be one CPC_audio's criterion reproduces; a release file holds
            the model alone, and its settings describe the objective only
            when they can.

    Raises:
        ConvertError: a setting CPC_audio cannot reproduce.
    """
    _check_exportable_model(cfg, where)
    args = {**DEFAULTS, **_model_args(cfg)}
    notes = _model_notes(cfg)
    o = cfg.objective
    unlike = [(key, value, theirs) for key, value, theirs in (
        ("objective", o.objective, "cpc"), ("cpc_score", o.cpc_score, "bilinear"), ("cpc_loss", o.cpc_loss, "infonce"))
        if value != theirs]
    if unlike:
        key, value, theirs = unlike[0]
        if objective:
            _refuse(where, key, value,
                    f"CPC_audio's criterion is {theirs}; --to cpc_audio-release exports the model alone")
        notes.append(f"{key}: {value} has no CPC_audio counterpart; the release's settings keep CPC_audio's "
                     "defaults for the objective")
        return args, notes
    args.update(_objective_args(cfg))
    return args, notes + _schedule_notes(cfg)
