"""wav2vec 2.0's product quantizer: G codebooks of V entries, one entry of each picked by a Gumbel softmax.

Baevski et al. 2020, Sec. 2 and 3.2, and fairseq's
``GumbelVectorQuantizer`` (``latent_groups`` G = 2, ``latent_vars`` V = 320,
``latent_dim`` = the quantized vector's size, ``latent_temp`` = (2, 0.5,
0.999995)): a linear map of the input gives G x V logits (weights drawn from
N(0, 1), bias 0, as fairseq's ``weight_proj``); while training, a hard
one-hot sample of each group's Gumbel softmax at temperature tau picks one
entry (straight-through: the gradient is the soft sample's), in eval mode the
argmax; the G picked entries (each ``dim / G`` wide) are concatenated.

Perplexity is the paper's: per group, exp of the entropy of the batch's
average softmax distribution over entries (V for a uniform average), summed
over the G groups as fairseq's ``prob_perplexity`` is (G V at most). The
diversity loss is ``(G V - prob_perplexity) / (G V)`` (the paper's
``L_d``, fairseq's ``(num_vars - prob_perplexity) / num_vars``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Quantized", "ProductQuantizer", "annealed_temperature", "perplexity"]


def annealed_temperature(step: float, start: float = 2.0, end: float = 0.5, decay: float = 0.999995) -> float:
    """fairseq's schedule: ``max(start * decay ** step, end)`` after ``step`` updates."""
    return max(start * decay ** step, end)


def perplexity(probs: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-group perplexity of the average of ``probs``.

    Args:
        probs: (frames, groups, entries) distributions (softmax probabilities or one-hots).
        weight: (frames,) weights of the frames in the average (padding: 0); None: all 1.

    Returns:
        (groups,) ``exp(-sum_v p_v log p_v)`` of each group's average ``p``.
    """
    probs = probs.float()
    if weight is None:
        average = probs.mean(0)
    else:
        weight = weight.float()[:, None, None]
        average = (probs * weight).sum(0) / weight.sum().clamp(min=1.0)
    return torch.exp(-(average * torch.log(average + 1e-7)).sum(-1))


@dataclass
class Quantized:
    """What :class:`ProductQuantizer` gives for (batch, frames, in_dim) inputs.

    Attributes:
        vectors: (batch, frames, dim) the picked entries, concatenated over groups.
        probs: (batch, frames, groups, entries) the softmax of the logits (no noise), float32.
        onehot: (batch, frames, groups, entries) the picked entries.
    """

    vectors: torch.Tensor
    probs: torch.Tensor
    onehot: torch.Tensor


class ProductQuantizer(nn.Module):
    """Gumbel-softmax product quantizer (wav2vec 2.0).

    Args:
        in_dim: size of the input frames (the encoder's).
        groups: G, codebooks.
        entries: V, entries per codebook.
        dim: size of the quantized vector, divisible by ``groups`` (fairseq's ``latent_dim``, or ``final_dim``).
    """

    def __init__(self, in_dim: int, groups: int = 2, entries: int = 320, dim: int = 256):
        super().__init__()
        if dim % groups:
            raise ValueError(f"the quantized size {dim} does not split into {groups} groups")
        self.groups, self.entries, self.dim = groups, entries, dim
        self.logits = nn.Linear(in_dim, groups * entries)
        nn.init.normal_(self.logits.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.logits.bias)
        self.codebook = nn.Parameter(torch.empty(groups, entries, dim // groups).uniform_())  # fairseq: vars

    def forward(self, x: torch.Tensor, temperature: float = 1.0) -> Quantized:
        """x (batch, frames, in_dim) -> :class:`Quantized`; a sample while training, the argmax in eval mode."""
        batch, frames, _ = x.shape
        logits = self.logits(x).float().reshape(batch, frames, self.groups, self.entries)
        probs = logits.softmax(-1)
        if self.training:
            onehot = F.gumbel_softmax(logits, tau=temperature, hard=True, dim=-1)
        else:
            onehot = F.one_hot(logits.argmax(-1), self.entries).float()
        vectors = torch.einsum("btgv,gvd->btgd", onehot.to(self.codebook.dtype), self.codebook)
        return Quantized(vectors.reshape(batch, frames, self.dim), probs, onehot)

    def diversity_loss(self, probs: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``(G V - sum of the groups' perplexities) / (G V)`` for (frames, groups, entries) ``probs``."""
        total = self.groups * self.entries
        return (total - perplexity(probs, weight).sum()) / total
