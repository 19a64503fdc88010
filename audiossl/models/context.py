"""Context networks: recurrent (GRU, LSTM) and Transformer (causal or not).

Every context network maps ``(feats (batch, frames, dim), lengths)`` to the
list of its layers' outputs, each ``(batch, frames, out_dim)``, zeroed past
each sequence's end. Recurrent networks also take and return their hidden
state, so a long file can be processed in chunks with the same result as one
pass (``audiossl extract`` relies on it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from audiossl.models.frontends import length_mask


class _GRUTraining(torch.autograd.Function):
    """One ``nn.GRU`` layer (batch first) with a hand-written backward, for training on the CPU.

    PyTorch's CPU GRU records every time step's cell operations for autograd
    and so runs ~20 small matrix products and element-wise ops per step
    backward. Here the input projections of all steps are one product, the
    recurrence keeps one ``(batch, hidden) x (hidden, 3 hidden)`` product per
    step each way, and the weight gradients are two products over all steps
    at the end. The gates are PyTorch's (r, z, n; ``n = tanh(W_in x + b_in +
    r (W_hn h + b_hn))``), so the parameters are the ``nn.GRU``'s own.
    """

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh):
        B, T, H = x.shape[0], x.shape[1], w_hh.shape[1]
        gi = torch.addmm(b_ih, x.reshape(B * T, -1), w_ih.t()).view(B, T, 3, H)
        out = x.new_empty(B, T, H)
        gates = x.new_empty(B, T, 3, H)  # r, z, n of each step, for the backward
        ghn = x.new_empty(B, T, H)  # W_hn h + b_hn
        h = h0
        w_hh_t = w_hh.t()
        for t in range(T):
            gh = torch.addmm(b_hh, h, w_hh_t).view(B, 3, H)
            rz = torch.sigmoid(gi[:, t, :2] + gh[:, :2])
            n = torch.tanh(gi[:, t, 2] + rz[:, 0] * gh[:, 2])
            h = torch.lerp(n, h, rz[:, 1])  # (1 - z) n + z h
            gates[:, t, :2] = rz
            gates[:, t, 2] = n
            ghn[:, t] = gh[:, 2]
            out[:, t] = h
        ctx.save_for_backward(x, h0, w_ih, w_hh, out, gates, ghn)
        return out, h

    @staticmethod
    def backward(ctx, g_out, g_h):
        x, h0, w_ih, w_hh, out, gates, ghn = ctx.saved_tensors
        B, T, H = out.shape
        d_gi = out.new_empty(B, T, 3, H)
        d_gh = out.new_empty(B, T, 3, H)
        dh = g_h.clone() if g_h is not None else out.new_zeros(B, H)
        for t in range(T - 1, -1, -1):
            if g_out is not None:
                dh = dh + g_out[:, t]
            h_prev = out[:, t - 1] if t > 0 else h0
            r, z, n = gates[:, t, 0], gates[:, t, 1], gates[:, t, 2]
            dn = dh * (1 - z) * (1 - n * n)          # d pre-tanh
            dz = dh * (h_prev - n) * z * (1 - z)     # d pre-sigmoid z
            dr = dn * ghn[:, t] * r * (1 - r)        # d pre-sigmoid r
            d_gi[:, t, 0], d_gi[:, t, 1], d_gi[:, t, 2] = dr, dz, dn
            d_gh[:, t, 0], d_gh[:, t, 1], d_gh[:, t, 2] = dr, dz, dn * r
            dh = dh * z + d_gh[:, t].reshape(B, 3 * H) @ w_hh
        h_prevs = torch.cat([h0.unsqueeze(1), out[:, :-1]], 1).reshape(B * T, H)
        d_gi2, d_gh2 = d_gi.reshape(B * T, 3 * H), d_gh.reshape(B * T, 3 * H)
        dx = (d_gi2 @ w_ih).view(B, T, -1)
        dw_ih = d_gi2.t() @ x.reshape(B * T, -1)
        dw_hh = d_gh2.t() @ h_prevs
        return dx, dh, dw_ih, dw_hh, d_gi2.sum(0), d_gh2.sum(0)


def run_recurrent(layer: nn.Module, x: torch.Tensor, state):
    """``layer(x, state)``, through :class:`_GRUTraining` when a GRU trains on the CPU."""
    if isinstance(layer, nn.GRU) and x.device.type == "cpu" and torch.is_grad_enabled():
        h0 = x.new_zeros(x.shape[0], layer.hidden_size) if state is None else state[0]
        y, h = _GRUTraining.apply(x, h0, layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0)
        return y, h.unsqueeze(0)
    return layer(x, state)


class RecurrentContext(nn.Module):
    """A stack of single-layer GRUs or LSTMs, each layer's output exposed.

    CPC (paper: GRU 256; CPC_audio: ``--arMode`` LSTM/GRU, 1 layer, 256) and
    APC (Chung et al. 2019: 3 x 512 GRU with residual connections, where a
    layer's input is added to its output when the sizes match).
    """

    causal = True

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
            y, h = run_recurrent(layer, x, None if state is None else state[i])
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.table.shape[0]:
            raise ValueError(f"{x.shape[1]} frames exceed context_max_frames={self.table.shape[0]}")
        return x + self.table[: x.shape[1]].to(x.dtype)


class TransformerContext(nn.Module):
    """Pre-norm Transformer encoder layers over the encoded frames.

    Args:
        causal: each frame attends only to itself and the past (CPC, APC);
            False gives the bidirectional encoder of MPC (Mockingjay, TERA).
    """

    def __init__(self, in_dim: int, dim: int, num_layers: int, heads: int, ff_dim: int,
                 dropout: float = 0.0, causal: bool = True, max_frames: int = 4096):
        super().__init__()
        self.causal = causal
        self.project = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.position = SinusoidalPosition(dim, max_frames)
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
        x = self.position(self.project(x))
        outputs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, src_mask=attn_mask, src_key_padding_mask=~valid)
            y = self.norm(x) if i == len(self.layers) - 1 else x
            outputs.append(y * valid.unsqueeze(-1))
        return outputs, None


class NoContext(nn.Module):
    """No context network: the encoder's frames are the context."""

    causal = True

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state: list | None = None):
        return [x], None
