"""The head of the CTC recognition probes (:mod:`audiossl.probes.ctc.probe`): the head, its training, decoding and
error rates.

:class:`CTCHead` maps frozen (frames, dim) features to per-frame logits over
the units plus the blank (class 0). :func:`train_ctc_head` fits it with CTC on
standardized inputs (AdamW, the cosine schedule and early stopping of
:mod:`audiossl.probes.fit`, the epoch of lowest held-out loss kept);
:func:`transcribe` decodes greedily (:func:`greedy_decode`) and
:func:`error_rate` pools Levenshtein edits (:func:`edit_distance`) over the
reference length.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from audiossl.probes.fit import EarlyStopping, cosine_schedule
from audiossl.probes.linear import feature_statistics
from audiossl.settings import check_seed
from audiossl.utils.stopping import stop_point

__all__ = [
    "BLANK",
    "CTCHead",
    "CTCSettings",
    "DEFAULT_LR",
    "HEADS",
    "TrainedHead",
    "edit_distance",
    "error_rate",
    "greedy_decode",
    "min_ctc_frames",
    "reverse_padded",
    "train_ctc_head",
    "transcribe",
]

Head = Literal["linear", "bilstm"]
HEADS = typing.get_args(Head)
BLANK = 0
DEFAULT_LR = {"linear": 3e-2, "bilstm": 2e-3}  # AdamW peak learning rate per head


@dataclass
class CTCSettings:
    """The CTC probes' settings: the head, its training and the held-out split."""

    head: Head = "linear"  # linear: a projection per frame; bilstm: BiLSTM layers, then the projection
    hidden: int = 128  # BiLSTM units per direction
    lstm_layers: int = 1  # BiLSTM layers
    epochs: int = 60  # most passes over the training utterances
    batch_size: int = 32  # utterances per step; an epoch takes half the CPU time of batch 8
    lr: float | None = None  # AdamW peak learning rate, cosine-decayed to 0; None: DEFAULT_LR of the head
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    patience: int = 10  # stop after this many epochs without a lower held-out loss; 0: never
    heldout_fraction: float = 0.1  # of the training utterances, held out to choose the epoch; 0: none
    seed: int = 1  # held-out utterances, initialization and utterance order

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"CTC settings: head {self.head!r} is not one of {', '.join(HEADS)}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.head]
        if (min(self.hidden, self.lstm_layers, self.epochs, self.batch_size) <= 0 or self.lr <= 0
                or self.weight_decay < 0 or self.patience < 0 or not 0 <= self.heldout_fraction < 1):
            raise ValueError(f"CTC settings: hidden, lstm_layers, epochs, batch_size and lr must be positive, "
                             f"weight_decay and patience non-negative, heldout_fraction in [0, 1), got {asdict(self)}")
        check_seed("seed", self.seed)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first ``length`` frames in reverse order; padding stays in place.

    Args:
        x: (batch, frames, dim).
        lengths: (batch,) valid frames.
    """
    steps = torch.arange(x.shape[1], device=x.device)[None]  # (1, T)
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, T)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class CTCHead(nn.Module):
    """Frame features -> per-frame class logits (class 0 is the blank).

    The BiLSTM runs each direction as its own LSTM over the padded batch, the
    backward one on every row reversed within its length: a padded batch gives
    the outputs of per-utterance runs, without packed sequences (which run
    many times slower on CPUs).

    Args:
        in_dim: feature dimension.
        num_classes: output classes, blank included.
        head: ``linear`` or ``bilstm``.
        hidden: BiLSTM units per direction.
        layers: BiLSTM layers.
    """

    def __init__(self, in_dim: int, num_classes: int, head: str = "linear", hidden: int = 128, layers: int = 1):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head {head!r} is not one of {', '.join(HEADS)}")
        num_layers = layers if head == "bilstm" else 0
        dims = [in_dim] + [2 * hidden] * num_layers
        self.forward_lstms = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims[:-1])
        self.backward_lstms = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims[:-1])
        self.out = nn.Linear(dims[-1], num_classes)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, frames, in_dim) and (batch,) lengths -> (batch, frames, num_classes) logits."""
        for forward_lstm, backward_lstm in zip(self.forward_lstms, self.backward_lstms):
            ahead, _ = forward_lstm(feats)
            behind, _ = backward_lstm(reverse_padded(feats, lengths))
            feats = torch.cat([ahead, reverse_padded(behind, lengths)], dim=-1)  # (B, T, 2 hidden)
        return self.out(feats)


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor, blank: int = BLANK) -> list[np.ndarray]:
    """Best class per frame, repeats collapsed, blanks dropped.

    Args:
        logits: (batch, frames, classes) scores (or log-probabilities).
        lengths: (batch,) valid frames.

    Returns:
        One int64 array of emitted classes per row.
    """
    best = logits.argmax(-1)  # (B, T)
    previous = torch.cat([torch.full_like(best[:, :1], blank), best[:, :-1]], dim=1)
    valid = torch.arange(best.shape[1], device=best.device)[None] < lengths.to(best.device)[:, None]
    keep = (best != blank) & (best != previous) & valid
    best, keep = best.cpu().numpy(), keep.cpu().numpy()
    return [row[mask] for row, mask in zip(best, keep)]


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance: fewest substitutions, deletions and insertions.

    One dynamic-programming row per reference symbol; within a row the
    insertion chain ``d[j] = min(d[j], d[j-1] + 1)`` is a running minimum of
    ``d[j] - j``, so each row is a few numpy operations.
    """
    hyp = hypothesis if isinstance(hypothesis, np.ndarray) else np.array(list(hypothesis), dtype=object)
    if len(reference) == 0 or len(hyp) == 0:
        return max(len(reference), len(hyp))
    columns = np.arange(len(hyp) + 1)
    row = columns.copy()
    for symbol in reference:
        new = np.empty_like(row)
        new[0] = row[0] + 1
        differ = (hyp != symbol).astype(np.int64)
        new[1:] = np.minimum(row[:-1] + differ, row[1:] + 1)  # substitute or match, delete
        row = np.minimum.accumulate(new - columns) + columns  # insert
    return int(row[-1])


def min_ctc_frames(targets: np.ndarray) -> int:
    """Fewest frames CTC needs to emit ``targets``: one per unit, one blank per repeat."""
    targets = np.asarray(targets)
    return len(targets) + int(np.sum(targets[1:] == targets[:-1]))


@dataclass
class TrainedHead:
    head: CTCHead  # in eval mode, at its best epoch
    mean: torch.Tensor  # (dim,) training feature mean
    std: torch.Tensor  # (dim,) training feature standard deviation
    epochs: int  # epochs run
    best_epoch: int  # the epoch kept: lowest held-out loss (the last without held-out data)
    history: dict  # per epoch: train_loss, heldout_error, heldout_loss (losses per target unit)


def _batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Utterances of similar length together (little padding)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def _pad(feats: Sequence[torch.Tensor], index: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardized (batch, frames, dim) features of ``index`` on the statistics' device, and their lengths."""
    rows = [feats[i] for i in index]
    lengths = torch.tensor([len(r) for r in rows], device=mean.device)
    batch = pad_sequence(rows, batch_first=True).to(mean.device).float()  # (B, T, D)
    return (batch - mean) / std, lengths


