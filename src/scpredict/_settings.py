"""Global settings: ``sp.settings``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

__all__ = ["ScpredictSettings", "settings"]

ProgressBar = Literal["epoch", "batch", "none"]


class ScpredictSettings:
    """Package-wide settings, available as ``sp.settings``.

    Attributes
    ----------
    seed
        Seed for every random draw the package makes (weight init, data splits, shuffling, sampling).
        Two runs with the same seed give identical results on the CPU.
    progress_bar
        ``"epoch"`` (one bar over epochs, the default), ``"batch"`` (Lightning's per-batch bar) or
        ``"none"``.
    verbosity
        0 silent, 1 warnings and summaries (default), 2 info.
    accelerator
        Default Lightning accelerator for ``train``: ``"auto"`` uses a GPU when there is one.
    num_workers
        Default number of DataLoader workers.
    data_dir
        Folder searched by the public-dataset loaders in :mod:`scpredict.datasets` when no ``path`` is given.
        Defaults to ``$SCPREDICT_DATA_DIR`` or ``../shared/data``.
    log_dir
        Where Lightning logs and checkpoints go unless ``train(default_root_dir=...)`` says otherwise.
    """

    def __init__(self) -> None:
        self.seed: int = 0
        self.progress_bar: ProgressBar = "epoch"
        self.verbosity: int = 1
        self.accelerator: str = "auto"
        self.num_workers: int = 0
        self.data_dir: Path = Path(os.environ.get("SCPREDICT_DATA_DIR", "../shared/data"))
        self.log_dir: Path = Path(os.environ.get("SCPREDICT_LOG_DIR", "scpredict_logs"))

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"ScpredictSettings({items})"


settings = ScpredictSettings()
