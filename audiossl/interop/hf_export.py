"""audiossl wav2vec 2.0 and HuBERT models as Hugging Face folders (``Wav2Vec2Model`` / ``HubertModel``).

transformers' classes hold one layout, and a model of that layout is written
weight for weight (``save_pretrained``: ``config.json``,
``model.safetensors``, and ``preprocessor_config.json`` for the feature
extractor), so that ``AutoModel.from_pretrained`` runs it to the features
audiossl extracts (tested within 1e-5):

- the waveform frontend (``frontend: waveform``), its per-utterance
  standardization (``cmvn``) as the feature extractor's ``do_normalize`` (the
  same ``(x - mean) / sqrt(var + 1e-7)``);
- a conv encoder of plain conv blocks (``encoder_first: conv``) without
  padding (``encoder_paddings`` all 0: transformers pads nothing), each with
  a per-frame layer norm (``encoder_norm: channel`` ->
  ``feat_extract_norm: layer``) and the activation of the positional
  convolution (``encoder_activation: gelu``: transformers uses one
  ``feat_extract_activation`` for both);
- ``context_input_norm: true`` and the Transformer's input projection ->
  ``feature_projection`` (an identity when the widths are equal);
- a bidirectional pre-norm Transformer (``context: transformer``,
  ``context_causal: false``) with conv positions (``context_position:
  conv``) -> the ``do_stable_layer_norm`` encoder, its feed-forward ReLU as
  ``hidden_act: relu`` and its final norm as ``encoder.layer_norm``.

Anything else is refused in one line naming the setting (a GRU context, a
log-mel frontend, sinusoidal positions, ...). ``masked_spec_embed``, the
pretraining mask embedding transformers keeps at the Transformer's width
(audiossl's is the objective's, at the encoder's), is left as transformers
initializes it: inference never reads it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from audiossl.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from audiossl.config import Config
from audiossl.models.model import SSLModel

__all__ = ["HF_CLASSES", "hf_config", "hf_state_dict", "to_hf"]

HF_CLASSES = {"w2v2": ("wav2vec2", "Wav2Vec2Config", "Wav2Vec2Model"),
              "hubert": ("hubert", "HubertConfig", "HubertModel")}
# The settings the layout needs: (config key, the value transformers' classes hold, why).
_NEEDS = (
    ("frontend", "waveform", "transformers' models read the waveform"),
    ("encoder_first", "conv", "transformers' conv layers are plain convolutions"),
    ("encoder_norm", "channel", "the per-frame layer norm is transformers' feat_extract_norm: layer"),
    ("encoder_activation", "gelu", "transformers uses one activation for the conv encoder and the positions"),
    ("context", "transformer", "transformers' models hold a Transformer"),
    ("context_causal", False, "transformers' Transformer is bidirectional"),
    ("context_position", "conv", "transformers' positions are a grouped convolution"),
    ("context_input_norm", True, "transformers' feature projection starts with a layer norm"),
)


class HFExportError(CheckpointError):
    """A model that transformers' classes cannot express; the message names the setting."""


def check_exportable(cfg: Config, where: str) -> None:
    """Refuse, in one line, a model whose layout transformers' ``Wav2Vec2Model`` / ``HubertModel`` lack."""
    objective = cfg.objective.objective
    if objective not in HF_CLASSES:
        raise HFExportError(f"{where}: objective {objective} has no Hugging Face class; --to hf writes w2v2 "
                            "(Wav2Vec2Model) and hubert (HubertModel) models")
    m = cfg.model
    for key, value, why in _NEEDS:
        if getattr(m, key) != value:
            raise HFExportError(f"{where}: {key}: {getattr(m, key)} cannot be exported to Hugging Face "
                                f"(needs {value}: {why})")
    if any(m.encoder_paddings):
        raise HFExportError(f"{where}: encoder_paddings: {m.encoder_paddings} cannot be exported to Hugging Face "
                            "(needs all 0: transformers' conv layers pad nothing)")
    if not m.encoder_kernels:
        raise HFExportError(f"{where}: encoder_kernels: [] cannot be exported to Hugging Face (needs a conv encoder)")


