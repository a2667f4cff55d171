"""Plotting: functions take ``ax=``, return the Axes or Figure, and never call ``show()``."""

from ._history import training_history

__all__ = ["training_history"]
