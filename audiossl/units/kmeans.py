"""Mini-batch k-means with k-means++ initialization, in torch, on any device.

The discrete units of :mod:`audiossl.units.fit` come from this. It follows
scikit-learn's ``MiniBatchKMeans``, the implementation HuBERT's unit recipe
(fairseq ``examples/hubert/simple_kmeans/learn_kmeans.py``) and the GSLM
speech-to-unit recipe call:

- Initialization: greedy k-means++ (Arthur and Vassilvitskii 2007), as
  scikit-learn's ``_kmeans_plusplus``: the first centre is a uniformly drawn
  point; each next one is the best of ``2 + ln k`` candidates drawn with
  probability proportional to the squared distance to the nearest centre
  chosen so far, "best" being the candidate that lowers the summed squared
  distance most. It runs on the first ``init_size`` points of a seeded
  permutation (scikit-learn's ``init_size``, default three mini-batches).
- Updates: Sculley (2010) mini-batch steps. Each centre keeps the number of
  points ever assigned to it and moves to the running mean of them: a batch
  that assigns ``n_c`` points with sum ``s_c`` to centre ``c`` gives
  ``counts_c += n_c; centre_c += (s_c - n_c centre_c) / counts_c``, the same
  per-centre learning rate as scikit-learn's ``_mini_batch_step``.
- Epochs: each a seeded permutation of the points cut into mini-batches of
  ``batch_size`` (HuBERT: 10,000). The run stops after ``max_epochs``, or
  when an epoch's mean squared distance (measured on the batches before
  their update, as scikit-learn's ``ewa_inertia``) improves by less than
  ``tol`` relative to the previous epoch's.
- Dead centres: a centre that received no point during an epoch is moved to
  a point drawn with probability proportional to its squared distance from
  its nearest centre (scikit-learn instead reassigns centres whose count is
  a small fraction, ``reassignment_ratio``, of the largest; HuBERT sets that
  ratio to 0).

Distances are ``|x|^2 - 2 x.c + |c|^2`` by matrix products, ``chunk`` points
at a time, so memory beyond the points is one (chunk, k) block. The points
themselves stay on the device: the caller bounds them (``audiossl units fit
--max-frames``). The same seed on the same device gives the same centres.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from audiossl.settings import check_seed
from audiossl.utils.stopping import stop_point

__all__ = ["KMeansResult", "KMeansSettings", "assign", "kmeans_plusplus", "minibatch_kmeans", "restart_dead_centres",
           "squared_distances"]

MAX_DRAW = 1 << 24  # most points a dead centre's restart draws from (torch.multinomial's limit)


@dataclass
class KMeansSettings:
    k: int = 50  # clusters (ZeroSpeech 2021's baseline: 50)
    batch_size: int = 10000  # points per mini-batch (HuBERT's learn_kmeans.py)
    max_epochs: int = 100  # most passes over the points
    tol: float = 1e-4  # stop when an epoch lowers the mean squared distance by less than this fraction
    init_size: int = 0  # points the k-means++ initialization sees; 0: 3 x batch_size (scikit-learn's default)
    seed: int = 1  # initialization, permutations and dead-centre draws

    def __post_init__(self) -> None:
        if self.k < 1 or self.batch_size < 1 or self.max_epochs < 1:
            raise ValueError(f"k-means settings: k, batch_size and max_epochs must be at least 1, got {self.k}, "
                             f"{self.batch_size}, {self.max_epochs}")
        if self.tol < 0 or self.init_size < 0:
            raise ValueError(f"k-means settings: tol and init_size must not be negative, got {self.tol}, "
                             f"{self.init_size}")
        check_seed("seed", self.seed)


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (k, dim)
    inertia: float  # mean squared distance of the points to their nearest centroid
    sizes: list[int]  # points nearest to each centroid
    epochs: int  # epochs run
    converged: bool  # stopped by ``tol`` rather than by ``max_epochs``
    history: list[float]  # mean squared distance per epoch (before each batch's update)
    reassigned: int  # dead centres moved, over the whole run


def squared_distances(x: torch.Tensor, centroids: torch.Tensor, centroid_norms: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """(points, k) squared Euclidean distances, clamped at 0.

    Args:
        x: (points, dim).
        centroids: (k, dim).
        centroid_norms: (k,) their squared norms, if already computed.
    """
    if centroid_norms is None:
        centroid_norms = centroids.pow(2).sum(1)
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centroids.T + centroid_norms).clamp_(min=0)


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest centroid of each point (the lowest index on a tie) and its squared distance.

    Args:
        x: (points, dim).
        centroids: (k, dim).
        chunk: points per distance block.

    Returns:
        (points,) int64 indices and (points,) squared distances.
    """
    norms = centroids.pow(2).sum(1)
    labels, distances = [], []
    for start in range(0, len(x), chunk):
        d = squared_distances(x[start: start + chunk], centroids, norms)
        best, index = d.min(dim=1)
        labels.append(index)
        distances.append(best)
    if not labels:
        return x.new_zeros(0, dtype=torch.int64), x.new_zeros(0)
    return torch.cat(labels), torch.cat(distances)


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator, trials: int = 0) -> torch.Tensor:
    """Greedy k-means++ centres drawn from the points ``x``.

    Args:
        x: (points, dim), at least ``k`` distinct points.
        k: centres.
        generator: the draws (on ``x``'s device).
        trials: candidates per centre; 0: ``2 + int(ln k)`` (scikit-learn's).

    Returns:
        (k, dim) centres, each one of the points.

    Raises:
        ValueError: if ``x`` has fewer than ``k`` distinct points.
    """
    count = len(x)
    if count < k:
        raise ValueError(f"k-means++ needs at least k={k} points, got {count}")
    trials = trials or 2 + int(math.log(k))
    norms = x.pow(2).sum(1)
    first = int(torch.randint(count, (1,), generator=generator, device=x.device))
    chosen = [first]
    closest = (norms - 2 * x @ x[first] + norms[first]).clamp_(min=0)  # (N,) squared distance to the nearest centre
    for _ in range(1, k):
        total = closest.sum()
        if not total > 0:
            raise ValueError(f"the points have fewer than k={k} distinct values: k-means++ found only "
                             f"{len(chosen)} distinct centres")
        candidates = torch.multinomial(closest, trials, replacement=True, generator=generator)  # (trials,)
        d = (norms[:, None] - 2 * x @ x[candidates].T + norms[candidates]).clamp_(min=0)  # (N, trials)
        lowered = torch.minimum(closest[:, None], d)
        best = int(lowered.sum(0).argmin())
        chosen.append(int(candidates[best]))
        closest = lowered[:, best].contiguous()
    return x[chosen].clone()


