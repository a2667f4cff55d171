"""scpredict: deep-learning models of single-cell state for AnnData.

``import scpredict as sp`` is cheap: torch, lightning and scvi-tools are imported the first time a model
class in :mod:`scpredict.models` is touched.
"""

from importlib.metadata import PackageNotFoundError, version

from . import data, datasets, metrics, models, pl, pp, tl
from ._settings import settings

try:
    __version__ = version("scpredict")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["data", "datasets", "metrics", "models", "pl", "pp", "settings", "tl", "__version__"]
