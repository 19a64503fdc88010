"""The package version, recorded in every checkpoint and unit model (a leaf: the package imports it)."""

__version__ = "0.1.0"
