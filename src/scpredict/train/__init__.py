"""Lightning training plumbing shared by the models (imports torch and lightning)."""

from ._callbacks import BestWeights, EpochProgressBar, HistoryCallback, WeightEMA
from ._data import IndexDataModule, resolve_split, split_indices
from ._plan import LossOutput, TrainingPlan

__all__ = [
    "BestWeights",
    "EpochProgressBar",
    "HistoryCallback",
    "IndexDataModule",
    "LossOutput",
    "TrainingPlan",
    "resolve_split",
    "split_indices",
    "WeightEMA",
]
