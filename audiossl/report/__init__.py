"""``audiossl report EXP_DIR``: an experiment's figures and a markdown page showing them.

- :mod:`~audiossl.report.experiment`: reading an experiment folder (training scalars, probe
  scores, features, phone labels) and finding what the page's figures read.
- :mod:`~audiossl.report.analysis`: what the page computes from features itself (a quick
  linear classifier's confusion counts, a PCA).
- :mod:`~audiossl.report.figures`: the figures, plain arrays in, one PNG file out;
  :mod:`~audiossl.report.spectrograms`: those of one utterance over time.
- :mod:`~audiossl.report.page`: :func:`make_report`, the page and its sections.
"""

from audiossl.report.page import make_report

__all__ = ["make_report"]
