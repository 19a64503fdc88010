"""Other toolkits' checkpoints in and out (``audiossl convert``).

- :mod:`~audiossl.convert.cpc_audio`: CPC_audio's training folders and
  release files, their weights and predictor;
- :mod:`~audiossl.convert.cpc_audio_args`: its settings against audiossl's
  config, and what is refused or not carried.
"""

from audiossl.convert.cpc_audio import from_cpc_audio, read_cpc_audio, to_cpc_audio, to_cpc_audio_release
from audiossl.convert.cpc_audio_args import ConvertError

__all__ = ["ConvertError", "from_cpc_audio", "read_cpc_audio", "to_cpc_audio", "to_cpc_audio_release"]