def hf_config(cfg: Config) -> dict[str, Any]:
    """The ``Wav2Vec2Config`` / ``HubertConfig`` keys of an exportable model."""
    m = cfg.model
    layers = len(m.encoder_kernels)
    return {
        "conv_dim": [m.encoder_channels] * layers, "conv_kernel": list(m.encoder_kernels),
        "conv_stride": list(m.encoder_strides), "conv_bias": True, "feat_extract_norm": "layer",
        "feat_extract_activation": "gelu", "feat_proj_layer_norm": True,
        "hidden_size": m.context_dim, "num_hidden_layers": m.context_layers,
        "num_attention_heads": m.context_heads, "intermediate_size": m.context_ff_dim, "hidden_act": "relu",
        "layer_norm_eps": 1e-5, "do_stable_layer_norm": True,
        "num_conv_pos_embeddings": m.context_conv_pos_kernel,
        "num_conv_pos_embedding_groups": m.context_conv_pos_groups,
        "hidden_dropout": m.context_dropout, "attention_dropout": m.context_dropout,
        "activation_dropout": m.context_dropout, "feat_proj_dropout": 0.0, "layerdrop": 0.0,
        "apply_spec_augment": False, "mask_time_prob": 0.0,
    }


def hf_state_dict(model: SSLModel) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names (``Wav2Vec2Model`` and ``HubertModel`` share them)."""
    out: dict[str, torch.Tensor] = {}
    for i, block in enumerate(model.encoder.blocks):
        out[f"feature_extractor.conv_layers.{i}.conv.weight"] = block.conv.weight
        out[f"feature_extractor.conv_layers.{i}.conv.bias"] = block.conv.bias
        out[f"feature_extractor.conv_layers.{i}.layer_norm.weight"] = block.norm.norm.weight
        out[f"feature_extractor.conv_layers.{i}.layer_norm.bias"] = block.norm.norm.bias
    out["feature_projection.layer_norm.weight"] = model.input_norm.weight
    out["feature_projection.layer_norm.bias"] = model.input_norm.bias
    context = model.context
    if isinstance(context.project, torch.nn.Linear):
        weight, bias = context.project.weight, context.project.bias
    else:  # equal widths: the identity
        weight, bias = torch.eye(context.out_dim), torch.zeros(context.out_dim)
    out["feature_projection.projection.weight"], out["feature_projection.projection.bias"] = weight, bias
    conv = context.position.conv
    out["encoder.pos_conv_embed.conv.bias"] = conv.bias
    out["encoder.pos_conv_embed.conv.parametrizations.weight.original0"] = conv.parametrizations.weight.original0
    out["encoder.pos_conv_embed.conv.parametrizations.weight.original1"] = conv.parametrizations.weight.original1
    for i, layer in enumerate(context.layers):
        prefix = f"encoder.layers.{i}."
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), layer.self_attn.in_proj_weight.chunk(3),
                              layer.self_attn.in_proj_bias.chunk(3)):
            out[prefix + f"attention.{name}.weight"], out[prefix + f"attention.{name}.bias"] = w, b
        pairs = {"attention.out_proj": layer.self_attn.out_proj, "layer_norm": layer.norm1,
                 "final_layer_norm": layer.norm2, "feed_forward.intermediate_dense": layer.linear1,
                 "feed_forward.output_dense": layer.linear2}
        for name, module in pairs.items():
            out[prefix + f"{name}.weight"], out[prefix + f"{name}.bias"] = module.weight, module.bias
    out["encoder.layer_norm.weight"], out["encoder.layer_norm.bias"] = context.norm.weight, context.norm.bias
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_hf(source: str | Path, out: str | Path) -> list[str]:
    """Write the model of the audiossl checkpoint ``source`` as a Hugging Face folder ``out``.

    Returns:
        Notes on what was not carried.
    """
    try:
        import transformers
    except ImportError:
        raise HFExportError("--to hf needs transformers: pip install 'audiossl[hf]'") from None
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HFExportError(f"{out}: exists and is not an empty folder; --to hf writes a new folder")
    ckpt = load_checkpoint(source)
    model = model_from_checkpoint(ckpt, source)
    cfg = model.config
    check_exportable(cfg, str(source))
    model_type, config_class, model_class = HF_CLASSES[cfg.objective.objective]
    hf_cfg = getattr(transformers, config_class)(**hf_config(cfg))
    hf_model = getattr(transformers, model_class)(hf_cfg).eval()
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    if unexpected or set(missing) - {"masked_spec_embed"}:
        raise HFExportError(f"{source}: the weights do not fill transformers' {model_class} (missing "
                            f"{sorted(missing)}, unexpected {sorted(unexpected)})")
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=cfg.data.sample_rate, padding_value=0.0, do_normalize=cfg.model.cmvn,
        return_attention_mask=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_model.save_pretrained(tmp, safe_serialization=True)
    extractor.save_pretrained(tmp)
    (tmp / "audiossl.json").write_text(json.dumps({"exported_from": str(source), "step": ckpt.get("step"),
                                                   "config": cfg.flat()}, indent=2))
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return [f"{model_type}: masked_spec_embed is transformers' initial value (the pretraining mask embedding; "
            "inference does not read it)",
            "the objective's heads (quantizer, projections, unit embeddings) are not carried"]
