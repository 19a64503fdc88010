"""ABX phone discriminability on frozen features, with no training.

- :mod:`~audiossl.probes.abx.labels`: ABX on frame labels (items, cell averaging) and
  :class:`ABXSettings`.
- :mod:`~audiossl.probes.abx.triples`: the (A, B, X) triples drawn from frame-label items.
- :mod:`~audiossl.probes.abx.items`: phone occurrences cut from frame labels; item files
  (Libri-light / ZeroSpeech 2021 / zrc-abx2), read and written.
- :mod:`~audiossl.probes.abx.item_files`: ABX on item files with zrc-abx2's sampling and averaging.
- :mod:`~audiossl.probes.abx.dtw`: frame distances aligned by DTW, batched over many pairs.
"""
