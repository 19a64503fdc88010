"""torch.hub entry points: ``torch.hub.load("<audiossl checkout>", "audiossl_local", source="local", ckpt=PATH)``.

``audiossl_local`` is also what an s3prl checkout registers (README, "s3prl"):
an s3prl ``UpstreamExpert`` over an audiossl checkpoint (:mod:`audiossl.interop.s3prl`).
"""

from audiossl.interop.s3prl import audiossl_local  # noqa: F401

dependencies = ["torch", "torchaudio"]
