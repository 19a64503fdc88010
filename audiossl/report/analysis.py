"""What the experiment page computes from features itself: a quick linear classifier's confusion counts and a
2-D projection.

Both are for figures (:mod:`audiossl.report.page`): the phone confusion when
no probe stored its counts, and the speakers' PCA. The phone probe's
accuracy, not this classifier's, is the result.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["linear_confusion", "pca_2d"]


def linear_confusion(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     num_classes: int, epochs: int = 30, batch_size: int = 4096, lr: float = 2e-2,
                     seed: int = 0) -> np.ndarray:
    """Confusion counts of a linear classifier (multinomial logistic regression) fitted here.

    Features are standardized with the training statistics, the weights start
    at zero and Adam makes ``epochs`` passes at a constant rate: cheaper than
    ``audiossl probe`` (:mod:`audiossl.probes.linear`, which returns no
    predictions), meant for the figure.

    Args:
        train_x: (examples, dim) features.
        train_y: (examples,) classes in ``[0, num_classes)``.
        test_x: (test examples, dim).
        test_y: (test examples,).
        num_classes: classes of the classifier.

    Returns:
        (classes, classes) int64 counts, rows the true class, columns the prediction.
    """
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(train_x).float(), torch.from_numpy(train_y).long()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-5)
    x = (x - mean) / std
    classifier = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = torch.nn.functional.cross_entropy(classifier(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        predicted = classifier((torch.from_numpy(test_x).float() - mean) / std).argmax(-1).numpy()
    return np.bincount(test_y * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (items, dim) vectors, each dimension standardized, on their first two principal components.

    Returns:
        (items, 2) coordinates and the fraction of variance of each component.
    """
    if vectors.ndim != 2 or len(vectors) < 3:
        raise ValueError(f"need (items >= 3, dim) vectors to project, got {vectors.shape}")
    x = torch.from_numpy(vectors).double()
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-8)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    if len(s) < 2:  # one dimension: the second axis is flat
        u, s = torch.cat([u, torch.zeros_like(u)], 1), torch.cat([s, torch.zeros_like(s)])
    variance = s ** 2
    return (u[:, :2] * s[:2]).numpy(), (variance[:2] / variance.sum().clamp(min=1e-12)).numpy()
