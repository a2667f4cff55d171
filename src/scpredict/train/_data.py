"""Lightning data modules over AnnData (through scvi-tools' AnnDataManager / AnnDataLoader)."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

__all__ = ["IndexDataModule", "resolve_split", "split_indices"]


def split_indices(
    n_obs: int, *, train_size: float, validation_size: float | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation indices (validation = the rest when ``validation_size`` is None)."""
    if not 0 < train_size <= 1:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_obs)
    n_train = int(np.ceil(train_size * n_obs))
    n_val = n_obs - n_train if validation_size is None else int(np.floor(validation_size * n_obs))
    n_val = min(n_val, n_obs - n_train)
    return np.sort(perm[:n_train]), np.sort(perm[n_train : n_train + n_val])


def resolve_split(
    n_obs: int,
    *,
    train_indices: np.ndarray | None = None,
    validation_indices: np.ndarray | None = None,
    train_size: float,
    validation_size: float | None = None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation cells of a model's ``train`` call.

    Explicit ``train_indices`` win (validation: ``validation_indices``, or none at all — the other cells
    may be the user's test cells, which must not steer early stopping or the kept epoch, as with
    scvi-tools' external indexing); explicit ``validation_indices`` alone train on every other cell;
    otherwise the seeded random split of :func:`split_indices`. Every model and every helper that needs to know which cells
    a call will train on (e.g. class frequencies for class weights) goes through this one function, so they
    cannot disagree.

    Returns
    -------
    ``(train, validation)`` integer positions.
    """
    if train_indices is None and validation_indices is not None:
        # the validation cells were set aside: train on all the others
        va = np.asarray(validation_indices, dtype=np.int64)
        return np.setdiff1d(np.arange(n_obs), va), va
    if train_indices is None:
        return split_indices(n_obs, train_size=train_size, validation_size=validation_size, seed=seed)
    tr = np.asarray(train_indices, dtype=np.int64)
    if validation_indices is None:
        return tr, np.zeros(0, dtype=np.int64)
    return tr, np.asarray(validation_indices, dtype=np.int64)


class IndexDataModule(pl.LightningDataModule):
    """Train/validation loaders built by ``make_loader(indices, shuffle)`` for two index sets."""

    def __init__(
        self,
        make_loader: Callable[..., DataLoader],
        train_indices: np.ndarray,
        validation_indices: np.ndarray,
    ) -> None:
        super().__init__()
        self.make_loader = make_loader
        self.train_indices = np.asarray(train_indices)
        self.validation_indices = np.asarray(validation_indices)

    def train_dataloader(self) -> DataLoader:
        return self.make_loader(self.train_indices, shuffle=True)

    def val_dataloader(self):
        if len(self.validation_indices) == 0:
            return []
        return self.make_loader(self.validation_indices, shuffle=False)
