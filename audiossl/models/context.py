"""Context networks: recurrent (GRU, LSTM) and Transformer (causal or not).

Every context network is a :class:`ContextNetwork`: it maps ``(feats (batch,
frames, dim), lengths)`` to the list of its layers' outputs, each ``(batch,
frames, out_dim)``, zeroed past each sequence's end. Recurrent networks also
take and return their hidden state, so a long file can be processed in
chunks with the same result as one pass (``audiossl extract`` relies on it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from audiossl.models.lengths import length_mask


class ContextNetwork(nn.Module):
    """What every context network tells the model, the objectives and extraction.

    Attributes:
        out_dim: size of its outputs.
        causal: output frame t reads no input frame after t.
        carries_state: ``forward(x, lengths, state)`` returns a state that
            continues the computation on the next chunk of the same input,
            so chunked extraction equals one pass.
        layers: its layers, one output each (``context_1 .. context_L``).
        summary_output: ``forward`` returns one more output after the
            layers', which is ``context`` (NPC's summed masked features).
    """

    out_dim: int
    causal: bool = True
    carries_state: bool = False
    summary_output: bool = False  # forward returns one more output after its layers' (NPC's masked sum)

    @property
    def num_layers(self) -> int:
        """Outputs ``forward`` returns before any summary output (NPC adds one after its blocks')."""
        return len(self.layers)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: list | None = None
                ) -> tuple[list[torch.Tensor], list | None]:
        raise NotImplementedError


class RecurrentContext(ContextNetwork):
    """A stack of single-layer GRUs or LSTMs, each layer's output exposed.

    CPC (paper: GRU 256; CPC_audio: ``--arMode`` LSTM/GRU, 1 layer, 256) and
    APC (Chung et al. 2019: 3 x 512 GRU with residual connections, where a
    layer's input is added to its output when the sizes match).
    """

    carries_state = True

    def __init__(self, in_dim: int, hidden: int, num_layers: int, cell: str = "gru",
                 residual: bool = False, dropout: float = 0.0):
        super().__init__()
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.layers = nn.ModuleList(rnn(in_dim if i == 0 else hidden, hidden, batch_first=True)
                                    for i in range(num_layers))
        self.residual = residual
        self.dropout = nn.Dropout(dropout)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: list | None = None
                ) -> tuple[list[torch.Tensor], list]:
        mask = length_mask(lengths, x.shape[1]).unsqueeze(-1)
        outputs, new_state = [], []
        for i, layer in enumerate(self.layers):
            y, h = layer(x, None if state is None else state[i])
            if self.residual and y.shape[-1] == x.shape[-1]:
                y = y + x
            y = y * mask
            outputs.append(y)
            new_state.append(h)
            x = self.dropout(y)
        return outputs, new_state


class SinusoidalPosition(nn.Module):
    """Adds the fixed sinusoidal position encoding of Vaswani et al. 2017."""

    def __init__(self, dim: int, max_frames: int):
        super().__init__()
        position = torch.arange(max_frames).unsqueeze(1)
        freq = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        table = torch.zeros(max_frames, dim)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq[: dim // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` plus the table's first frames (``valid``, which :class:`ConvPosition` needs, is not read)."""
        if x.shape[1] > self.table.shape[0]:
            raise ValueError(f"{x.shape[1]} frames exceed context_max_frames={self.table.shape[0]}")
        return x + self.table[: x.shape[1]].to(x.dtype)


class ConvPosition(nn.Module):
    """wav2vec 2.0's relative positions: x + GELU(a grouped convolution over the frames of x).

    The convolution spans ``kernel`` frames centred on each frame (an even
    kernel's last output frame dropped, fairseq's ``SamePad``), its weight
    normalized over all but the kernel axis (``weight_norm(dim=2)``), so its
    parameters are named and shaped as transformers' ``pos_conv_embed.conv``.
    Frames past each sequence's end are zeroed first, so padding never reaches
    a valid frame.
    """

    def __init__(self, dim: int, kernel: int = 128, groups: int = 16):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * dim)))  # fairseq's init
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x * valid.unsqueeze(-1)
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[..., :-self.trim]
        return x + F.gelu(y).transpose(1, 2)


class TransformerContext(ContextNetwork):
    """Pre-norm Transformer encoder layers over the encoded frames.

    Args:
        causal: each frame attends only to itself and the past (CPC, APC);
            False gives the bidirectional encoder of MPC (Mockingjay, TERA).
        position: ``sinusoidal`` (:class:`SinusoidalPosition`, up to ``max_frames``) | ``conv``
            (:class:`ConvPosition` of ``conv_pos`` = (kernel, groups); bidirectional only).
    """

    def __init__(self, in_dim: int, dim: int, num_layers: int, heads: int, ff_dim: int,
                 dropout: float = 0.0, causal: bool = True, max_frames: int = 4096, position: str = "sinusoidal",
                 conv_pos: tuple[int, int] = (128, 16)):
        super().__init__()
        self.causal = causal
        self.project = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        if position == "conv":
            if causal:
                raise ValueError("conv positions read future frames; a causal Transformer needs sinusoidal ones")
            self.position = ConvPosition(dim, *conv_pos)
        elif position == "sinusoidal":
            self.position = SinusoidalPosition(dim, max_frames)
        else:
            raise ValueError(f"unknown Transformer positions {position!r}")
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, ff_dim, dropout, batch_first=True, norm_first=True)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: list | None = None
                ) -> tuple[list[torch.Tensor], None]:
        if state is not None:
            raise ValueError("the Transformer context carries no state across chunks; pass whole sequences")
        frames = x.shape[1]
        valid = length_mask(lengths, frames)
        attn_mask = None
        if self.causal:
            attn_mask = torch.ones(frames, frames, dtype=torch.bool, device=x.device).triu(1)
        x = self.position(self.project(x), valid)
        outputs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, src_mask=attn_mask, src_key_padding_mask=~valid)
            y = self.norm(x) if i == len(self.layers) - 1 else x
            outputs.append(y * valid.unsqueeze(-1))
        return outputs, None


class NoContext(ContextNetwork):
    """No context network: the encoder's frames are the context (one output, no state to carry)."""

    carries_state = True
    num_layers = 1

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: list | None = None):
        return [x], None
