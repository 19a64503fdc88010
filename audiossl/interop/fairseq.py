"""fairseq wav2vec 2.0 and HuBERT checkpoints as feature sources, on torchaudio's components, without fairseq.

A fairseq checkpoint (``wav2vec_small.pt``, ``libri960_big.pt``,
``hubert_base_ls960.pt``, ``hubert_large_ll60k.pt``: what its
``checkpoint_utils.save_state`` writes) is a pickled dict holding ``model``
(the state dict) and ``cfg`` (the hydra config as plain dicts:
``cfg["model"]``, ``cfg["task"]``) or, from fairseq before 0.10, ``args``
(an argparse ``Namespace`` of both). It is read with
``torch.load(weights_only=True)``, which admits, besides tensors and
containers, only the plain-data globals of :data:`DATA_GLOBALS` (that
``Namespace``, numpy scalars and dtypes); a file that names anything else (an
omegaconf object, a fairseq class) would need code to load and is refused,
the global named.

The network is torchaudio's ``wav2vec2_model`` (HuBERT has the same
architecture), built from ``cfg["model"]`` and loaded with the state dict
renamed as torchaudio's ``import_fairseq_model`` renames it (:data:`RENAMES`):

==============================================  ===============================================================
fairseq                                         torchaudio
==============================================  ===============================================================
``feature_extractor.conv_layers.{i}.0``         ``feature_extractor.conv_layers.{i}.conv``
``feature_extractor.conv_layers.0.2``           ``feature_extractor.conv_layers.0.layer_norm`` (group norm)
``feature_extractor.conv_layers.{i}.2.1``       ``feature_extractor.conv_layers.{i}.layer_norm`` (layer norm)
``layer_norm``, ``post_extract_proj``           ``encoder.feature_projection.layer_norm``, ``.projection``
``encoder.pos_conv.0.weight_g``, ``weight_v``   ``encoder.transformer.pos_conv_embed.conv.parametrizations.weight
                                                .original0``, ``original1`` (and ``bias``)
``encoder.layer_norm``                          ``encoder.transformer.layer_norm``
``encoder.layers.{i}.self_attn.{q,k,v,out}_proj``  ``encoder.transformer.layers.{i}.attention.{q,k,v,out}_proj``
``encoder.layers.{i}.self_attn_layer_norm``     ``encoder.transformer.layers.{i}.layer_norm``
``encoder.layers.{i}.fc1``, ``fc2``             ``...layers.{i}.feed_forward.intermediate_dense``, ``output_dense``
``encoder.layers.{i}.final_layer_norm``         ``encoder.transformer.layers.{i}.final_layer_norm``
==============================================  ===============================================================

The pretraining heads (``mask_emb``, ``quantizer``, ``project_q``,
``final_proj``, ``label_embs_concat``, ``target_glu``, ``project_inp``) are
left out; any other key is refused, named. Settings, with fairseq's defaults
where a key is absent: ``extractor_mode`` (``default``: a group norm after
the first conv; ``layer_norm``), ``conv_feature_layers`` (fairseq evaluates
this list expression; here it is parsed, ints, lists, tuples, ``+`` and
``*`` only), ``conv_bias``, ``encoder_embed_dim``, ``encoder_layers``,
``encoder_attention_heads``, ``encoder_ffn_embed_dim``,
``layer_norm_first``, ``conv_pos``, ``conv_pos_groups``; and the task's
``normalize``: each utterance layer-normalized over its samples
(fairseq's ``F.layer_norm(wav, wav.shape)``, eps 1e-5), as its datasets do.
Refused, the setting named: ``layer_type`` other than ``transformer``
(conformer), ``pos_conv_depth`` above 1, ``activation_fn`` other than
``gelu``, a fine-tuned model (``wav2vec_ctc``, ``hubert_ctc``: its
``w2v_encoder.*`` keys; give its pretrained checkpoint), another model.
Dropouts are 0: the model only runs in eval mode. The layers are
:mod:`audiossl.interop.wav2vec2`'s, computed with torchaudio's encoder parts
one layer at a time (its padding mask, zeroed padding before the positional
conv, and the final layer norm of a pre-norm model on ``context``).
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from audiossl.checkpoint import load_state
from audiossl.errors import UserError
from audiossl.interop.wav2vec2 import Wav2Vec2Family

__all__ = ["DATA_GLOBALS", "FairseqError", "FairseqModel", "conv_layers", "is_fairseq", "read_fairseq"]

MODELS = ("wav2vec2", "hubert")
DEFAULTS = {
    "extractor_mode": "default", "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False, "encoder_embed_dim": 768, "encoder_layers": 12, "encoder_attention_heads": 12,
    "encoder_ffn_embed_dim": 3072, "layer_norm_first": False, "conv_pos": 128, "conv_pos_groups": 16,
    "layer_type": "transformer", "pos_conv_depth": 1, "activation_fn": "gelu",
}
_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
# Plain data that fairseq's pickles hold beside the tensors: the pre-0.10 args, numpy numbers in its training state.
DATA_GLOBALS = [argparse.Namespace, _SCALAR, (_SCALAR, "numpy.core.multiarray.scalar"), np.dtype,
                *(getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType",
                                                        "Int32DType", "BoolDType") if hasattr(np, "dtypes"))]
LAYER = r"encoder\.layers\.(\d+)\."
TRANSFORMER = r"encoder.transformer.layers.\1."
RENAMES = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)", r"feature_extractor.conv_layers.0.layer_norm.\1"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"encoder.feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"encoder.feature_projection.projection.\1"),
    (r"encoder\.pos_conv\.0\.bias", "encoder.transformer.pos_conv_embed.conv.bias"),
    (r"encoder\.pos_conv\.0\.weight_g", "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.transformer.layer_norm.\1"),
    (LAYER + r"self_attn\.((?:q|k|v|out)_proj\.(?:weight|bias))", TRANSFORMER + r"attention.\2"),
    (LAYER + r"self_attn_layer_norm\.(weight|bias)", TRANSFORMER + r"layer_norm.\2"),
    (LAYER + r"fc1\.(weight|bias)", TRANSFORMER + r"feed_forward.intermediate_dense.\2"),
    (LAYER + r"fc2\.(weight|bias)", TRANSFORMER + r"feed_forward.output_dense.\2"),
    (LAYER + r"final_layer_norm\.(weight|bias)", TRANSFORMER + r"final_layer_norm.\2"),
]
HEADS = r"(mask_emb|label_embs_concat|(quantizer|project_q|final_proj|target_glu|project_inp)\..*)"


class FairseqError(UserError, ValueError):
    """A fairseq checkpoint that cannot be used; the message names the file and the setting."""


def is_fairseq(ckpt) -> bool:
    """Whether a loaded checkpoint has fairseq's layout: ``model`` and ``cfg`` or ``args``."""
    return isinstance(ckpt, Mapping) and "model" in ckpt and ("cfg" in ckpt or "args" in ckpt)