def _ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, targets: Sequence[np.ndarray]) -> torch.Tensor:
    """Summed CTC loss of a batch."""
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, C)
    flat = torch.from_numpy(np.concatenate(targets)).to(logits.device)
    target_lengths = torch.tensor([len(t) for t in targets], device=logits.device)
    return nn.functional.ctc_loss(log_probs, flat, lengths, target_lengths, blank=BLANK, reduction="sum",
                                  zero_infinity=True)


def _num_units(targets: Sequence[np.ndarray]) -> int:
    return sum(max(len(t), 1) for t in targets)


@torch.no_grad()
def transcribe(head: CTCHead, mean: torch.Tensor, std: torch.Tensor, feats: Sequence[np.ndarray],
               targets: Sequence[np.ndarray], batch_size: int = 32) -> tuple[list[np.ndarray], float]:
    """Greedy decoding of each utterance, and the mean CTC loss per target unit.

    Args:
        head: in eval mode.
        mean, std: (dim,) the training statistics that standardize the inputs.
        feats: per utterance (frames, dim).
        targets: per utterance (units,) classes, for the loss.

    Returns:
        The decoded classes of each utterance, in order, and the loss.
    """
    tensors = [torch.from_numpy(np.asarray(f)) for f in feats]
    hyps: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(tensors)
    loss = 0.0
    for index in _batches([len(t) for t in tensors], batch_size):
        x, lengths = _pad(tensors, index, mean, std)
        logits = head(x, lengths)
        loss += float(_ctc_loss(logits, lengths, [targets[i] for i in index]))
        for i, hyp in zip(index, greedy_decode(logits, lengths)):
            hyps[i] = hyp
    return hyps, loss / max(1, _num_units(targets))


