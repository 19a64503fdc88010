"""Discrete units: k-means on extracted features, fitted, saved and assigned.

- :mod:`~audiossl.units.kmeans`: mini-batch k-means with k-means++ initialization, in torch.
- :mod:`~audiossl.units.fit`: a units model fitted on a features folder, saved self-describing
  (``audiossl units fit``).
- :mod:`~audiossl.units.assign`: a units model assigned to every utterance, written in
  ZeroSpeech 2021's formats (``audiossl units assign``).

How good the units are (purity, PNMI, one-hot ABX) is a probe:
:mod:`audiossl.probes.unit_quality`.
"""