def conv_layers(text: str, where: str) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` (``"[(512, 10, 5)] + [(512, 3, 2)] * 4 + ..."``) without ``eval``."""
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Mult) and max(len(x) if isinstance(x, list) else x
                                                     for x in (left, right)) > 1000:
                raise ValueError("too long")
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"{type(node).__name__} is not allowed")

    try:
        layers = value(ast.parse(str(text), mode="eval").body)
        if not (isinstance(layers, list) and layers and all(isinstance(x, tuple) and len(x) == 3 for x in layers)):
            raise ValueError("not a list of (channels, kernel, stride)")
    except (SyntaxError, ValueError, TypeError) as e:
        raise FairseqError(f"{where}: conv_feature_layers {text!r} is not a list of (dim, kernel, stride) ({e})"
                           ) from None
    return layers


def _settings(ckpt: Mapping, path: Path) -> tuple[str, dict, bool]:
    """The model's name, its settings over fairseq's defaults, and the task's ``normalize``."""
    cfg, args = ckpt.get("cfg"), ckpt.get("args")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        model, task = dict(cfg["model"]), cfg.get("task") or {}
    elif isinstance(args, argparse.Namespace):
        model = task = vars(args)
    else:
        raise FairseqError(f"{path}: a fairseq checkpoint without model settings (no cfg['model'] nor args)")
    name = str(model.get("_name") or model.get("arch") or "unnamed")
    if name.endswith(("_ctc", "_seq2seq")) or any(str(k).startswith("w2v_encoder.") for k in ckpt["model"]):
        raise FairseqError(f"{path}: a fine-tuned fairseq model ({name}); audiossl reads the pretrained "
                           "wav2vec2 and hubert checkpoints it was fine-tuned from")
    if name not in MODELS:
        raise FairseqError(f"{path}: fairseq model {name!r}; audiossl reads {' and '.join(MODELS)}")
    settings = {key: model.get(key, default) for key, default in DEFAULTS.items()}
    for key, allowed in (("layer_type", "transformer"), ("pos_conv_depth", 1), ("activation_fn", "gelu")):
        if settings[key] != allowed:
            raise FairseqError(f"{path}: {key}: {settings[key]!r}; torchaudio's wav2vec2 components have "
                               f"{allowed!r} only")
    if settings["extractor_mode"] not in ("default", "layer_norm"):
        raise FairseqError(f"{path}: extractor_mode {settings['extractor_mode']!r} (default or layer_norm)")
    return name, settings, bool(task.get("normalize", False))


def _renamed(state: Mapping, path: Path) -> dict:
    """fairseq's state dict with torchaudio's names, the pretraining heads left out."""
    out = {}
    for key, tensor in state.items():
        if re.fullmatch(HEADS, key):
            continue
        for pattern, replacement in RENAMES:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            raise FairseqError(f"{path}: unexpected tensor {key!r} for a wav2vec2/hubert model")
    return out


class FairseqModel(Wav2Vec2Family):
    """A fairseq wav2vec 2.0 or HuBERT model on torchaudio's components (see the module docstring).

    Args:
        network: torchaudio's ``Wav2Vec2Model``.
        conv: fairseq's ``conv_feature_layers``.
        layer_norm_conv: ``extractor_mode: layer_norm`` (else a group norm: batched by equal length).
        normalize: the task's ``normalize``.
        model_type: ``wav2vec2`` or ``hubert``.
        description: names the model.
    """

    def __init__(self, network: torch.nn.Module, conv: list[tuple[int, int, int]], layer_norm_conv: bool,
                 normalize: bool, model_type: str, description: str):
        transformer = network.encoder.transformer
        super().__init__([(kernel, stride) for _, kernel, stride in conv], conv[-1][0],
                         transformer.pos_conv_embed.embed_dim, len(transformer.layers), 16000, layer_norm_conv,
                         description)
        self.network, self.normalizes, self.model_type = network.eval(), normalize, model_type

    def normalize(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.normalizes:
            return wavs
        out = torch.zeros_like(wavs)
        for row, length in enumerate(lengths.tolist()):
            if length:
                out[row, :length] = F.layer_norm(wavs[row, :length], (length,))
        return out

    def network_outputs(self, wavs: torch.Tensor, lengths: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        feats, _ = self.network.feature_extractor(wavs, None)  # (B, T, C)
        encoder = self.network.encoder
        x = encoder.feature_projection(feats)
        batch, frames, _ = x.shape
        pad = torch.arange(frames, device=x.device)[None, :] >= self.output_lengths(lengths)[:, None]  # (B, T)
        mask = None
        if pad.any():  # as torchaudio's Encoder: padded frames zeroed, and masked out of attention
            x = x.masked_fill(pad[..., None], 0.0)
            mask = (-10000.0 * pad[:, None, None, :].to(x.dtype)).expand(batch, 1, frames, frames)
        transformer = encoder.transformer
        x = x + transformer.pos_conv_embed(x)
        if transformer.layer_norm_first:  # torchaudio's flag: true for a post-norm model, whose norm comes here
            x = transformer.layer_norm(x)
        hidden, bias = [x], None
        for layer in transformer.layers:
            x, bias = layer(x, mask, position_bias=bias)
            hidden.append(x)
        # A pre-norm model's output is its last layer's, normalized (fairseq's TransformerEncoder.forward).
        return feats, hidden, hidden[-1] if transformer.layer_norm_first else transformer.layer_norm(hidden[-1])


def read_fairseq(ckpt: Mapping, path: str | Path) -> FairseqModel:
    """A loaded fairseq checkpoint (see :func:`is_fairseq`) as a feature model, in eval mode on the CPU.

    Raises:
        FairseqError: for a setting or tensor audiossl cannot carry, named.
    """
    from torchaudio.models import wav2vec2_model

    path = Path(path)
    name, s, normalize = _settings(ckpt, path)
    conv = conv_layers(s["conv_feature_layers"], str(path))
    network = wav2vec2_model(
        extractor_mode="group_norm" if s["extractor_mode"] == "default" else "layer_norm",
        extractor_conv_layer_config=conv, extractor_conv_bias=bool(s["conv_bias"]),
        encoder_embed_dim=int(s["encoder_embed_dim"]), encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=int(s["conv_pos"]), encoder_pos_conv_groups=int(s["conv_pos_groups"]),
        encoder_num_layers=int(s["encoder_layers"]), encoder_num_heads=int(s["encoder_attention_heads"]),
        encoder_attention_dropout=0.0, encoder_ff_interm_features=int(s["encoder_ffn_embed_dim"]),
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=bool(s["layer_norm_first"]),
        encoder_layer_drop=0.0, aux_num_out=None)
    state = _renamed(ckpt["model"], path)
    projection, name_in = network.encoder.feature_projection.projection, "encoder.feature_projection.projection"
    if f"{name_in}.weight" not in state and projection.in_features == projection.out_features:
        # fairseq has no post_extract_proj when the conv output is as wide as the Transformer: the identity
        state[f"{name_in}.weight"] = torch.eye(projection.in_features)
        state[f"{name_in}.bias"] = torch.zeros(projection.out_features)
    load_state(network, state, path, "fairseq model")
    norm = "layer-normalized per utterance" if normalize else "not normalized"
    description = (f"fairseq {name} model {path}: {s['encoder_layers']} layers of {s['encoder_embed_dim']} "
                   f"(torchaudio's components), input {norm}"
                   + ("" if s["extractor_mode"] == "layer_norm" else ", batched by equal length (group norm)"))
    return FairseqModel(network, conv, s["extractor_mode"] == "layer_norm", normalize, name, description)
