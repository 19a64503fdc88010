"""audiossl: self-supervised speech representation learning (CPC, APC, MPC, NPC)."""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """A ready model from a checkpoint: see :func:`audiossl.checkpoint.load_model`."""
    from audiossl.checkpoint import load_model as _load_model

    return _load_model(path, device)
