"""The name s3prl checkouts register; the code is :mod:`audiossl.interop.s3prl`."""
from audiossl.interop.s3prl import UpstreamExpert, audiossl_local  # noqa: F401
