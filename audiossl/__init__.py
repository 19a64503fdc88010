"""audiossl: self-supervised speech representation learning (CPC, APC, MPC, NPC)."""

from audiossl.version import __version__

__all__ = ["__version__", "load_model"]


def load_model(path, device="cpu"):
    """A ready model from a checkpoint: see :func:`audiossl.checkpoint.load_model`."""
    from audiossl.checkpoint import load_model as _load_model

    return _load_model(path, device)