def restart_dead_centres(x: torch.Tensor, centroids: torch.Tensor, counts: torch.Tensor, dead: torch.Tensor,
                         generator: torch.Generator) -> None:
    """Move the ``dead`` centres (no point came near them) onto points far from every centre, in place.

    The points are drawn without replacement with probability proportional
    to their squared distance from their nearest centre, as k-means++ draws
    its candidates (from a random ``MAX_DRAW`` of them when there are more); a moved centre's count becomes
    the smallest live count, so that its first points move it as much as they would move the others.

    Args:
        x: (points, dim).
        centroids: (k, dim), changed in place.
        counts: (k,) points assigned to each centre so far, changed in place.
        dead: (dead,) indices of the centres to move.
        generator: the draw.
    """
    live = torch.ones(len(centroids), dtype=torch.bool, device=centroids.device)
    live[dead] = False
    if len(x) > MAX_DRAW:  # torch.multinomial draws from at most 2^24 categories
        x = x[torch.randperm(len(x), generator=generator, device=x.device)[:MAX_DRAW]]
    _, distances = assign(x, centroids[live]) if bool(live.any()) else (None, torch.ones(len(x), device=x.device))
    picks = torch.multinomial(distances.clamp(min=1e-12), len(dead), replacement=False, generator=generator)
    centroids[dead] = x[picks]
    alive = counts[live]
    counts[dead] = alive[alive > 0].min() if bool((alive > 0).any()) else 1.0


def _epoch_batches(count: int, batch_size: int, generator: torch.Generator, device: torch.device):
    order = torch.randperm(count, generator=generator, device=device)
    return order.split(batch_size)


def minibatch_kmeans(x: torch.Tensor, settings: KMeansSettings,
                     on_batch: Callable[[int, int, float], None] | None = None) -> KMeansResult:
    """Mini-batch k-means of the points ``x`` (see the module docstring).

    Args:
        x: (points, dim) float32, on the device to compute on.
        settings: k, batch size, epochs, tolerance, initialization size, seed.
        on_batch: called after each mini-batch with (epoch, batch, mean
            squared distance of the batch), e.g. to move a progress bar.

    Returns:
        The centroids and how the run went; ``inertia`` and ``sizes`` come
        from a last pass over every point with the final centroids.

    Raises:
        ValueError: for fewer than ``k`` distinct points.
    """
    if x.ndim != 2:
        raise ValueError(f"expected (points, dim) points, got shape {tuple(x.shape)}")
    x = x.float()
    count, k = len(x), settings.k
    generator = torch.Generator(device=x.device).manual_seed(settings.seed)
    init_size = min(count, settings.init_size or 3 * settings.batch_size)
    init_size = max(init_size, min(count, 3 * k))
    init_points = x[torch.randperm(count, generator=generator, device=x.device)[:init_size]]
    centroids = kmeans_plusplus(init_points, k, generator)
    counts = torch.zeros(k, dtype=torch.float64, device=x.device)
    history: list[float] = []
    reassigned, converged, epoch = 0, False, 0
    for epoch in range(1, settings.max_epochs + 1):
        stop_point(f"before k-means epoch {epoch}")
        hits = torch.zeros(k, dtype=torch.int64, device=x.device)
        total = 0.0
        for number, index in enumerate(_epoch_batches(count, settings.batch_size, generator, x.device)):
            batch = x[index]
            labels, distances = assign(batch, centroids)
            batch_total = float(distances.sum())
            total += batch_total
            batch_counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(centroids).index_add_(0, labels, batch)
            hits += batch_counts
            counts += batch_counts
            moved = batch_counts > 0
            step = (sums[moved] - batch_counts[moved, None] * centroids[moved]) / counts[moved, None].float()
            centroids[moved] += step
            if on_batch is not None:
                on_batch(epoch, number, batch_total / len(index))
        history.append(total / count)
        dead = torch.nonzero(hits == 0).flatten()
        if len(dead):
            restart_dead_centres(x, centroids, counts, dead, generator)
            reassigned += len(dead)
        elif len(history) > 1 and history[-2] - history[-1] <= settings.tol * history[-2]:
            converged = True
            break
    labels, distances = assign(x, centroids)
    sizes = torch.bincount(labels, minlength=k).tolist()
    return KMeansResult(centroids, float(distances.double().mean()), sizes, epoch, converged, history, reassigned)