def train_ctc_head(feats: Sequence[np.ndarray], targets: Sequence[np.ndarray], num_classes: int,
                   settings: CTCSettings | None = None, device: str | torch.device = "cpu", progress: bool = True,
                   desc: str = "ctc probe", heldout_feats: Sequence[np.ndarray] = (),
                   heldout_targets: Sequence[np.ndarray] = ()) -> TrainedHead:
    """Fit a CTC head on (frames, dim) feature arrays and their unit sequences.

    With held-out utterances, the epoch of lowest held-out CTC loss is kept
    (its unit error rate, by greedy decoding, is recorded too) and training
    stops after ``settings.patience`` epochs without a lower loss.

    Args:
        feats: per utterance (frames, dim), float32 or float16.
        targets: per utterance (units,) classes in ``[1, num_classes)`` (0 is the blank).
        num_classes: output classes, blank included.
        settings: head and optimization.
        device: where the head trains.
        desc: progress bar label.
        heldout_feats, heldout_targets: utterances that choose the epoch.

    Returns:
        The trained head, its input statistics and its training history.
    """
    if settings is None:

        settings = CTCSettings()
    if not feats or len(feats) != len(targets) or len(heldout_feats) != len(heldout_targets):
        raise ValueError(f"need one target sequence per utterance, got {len(feats)} utterances, {len(targets)} "
                         f"targets ({len(heldout_feats)} / {len(heldout_targets)} held out)")
    device = torch.device(device)
    tensors = [torch.from_numpy(np.asarray(f)) for f in feats]
    mean, std = (t.to(device) for t in feature_statistics(torch.cat(tensors)))
    torch.manual_seed(settings.seed)
    head = CTCHead(tensors[0].shape[1], num_classes, settings.head, settings.hidden, settings.lstm_layers).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    batches = _batches([len(f) for f in tensors], settings.batch_size)
    scheduler = cosine_schedule(optimizer, settings.epochs * len(batches))
    generator = np.random.default_rng(settings.seed)
    history: dict[str, list[float]] = {"train_loss": [], "heldout_error": [], "heldout_loss": []}
    stopping = EarlyStopping(settings.patience)  # scores: -loss
    bar = tqdm(range(1, settings.epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False,
               dynamic_ncols=True)
    for epoch in bar:
        stop_point(f"before epoch {epoch} of {desc}")
        head.train()
        loss_sum = torch.zeros((), device=device)
        for b in generator.permutation(len(batches)):
            x, lengths = _pad(tensors, batches[b], mean, std)
            batch_targets = [targets[i] for i in batches[b]]
            loss = _ctc_loss(head(x, lengths), lengths, batch_targets)
            optimizer.zero_grad(set_to_none=True)
            (loss / _num_units(batch_targets)).backward()
            nn.utils.clip_grad_norm_(head.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
        history["train_loss"].append(float(loss_sum) / _num_units(targets))
        head.eval()
        if heldout_feats:
            hyps, heldout_loss = transcribe(head, mean, std, heldout_feats, heldout_targets)
            error = error_rate(list(zip(heldout_targets, hyps)))
            history["heldout_error"].append(error)
            history["heldout_loss"].append(heldout_loss)
            stopping.update(epoch, -heldout_loss, head)
        else:
            stopping.keep_last(epoch)
        bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", heldout=f"{-stopping.best:.3f}")
        if stopping.should_stop(epoch):
            break
    bar.close()
    stopping.restore(head)
    return TrainedHead(head.eval(), mean, std, len(history["train_loss"]), stopping.best_epoch, history)


def error_rate(pairs: Sequence[tuple[Sequence, Sequence]]) -> float:
    """Total edit distance over total reference length, for (reference, hypothesis) pairs."""
    edits = sum(edit_distance(ref, hyp) for ref, hyp in pairs)
    return edits / max(1, sum(len(ref) for ref, _ in pairs))
