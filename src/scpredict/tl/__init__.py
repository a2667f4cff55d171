"""Tools: evaluation, comparison and analysis functions."""

from ._retrieval import connectivity, imbalance

__all__ = ["connectivity", "imbalance"]
