"""A linear classifier trained on frozen features: the probe itself.

CPC (van den Oord et al. 2018, Sec. 3.1) measures what its representations
hold by training a linear classifier on them, phones per frame and speakers
per utterance; CPC_audio's ``cpc/eval/linear_separability.py`` does the same
on a frozen model (its ``--nEpoch``, ``--lr`` are ``epochs``, ``lr`` here).
Here the classifier reads features already extracted to numpy: each input
dimension is standardized with the training set's mean and standard deviation
(a linear probe can represent any such rescaling; it only helps the optimizer),
the weights start at zero (``hidden`` > 0 adds one ReLU hidden layer, the
issue's optional non-linear probe), and AdamW with a cosine-decayed learning rate
minimizes the cross-entropy. Early stopping: after every epoch the probe is
scored on held-out examples (a part of the training utterances set aside by
the caller); the weights of the best epoch are kept (highest held-out
accuracy; between equal accuracies, which a small held-out set often gives,
the lower held-out loss), and training stops once ``patience`` epochs in a
row brought no better one. With the
seed fixed, the result is reproducible.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from audiossl.probes.fit import EarlyStopping, cosine_schedule
from audiossl.settings import check_seed
from audiossl.utils.stopping import stop_point

__all__ = ["ProbeResult", "ProbeSettings", "train_linear_probe"]

EVAL_BATCH = 8192


@dataclass
class ProbeSettings:
    epochs: int = 40  # most passes over the training examples
    batch_size: int = 1024  # examples per optimizer step
    lr: float = 1e-2  # AdamW peak learning rate, cosine-decayed to 0 over ``epochs``
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    patience: int = 10  # stop after this many epochs without a better held-out accuracy; 0: never
    heldout_fraction: float = 0.1  # of the training utterances, held out to choose the epoch; 0: none
    seed: int = 1  # the held-out utterances and the order of the examples
    hidden: int = 0  # units of one ReLU hidden layer before the classifier; 0: linear (CPC's probe)

    def __post_init__(self) -> None:
        if (self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0 or self.weight_decay < 0 or self.patience < 0
                or self.hidden < 0
                or not 0 <= self.heldout_fraction < 1):
            raise ValueError(f"probe settings: epochs, batch_size and lr must be positive, weight_decay, "
                             f"patience and hidden non-negative, heldout_fraction in [0, 1), got {asdict(self)}")
        check_seed("seed", self.seed)


def make_classifier(dim: int, num_classes: int, hidden: int = 0) -> nn.Module:
    """A linear layer starting at zero, or with ``hidden`` > 0 one ReLU hidden layer first.

    A hidden layer cannot start at zero (its units would never differ), so
    only the output layer does.
    """
    if hidden:
        output = nn.Linear(hidden, num_classes)
        classifier = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), output)
    else:
        output = classifier = nn.Linear(dim, num_classes)
    nn.init.zeros_(output.weight)
    nn.init.zeros_(output.bias)
    return classifier


@dataclass
class ProbeResult:
    dim: int  # input feature dimension
    train_examples: int  # frames or windows the probe was fitted on
    heldout_examples: int  # examples that chose the epoch (0: none, the last epoch is kept)
    test_examples: int
    epochs: int  # epochs run (fewer than the settings' when stopped early)
    best_epoch: int  # the epoch whose weights were kept, from 1
    train_accuracy: float  # of the kept weights
    heldout_accuracy: float | None  # of the kept weights
    accuracy: float  # on the test examples
    test_loss: float  # mean cross-entropy (nats)
    history: dict = field(default_factory=dict)  # per epoch: train_loss, heldout_accuracy, heldout_loss


def feature_statistics(feats: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of (examples, dim) features.

    Accumulated in float64 chunk by chunk, so float16 or huge inputs are fine;
    dimensions that never vary get a standard deviation of 1.
    """
    total = torch.zeros(feats.shape[1], dtype=torch.float64, device=feats.device)
    squares = torch.zeros_like(total)
    for start in range(0, len(feats), chunk):
        block = feats[start: start + chunk].double()
        total += block.sum(0)
        squares += (block * block).sum(0)
    mean = total / len(feats)
    std = (squares / len(feats) - mean * mean).clamp(min=0).sqrt()
    std = torch.where(std > 1e-6 * mean.abs().clamp(min=1.0), std, torch.ones_like(std))
    return mean.float(), std.float()


def _place(feats: np.ndarray, device: torch.device) -> torch.Tensor:
    """The features on ``device`` when they fit comfortably, else on the CPU."""
    tensor = torch.from_numpy(feats)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if tensor.numel() * tensor.element_size() < free // 2:
            return tensor.to(device)
    return tensor


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """One torch thread on the CPU while a probe trains, then the caller's count again.

    A linear probe's steps are too small to share between threads; on a busy
    two-core machine a second thread only waits for the first (the demo's
    phone probe took 7x longer with two).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _evaluate(probe: nn.Module, feats: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
              std: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy over (examples, dim) features."""
    device = mean.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(feats), EVAL_BATCH):
        x = (feats[start: start + EVAL_BATCH].to(device).float() - mean) / std
        y = labels[start: start + EVAL_BATCH].to(device)
        logits = probe(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(-1) == y).sum()
    return int(correct) / len(feats), float(loss_sum) / len(feats)


