"""Probes on frozen features, each beside the hand-made floors.

The floors themselves (MFCC, log-mel) are models: :mod:`audiossl.models.baselines`.

- :mod:`~audiossl.probes.linear`: the linear classifier and its training.
- :mod:`~audiossl.probes.fit`: what the trained probes' loops share: the cosine learning-rate
  schedule and early stopping on held-out utterances.
- :mod:`~audiossl.probes.tasks`: phone examples per frame, speaker examples per utterance or window.
- :mod:`~audiossl.probes.runner`: what every probe shares: the feature sets and the floors
  beside them, the splits, one result row per feature set, the report format and its output
  folder (``metrics.json``, ``report.txt``, TensorBoard curves).
- :mod:`~audiossl.probes.classify`: the linear phone and speaker probes over layers and floors.
- :mod:`~audiossl.probes.abx.labels`, :mod:`~audiossl.probes.abx.item_files`: ABX on phone labels and on
  item files, both with :mod:`~audiossl.probes.abx.dtw`'s batched DTW distances;
  :mod:`~audiossl.probes.ctc.probe`: CTC phone and subword recognition, with
  :mod:`~audiossl.probes.ctc.head`'s head, its training, decoding and error rates.
- :mod:`~audiossl.probes.unit_quality`: phone purity, cluster purity, PNMI and one-hot ABX of
  k-means units (:mod:`audiossl.units.fit`), beside k-means on the floors.
"""

from audiossl.probes.classify import format_report, phone_probe, speaker_probe
from audiossl.probes.linear import ProbeResult, ProbeSettings, train_linear_probe
from audiossl.probes.runner import RunOptions, probe_features, write_outputs
from audiossl.probes.tasks import ProbeError

__all__ = [
    "ProbeError",
    "ProbeResult",
    "ProbeSettings",
    "RunOptions",
    "format_report",
    "phone_probe",
    "probe_features",
    "speaker_probe",
    "train_linear_probe",
    "write_outputs",
]
