"""CTC recognition probes: phones or sentencepiece pieces from frozen features.

- :mod:`~audiossl.probes.ctc.probe`: the ``ctc-phone`` and ``ctc-subword`` probes over layers and floors.
- :mod:`~audiossl.probes.ctc.head`: the head, its settings (:class:`CTCSettings`), training, decoding
  and error rates.
- :mod:`~audiossl.probes.ctc.targets`: what the probes output: phone sequences and sentencepiece pieces.
"""
