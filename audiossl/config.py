"""Typed, strict configuration.

One dataclass per concern. Recipe files are flat YAML: every key names exactly
one field of one section (``encoder_channels: 256``), so a file reads like a
list of settings, and ``key=value`` overrides on the command line use the same
names. A ``preset`` key applies a named preset first; the file's other keys and
then the command-line overrides win over it. Unknown keys, type mismatches and
impossible combinations are errors raised before any work starts.
A setting with a fixed set of values is typed ``Literal[...]``, the one place
its choices are written; :func:`audiossl.settings.check_choices` reads them
from the type.

The sections are this module's data, model and train dataclasses, the
augment section (:class:`audiossl.data.augment.AugmentConfig`, the training
augmentation's own) and the objective section, which joins the settings each
objective owns (:func:`objective_section`). A probe's settings (``ProbeSettings``,
``CTCSettings``, ``ABXSettings`` ...) are read the same way, from a flat YAML
file and ``key=value`` items (:func:`build_settings`). Reading the text itself (YAML, ``key=value``,
typed and finite values, keys given twice) is :mod:`audiossl.settings`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# ConfigError, load_config_file and parse_overrides are re-exported: callers import them from here.
from audiossl.data.augment import AugmentConfig
from audiossl.objectives import OBJECTIVES
from audiossl.settings import (  # noqa: F401
    MAX_SEED,
    ConfigError,
    check_choices,
    check_seed,
    coerce,
    load_config_file,
    non_negative,
    parse_overrides,
    positive,
)

# Seeds reach numpy, whose legacy generators take at most 32 bits, and torch (64); negative ones neither.


@dataclass
class DataConfig:
    sample_rate: int = 16000  # audio is resampled to this rate on load
    window_samples: int = 20480  # training crop length (20480 = 128 frames of 10 ms)
    sampler: Literal["uniform", "same_speaker"] = "uniform"  # same_speaker: every window of a batch from one speaker
    speaker_level: int = -1  # folder level naming the speaker in non-LibriSpeech trees (-1: parent)
    num_workers: int = 2  # DataLoader worker processes


@dataclass
class ModelConfig:
    frontend: Literal["waveform", "logmel"] = "waveform"  # what the encoder reads
    n_mels: int = 80  # log-mel bins (frontend=logmel)
    cmvn: bool = False  # per-utterance mean/variance normalization of the input (log-mel bins or waveform samples)
    encoder_channels: int = 256  # conv channels (CPC paper 512, CPC_audio 256)
    encoder_kernels: list[int] = field(default_factory=lambda: [10, 8, 4, 4, 4])  # one per conv
    encoder_strides: list[int] = field(default_factory=lambda: [5, 4, 2, 2, 2])  # product = hop
    encoder_paddings: list[int] = field(default_factory=lambda: [3, 2, 1, 1, 1])  # CPC_audio's
    # batch (paper), channel (per frame), channel_unbiased (CPC_audio's exact), none
    encoder_norm: Literal["batch", "channel", "channel_unbiased", "none"] = "channel"
    # default (PyTorch's), filterbank (first conv: mel-spaced Gabor band-pass pairs)
    encoder_init: Literal["default", "filterbank"] = "default"
    # conv (conv, norm, ReLU), log_envelope (first conv's channel pairs -> log band power)
    encoder_first: Literal["conv", "log_envelope"] = "conv"
    encoder_envelope_pool: int = 1  # log_envelope: odd count of first-conv frames whose band power is averaged
    encoder_activation: Literal["relu", "gelu"] = "relu"  # after each conv block's norm (wav2vec 2.0's: gelu)
    context: Literal["gru", "lstm", "transformer", "none", "npc"] = "gru"  # npc: NPC's masked-conv blocks
    context_dim: int = 256  # hidden size of the context network
    context_layers: int = 1  # recurrent or Transformer layers
    context_residual: bool = False  # residual connections between recurrent layers (APC)
    context_causal: bool = True  # Transformer attends only to the past
    context_heads: int = 4  # Transformer attention heads
    context_ff_dim: int = 1024  # Transformer feed-forward size
    context_dropout: float = 0.0  # dropout inside the context network
    context_max_frames: int = 4096  # longest sequence the positional encoding covers
    # Transformer positions: sinusoidal (added, absolute) | conv (wav2vec 2.0's grouped convolution, relative)
    context_position: Literal["sinusoidal", "conv"] = "sinusoidal"
    context_conv_pos_kernel: int = 128  # conv positions: kernel in frames (wav2vec 2.0's 128)
    context_conv_pos_groups: int = 16  # conv positions: groups (wav2vec 2.0's 16)
    # layer norm of z before the context network (wav2vec 2.0's and HuBERT's, which their feature penalty needs)
    context_input_norm: bool = False

    @property
    def bidirectional(self) -> bool:
        """Whether the context network sees future frames (NPC's masked convs, a non-causal Transformer)."""
        return self.context == "npc" or (self.context == "transformer" and not self.context_causal)


@dataclass
class TrainConfig:
    batch_size: int = 8  # windows per step and process
    max_steps: int = 1000  # optimizer steps
    lr: float = 2e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    decay: Literal["cosine", "linear", "constant"] = "cosine"  # the schedule after warm-up
    clip_grad: float = 1.0  # max gradient norm (0 disables)
    accumulate: int = 1  # micro-batches per optimizer step
    seed: int = 1  # base seed; each DDP rank adds its rank
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 10  # steps between TensorBoard/tqdm updates
    ckpt_every: int = 200  # steps between checkpoints (and always at the end)
    max_nonfinite: int = 10  # consecutive non-finite losses before the run stops
    max_minutes: float = 0.0  # wall-time budget of one run: checkpoint and stop after it (0: none)
    # a checkpoint whose model weights start this run (HuBERT's next iteration); the objective's own weights,
    # the optimizer and the step start fresh. A resume ignores it: the experiment's checkpoint wins.
    init_from: str = ""
    compile: bool = False  # torch.compile the model and objective (first steps pay the compilation)
    # auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"


@functools.cache
def objective_section() -> type:
    """The ``objective`` section's class: ``objective`` (which one trains) and the settings of every
    objective in :data:`audiossl.objectives.OBJECTIVES`, each owner's fields in registry order.

    Built on first use, and cached.
    """
    fields = [("objective", str, field(default="cpc"))]  # cpc | apc | mpc | npc | w2v2 | hubert: a key of OBJECTIVES
    for objective in OBJECTIVES.values():
        hints = typing.get_type_hints(objective.Settings)
        fields += [(f.name, hints[f.name], field(default=f.default))
                   for f in dataclasses.fields(objective.Settings)]
    return dataclasses.make_dataclass("ObjectiveConfig", fields)


def sections() -> dict[str, type]:
    return {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig, "objective": objective_section(),
            "train": TrainConfig}

PRESETS: dict[str, dict[str, Any]] = {
    # CPC_audio's defaults (Riviere et al. 2020): 256-channel encoder with channel norm, 1-layer LSTM 256
    # (--arMode LSTM), a causal 1-layer Transformer predictor per step (--rnnMode transformer).
    "cpc_audio": {"context": "lstm", "cpc_predictor": "transformer"},
    # CPC_audio with --arMode GRU --rnnMode linear: GRU 256 and a bias-free linear W_k per step.
    "cpc_audio_linear": {"context": "gru", "cpc_predictor": "bilinear"},
    # van den Oord et al. 2018: 512 channels, batch norm, GRU 256.
    "cpc_paper": {"encoder_channels": 512, "encoder_norm": "batch"},
    # A small model (64 channels, 6 steps, 32 negatives) for quick experiments; the demo's cpc_small.yaml does
    # not use it (the demo's model is the waveform model at full width).
    "cpc_small": {"encoder_channels": 64, "context_dim": 64, "cpc_steps": 6, "cpc_negatives": 32},
    # Chung et al. 2019 (APC): 80 log-mel bins, GRU 3 x 512 with residual connections, n = 3.
    "apc_paper": {"objective": "apc", "frontend": "logmel", "cmvn": True, "encoder_kernels": [],
                  "encoder_strides": [], "encoder_paddings": [], "context": "gru", "context_dim": 512,
                  "context_layers": 3, "context_residual": True, "apc_shift": 3},
    # Mockingjay/TERA base (MPC): bidirectional Transformer, 3 layers of 768, 12 heads.
    "mpc_paper": {"objective": "mpc", "frontend": "logmel", "cmvn": True, "encoder_kernels": [],
                  "encoder_strides": [], "encoder_paddings": [], "context": "transformer",
                  "context_causal": False, "context_dim": 768, "context_layers": 3, "context_heads": 12,
                  "context_ff_dim": 3072, "context_dropout": 0.1},
    # Liu et al. 2020 (NPC): 4 masked-conv blocks of 512, VQ with 4 groups of 64 codes.
    "npc_paper": {"objective": "npc", "frontend": "logmel", "cmvn": True, "encoder_kernels": [],
                  "encoder_strides": [], "encoder_paddings": [], "context": "npc", "context_dim": 512,
                  "context_layers": 4, "context_residual": True, "context_dropout": 0.1,
                  "npc_vq_groups": 4, "npc_vq_codes": 64},
    # Baevski et al. 2020 (wav2vec 2.0 Base, fairseq's wav2vec2_base_librispeech): bidirectional Transformer
    # 12 x 768 (12 heads as fairseq's and the released models; the paper's text says 8), 3072 feed-forward,
    # dropout 0.1, over our strided conv encoder at 512 channels (10 ms frames; the paper's 7 convs give 20 ms).
    # Both: fairseq's layer norm of z before the Transformer (context_input_norm), which its feature penalty needs.
    "w2v2_paper": {"objective": "w2v2", "encoder_channels": 512, "context": "transformer", "context_causal": False,
                   "context_input_norm": True, "context_dim": 768, "context_layers": 12, "context_heads": 12,
                   "context_ff_dim": 3072, "context_dropout": 0.1},
    # Hsu et al. 2021 (HuBERT Base): the same network as w2v2_paper, k-means units as targets.
    "hubert_paper": {"objective": "hubert", "encoder_channels": 512, "context": "transformer",
                     "context_input_norm": True, "context_causal": False, "context_dim": 768, "context_layers": 12,
                     "context_heads": 12, "context_ff_dim": 3072, "context_dropout": 0.1},
}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: Any = field(default_factory=lambda: objective_section()())  # see objective_section()
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (section -> field -> value), safe for checkpoints."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in sections()}

    def flat(self) -> dict[str, Any]:
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @classmethod
    def from_dict(cls, nested: dict[str, dict[str, Any]]) -> "Config":
        """Inverse of :meth:`to_dict`; keys unknown to this version are errors."""
        flat = {k: v for section in nested.values() for k, v in section.items()}
        return build_config(overrides=flat)


@functools.cache
def fields_by_key() -> dict[str, tuple[str, Any]]:
    """Every config key -> (its section, its type)."""
    owner = {}
    for section, klass in sections().items():
        hints = typing.get_type_hints(klass)
        for f in dataclasses.fields(klass):
            assert f.name not in owner, f"config key {f.name} defined twice"
            owner[f.name] = (section, hints[f.name])
    return owner


def build_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- preset <- config file <- overrides, then validated."""
    settings: dict[str, Any] = {}
    if config_file is not None:
        settings.update(load_config_file(config_file))
    settings.update(overrides or {})
    preset = settings.pop("preset", None)
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        merged.update(PRESETS[preset])
    merged.update(settings)

    cfg = Config()
    known = fields_by_key()
    for key, value in merged.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r}")
        section, typ = known[key]
        setattr(getattr(cfg, section), key, coerce(key, value, typ))
    validate(cfg)
    return cfg


def build_settings(cls: type, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                   base: Any = None, what: str = "setting") -> Any:
    """A settings dataclass (a probe's) from its defaults <- a flat YAML file <- ``key=value`` overrides.

    Args:
        cls: the dataclass; its fields are the keys, their types the coercion.
        base: an instance whose values replace the class defaults (a task's
            own defaults); None: the class's.
        what: names the settings in errors ("CTC setting").

    Raises:
        ConfigError: for an unknown key, a value of the wrong type or one the
            dataclass refuses, one line.
    """
    values = dict(load_config_file(config_file)) if config_file is not None else {}
    values.update(overrides or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [key for key in values if key not in names]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown[0]!r}; known: {', '.join(names)}")
    coerced = {key: coerce(key, value, hints[key]) for key, value in values.items()}
    try:
        return cls(**coerced) if base is None else dataclasses.replace(base, **coerced)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def settings_help(cls: type, base: Any = None) -> str:
    """``key=default`` of every field, for a command's help."""
    base = base if base is not None else cls()

    def shown(value: Any) -> str:
        return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    return ", ".join(f"{f.name}={shown(getattr(base, f.name))}" for f in dataclasses.fields(cls) if f.init)


def validate(cfg: Config) -> None:
    """Reject impossible values, one line each, before any work starts."""
    d, m, o, t = cfg.data, cfg.model, cfg.objective, cfg.train
    for section in (d, m, t):  # each Literal field's value against its type (the objectives check their own)
        check_choices(section)
    if m.encoder_init == "filterbank" and (m.frontend != "waveform" or not m.encoder_kernels
                                           or m.encoder_kernels[0] < 32):
        raise ConfigError("encoder_init: filterbank needs frontend: waveform and a first conv kernel of at least "
                          f"32 samples (got encoder_kernels={m.encoder_kernels})")
    if m.encoder_first == "log_envelope" and (m.frontend != "waveform" or not m.encoder_kernels
                                              or m.encoder_channels % 2):
        raise ConfigError("encoder_first: log_envelope needs frontend: waveform, at least one conv and an even "
                          f"encoder_channels (got {m.encoder_channels})")
    if m.encoder_envelope_pool < 1 or m.encoder_envelope_pool % 2 == 0:
        raise ConfigError(f"encoder_envelope_pool must be an odd number of frames, got {m.encoder_envelope_pool}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device):
        raise ConfigError(f"config key 'device': {t.device!r} is not one of auto, cpu, cuda, cuda:N")
    if not (len(m.encoder_kernels) == len(m.encoder_strides) == len(m.encoder_paddings)):
        raise ConfigError("encoder_kernels, encoder_strides and encoder_paddings need the same length")
    positive({
        "sample_rate": d.sample_rate, "window_samples": d.window_samples, "n_mels": m.n_mels,
        "encoder_channels": m.encoder_channels, "context_dim": m.context_dim,
        "context_heads": m.context_heads, "context_ff_dim": m.context_ff_dim, "batch_size": t.batch_size,
        "max_steps": t.max_steps, "accumulate": t.accumulate, "log_every": t.log_every,
        "ckpt_every": t.ckpt_every, "max_nonfinite": t.max_nonfinite, "context_max_frames": m.context_max_frames,
        "context_conv_pos_kernel": m.context_conv_pos_kernel, "context_conv_pos_groups": m.context_conv_pos_groups,
    })
    for key in ("encoder_kernels", "encoder_strides"):
        if any(v <= 0 for v in getattr(m, key)):
            raise ConfigError(f"config key {key!r} must hold positive integers, got {getattr(m, key)}")
    if any(v < 0 for v in m.encoder_paddings):
        raise ConfigError(f"config key 'encoder_paddings' must not be negative, got {m.encoder_paddings}")
    non_negative({"num_workers": d.num_workers, "warmup_steps": t.warmup_steps, "clip_grad": t.clip_grad,
                  "weight_decay": t.weight_decay, "max_minutes": t.max_minutes})
    check_seed("seed", t.seed)
    cfg.augment.check()
    if m.context_layers < 0 or (m.context != "none" and m.context_layers == 0):
        raise ConfigError(f"config key 'context_layers' must be positive, got {m.context_layers}")
    if m.context == "transformer" and m.context_dim % m.context_heads:
        raise ConfigError(f"context_dim {m.context_dim} is not divisible by context_heads {m.context_heads}")
    if m.context == "transformer" and m.context_position == "conv" and m.context_causal:
        raise ConfigError("context_position: conv reads future frames; a causal Transformer (context_causal: true) "
                          "needs context_position: sinusoidal")
    if m.context == "transformer" and m.context_position == "conv" and m.context_dim % m.context_conv_pos_groups:
        raise ConfigError(f"context_dim {m.context_dim} is not divisible by context_conv_pos_groups "
                          f"{m.context_conv_pos_groups}")
    positive({"lr": t.lr})
    if not 0.0 <= m.context_dropout < 1.0:
        raise ConfigError(f"config key 'context_dropout' must be in [0, 1), got {m.context_dropout}")
    if m.context == "npc" and m.context_layers > 4:
        # The masked conv (kernel 15) hides 5 + 2 * block frames: 13 at block 4, the last that fits.
        raise ConfigError(f"context: npc has at most 4 blocks, got context_layers={m.context_layers}")
    if o.objective not in OBJECTIVES:
        raise ConfigError(f"config key 'objective': {o.objective!r} is not one of {', '.join(OBJECTIVES)}")
    OBJECTIVES[o.objective].check(cfg)  # its settings and the model it needs; the others' are not read
    # Window size against what the objective needs is checked once the model
    # is built (the receptive field is computed there): see check_window().


def check_window(cfg: Config, num_frames: int, receptive_field: int) -> None:
    """Refuse a training window too short for the encoder and the objective.

    Args:
        num_frames: frames the model produces for one training window.
        receptive_field: input samples one output frame sees.
    """
    if cfg.data.window_samples < receptive_field:
        raise ConfigError(
            f"window_samples {cfg.data.window_samples} is shorter than the encoder's receptive field "
            f"({receptive_field} samples)")
    OBJECTIVES[cfg.objective.objective].check_window(cfg, num_frames)
