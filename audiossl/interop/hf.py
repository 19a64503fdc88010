"""Hugging Face model folders as feature sources: wav2vec2, hubert, wavlm and data2vec-audio, run by transformers.

A folder as ``save_pretrained`` writes it (and as the Hub serves it:
``facebook/hubert-base-ls960``, ``facebook/wav2vec2-base``,
``microsoft/wavlm-base-plus``, ``facebook/data2vec-audio-base``):
``config.json`` (its ``model_type`` one of :data:`MODEL_TYPES`), the weights
(``model.safetensors``, ``pytorch_model.bin`` or their sharded forms; a
``*ForPreTraining`` or ``*ForCTC`` checkpoint loads its base model, the heads
left out) and, optionally, ``preprocessor_config.json``, the
``Wav2Vec2FeatureExtractor``'s settings. The model is
``AutoModel.from_pretrained(folder)``, offline, without remote code; a
weights file that leaves a tensor of the model unset is refused.

Run as transformers runs it (``feature_extractor(wavs, padding=True)`` then
``model(**inputs, output_hidden_states=True)``):

- ``do_normalize``: each utterance scaled to zero mean and unit variance
  over its own samples (the extractor's ``zero_mean_unit_var_norm``, variance
  + 1e-7), padding left at zero;
- ``return_attention_mask``: whether the attention mask is passed; without
  ``preprocessor_config.json``, the extractor's defaults (``do_normalize``
  true) and a mask exactly when the conv encoder uses layer norm
  (``feat_extract_norm: layer``; data2vec-audio always does), the rule
  transformers' documentation gives. A model run without a mask is batched
  by equal length (:mod:`audiossl.interop.wav2vec2`), and so is
  data2vec-audio: its positional embedding (five convs, each with a layer
  norm) carries the padding into the frames before it, mask or not, so
  its library's own padded batches differ from single utterances.

Layers: ``encoder`` is the ``feature_extractor`` module's output (read with a
forward hook), ``layer_i`` is ``hidden_states[i]`` of the model's own output
and ``context`` its ``last_hidden_state``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from audiossl.errors import UserError
from audiossl.interop.wav2vec2 import Wav2Vec2Family

__all__ = ["MODEL_TYPES", "HFModel", "HFModelError", "load_hf_model", "weight_files"]

MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
UNUSED_IN_EVAL = ("masked_spec_embed",)  # the pretraining mask embedding: never read at inference


class HFModelError(UserError, ValueError):
    """A Hugging Face folder that cannot be used; the message names it."""


class HFModel(Wav2Vec2Family):
    """A transformers wav2vec 2.0-family model as a feature model (see the module docstring).

    Args:
        network: the ``AutoModel`` (``Wav2Vec2Model``, ``HubertModel``, ``WavLMModel``, ``Data2VecAudioModel``).
        processor: its ``Wav2Vec2FeatureExtractor``.
        use_mask: whether the attention mask is passed.
        folder: where it was read from (named in the description).
    """

    def __init__(self, network: torch.nn.Module, processor, use_mask: bool, folder: Path):
        cfg = network.config
        norm = "normalized per utterance" if processor.do_normalize else "not normalized"
        # data2vec-audio's positional embedding, a stack of convs with layer norms, carries the padding into
        # the frames beside it whatever the mask: its padded batches differ from single utterances too.
        exact = use_mask and cfg.model_type != "data2vec-audio"
        mask = "with an attention mask" if use_mask else "without an attention mask"
        mask += "" if exact else " (batched by equal length)"
        super().__init__(list(zip(cfg.conv_kernel, cfg.conv_stride)), cfg.conv_dim[-1], cfg.hidden_size,
                         cfg.num_hidden_layers, int(processor.sampling_rate), exact,
                         f"Hugging Face {cfg.model_type} model {folder}: {cfg.num_hidden_layers} layers of "
                         f"{cfg.hidden_size}, input {norm}, run {mask}")
        self.network, self.processor, self.use_mask = network.eval(), processor, use_mask
        self.model_type = cfg.model_type

    def normalize(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.processor.do_normalize:
            return wavs
        out = torch.zeros_like(wavs)
        for row, length in enumerate(lengths.tolist()):
            if length:
                wav = wavs[row, :length].detach().cpu().numpy().astype(np.float32)
                normed = self.processor.zero_mean_unit_var_norm([wav], attention_mask=None)[0]
                out[row, :length] = torch.from_numpy(np.asarray(normed, dtype=np.float32)).to(wavs.device)
        return out

    def network_outputs(self, wavs: torch.Tensor, lengths: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        mask = None
        if self.use_mask:
            mask = (torch.arange(wavs.shape[1], device=wavs.device) < lengths[:, None]).long()  # (B, T)
        captured = []
        hook = self.network.feature_extractor.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            with warnings.catch_warnings():  # WavLM's attention call, inside transformers: nothing to act on here
                warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
                out = self.network(wavs, attention_mask=mask, output_hidden_states=True)
        finally:
            hook.remove()
        return captured[0].transpose(1, 2), list(out.hidden_states), out.last_hidden_state


def weight_files(folder: Path) -> list[Path]:
    """The folder's weights (a sharded model's index and shards included), sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.name in WEIGHTS or (p.name.startswith(("model-", "pytorch_model-"))
                                           and p.suffix in (".safetensors", ".bin")))


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' loading bar and load report off (missing weights are checked here), restored after."""
    from transformers.utils import logging

    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def _model_type(folder: Path) -> str:
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise HFModelError(f"{folder / CONFIG}: cannot read it as JSON ({e})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_TYPES:
        raise HFModelError(f"{folder / CONFIG}: model_type {model_type!r}; audiossl reads {', '.join(MODEL_TYPES)}")
    return model_type


def load_hf_model(folder: str | Path) -> HFModel:
    """A Hugging Face model folder as a feature model (eval mode, on the CPU).

    Raises:
        HFModelError: for a folder without ``config.json`` or weights, a
            ``model_type`` not in :data:`MODEL_TYPES`, weights that do not
            fit the config, or transformers missing.
    """
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise HFModelError(f"{folder}: a folder without {CONFIG}: not a Hugging Face model folder")
    model_type = _model_type(folder)
    if not weight_files(folder):
        raise HFModelError(f"{folder}: no weights ({' or '.join(WEIGHTS[:2])}) beside {CONFIG}")
    try:
        from transformers import AutoModel, Wav2Vec2FeatureExtractor
    except ImportError:
        raise HFModelError(f"{folder}: a Hugging Face model needs transformers (pip install audiossl[hf])") from None
    try:
        with _quiet_transformers():
            network, info = AutoModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
            if (folder / PREPROCESSOR).is_file():
                processor = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
                use_mask = bool(processor.return_attention_mask)
            else:
                processor = Wav2Vec2FeatureExtractor()
                use_mask = getattr(network.config, "feat_extract_norm", "layer") == "layer"
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HFModelError(f"{folder}: transformers cannot load this {model_type} model ({first})") from None
    missing = sorted(k for k in info["missing_keys"] if not k.endswith(UNUSED_IN_EVAL))
    if missing:
        raise HFModelError(f"{folder}: its weights leave {len(missing)} tensor(s) of the {model_type} model unset "
                           f"(e.g. {', '.join(missing[:3])}); a model of another architecture?")
    return HFModel(network, processor, use_mask, folder)
