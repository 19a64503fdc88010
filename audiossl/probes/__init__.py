"""Linear phone and speaker probes on frozen features, with hand-made baselines.

- :mod:`~audiossl.probes.baselines`: MFCC and log-mel as models, the floor.
- :mod:`~audiossl.probes.linear`: the linear classifier and its training.
- :mod:`~audiossl.probes.tasks`: phone examples per frame, speaker examples per utterance or window.
- :mod:`~audiossl.probes.report`: a probe run over layers and baselines, its table and its
  output folder (``metrics.json``, ``report.txt``, TensorBoard curves).
- :mod:`~audiossl.probes.discrete`: phone purity, cluster purity, PNMI and one-hot ABX of
  k-means units (:mod:`audiossl.discrete`), beside k-means on the floors.
"""

from audiossl.probes.baselines import BASELINES, build_baseline
from audiossl.probes.linear import ProbeResult, ProbeSettings, train_linear_probe
from audiossl.probes.report import format_report, phone_probe, probe_features, speaker_probe, write_outputs
from audiossl.probes.tasks import ProbeError

__all__ = [
    "BASELINES",
    "ProbeError",
    "ProbeResult",
    "ProbeSettings",
    "build_baseline",
    "format_report",
    "phone_probe",
    "probe_features",
    "speaker_probe",
    "train_linear_probe",
    "write_outputs",
]
