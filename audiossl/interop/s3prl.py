"""An s3prl upstream over any audiossl checkpoint (SUPERB's evaluation contract).

s3prl (Yang et al. 2021, SUPERB) evaluates a representation through an
``UpstreamExpert(ckpt, **kwargs)``: ``forward`` takes a list of 1-D 16 kHz
waveforms and returns ``{"hidden_states": [(batch, frames, dim), ...]}``, and
``get_downsample_rates(key)`` gives the input samples per frame. Its
``Featurizer`` takes a learned weighted sum of the hidden states, so they all
have one size: here every context layer's output (``context_1 ..
context_L``, then ``context`` where it is not the last of them, NPC's masked
representation) and, first, the encoder's frames when their size matches
(CPC's ``z``). The last hidden state is the model's representation, the one
``audiossl extract --layer context`` writes.

Nothing here imports s3prl: register the expert in an s3prl checkout with a
``hubconf.py`` that imports :func:`audiossl_local` (README, "s3prl"), or load
it through ``torch.hub.load(<audiossl checkout>, "audiossl_local",
source="local", ckpt=...)``.
"""

from __future__ import annotations

import torch
from torch import nn

from audiossl.checkpoint import load_model
from audiossl.models.context import NoContext

SAMPLE_RATE = 16000


class UpstreamExpert(nn.Module):
    """s3prl's upstream contract over an audiossl checkpoint.

    Args:
        ckpt: an audiossl checkpoint (``checkpoint.pt``, or one ``audiossl
            convert`` wrote).
        **kwargs: what s3prl passes to every upstream (``model_config``,
            ``refresh``, ...); unused.
    """

    def __init__(self, ckpt: str, **kwargs):
        super().__init__()
        self.model = load_model(ckpt)
        if self.model.sample_rate != SAMPLE_RATE:
            raise ValueError(f"{ckpt}: the model reads {self.model.sample_rate} Hz audio; s3prl feeds 16 kHz")
        # s3prl weighs hidden states of one width: every context layer, the encoder's output when it is as
        # wide (and is not itself the context: NoContext), and a summary output after the layers (NPC's).
        context = self.model.context
        names = [f"context_{i + 1}" for i in range(context.num_layers)]
        if context.summary_output:
            names.append("context")
        outputs = self.model.named_outputs()
        if outputs["encoder"] == outputs["context"] and not isinstance(context, NoContext):
            names.insert(0, "encoder")
        self.layers = tuple(names)

    def get_downsample_rates(self, key: str) -> int:
        """Input samples per output frame, for every key (160: 10 ms)."""
        return self.model.hop

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        """Hidden states of a batch of 1-D waveforms, zero past each one's frames.

        Returns:
            ``{"hidden_states": [(batch, frames, dim), ...], "last_hidden_state": ...}``
            plus each layer by its audiossl name (:attr:`layers`, in order).
        """
        if not wavs or any(w.dim() != 1 for w in wavs):
            raise ValueError(f"expected a list of 1-D waveforms, got shapes {[tuple(w.shape) for w in wavs]}")
        lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
        padded = nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        feats, _ = self.model.extract_features(padded, lengths, self.layers)
        hidden = [feats[name][0] for name in self.layers]
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1], **dict(zip(self.layers, hidden))}


def audiossl_local(ckpt: str, *args, **kwargs) -> UpstreamExpert:
    """s3prl's ``<name>_local`` entry: the expert of a local audiossl checkpoint."""
    return UpstreamExpert(ckpt, **kwargs)