def _check_examples(train: tuple[np.ndarray, np.ndarray], heldout: tuple[np.ndarray, np.ndarray],
                    test: tuple[np.ndarray, np.ndarray], num_classes: int) -> None:
    """Refuse features of different dims, labels that do not match them or lie outside the classes, and
    nothing to train or test on (each argument: features and labels)."""
    (train_feats, train_labels), (heldout_feats, heldout_labels), (test_feats, test_labels) = train, heldout, test
    if (train_feats.ndim != 2 or test_feats.ndim != 2 or heldout_feats.ndim != 2
            or not train_feats.shape[1] == test_feats.shape[1] == heldout_feats.shape[1]):
        raise ValueError(f"expected (examples, dim) features of one dim, got train {train_feats.shape}, "
                         f"held-out {heldout_feats.shape} and test {test_feats.shape}")
    if (len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels)
            or len(heldout_feats) != len(heldout_labels)):
        raise ValueError(f"{len(train_feats)} train / {len(heldout_feats)} held-out / {len(test_feats)} test "
                         f"examples but {len(train_labels)} / {len(heldout_labels)} / {len(test_labels)} labels")
    if len(train_feats) == 0 or len(test_feats) == 0:
        raise ValueError(f"no examples to train or test on ({len(train_feats)} train, {len(test_feats)} test)")
    for labels in (train_labels, heldout_labels, test_labels):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")


def _train_epoch(probe: nn.Module, optimizer: torch.optim.Optimizer, scheduler, x: torch.Tensor,
                 y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, order: torch.Tensor,
                 batch_size: int) -> float:
    """One pass over the examples in ``order``, ``batch_size`` at a time; the mean training loss.

    ``x`` may stay on the CPU (each batch is copied to the device); ``y``, ``mean`` and ``std`` are there.
    """
    device = mean.device
    loss_sum = torch.zeros((), device=device)
    for start in range(0, len(x), batch_size):
        index = order[start: start + batch_size]
        batch = (x[index.to(x.device)].to(device).float() - mean) / std  # (B, D)
        loss = nn.functional.cross_entropy(probe(batch), y[index.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach()
    return float(loss_sum) / math.ceil(len(x) / batch_size)


def train_linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                       test_labels: np.ndarray, num_classes: int, settings: ProbeSettings | None = None,
                       device: str | torch.device = "cpu", progress: bool = True, desc: str = "probe",
                       heldout_feats: np.ndarray | None = None,
                       heldout_labels: np.ndarray | None = None) -> ProbeResult:
    """Fit a linear classifier on training features and score it on test features.

    Args:
        train_feats: (examples, dim) float32 or float16.
        train_labels: (examples,) integer classes in ``[0, num_classes)``.
        test_feats: (test examples, dim).
        test_labels: (test examples,).
        num_classes: output classes.
        settings: epochs, batch size, learning rate, weight decay, patience, seed.
        device: where the classifier trains; the features move there when
            they fit in half the free memory, else batches are copied.
        desc: progress bar label.
        heldout_feats: (held-out examples, dim), from training utterances
            not in ``train_feats``: they choose the epoch and stop training
            early. None: every epoch runs and the last one is kept.
        heldout_labels: (held-out examples,).

    Returns:
        Accuracies, the test loss, the epoch kept and the per-epoch curves.
    """
    settings = settings or ProbeSettings()
    if heldout_feats is None or len(heldout_feats) == 0:
        heldout_feats, heldout_labels = test_feats[:0], test_labels[:0]
    _check_examples((train_feats, train_labels), (heldout_feats, heldout_labels), (test_feats, test_labels),
                    num_classes)
    device = torch.device(device)
    with _one_cpu_thread(device):
        x, x_held, x_test = (_place(f, device) for f in (train_feats, heldout_feats, test_feats))
        y, y_held, y_test = (torch.from_numpy(labels).long() for labels in (train_labels, heldout_labels, test_labels))
        mean, std = (t.to(device) for t in feature_statistics(x))

        probe = make_classifier(x.shape[1], num_classes, settings.hidden).to(device)
        optimizer = torch.optim.AdamW(probe.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        scheduler = cosine_schedule(optimizer, settings.epochs * math.ceil(len(x) / settings.batch_size))
        generator = torch.Generator().manual_seed(settings.seed)
        y_device = y.to(device)
        history: dict[str, list[float]] = {"train_loss": [], "heldout_accuracy": [], "heldout_loss": []}
        stopping = EarlyStopping(settings.patience, worst=(-1.0, 0.0))  # scores: (accuracy, -loss)
        bar = tqdm(range(1, settings.epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False,
                   dynamic_ncols=True)
        for epoch in bar:
            stop_point(f"before epoch {epoch} of the {desc}")
            order = torch.randperm(len(x), generator=generator)
            history["train_loss"].append(_train_epoch(probe, optimizer, scheduler, x, y_device, mean, std, order,
                                                      settings.batch_size))
            if len(x_held) == 0:
                stopping.keep_last(epoch)
                bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}")
                continue
            accuracy, heldout_loss = _evaluate(probe, x_held, y_held, mean, std)
            history["heldout_accuracy"].append(accuracy)
            history["heldout_loss"].append(heldout_loss)
            stopping.update(epoch, (accuracy, -heldout_loss), probe)
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", heldout=f"{accuracy:.3f}",
                            best=stopping.best_epoch)
            if stopping.should_stop(epoch):
                break
        bar.close()
        stopping.restore(probe)

        train_accuracy, _ = _evaluate(probe, x, y, mean, std)
        test_accuracy, test_loss = _evaluate(probe, x_test, y_test, mean, std)
        return ProbeResult(x.shape[1], len(x), len(x_held), len(x_test), len(history["train_loss"]),
                           stopping.best_epoch, train_accuracy, stopping.best[0] if len(x_held) else None,
                           test_accuracy, test_loss, history)
